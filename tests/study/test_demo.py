"""`sibo demo --quick` end to end on the shipped base model: the table, and the files behind it."""

from __future__ import annotations

import json

import pytest

from sibo.cli import main
from sibo.errors import InputError
from sibo.study.demo import DEMO_MARKER, DemoConfig, prepare_output_dir, quick_config, shipped_base_model

LABELS = ["base", "LoRA", "LoRA-SIBO", "Adapter", "Adapter-SIBO"]
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


def test_a_foreign_non_empty_directory_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo", "--quick", "--output_dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert (
        error
        == f"sibo demo: error: {tmp_path} is not empty and not an earlier demo's output: choose another --output_dir"
    )
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_earlier_demo_output_is_cleared_but_foreign_files_are_kept(tmp_path):
    (tmp_path / DEMO_MARKER).write_text("{}")
    (tmp_path / "adapters" / "lora").mkdir(parents=True)
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "keep.txt").write_text("user's")
    prepare_output_dir(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["keep.txt"]


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
