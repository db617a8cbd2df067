"""What every fault test checks, shared by the fault tests beside each package (tests/cli/test_overwrite.py,
tests/test_output_dir.py, tests/train/test_guards.py, …): the exit code, exactly one stderr line, no traceback, and
every earlier file (the output folder, the base model, the adapter) byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from sibo import get_sibo_model
from sibo.cli import main as sibo_main
from sibo.study.synthetic import generate_problems
from sibo.testing import build_tiny_model, build_tokenizer

LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"], init_lora_weights=False)


def make_root(root: Path) -> Path:
    """root/base4 (a 4-block tiny llama), root/adapter4 (a SIBO LoRA on it), root/records.json (8 problems)
    and root/bench (a one-question AddSub)."""
    tokenizer = build_tokenizer()
    base = build_tiny_model("llama", len(tokenizer), num_layers=4)
    base.save_pretrained(root / "base4")
    tokenizer.save_pretrained(root / "base4")
    get_sibo_model(base, LORA, lam=0.2).save_pretrained(root / "adapter4")
    (root / "records.json").write_text(json.dumps(generate_problems(8, seed=1)))
    write_benchmark(root / "bench", [{"instruction": "Add 1 and 2.", "input": "", "answer": "3"}])
    return root


def add_deeper_model(root: Path) -> Path:
    """root/base6 and root/adapter6: a 6-block tiny llama and a SIBO LoRA on it, beside make_root's 4-block."""
    tokenizer = build_tokenizer()
    base = build_tiny_model("llama", len(tokenizer), num_layers=6)
    base.save_pretrained(root / "base6")
    tokenizer.save_pretrained(root / "base6")
    get_sibo_model(base, LORA, lam=0.2).save_pretrained(root / "adapter6")
    return root


def add_nan_adapter(root: Path) -> Path:
    """root/nan_adapter: make_root's adapter4 with one NaN in its first tensor."""
    shutil.copytree(root / "adapter4", root / "nan_adapter")
    tensors = load_file(root / "nan_adapter" / "adapter_model.safetensors")
    tensors[sorted(tensors)[0]][0, 0] = float("nan")
    save_file(tensors, root / "nan_adapter" / "adapter_model.safetensors")
    return root / "nan_adapter"


def write_benchmark(data_dir: Path, records: list | str) -> Path:
    """data_dir/AddSub/test.json holding `records` (a list, or JSON text as it is)."""
    (data_dir / "AddSub").mkdir(parents=True, exist_ok=True)
    text = records if isinstance(records, str) else json.dumps(records)
    (data_dir / "AddSub" / "test.json").write_text(text)
    return data_dir


def snapshot(*paths: Path) -> dict[str, bytes]:
    """Every file under `paths` (hidden ones too), by path, with its bytes."""
    files = {}
    for path in paths:
        if path.is_file():
            files[str(path)] = path.read_bytes()
        for found in sorted(path.rglob("*")) if path.is_dir() else []:
            files[str(found)] = found.read_bytes() if found.is_file() else b"<dir>"
    return files


def run(capsys, argv: list) -> tuple[int, str, str]:
    code = sibo_main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(capsys, argv: list, *intact: Path, code: int = 2) -> str:
    """Run `sibo argv`: exit `code`, one stderr line and no traceback, nothing in `intact` changed."""
    before = snapshot(*intact)
    got, _, err = run(capsys, argv)
    assert got == code, err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert snapshot(*intact) == before
    return err.strip()


def finetune_args(root: Path, output_dir: Path, *extra) -> list:
    return ["finetune", "--base_model", root / "base4", "--data_path", root / "records.json",
            "--output_dir", output_dir, "--val_set_size", "0", "--batch_size", "4", "--micro_batch_size", "4",
            "--warmup_steps", "0", "--lora_r", "4", "--target_modules", "q_proj,up_proj", *extra]  # fmt: skip


def evaluate_args(
    root: Path, output_dir: Path, adapter: Path | None = None, *extra, data_dir: Path | None = None
) -> list:
    return ["evaluate", "--base_model", root / "base4", *(["--weights_path", adapter] if adapter else []),
            "--dataset", "AddSub", "--data_dir", data_dir or root / "bench", "--output_dir", output_dir,
            "--num_beams", "1", "--max_new_tokens", "2", *extra]  # fmt: skip


def copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def tmpfs(disk: Path, options: str) -> Iterator[Path]:
    """A small tmpfs mounted at `disk` (root only; the test is skipped elsewhere), unmounted afterwards:
    a full or read-only disk that even root cannot write past."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("this machine does not let the test mount a tmpfs")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)
