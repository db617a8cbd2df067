"""train/guards.py: a finetune run owns its folder, stops at the first non-finite number and at Ctrl-C
after the current step, naming the last complete checkpoint."""

from __future__ import annotations

import json
import os
import signal

import pytest
from fault_checks import finetune_args, refused, run, snapshot

from sibo.cli import main as sibo_main
from sibo.output_dir import claim_output_dir
from sibo.train.guards import StopOnInterrupt
from sibo.train.resume import resolve_resume


@pytest.mark.integration
def test_the_base_model_folder_is_never_an_output_dir(root, capsys):
    line = refused(capsys, finetune_args(root, root / "base4", "--max_steps", "1"), root / "base4")
    assert line == (
        f"sibo finetune: error: --output_dir {root / 'base4'} already holds a model (config.json, "
        "model.safetensors), not written by a sibo run: choose an empty or new --output_dir"
    )


@pytest.mark.integration
def test_a_finished_run_is_kept_rerun_as_a_no_op_and_handed_over_only_with_overwrite(root, tmp_path, capsys):
    out = tmp_path / "run"
    assert sibo_main([str(a) for a in finetune_args(root, out, "--max_steps", "2", "--save_step", "1")]) == 0
    capsys.readouterr()

    line = refused(
        capsys,
        finetune_args(root, out, "--max_steps", "2", "--save_step", "1", "--learning_rate", "1e-3"),
        out,
    )
    assert line == (
        f"sibo finetune: error: --output_dir {out} holds another finetune run (learning_rate 0.0003 there, "
        "0.001 now): pass --overwrite to replace it, or choose another --output_dir"
    )
    # The same run again, or resumed from its latest checkpoint: finished, nothing trained, nothing written.
    for extra in ([], ["--resume_from_checkpoint", "latest"]):
        before = snapshot(out)
        assert (
            sibo_main(
                [str(a) for a in finetune_args(root, out, "--max_steps", "2", "--save_step", "1", *extra)]
            )
            == 0
        )
        assert capsys.readouterr().out.startswith(f"{out} already holds this run, finished after 2 steps")
        assert snapshot(out) == before

    assert sibo_main([str(a) for a in finetune_args(root, out, "--max_steps", "1", "--overwrite")]) == 0
    assert not (out / "checkpoint-2").exists()
    assert json.loads((out / "train_metrics.json").read_text())["global_step"] == 1


@pytest.mark.integration
def test_a_folder_finished_before_a_setting_existed_is_the_same_run_at_that_settings_default(
    root, tmp_path, capsys
):
    out = tmp_path / "run"
    assert sibo_main([str(a) for a in finetune_args(root, out, "--max_steps", "1")]) == 0
    marker = json.loads((out / "sibo_run.json").read_text())
    for key in ("weight_decay", "lr_scheduler_type", "early_stopping_patience"):  # added by issue 33
        del marker["settings"][key]
    (out / "sibo_run.json").write_text(json.dumps(marker))
    capsys.readouterr()

    line = refused(capsys, finetune_args(root, out, "--max_steps", "1", "--weight_decay", "0.1"), out)
    assert "holds another finetune run (weight_decay 0.0 there, 0.1 now)" in line
    assert sibo_main([str(a) for a in finetune_args(root, out, "--max_steps", "1")]) == 0
    assert capsys.readouterr().out.startswith(f"{out} already holds this run, finished after 1 steps")


@pytest.mark.integration
def test_resume_refuses_a_changed_adapter_shape_and_warns_of_a_changed_lambda(root, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    assert sibo_main([str(a) for a in finetune_args(root, out, "--max_steps", "1", "--save_step", "1")]) == 0
    (out / "train_metrics.json").unlink()  # as if it had been killed after its checkpoint
    capsys.readouterr()
    line = refused(capsys, [*finetune_args(root, out, "--max_steps", "2", "--lora_r", "8"),
                            "--resume_from_checkpoint", "latest"], out)  # fmt: skip
    assert "holds another finetune run (lora_r 4 there, 8 now)" in line
    argv = [
        *finetune_args(root, out, "--max_steps", "2", "--embedding_lambda", "0.3"),
        "--resume_from_checkpoint",
        "latest",
    ]
    assert sibo_main([str(a) for a in argv]) == 0
    assert f"resuming {out} with embedding_lambda 0.3: the run started with 0.1" in caplog.text


@pytest.mark.integration
def test_training_stops_at_the_first_non_finite_gradient_keeping_the_last_good_checkpoint(
    root, tmp_path, capsys, monkeypatch
):
    def poison(self, args, state, control, model=None, **kwargs):
        if state.global_step == 2:  # step 3's gradients
            next(p for p in model.parameters() if p.requires_grad).grad.fill_(float("nan"))

    monkeypatch.setattr(StopOnInterrupt, "on_pre_optimizer_step", poison)
    out = tmp_path / "run"
    line = refused(
        capsys, finetune_args(root, out, "--max_steps", "6", "--save_step", "2", "--logging_steps", "5")
    )
    # found at step 4, the next checkpoint step (the check stays on the device until then), named as step 3
    assert line == (
        "sibo finetune: error: step 3: a weight or gradient stopped being finite ("
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight is not): training stopped (the "
        "loss diverged, or the learning rate or resumed optimizer state is bad) and nothing since was saved; "
        f"the last complete checkpoint is {out / 'checkpoint-2'}"
    )
    assert not (out / "checkpoint-4").exists()
    assert not (out / "adapter_model.safetensors").exists() and not (out / "train_metrics.json").exists()
    assert resolve_resume("latest", out) == (str(out / "checkpoint-2"), None)


@pytest.mark.integration
def test_ctrl_c_stops_after_the_current_step_and_names_the_last_checkpoint(
    root, tmp_path, capsys, monkeypatch
):
    def press_ctrl_c(self, args, state, control, **kwargs):
        if state.global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(StopOnInterrupt, "on_step_begin", press_ctrl_c, raising=False)
    out = tmp_path / "run"
    line = refused(capsys, finetune_args(root, out, "--max_steps", "8", "--save_step", "2"), code=130)
    assert line == (
        f"sibo finetune: interrupted after step 4: the last complete checkpoint is {out / 'checkpoint-4'} "
        "(the same command with --resume_from_checkpoint latest continues it)"
    )
    assert not (out / "train_metrics.json").exists() and not (out / "checkpoint-6").exists()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("change", "words"),
    [
        (["--init_lora_weights", "pissa"], "init_lora_weights 'true' there, 'pissa' now"),
        (["--use_rslora", "True"], "use_rslora False there, True now"),
        (["--loraplus_lr_ratio", "16"], "loraplus_lr_ratio 0.0 there, 16.0 now"),
        (["--optim", "adafactor"], "optim None there, 'adafactor' now"),
        (["--modules_to_save", "lm_head"], "modules_to_save None there, ['lm_head'] now"),
        (["--lambda_lr", "0.01"], "lambda_lr None there, 0.01 now"),
    ],
    ids=["pissa", "rslora", "loraplus", "optim", "modules_to_save", "lambda_lr"],
)
def test_resume_refuses_a_changed_initialisation_scale_or_optimizer(root, tmp_path, capsys, change, words):
    out = tmp_path / "run"
    start = ["--learnable_lambda"] if "--lambda_lr" in change else []  # --lambda_lr needs it
    argv = finetune_args(root, out, "--max_steps", "1", "--save_step", "1", *start)
    assert sibo_main([str(a) for a in argv]) == 0
    (out / "train_metrics.json").unlink()  # as if it had been killed after its checkpoint
    capsys.readouterr()
    argv = [
        *finetune_args(root, out, "--max_steps", "2", *start, *change),
        "--resume_from_checkpoint",
        "latest",
    ]
    assert refused(capsys, argv, out) == (
        f"sibo finetune: error: --output_dir {out} holds another finetune run ({words}): pass --overwrite to "
        "replace it, or choose another --output_dir"
    )


@pytest.mark.integration
def test_a_finished_run_is_the_same_run_under_another_thread_count(root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = [str(a) for a in finetune_args(root, out, "--max_steps", "1")]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert sibo_main(argv) == 0
    capsys.readouterr()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    for threads_there in (None, 8):  # 8: as a folder finished before threads left a run's settings
        marker = json.loads((out / "sibo_run.json").read_text())
        if threads_there is not None:
            marker["settings"]["threads"] = threads_there
            (out / "sibo_run.json").write_text(json.dumps(marker))
        before = snapshot(out)
        assert sibo_main(argv) == 0
        assert capsys.readouterr().out.startswith(f"{out} already holds this run, finished after 1 steps")
        assert snapshot(out) == before
        # a run records no thread count, and a finished rerun leaves the marker as it found it
        assert json.loads((out / "sibo_run.json").read_text())["settings"].get("threads") == threads_there


@pytest.mark.integration
def test_a_finished_run_trains_on_with_the_command_its_message_names(root, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, finetune_args(root, out, "--max_steps", "2", "--save_step", "1"))[0] == 0
    assert run(capsys, finetune_args(root, out, "--max_steps", "2", "--save_step", "1"))[1] == (
        f"{out} already holds this run, finished after 2 steps: nothing to do (the same command with a higher "
        "--max_steps or --num_epochs and --resume_from_checkpoint latest trains on; --overwrite starts over)\n"
    )
    longer = finetune_args(root, out, "--max_steps", "3", "--save_step", "1")
    assert "holds another finetune run (max_steps 2 there, 3 now)" in refused(capsys, longer, out)
    code, _, err = run(capsys, [*longer, "--resume_from_checkpoint", "latest"])
    assert code == 0, err
    assert json.loads((out / "train_metrics.json").read_text())["global_step"] == 3


@pytest.mark.integration
def test_overwrite_never_deletes_one_of_several_data_sources(root, tmp_path, capsys):
    out = tmp_path / "run"
    claim_output_dir(out, "finetune", {"lora_r": 8})  # a run killed before it ended: it owns what came after
    more = out / "checkpoint-1" / "more.json"  # in a folder of finetune's names: the killed run's
    more.parent.mkdir()
    more.write_bytes((root / "records.json").read_bytes())
    argv = finetune_args(root, out, "--max_steps", "1", "--overwrite")
    argv[argv.index("--data_path") + 1] = f"{root / 'records.json'},{more}"
    line = refused(capsys, argv, out)
    assert line == (
        f"sibo finetune: error: --output_dir {out} holds a sibo finetune run whose {more} this finetune reads "
        f"(--data_path {more}): replacing that run would delete it; choose another --output_dir"
    )


@pytest.mark.integration
def test_overwrite_of_a_folder_from_before_run_markers_deletes_only_finetunes_files(root, tmp_path, capsys):
    out = tmp_path / "old_run"
    (out / "checkpoint-7").mkdir(parents=True)
    (out / "checkpoint-7" / "trainer_state.json").write_text('{"global_step": 7}')
    (out / "notes.txt").write_text("the user's own file")
    code, _, err = run(capsys, finetune_args(root, out, "--max_steps", "1", "--overwrite"))
    assert code == 0, err
    assert not (out / "checkpoint-7").exists()
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert json.loads((out / "train_metrics.json").read_text())["global_step"] == 1
