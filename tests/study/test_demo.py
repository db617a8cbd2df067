"""`sibo demo --quick` end to end on the shipped base model: the table, and the files behind it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from sibo.cli import main
from sibo.cli.demo import sibo_command
from sibo.errors import InputError
from sibo.output_dir import LOCK_FILE, RUN_MARKER, hold_output_dir
from sibo.study.demo import (
    ADAPTER_ROWS_NOTE,
    DEMO_MARKER,
    DemoConfig,
    prepare_output_dir,
    quick_config,
    shipped_base_model,
)

LABELS = ["base", "LoRA", "LoRA-SIBO", "Adapter", "Adapter-SIBO"]
NEXT_STEPS = "next, on what the demo made (answer a test problem, score it again, the Gradio page):"
DIRECTORIES = {"LoRA": "lora", "LoRA-SIBO": "lora-sibo", "Adapter": "adapter", "Adapter-SIBO": "adapter-sibo"}


def test_the_shipped_base_model_is_deep_narrow_and_small():
    base = shipped_base_model()
    config = json.loads((base / "config.json").read_text())
    assert config["num_hidden_layers"] >= 12 and config["hidden_size"] <= 128
    assert (base / "tokenizer.json").is_file()
    assert (base / "model.safetensors").stat().st_size <= 10 * 2**20


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_quick_demo_prints_the_table_and_writes_its_files(tmp_path, capsys):
    output_dir = tmp_path / "demo"
    assert main(["demo", "--quick", "--output_dir", str(output_dir)]) == 0
    printed = capsys.readouterr().out.splitlines()  # the Trainer prints its logs first
    header = printed.index(next(line for line in printed if line.startswith("method")))
    assert printed[header].split() == ["method", "λ", "accuracy", "last-layer", "sim"]
    table = [line.split() for line in printed[header + 1 : header + 6]]
    assert [cells[0] for cells in table] == LABELS
    assert [cells[1] for cells in table] == ["-", "0.00", "0.20", "0.00", "0.20"]

    results = json.loads((output_dir / "results.json").read_text())
    analysis = json.loads((output_dir / "analyze" / "analyze.json").read_text())
    assert len(analysis["layers"]) == 13  # embeddings + 12 blocks
    for cells, row in zip(table, results["rows"], strict=True):
        assert row["method"] == cells[0]
        assert f"{row['accuracy']:.3f}" == cells[2]
        assert f"{row['last_layer_similarity']:.4f}" == cells[3]
        directory = DIRECTORIES.get(row["method"], "base")
        summary = json.loads((output_dir / "eval" / directory / "summary.json").read_text())
        assert summary["datasets"]["synthetic"]["n"] == 16
        assert summary["datasets"]["synthetic"]["accuracy"] == row["accuracy"]
        assert analysis["similarity"][directory][-1] == row["last_layer_similarity"]
        if directory != "base":
            settings = json.loads((output_dir / "adapters" / directory / "sibo_config.json").read_text())
            assert settings["lam"] == row["lam"]
            assert settings["boosted_modules"]  # SIBO reaches the branches that read the hidden state

    assert len(json.loads((output_dir / "data" / "train.json").read_text())) == 128
    assert (output_dir / "analyze" / "analyze.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # it ends with why the Adapter rows differ and three commands that run on what it made
    assert printed[header + 9] == ADAPTER_ROWS_NOTE
    assert printed[header + 11] == NEXT_STEPS
    generate, evaluate, page = (shlex.split(line) for line in printed[header + 12 :])
    prefix = sibo_command().split()
    assert generate[: len(prefix)] == evaluate[: len(prefix)] == page[: len(prefix)] == prefix
    model = [
        "--base_model",
        str(shipped_base_model()),
        "--weights_path",
        str(output_dir / "adapters" / "lora-sibo"),
    ]
    assert page[len(prefix) :] == ["generate", *model, "--ui"]
    problem = json.loads((output_dir / "data" / "AddSub" / "test.json").read_text())[0]["instruction"]
    assert generate[len(prefix) :] == ["generate", *model, "--prompt", problem]
    assert main(generate[len(prefix) :]) == 0
    assert capsys.readouterr().out.strip()  # an answer
    assert main(evaluate[len(prefix) :]) == 0  # scores LoRA-SIBO again: the table's number
    again = json.loads((output_dir / "eval" / "again" / "summary.json").read_text())
    assert again["datasets"]["AddSub"]["accuracy"] == results["rows"][2]["accuracy"]


def test_next_steps_call_sibo_as_this_shell_reaches_it(monkeypatch):
    script = str(Path(sys.executable).parent / "sibo")
    monkeypatch.setattr(shutil, "which", lambda name: script)
    assert sibo_command() == "sibo"
    monkeypatch.setattr(shutil, "which", lambda name: None)  # `make demo`: the venv is not activated
    assert sibo_command().endswith("python -m sibo") and Path(sibo_command().split()[0]).samefile(
        sys.executable
    )


def test_a_foreign_non_empty_directory_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo", "--quick", "--output_dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"sibo demo: error: --output_dir {tmp_path} already holds files (notes.txt), not written by a sibo run: "
        "choose an empty or new --output_dir"
    )
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_earlier_demo_output_is_cleared_but_foreign_files_are_kept(tmp_path):
    (tmp_path / DEMO_MARKER).write_text("{}")
    (tmp_path / "adapters" / "lora").mkdir(parents=True)
    (tmp_path / "adapters" / "lora" / "adapter_config.json").write_text("{}")
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "keep.txt").write_text("user's")
    prepare_output_dir(tmp_path, tmp_path.parent / "base")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["keep.txt", RUN_MARKER]


def test_a_killed_demo_owns_its_own_files_and_none_the_user_put_in_its_folders(tmp_path):
    prepare_output_dir(tmp_path, tmp_path.parent / "base")  # never records: killed
    demo_files = ["results.json", "adapters/lora/adapter_model.safetensors", "adapters/lora/checkpoint-4/x.pt",
                  f"adapters/lora/{RUN_MARKER}", "eval/base/AddSub.jsonl", "eval/lora/.summary.json.k3x9q2ab.partial",
                  f"analyze/{RUN_MARKER}", "eval/adapter-sibo/summary.json"]  # fmt: skip
    users = ["eval/notes.txt", "eval/again/summary.json", "adapters/lora/mine.txt", "adapters/mine/x.json"]
    for name in demo_files + users:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    prepare_output_dir(tmp_path, tmp_path.parent / "base")
    left = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*") if path.is_file())
    assert left == sorted([*users, RUN_MARKER])


def test_bad_settings_are_input_errors():
    with pytest.raises(InputError, match=r"unknown demo methods \['prefix'\]"):
        DemoConfig(methods=("lora", "prefix"))
    with pytest.raises(InputError, match=r"SIBO's λ must be a number in \[0, 1\], got 1.5"):
        quick_config(lam=1.5)
    with pytest.raises(InputError, match="max_steps must be at least 1"):
        quick_config(max_steps=0)


def test_a_missing_base_model_says_how_to_make_one(tmp_path):
    from sibo.study.demo import run_demo

    with pytest.raises(InputError, match="scripts/pretrain_demo_base.py"):
        run_demo(quick_config(output_dir=tmp_path / "out", base_model=str(tmp_path / "nowhere")))


def test_a_second_demo_on_a_folder_in_use_stops_naming_the_first(tmp_path, capsys):
    output_dir = tmp_path / "demo"
    with hold_output_dir(output_dir):
        assert main(["demo", "--quick", "--output_dir", str(output_dir)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"sibo demo: error: --output_dir {output_dir} is in use by another sibo run (pid {os.getpid()}): "
            "wait for it to finish or choose another --output_dir"
        )
        assert sorted(entry.name for entry in output_dir.iterdir()) == [LOCK_FILE]
