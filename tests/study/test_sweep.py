"""`sibo sweep` on a tiny LLaMA: one CSV row per (λ, seed), scores that match each run's evaluation."""

from __future__ import annotations

import csv
import json
import os

import pytest

from sibo.cli import main
from sibo.cli.sweep import parse_config
from sibo.decode.settings import DecodingSettings
from sibo.errors import InputError
from sibo.files import LOCK_FILE, hold_output_dir
from sibo.study.sweep import SweepConfig, SweepRow, summarize, write_csv
from sibo.study.synthetic import write_records
from sibo.train.config import FinetuneConfig


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_training_run):
    """A tiny base model with its tokenizer, synthetic training data, and an AddSub-shaped test file."""
    root = tmp_path_factory.mktemp("sweep")
    test = tiny_training_run(root, 24, 3, seed=4)
    write_records(test, root / "data" / "AddSub" / "test.json")
    return root


def _flags(root, output_dir, *extra):
    return [
        "sweep", "--base_model", str(root / "base"), "--data_path", str(root / "train.json"),
        "--output_dir", str(output_dir), "--datasets", "AddSub", "--data_dir", str(root / "data"),
        "--max_steps", "1", "--batch_size", "4", "--micro_batch_size", "4", "--val_set_size", "0",
        "--warmup_steps", "0", "--target_modules", "up_proj,down_proj", "--num_beams", "1",
        "--max_new_tokens", "4", "--eval_batch_size", "3", *extra,
    ]  # fmt: skip


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_sweep_writes_one_row_per_lambda_and_seed(workspace, capsys):
    output_dir = workspace / "out"
    assert main(_flags(workspace, output_dir, "--lambdas", "0,0.2", "--seeds", "[1,2]")) == 0
    with (output_dir / "sweep.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(row["lambda"], row["seed"]) for row in rows] == [
        ("0", "1"),
        ("0", "2"),
        ("0.2", "1"),
        ("0.2", "2"),
    ]
    assert list(rows[0]) == ["lambda", "seed", "AddSub", "mean_accuracy", "adapter_dir"]
    for row in rows:
        run_dir = output_dir / f"lam{row['lambda']}_seed{row['seed']}"
        assert row["adapter_dir"] == str(run_dir / "adapter")
        summary = json.loads((run_dir / "eval" / "summary.json").read_text())["datasets"]["AddSub"]
        assert summary["n"] == 3
        assert (
            float(row["AddSub"])
            == pytest.approx(summary["accuracy"])
            == pytest.approx(float(row["mean_accuracy"]))
        )
        settings = json.loads((run_dir / "adapter" / "sibo_config.json").read_text())
        assert settings["lam"] == float(row["lambda"])
        run_config = json.loads((run_dir / "adapter" / "run_config.json").read_text())["config"]
        assert run_config["seed"] == int(row["seed"])
    assert (output_dir / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out.splitlines()  # the Trainer prints its logs first
    header = next(i for i, line in enumerate(printed) if line.split() == ["λ", "seeds", "accuracy", "std"])
    assert [line.split()[:2] for line in printed[header + 1 : header + 3]] == [["0", "2"], ["0.2", "2"]]

    # A rerun reuses finished runs: no adapter is trained again.
    weights = output_dir / "lam0.2_seed2" / "adapter" / "adapter_model.safetensors"
    written = weights.stat().st_mtime_ns
    assert main(_flags(workspace, output_dir, "--lambdas", "0,0.2", "--seeds", "1,2")) == 0
    assert weights.stat().st_mtime_ns == written


def test_a_bad_lambda_stops_the_sweep_before_anything_is_written(workspace, capsys):
    output_dir = workspace / "bad"
    assert main(_flags(workspace, output_dir, "--lambdas", "0.1,1.5")) == 2
    assert (
        capsys.readouterr().err.strip() == "sibo sweep: error: SIBO's λ must be a number in [0, 1], got 1.5"
    )
    assert not output_dir.exists()


def test_a_missing_benchmark_stops_the_sweep_before_training(workspace, capsys):
    output_dir = workspace / "missing"
    assert main(_flags(workspace, output_dir, "--datasets", "SVAMP")) == 2
    missing = workspace / "data" / "SVAMP" / "test.json"
    error = capsys.readouterr().err.strip()
    assert (
        error == f"sibo sweep: error: dataset file {missing} not found (expected <data_dir>/SVAMP/test.json)"
    )
    assert not output_dir.exists()


def test_defaults_take_the_finetune_lambda_and_seed(workspace):
    config = parse_config(_flags(workspace, workspace / "x", "--embedding_lambda", "0.3", "--seed", "7")[1:])
    assert (config.lambdas, config.seeds) == ([0.3], [7])
    assert config.finetune_config(0.3, 7).output_dir == str(workspace / "x" / "lam0.3_seed7" / "adapter")


def test_lambdas_must_be_numbers(workspace):
    with pytest.raises(InputError, match=r"--lambdas must be a list of float values, got 'a,b'"):
        parse_config(_flags(workspace, workspace / "x", "--lambdas", "a,b")[1:])


def test_repeated_lambdas_are_refused(workspace):
    finetune = FinetuneConfig(base_model="b", data_path="d")
    with pytest.raises(InputError, match="must not repeat"):
        SweepConfig(
            finetune,
            [0.1, 0.1],
            [1],
            "AddSub",
            workspace,
            workspace / "o",
            decoding=DecodingSettings(num_beams=4),
        )


def test_summary_and_csv_from_rows(tmp_path):
    rows = [
        SweepRow(0.0, 1, {"A": 0.5, "B": 0.7}, "r1"),
        SweepRow(0.0, 2, {"A": 0.3, "B": 0.5}, "r2"),
        SweepRow(0.1, 1, {"A": 1.0, "B": 0.0}, "r3"),
    ]
    (lam0, mean0, std0, n0), (lam1, mean1, std1, n1) = summarize(rows)
    assert (lam0, n0, lam1, n1) == (0.0, 2, 0.1, 1)
    assert mean0 == pytest.approx(0.5) and std0 == pytest.approx(0.1414213562)
    assert mean1 == pytest.approx(0.5) and std1 == 0.0
    write_csv(rows, tmp_path / "s.csv")
    assert (tmp_path / "s.csv").read_text().splitlines() == [
        "lambda,seed,A,B,mean_accuracy,adapter_dir",
        "0,1,0.500000,0.700000,0.600000,r1",
        "0,2,0.300000,0.500000,0.400000,r2",
        "0.1,1,1.000000,0.000000,0.500000,r3",
    ]


def test_a_second_sweep_on_a_folder_in_use_stops_naming_the_first(workspace, capsys):
    output_dir = workspace / "in_use"
    with hold_output_dir(output_dir):
        assert main(_flags(workspace, output_dir)) == 2
        assert capsys.readouterr().err.strip() == (
            f"sibo sweep: error: --output_dir {output_dir} is in use by another sibo run (pid {os.getpid()}): "
            "wait for it to finish or choose another --output_dir"
        )
        assert sorted(entry.name for entry in output_dir.iterdir()) == [LOCK_FILE]
