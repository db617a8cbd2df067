"""`sibo sweep` on a tiny LLaMA: one CSV row per (λ, seed), scores that match each run's evaluation."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import pytest

from sibo.checkpoint.load import load_model
from sibo.cli import main
from sibo.cli.sweep import parse_config
from sibo.errors import InputError
from sibo.eval.config import EvalConfig
from sibo.files import TRAIN_METRICS_FILE
from sibo.output_dir import LOCK_FILE, claim_output_dir, hold_output_dir
from sibo.study.heldout import held_out_losses
from sibo.study.split import HeldOutSplit
from sibo.study.sweep import SweepRow, summarize, write_csv
from sibo.study.sweep_config import SweepConfig
from sibo.study.sweep_heldout import (
    LOSS_FILE,
    HeldOut,
    HeldOutLog,
    check_reusable,
    mean_loss,
    prepare_heldout,
)
from sibo.study.sweep_report import ONE_SEED
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
    flags = _flags(workspace, workspace / "x")
    del flags[flags.index("--output_dir") : flags.index("--output_dir") + 2]
    assert (
        parse_config(flags[1:]).output_dir.as_posix() == "sweep"
    )  # its own folder, not finetune's lora-alpaca
    assert config.finetune_config(0.3, 7).output_dir == str(workspace / "x" / "lam0.3_seed7" / "adapter")


def test_lambdas_must_be_numbers(workspace):
    with pytest.raises(InputError, match=r"--lambdas must be a list of float values, got 'a,b'"):
        parse_config(_flags(workspace, workspace / "x", "--lambdas", "a,b")[1:])


def test_repeated_lambdas_are_refused(workspace):
    finetune = FinetuneConfig(base_model="b", data_path="d")
    with pytest.raises(InputError, match="must not repeat"):
        SweepConfig(
            finetune,
            workspace / "o",
            EvalConfig("AddSub", workspace, workspace / "o"),
            lambdas=[0.1, 0.1],
            seeds=[1],
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


def _without_benchmarks(flags: list[str]) -> list[str]:
    at = flags.index("--datasets")
    return flags[:at] + flags[at + 2 :]


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_heldout_sweep_scores_held_out_loss_and_reports_each_lambda_against_zero(workspace, capsys):
    output_dir = workspace / "heldout"
    flags = _without_benchmarks(_flags(workspace, output_dir, "--lambdas", "0,0.2", "--seeds", "1,2", "--heldout", "6",
                                       "--max_steps", "2", "--eval_step", "1"))  # fmt: skip
    assert main(flags) == 0
    printed = capsys.readouterr().out

    # the split: 6 records held out, never in the training file the runs read
    records = json.loads((workspace / "train.json").read_text())
    split = json.loads((output_dir / "heldout" / "split.json").read_text())
    trained = json.loads((output_dir / "heldout" / "train.json").read_text())
    assert len(split["heldout"]) == 6 and len(trained) == len(split["train"]) == len(records) - 6 - len(
        split["dropped"]
    )
    held = {records[k]["instruction"] for k in split["heldout"]}
    assert not held & {r["instruction"] for r in trained}
    run_config = json.loads((output_dir / "lam0.2_seed1" / "adapter" / "run_config.json").read_text())[
        "config"
    ]
    assert run_config["data_path"] == str(output_dir / "heldout" / "train.json")

    # each run: held-out loss per record before training, after each step (eval_step 1) and at the end
    losses = {}
    for lam in ("0", "0.2"):
        for seed in (1, 2):
            found = json.loads((output_dir / f"lam{lam}_seed{seed}" / "heldout_loss.json").read_text())
            assert found["keys"] == [f"record/{k}" for k in split["heldout"]]
            assert "response token" in found["measure"] and sorted(found["points"]) == ["0", "1", "2"]
            losses[(lam, seed)] = found["points"]
    # before the first step LoRA's B is zero: SIBO changes nothing yet
    assert losses[("0.2", 1)]["0"] == losses[("0", 1)]["0"]
    with (output_dir / "sweep.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["lambda", "seed", "heldout_loss", "adapter_dir"]  # no benchmarks asked for
    for row in rows:
        final = losses[(row["lambda"], int(row["seed"]))]["2"]
        assert float(row["heldout_loss"]) == pytest.approx(sum(final) / len(final), abs=1e-6)

    # the report: the paired difference at the last step, by hand from the runs' files
    report = json.loads((output_dir / "report.json").read_text())["heldout_loss"]
    (row,) = report["lambdas"]
    by_hand = (
        sum(
            a - b for s in (1, 2) for a, b in zip(losses[("0.2", s)]["2"], losses[("0", s)]["2"], strict=True)
        )
        / 12
    )
    assert (
        row["difference"] == pytest.approx(by_hand, abs=1e-9)
        and row["low"] <= row["difference"] <= row["high"]
    )
    assert (report["steps"], report["adapter_steps"], row["p_holm"]) == (
        [0, 1, 2],
        {"0": [2, 2], "0.2": [2, 2]},  # no validation: the saved adapter is the last step
        row["p"],
    )  # one λ: Holm is p
    assert row["by_step"][0]["difference"] == 0.0
    assert row["verdict"] == _verdict_by_hand(row)
    text = (output_dir / "report.md").read_text()
    assert f"| 0.2 | {row['loss']:.4f} | {row['difference']:+.5f} |" in text and row["verdict"] in text
    assert "response token" in text
    assert (output_dir / "heldout.png").read_bytes()[:4] == b"\x89PNG" and not (
        output_dir / "sweep.png"
    ).exists()
    assert f"λ 0.2 − λ 0: {row['difference']:+.5f}" in printed and row["verdict"] in printed

    # a rerun trains nothing and reports the same; an adapter trained without the split is refused
    weights = output_dir / "lam0.2_seed2" / "adapter" / "adapter_model.safetensors"
    written = weights.stat().st_mtime_ns
    assert main(flags) == 0
    assert weights.stat().st_mtime_ns == written
    assert json.loads((output_dir / "report.json").read_text())["heldout_loss"] == report
    (output_dir / "lam0_seed1" / "heldout_loss.json").unlink()
    capsys.readouterr()
    assert main(flags) == 2
    assert "holds an adapter or checkpoints trained without this held-out split" in capsys.readouterr().err


def _verdict_by_hand(row: dict) -> str:
    """docs/sweep.md's rule for the default margin 0.002: an interval inside ±margin is equivalent; else a Holm
    p under 0.05 decides by the difference's sign; else undecided, with the seeds that would decide it (null in
    report.json: infinitely many, for two seeds or more)."""
    if row["low"] > -0.002 and row["high"] < 0.002:
        return "equivalent within ±0.002"
    if row["p_holm"] < 0.05:
        return "better" if row["difference"] < 0 else "worse"
    if row["seeds_needed"] is None:
        return "undecided — more seeds would not decide it: score more records"
    return f"undecided — run more seeds (about {int(row['seeds_needed'])} would decide it)"


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_heldout_sweep_with_benchmarks_adds_accuracy_with_mcnemar(workspace):
    output_dir = workspace / "heldout_acc"
    flags = _flags(
        workspace, output_dir, "--lambdas", "0,0.2", "--seeds", "1", "--heldout", "4", "--max_steps", "1"
    )
    assert main(flags) == 0
    report = json.loads((output_dir / "report.json").read_text())
    (accuracy,) = report["accuracy"]
    answers = {}
    for lam in ("0", "0.2"):
        lines = (output_dir / f"lam{lam}_seed1" / "eval" / "AddSub.jsonl").read_text().splitlines()
        answers[lam] = [
            json.loads(line)["correct"] for line in sorted(lines, key=lambda text: json.loads(text)["index"])
        ]
    gained = sum(a and not b for a, b in zip(answers["0.2"], answers["0"], strict=True))
    lost = sum(b and not a for a, b in zip(answers["0.2"], answers["0"], strict=True))
    assert (accuracy["dataset"], accuracy["gained"], accuracy["lost"], accuracy["questions"]) == (
        "AddSub",
        gained,
        lost,
        3,
    )
    # one seed: training noise is unmeasured, so no verdict; its unknown seed variance is null in strict JSON
    (row,) = report["heldout_loss"]["lambdas"]
    assert row["seeds_needed"] is None and row["verdict"] == ONE_SEED
    json.loads((output_dir / "report.json").read_text(), parse_constant=_refuse)
    assert "resamples records only" in (output_dir / "report.md").read_text()
    assert "## Accuracy" in (output_dir / "report.md").read_text() and (output_dir / "sweep.png").is_file()
    with (output_dir / "sweep.csv").open() as file:
        assert list(next(csv.DictReader(file))) == [
            "lambda",
            "seed",
            "AddSub",
            "mean_accuracy",
            "heldout_loss",
            "adapter_dir",
        ]


def _refuse(constant: str):
    raise ValueError(f"{constant} is not JSON")


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_rerun_on_the_data_in_another_order_is_refused(workspace, capsys):
    """The same count and seed hold out the same indices, now other records: the finished runs trained on
    records now held out, and their losses are of other records. Neither is reused, nor resumed."""
    output_dir = workspace / "reordered"
    flags = _without_benchmarks(
        _flags(workspace, output_dir, "--lambdas", "0,0.2", "--seeds", "1", "--heldout", "4")
    )
    assert main(flags) == 0
    records = json.loads((workspace / "train.json").read_text())
    flags[flags.index("--data_path") + 1] = str(write_records(records[::-1], workspace / "reversed.json"))
    capsys.readouterr()
    assert main(flags) == 2
    refusal = "holds an adapter or checkpoints trained without this held-out split of this data"
    assert refusal in capsys.readouterr().err
    for run in ("lam0_seed1", "lam0.2_seed1"):  # stopped part way: checkpoints only
        assert any((output_dir / run / "adapter").glob("checkpoint-*"))
        (output_dir / run / "adapter" / TRAIN_METRICS_FILE).unlink()
    assert main([*flags, "--resume_from_checkpoint", "latest"]) == 2
    assert refusal in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_sweep_scored_before_content_digests_is_reused_when_its_split_files_match(workspace, capsys):
    """A log written before 2026-12-08 names its split by the indices alone: its runs are reused (not retrained)
    when the train.json and heldout.json it wrote are this split's, and refused when the data changed."""
    output_dir = workspace / "earlier"
    flags = _without_benchmarks(
        _flags(workspace, output_dir, "--lambdas", "0,0.2", "--seeds", "1", "--heldout", "4")
    )
    assert main(flags) == 0
    split = json.loads((output_dir / "heldout" / "split.json").read_text())
    earlier = hashlib.sha256(json.dumps(split).encode()).hexdigest()[:16]  # the digest before 2026-12-08
    adapters = {}
    for run in ("lam0_seed1", "lam0.2_seed1"):
        log = json.loads((output_dir / run / LOSS_FILE).read_text())
        (output_dir / run / LOSS_FILE).write_text(json.dumps({**log, "split": earlier}))
        adapters[run] = (output_dir / run / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    report = (output_dir / "report.md").read_text()
    assert main(flags) == 0  # reused, not retrained
    assert (output_dir / "report.md").read_text() == report
    for run, written in adapters.items():
        assert (output_dir / run / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == written
    heldout_file = output_dir / "heldout" / "heldout.json"
    heldout_file.write_text(
        heldout_file.read_text().replace('"output": "', '"output": "x', 1)
    )  # other data then
    capsys.readouterr()
    assert main(flags) == 2
    assert "holds an adapter or checkpoints trained without this held-out split" in capsys.readouterr().err


def test_checkpoints_are_resumed_only_beside_losses_of_this_split(tmp_path):
    run_dir = tmp_path / "lam0_seed1"
    (run_dir / "adapter" / "checkpoint-1").mkdir(parents=True)
    finetune = FinetuneConfig(
        base_model="b", data_path="d", output_dir=str(run_dir / "adapter"), resume_from_checkpoint="latest"
    )
    heldout = HeldOut([], HeldOutSplit([], [], []), [], digest="this")
    (run_dir / LOSS_FILE).write_text(json.dumps({"split": "another", "points": {"0": [1.0]}}))
    with pytest.raises(
        InputError, match="holds an adapter or checkpoints trained without this held-out split"
    ):
        check_reusable(HeldOutLog(run_dir, heldout), finetune)
    (run_dir / LOSS_FILE).write_text(json.dumps({"split": "this", "points": {"0": [1.0]}}))
    check_reusable(HeldOutLog(run_dir, heldout), finetune)  # the same split: it resumes


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_validated_run_reports_the_held_out_loss_of_the_adapter_it_saved(workspace):
    """With validation the Trainer reloads the best checkpoint at the end: that adapter's held-out loss is
    the run's, not the last step's (the best here: the highest validation loss, so not the last step)."""
    output_dir = workspace / "validated"
    flags = _without_benchmarks(
        _flags(workspace, output_dir, "--lambdas", "0,0.2", "--seeds", "1", "--heldout", "4", "--max_steps", "3",
               "--eval_step", "1", "--save_step", "1", "--greater_is_better", "true", "--learning_rate", "1e-2")
    )  # fmt: skip
    flags[flags.index("--val_set_size") + 1] = "4"
    assert main(flags) == 0
    config = parse_config(flags[1:])
    heldout = prepare_heldout(config.finetune, config.heldout, config.heldout_seed)
    with (output_dir / "sweep.csv").open() as file:
        rows = list(csv.DictReader(file))
    steps = {}
    for row in rows:
        adapter = Path(row["adapter_dir"])
        metrics = json.loads((adapter / TRAIN_METRICS_FILE).read_text())
        steps[row["lambda"]] = [int(metrics["best_checkpoint"].rpartition("-")[2])]
        assert metrics["global_step"] == 3 and steps[row["lambda"]] != [3]
        model, _ = load_model(str(workspace / "base"), adapter)
        saved = mean_loss(held_out_losses(model, heldout.encoded)["rationale"])
        assert float(row["heldout_loss"]) == pytest.approx(saved, abs=1e-5)
    report = json.loads((output_dir / "report.json").read_text())["heldout_loss"]
    assert report["adapter_steps"] == steps
    assert report["baseline_loss"] == pytest.approx(float(rows[0]["heldout_loss"]), abs=1e-5)


def test_held_out_records_with_no_response_token_stop_the_sweep_before_training(workspace, capsys):
    output_dir = workspace / "cut"
    flags = _without_benchmarks(
        _flags(workspace, output_dir, "--lambdas", "0,0.2", "--heldout", "4", "--cutoff_len", "16")
    )
    assert main(flags) == 2
    assert capsys.readouterr().err.strip() == (
        "sibo sweep: error: --heldout 4: every held-out record's prompt fills --cutoff_len 16, leaving no "
        "response token to score: raise --cutoff_len"
    )
    assert not output_dir.exists()


def test_heldout_needs_lambda_zero_and_a_sweep_needs_something_to_score(workspace):
    with pytest.raises(InputError, match=r"--heldout compares every λ with λ 0: add 0 to --lambdas"):
        parse_config(_flags(workspace, workspace / "x", "--lambdas", "0.1,0.2", "--heldout", "3")[1:])
    config = parse_config(
        _without_benchmarks(_flags(workspace, workspace / "x", "--lambdas", "0,0.2", "--heldout", "3"))[1:]
    )
    assert (config.evaluation, config.heldout, config.margin) == (None, 3, 0.002)
    assert config.finetune_config(0.2, 1).data_path == str(workspace / "x" / "heldout" / "train.json")
    mixed = _without_benchmarks(_flags(workspace, workspace / "x", "--lambdas", "0", "--heldout", "3"))
    mixed[mixed.index("--data_path") + 1] += f",{workspace / 'train.json'}"
    config = parse_config([*mixed[1:], "--data_ratios", "1,1"])
    assert config.finetune.data_ratios == "1,1"  # the sweep mixes the sources once, for its split
    assert (config.finetune_config(0, 1).data_path, config.finetune_config(0, 1).data_ratios) == (
        str(workspace / "x" / "heldout" / "train.json"),
        "",
    )  # every run trains on the split's training side, mixed already
    with pytest.raises(InputError, match="--margin > 0"):
        parse_config(
            _flags(workspace, workspace / "x", "--lambdas", "0", "--heldout", "3", "--margin", "0")[1:]
        )


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_overwrite_hands_a_sweep_the_folder_of_another_verbs_run(workspace, capsys):
    output_dir = workspace / "was_finetune"
    claim_output_dir(
        output_dir, "finetune", {"lora_r": 8}, writes=("checkpoint-*",)
    )  # killed before it ended
    (output_dir / "checkpoint-1").mkdir()
    (output_dir / "checkpoint-1" / "adapter_model.safetensors").write_text("its weights")
    flags = _flags(workspace, output_dir, "--lambdas", "0")
    assert main(flags) == 2
    assert capsys.readouterr().err.strip() == (
        f"sibo sweep: error: --output_dir {output_dir} holds another finetune run (written by sibo finetune, "
        "not sweep): pass --overwrite to replace it, or choose another --output_dir"
    )
    (output_dir / "notes.txt").write_text("mine, added after the kill")
    assert main([*flags, "--overwrite"]) == 0, capsys.readouterr().err
    assert not (output_dir / "checkpoint-1").exists()
    assert (output_dir / "notes.txt").read_text() == "mine, added after the kill"
    assert (output_dir / "sweep.csv").is_file()
