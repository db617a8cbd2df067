"""Early stopping: the run stops once the metric has not improved for `patience` evaluations, says so, and
the best checkpoint — not the last — becomes the final adapter."""

from __future__ import annotations

import json
import logging
import shutil

from safetensors.torch import load_file

from sibo.cli import main as sibo_main


def test_early_stopping_stops_and_keeps_the_best_checkpoint(tiny_training_run, tmp_path, caplog, capsys):
    tiny_training_run(tmp_path, 24, 1, seed=4)
    output_dir = tmp_path / "run"
    # "best" is the highest validation loss: training lowers it, so the best comes early and the run stops
    argv = ["finetune", "--base_model", str(tmp_path / "base"), "--data_path", str(tmp_path / "train.json"),
            "--output_dir", str(output_dir), "--batch_size", "2", "--micro_batch_size", "2", "--max_steps", "30",
            "--warmup_steps", "0", "--learning_rate", "3e-2", "--val_set_size", "4", "--eval_step", "1",
            "--save_step", "1", "--save_total_limit", "2", "--lora_r", "4", "--target_modules", "q_proj,up_proj",
            "--early_stopping_patience", "2", "--greater_is_better", "True"]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="sibo"):
        assert sibo_main(argv) == 0
    metrics = json.loads((output_dir / "train_metrics.json").read_text())
    evaluations = {e["step"]: e["eval_loss"] for e in metrics["log_history"] if "eval_loss" in e}
    best_step = max(evaluations, key=evaluations.get)
    stop_step = max(evaluations)

    assert metrics["global_step"] == stop_step == best_step + 2 < 30
    assert metrics["stopped_early"]["step"] == stop_step
    assert metrics["best_checkpoint"].endswith(f"checkpoint-{best_step}")
    assert metrics["best_metric"] == evaluations[best_step]
    final = load_file(output_dir / "adapter_model.safetensors")
    best = load_file(output_dir / f"checkpoint-{best_step}" / "adapter_model.safetensors")
    last = load_file(output_dir / f"checkpoint-{stop_step}" / "adapter_model.safetensors")
    assert all((final[name] == best[name]).all() for name in best)
    assert any((final[name] != last[name]).any() for name in last)
    assert caplog.text.count(f"stopped early at step {stop_step}: eval_loss has not improved") == 1
    assert f"stopped early at step {stop_step}" in capsys.readouterr().out
    assert f"checkpoint-{best_step}" in caplog.text


def early_stopping_argv(tmp_path, output_dir, *extra) -> list[str]:
    """Validation and a checkpoint at every step, every checkpoint kept; "best" is the highest validation loss,
    which training lowers, so the best comes early."""
    return ["finetune", "--base_model", str(tmp_path / "base"), "--data_path", str(tmp_path / "train.json"),
            "--output_dir", str(output_dir), "--batch_size", "2", "--micro_batch_size", "2", "--max_steps", "30",
            "--warmup_steps", "0", "--learning_rate", "3e-2", "--val_set_size", "4", "--eval_step", "1",
            "--save_step", "1", "--save_total_limit", "40", "--lora_r", "4", "--target_modules", "q_proj,up_proj",
            "--early_stopping_patience", "2", "--greater_is_better", "True", *extra]  # fmt: skip


def test_a_resumed_run_counts_on_from_its_checkpoints_evaluations_without_improvement(
    tiny_training_run, tmp_path
):
    tiny_training_run(tmp_path, 24, 1, seed=4)
    output_dir = tmp_path / "run"
    assert sibo_main(early_stopping_argv(tmp_path, output_dir)) == 0
    stop = json.loads((output_dir / "train_metrics.json").read_text())["stopped_early"]["step"]

    def killed_before_the_stop() -> (
        None
    ):  # its checkpoint-(stop - 1) holds one evaluation without improvement
        shutil.rmtree(output_dir / f"checkpoint-{stop}")
        (output_dir / "train_metrics.json").unlink()

    for patience, stopped_at in ((2, stop), (3, stop + 1)):  # the resuming command's patience counts
        killed_before_the_stop()
        argv = early_stopping_argv(tmp_path, output_dir, "--early_stopping_patience", str(patience))
        assert sibo_main([*argv, "--resume_from_checkpoint", str(output_dir / f"checkpoint-{stop - 1}")]) == 0
        metrics = json.loads((output_dir / "train_metrics.json").read_text())
        assert metrics["global_step"] == metrics["stopped_early"]["step"] == stopped_at


def test_a_run_that_reaches_max_steps_is_not_said_to_stop_early(tiny_training_run, tmp_path, caplog, capsys):
    tiny_training_run(tmp_path, 24, 1, seed=4)
    output_dir = tmp_path / "run"
    # the last step sets should_training_stop before its evaluation; patience 1: the final evaluation of the
    # best adapter (the only one) does not improve on itself
    argv = early_stopping_argv(tmp_path, output_dir, "--max_steps", "1", "--early_stopping_patience", "1")
    with caplog.at_level(logging.INFO, logger="sibo"):
        assert sibo_main(argv) == 0
    assert json.loads((output_dir / "train_metrics.json").read_text())["stopped_early"] is None
    assert "stopped early" not in caplog.text
    assert "stopped early" not in capsys.readouterr().out


def test_only_saved_steps_compete_for_the_best_adapter(tiny_training_run, tmp_path):
    """Validated every step, saved every second: the best adapter and the best metric are one saved step's."""
    tiny_training_run(tmp_path, 24, 1, seed=4)
    output_dir = tmp_path / "run"
    # "best" is the highest validation loss: training lowers it, so the best of all steps is step 1, unsaved
    argv = ["finetune", "--base_model", str(tmp_path / "base"), "--data_path", str(tmp_path / "train.json"),
            "--output_dir", str(output_dir), "--batch_size", "2", "--micro_batch_size", "2", "--max_steps", "6",
            "--warmup_steps", "0", "--learning_rate", "3e-2", "--val_set_size", "4", "--eval_step", "1",
            "--save_step", "2", "--lora_r", "4", "--target_modules", "q_proj,up_proj", "--greater_is_better", "True"]  # fmt: skip
    assert sibo_main(argv) == 0
    metrics = json.loads((output_dir / "train_metrics.json").read_text())
    evaluations = {e["step"]: e["eval_loss"] for e in metrics["log_history"] if "eval_loss" in e}
    assert max(evaluations, key=evaluations.get) == 1  # the unsaved best
    best_step = max((2, 4, 6), key=evaluations.get)
    assert metrics["best_checkpoint"].endswith(f"checkpoint-{best_step}")
    assert metrics["best_metric"] == evaluations[best_step]
    final = load_file(output_dir / "adapter_model.safetensors")
    assert final.keys() and all(
        (final[name] == tensor).all()
        for name, tensor in load_file(
            output_dir / f"checkpoint-{best_step}" / "adapter_model.safetensors"
        ).items()
    )
