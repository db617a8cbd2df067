"""Resume is exact about steps, and an interrupted run's hint names a command that works: a checkpoint at
--max_steps is the end of training (resuming it trains nothing), SIGTERM stops like Ctrl-C (exit 143)."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
from fault_checks import finetune_args, refused, run, snapshot
from safetensors.torch import load_file

from sibo.train.guards import StopOnInterrupt


def killed_after_last_checkpoint(out) -> None:
    """As if the run was stopped after writing its last checkpoint, before the final adapter."""
    for name in ("train_metrics.json", "adapter_model.safetensors", "adapter_config.json", "run_config.json"):
        (out / name).unlink()


@pytest.mark.integration
def test_resuming_a_checkpoint_at_max_steps_saves_it_and_trains_nothing(root, tmp_path, capsys):
    # 8 records in batches of 4: 2 steps an epoch, so step 3 ends mid-epoch (where Trainer used to train on)
    out = tmp_path / "run"
    argv = finetune_args(root, out, "--max_steps", "3", "--save_step", "1")
    assert run(capsys, argv)[0] == 0
    killed_after_last_checkpoint(out)
    checkpoints = snapshot(*(out / f"checkpoint-{step}" for step in (1, 2, 3)))
    code, _, err = run(capsys, [*argv, "--resume_from_checkpoint", "latest"])
    assert code == 0, err
    assert not (out / "checkpoint-4").exists()
    assert snapshot(*(out / f"checkpoint-{step}" for step in (1, 2, 3))) == checkpoints
    assert json.loads((out / "train_metrics.json").read_text())["global_step"] == 3
    final, last = (load_file(d / "adapter_model.safetensors") for d in (out, out / "checkpoint-3"))
    assert final.keys() == last.keys() and all((final[k] == last[k]).all() for k in final)


@pytest.mark.integration
def test_a_checkpoint_past_max_steps_is_refused(root, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, finetune_args(root, out, "--max_steps", "2", "--save_step", "1"))[0] == 0
    killed_after_last_checkpoint(out)
    argv = [*finetune_args(root, out, "--max_steps", "1", "--save_step", "1"), "--resume_from_checkpoint",
            out / "checkpoint-2"]  # fmt: skip
    line = refused(capsys, argv, out)
    assert line == (
        f"sibo finetune: error: --resume_from_checkpoint {out / 'checkpoint-2'}: it has trained 2 steps, more "
        "than --max_steps 1: resume an earlier checkpoint, or raise --max_steps"
    )


@pytest.mark.integration
@pytest.mark.parametrize(("number", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_before_the_first_checkpoint_hints_a_command_that_works(
    root, tmp_path, capsys, monkeypatch, number, code
):
    def stop(self, args, state, control, **kwargs):
        if state.global_step == 0:
            os.kill(os.getpid(), number)

    monkeypatch.setattr(StopOnInterrupt, "on_step_begin", stop, raising=False)
    out = tmp_path / "run"
    argv = finetune_args(root, out, "--max_steps", "3", "--save_step", "2")
    line = refused(capsys, argv, code=code)
    assert line == (
        "sibo finetune: interrupted after step 1: no complete checkpoint was written (the same command again "
        "starts afresh)"
    )
    monkeypatch.undo()
    code, _, err = run(capsys, argv)
    assert code == 0, err
    assert json.loads((out / "train_metrics.json").read_text())["global_step"] == 3


@pytest.mark.integration
def test_sigterm_stops_after_the_step_naming_the_last_checkpoint(root, tmp_path, capsys, monkeypatch):
    def stop(self, args, state, control, **kwargs):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(StopOnInterrupt, "on_step_begin", stop, raising=False)
    out = tmp_path / "run"
    line = refused(capsys, finetune_args(root, out, "--max_steps", "6", "--save_step", "2"), code=143)
    assert line == (
        f"sibo finetune: interrupted after step 3: the last complete checkpoint is {out / 'checkpoint-2'} "
        "(the same command with --resume_from_checkpoint latest continues it)"
    )
    assert not (out / "train_metrics.json").exists()
    shutil.rmtree(out)


@pytest.mark.integration
def test_resuming_a_validated_run_at_max_steps_saves_the_best_checkpoint_as_an_uninterrupted_run_does(
    root, tmp_path, capsys
):
    # "best" is the highest validation loss: training lowers it, so the best checkpoint is not the last
    out = tmp_path / "run"
    argv = finetune_args(root, out, "--max_steps", "3", "--save_step", "1", "--val_set_size", "2", "--eval_step",
                         "1", "--learning_rate", "3e-2", "--greater_is_better", "True")  # fmt: skip
    assert run(capsys, argv)[0] == 0
    uninterrupted = load_file(out / "adapter_model.safetensors")
    best = json.loads((out / "train_metrics.json").read_text())["best_checkpoint"]
    best_loss = json.loads((out / "eval_metrics.json").read_text())["eval_loss"]
    assert best != str(out / "checkpoint-3")
    killed_after_last_checkpoint(out)

    code, _, err = run(capsys, [*argv, "--resume_from_checkpoint", "latest"])
    assert code == 0, err
    final = load_file(out / "adapter_model.safetensors")
    assert final.keys() == uninterrupted.keys() and all((final[k] == uninterrupted[k]).all() for k in final)
    assert json.loads((out / "train_metrics.json").read_text())["best_checkpoint"] == best
    assert json.loads((out / "eval_metrics.json").read_text())["eval_loss"] == best_loss


@pytest.mark.integration
def test_a_complete_checkpoint_copied_under_another_name_resumes(root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = finetune_args(root, out, "--max_steps", "2", "--save_step", "1")
    assert run(capsys, argv)[0] == 0
    best = shutil.copytree(out / "checkpoint-1", tmp_path / "best")
    killed_after_last_checkpoint(out)
    code, _, err = run(capsys, [*argv, "--resume_from_checkpoint", best])
    assert code == 0, err
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["global_step"] == 2
    assert json.loads((out / "run_config.json").read_text())["resolved"]["resumed_from"] == str(best)
