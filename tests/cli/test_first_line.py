"""Every verb's first line says what it loads, from where and how big, and comes before torch is imported
(that import alone takes seconds, a GGUF base's load half a minute more)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fault_checks import evaluate_args, finetune_args
from huggingface_hub import constants

from sibo.progress import announce, on_disk

# Runs `sibo argv` and stops at its first log line, printing whether torch was imported by then.
FIRST_LINE = """
import logging, os, sys
from sibo.cli import main

class FirstLine(logging.Handler):
    def emit(self, record):
        print("torch" in sys.modules, record.getMessage(), flush=True)
        os._exit(0)

logging.getLogger().addHandler(FirstLine())
main(sys.argv[1:])
"""
SRC = str(Path(__file__).resolve().parents[2] / "src")


def verb_args(root: Path, out: Path) -> dict[str, list]:
    model = ["--base_model", root / "base4", "--weights_path", root / "adapter4"]
    return {
        "finetune": finetune_args(root, out),
        "evaluate": evaluate_args(root, out, root / "adapter4"),
        "generate": ["generate", *model, "--prompt", "Add 1 and 2."],
        "export": ["export", *model, "--output_dir", out],
        "serve": ["serve", *model],
        "analyze": ["analyze", *model, "--data", root / "records.json", "--output_dir", out],
        "sweep": ["sweep", *finetune_args(root, out)[1:], "--lambdas", "0,0.1"],
        "demo": ["demo", "--quick", "--base_model", root / "base4", "--output_dir", out],
        "lm-eval": ["lm-eval", "--model", "sibo", "--model_args", f"pretrained={root / 'base4'},peft={root / 'adapter4'}",
                    "--tasks", "arc_easy"],
    }  # fmt: skip


PURPOSES = {
    "finetune": "to fine-tune into {out}",
    "evaluate": "to score on AddSub into {out}",
    "generate": "to answer one instruction",
    "export": "to merge into {out}",
    "serve": "to serve at http://127.0.0.1:8000/v1",
    "analyze": "to measure token similarity by layer",
    "sweep": "to sweep into {out}",
    "demo": "for the demo study into {out}",
    "lm-eval": "for lm-evaluation-harness",
}


@pytest.mark.parametrize("verb", list(PURPOSES))
def test_the_first_line_says_what_loads_from_where_and_how_big_before_torch_is_imported(root, tmp_path, verb):
    out = tmp_path / "out"
    argv = [str(arg) for arg in verb_args(root, out)[verb]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", FIRST_LINE, *argv], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    torch_imported, line = result.stdout.rstrip("\n").split(" ", 1)
    assert torch_imported == "False", line
    second = {
        "finetune": f"data {root / 'records.json'}",
        "sweep": f"data {root / 'records.json'}",
        "analyze": f"adapters {root / 'adapter4'}",
        "demo": None,
    }.get(verb, f"adapter {root / 'adapter4'}")
    size = r" \(\d[\d.]* kB\)"
    expected = rf"loading base {re.escape(str(root / 'base4'))}{size}"
    expected += rf" and {re.escape(second)}{size}" if second else ""
    expected += rf"( and data {re.escape(str(root / 'records.json'))}{size})?" if verb == "analyze" else ""
    assert re.fullmatch(rf"{expected} {re.escape(PURPOSES[verb].format(out=out))} …", line), line


@pytest.mark.parametrize(
    "verb, bad, error, first_line",
    [
        ("finetune", ["--lora_r", "0"], "--lora_r must be at least 1, got 0", False),
        ("sweep", ["--adam_beta1", "2"], "--adam_beta1 must be in [0, 1), got 2.0", False),
        # only transformers knows its activations: checked last, after the first line
        ("finetune", ["--non_linearity", "bogus"], "--non_linearity 'bogus' is not a transformers", True),
    ],
)
def test_a_bad_value_that_needs_no_library_is_the_only_line(root, tmp_path, verb, bad, error, first_line):
    argv = [str(arg) for arg in [*verb_args(root, tmp_path / "out")[verb], *bad]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "sibo", *argv], capture_output=True, text=True, env=env)
    assert (result.returncode, result.stdout) == (2, "")
    *before, last = result.stderr.splitlines()
    assert last.startswith(f"sibo {verb}: error: {error}")
    announced = [bool(re.search(r"sibo\.progress: loading base .* …$", line)) for line in before]
    assert announced == [True] * first_line
    assert not (tmp_path / "out").exists()


def test_sizes_are_a_stat_of_the_file_or_the_folders_own_files_and_a_hub_name_says_whether_it_is_cached(
    tmp_path, monkeypatch, caplog
):
    gguf = tmp_path / "model.Q4_1.gguf"
    with gguf.open("wb") as file:
        file.truncate(98_362_432)  # SmolLM2's, sparse: nothing is read
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "adapter_model.safetensors").write_bytes(b"0" * 26_000)
    (run / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"0" * 26_000)  # not what a load reads
    assert on_disk(str(gguf)) == f"{gguf} (98.4 MB, GGUF)"
    assert on_disk(str(run)) == f"{run} (26 kB)"
    assert on_disk(str(tmp_path / "gone")) == f"{tmp_path / 'gone'} (not found)"

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert on_disk("org/model") == "org/model (hub name, no local copy)"
    (tmp_path / "hub" / "models--org--model" / "blobs").mkdir(parents=True)
    (tmp_path / "hub" / "models--org--model" / "blobs" / "abc").write_bytes(b"0" * 1500)
    assert on_disk("org/model") == "org/model (hub name, 1.5 kB in the hub cache)"

    with caplog.at_level(logging.INFO, logger="sibo"):
        announce("to test", base=str(gguf), adapter=None, data=f"{run},org/model")
    assert caplog.messages == [
        f"loading base {gguf} (98.4 MB, GGUF) and data {run} (26 kB), org/model (hub name, 1.5 kB in the hub "
        "cache) to test …"
    ]
