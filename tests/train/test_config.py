"""train/config.py: bad numbers and names are refused where the flags are parsed, before anything loads."""

from __future__ import annotations

import json
import logging

import pytest
from fault_checks import finetune_args, refused

from sibo.cli import main as sibo_main
from sibo.errors import InputError
from sibo.train.config import FinetuneConfig


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--learning_rate", "inf"], "--learning_rate must be a positive finite number, got inf"),
        (["--learning_rate", "nan"], "--learning_rate must be a positive finite number, got nan"),
        (
            ["--adapter_name", "bottleneck", "--scaling", "nan"],
            "--scaling must be a finite number or 'learned', got nan",
        ),
        (
            ["--adapter_name", "bottleneck", "--scaling", "inf"],
            "--scaling must be a finite number or 'learned', got inf",
        ),
        (["--embedding_lambda", "nan"], "SIBO's λ must be a number in [0, 1], got nan"),
        (["--lora_dropout", "nan"], "--lora_dropout must be in [0, 1), got nan"),
        (["--seed", "-1"], "--seed must be in 0…4294967295, got -1"),
        (["--seed", str(2**32)], "--seed must be in 0…4294967295, got 4294967296"),
        (["--report_to", "wandbb"], "--report_to 'wandbb' is not an integration transformers knows"),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, list) else "",
)
def test_bad_numbers_and_names_are_refused_where_they_are_parsed(root, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    line = refused(capsys, finetune_args(root, out, *flags), tmp_path)
    assert line.startswith(f"sibo finetune: error: {message}"), line
    assert not out.exists()


def test_sweep_refuses_a_seed_out_of_range(root, tmp_path, capsys):
    line = refused(capsys, ["sweep", *finetune_args(root, tmp_path / "sweep")[1:], "--seeds", "1,4294967296",
                            "--data_dir", root / "bench", "--datasets", "AddSub"], tmp_path)  # fmt: skip
    assert line == "sibo sweep: error: --seed must be in 0…4294967295, got 4294967296"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--metric_for_best_model", "eval_loss"], "--metric_for_best_model needs a validation set: set --val_set_size"),
        (["--val_set_size", "2", "--metric_for_best_model", "accuracy"],
         "--metric_for_best_model accuracy is not among the metrics each evaluation logs: use eval_loss (or "
         "eval_<Name>_accuracy for a benchmark of --eval_datasets)"),
        (["--val_set_size", "2", "--eval_datasets", "addsub", "--metric_for_best_model", "eval_addsub_accuracy"],
         "--metric_for_best_model eval_addsub_accuracy is not among the metrics each evaluation logs: use "
         "eval_loss, eval_AddSub_accuracy"),
        (["--eval_on_start", "True"], "--eval_on_start needs a validation set: set --val_set_size"),
        (["--lr_scheduler_type", "reduce_lr_on_plateau"],
         "--lr_scheduler_type reduce_lr_on_plateau needs a validation set: set --val_set_size"),
        (["--neftune_noise_alpha", "5", "--packing", "True"],
         "--packing cannot go with --neftune_noise_alpha: NEFTune scales its noise by 1/sqrt(row length), and a "
         "packed row holds the whole micro-batch; set --packing False (or leave it unset)"),
    ],
    ids=["metric-without-validation", "metric-not-logged", "accuracy-misspelt", "eval-on-start",
         "plateau-without-validation", "neftune-packing"],
)  # fmt: skip
def test_settings_that_would_fail_at_evaluation_or_mislead_are_refused_first(
    root, tmp_path, capsys, flags, message
):
    out = tmp_path / "out"
    line = refused(capsys, finetune_args(root, out, *flags), tmp_path)
    assert line == f"sibo finetune: error: {message}"
    assert not out.exists()


def test_best_metric_is_one_each_evaluation_logs():
    """transformers puts eval_ before a name without it; accuracies are named as `sibo evaluate` names the task."""
    for metric in ("loss", "eval_loss", "AddSub_accuracy", "eval_AddSub_accuracy"):
        config = FinetuneConfig(
            base_model="m", val_set_size=2, eval_datasets="addsub,gsm8k", metric_for_best_model=metric
        )
        assert config.metric_for_best_model == metric
    with pytest.raises(InputError) as raised:
        FinetuneConfig(
            base_model="m",
            val_set_size=2,
            eval_datasets="addsub,gsm8k",
            metric_for_best_model="eval_MultiArith_accuracy",
        )
    assert str(raised.value) == (
        "--metric_for_best_model eval_MultiArith_accuracy is not among the metrics each evaluation logs: use "
        "eval_loss, eval_AddSub_accuracy, eval_gsm8k_accuracy"
    )


def test_neftune_turns_automatic_packing_off_and_says_why(caplog):
    assert FinetuneConfig(base_model="m").packing is True
    assert FinetuneConfig(base_model="m", packing=False).packing is False
    with caplog.at_level(logging.INFO, logger="sibo.train.config"):
        config = FinetuneConfig(base_model="m", neftune_noise_alpha=5.0)
    assert config.packing is False
    assert caplog.messages == [
        "--neftune_noise_alpha: padded batches, not packed ones, as NEFTune's noise reads the row length"
    ]
    assert FinetuneConfig(base_model="m", neftune_noise_alpha=5.0, packing=False).packing is False


@pytest.mark.integration
def test_a_neftune_run_trains_on_padded_batches(root, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        sibo_main(
            [str(arg) for arg in finetune_args(root, out, "--neftune_noise_alpha", "5", "--max_steps", "1")]
        )
        == 0
    )
    run_config = json.loads((out / "run_config.json").read_text())
    assert (run_config["config"]["packing"], run_config["resolved"]["packing"]) == (False, False)
    assert (run_config["config"]["neftune_noise_alpha"], run_config["resolved"]["packed_attention"]) == (
        5.0,
        None,
    )
