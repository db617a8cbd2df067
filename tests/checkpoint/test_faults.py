"""Fault injection, beyond damaged weights files (test_weights.py): output folders that are not the run's,
two runs on one folder, non-finite numbers, damaged training state, adapters that do not fit their base,
dishonest test sets, Ctrl-C, a full disk and inputs that used to end in a traceback.

Every CLI case asserts the exit code, exactly one stderr line, no traceback, and that every file that
was there before (the output folder, the base model, the adapter) is byte-for-byte what it was.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from sibo import get_sibo_model
from sibo.cli import main as sibo_main
from sibo.decode.settings import DecodingSettings
from sibo.errors import InputError
from sibo.eval.runner import EvalConfig, evaluate
from sibo.files import (
    LOCK_FILE,
    RUN_MARKER,
    claim_output_dir,
    hold_output_dir,
    parse_json,
    write_atomically,
)
from sibo.prompts import build_prompt
from sibo.study.synthetic import generate_problems
from sibo.testing import build_tiny_model, build_tokenizer, write_training_state
from sibo.train.guards import StopOnInterrupt
from sibo.train.resume import resolve_resume

LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"], init_lora_weights=False)


@pytest.fixture(autouse=True)
def no_progress_bars(monkeypatch):
    """Trainer's bar shares stderr with the one line these tests count."""
    monkeypatch.setattr("transformers.trainer_callback.tqdm", functools.partial(tqdm, disable=True))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A 4-block and a 6-block tiny llama, a SIBO LoRA for each, a NaN one, records and an AddSub set."""
    root = tmp_path_factory.mktemp("faults")
    tokenizer = build_tokenizer()
    for layers in (4, 6):
        base = build_tiny_model("llama", len(tokenizer), num_layers=layers)
        base.save_pretrained(root / f"base{layers}")
        tokenizer.save_pretrained(root / f"base{layers}")
        get_sibo_model(base, LORA, lam=0.2).save_pretrained(root / f"adapter{layers}")
    shutil.copytree(root / "adapter4", root / "nan_adapter")
    tensors = load_file(root / "nan_adapter" / "adapter_model.safetensors")
    first = sorted(tensors)[0]
    tensors[first][0, 0] = float("nan")
    save_file(tensors, root / "nan_adapter" / "adapter_model.safetensors")
    (root / "records.json").write_text(json.dumps(generate_problems(8, seed=1)))
    write_benchmark(root / "bench", [{"instruction": "Add 1 and 2.", "input": "", "answer": "3"}])
    return root


def write_benchmark(data_dir: Path, records: list | str) -> Path:
    (data_dir / "AddSub").mkdir(parents=True, exist_ok=True)
    text = records if isinstance(records, str) else json.dumps(records)
    (data_dir / "AddSub" / "test.json").write_text(text)
    return data_dir


def snapshot(*folders: Path) -> dict[str, bytes]:
    """Every file under `folders` (hidden ones too), by path, with its bytes."""
    files = {}
    for folder in folders:
        if folder.is_file():
            files[str(folder)] = folder.read_bytes()
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            files[str(path)] = path.read_bytes() if path.is_file() else b"<dir>"
    return files


def refused(capsys, argv: list, *intact: Path, code: int = 2) -> str:
    """Run `sibo argv`: exit `code`, one stderr line and no traceback, nothing in `intact` changed."""
    before = snapshot(*intact)
    assert sibo_main([str(arg) for arg in argv]) == code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert len(captured.err.splitlines()) == 1, captured.err
    assert snapshot(*intact) == before
    return captured.err.strip()


def finetune_args(root: Path, output_dir: Path, *extra) -> list:
    return ["finetune", "--base_model", root / "base4", "--data_path", root / "records.json",
            "--output_dir", output_dir, "--val_set_size", "0", "--batch_size", "4", "--micro_batch_size", "4",
            "--warmup_steps", "0", "--lora_r", "4", "--target_modules", "q_proj,up_proj", *extra]  # fmt: skip


def evaluate_args(root: Path, output_dir: Path, adapter: Path | None = None, data_dir: Path | None = None):
    return ["evaluate", "--base_model", root / "base4", *(["--weights_path", adapter] if adapter else []),
            "--dataset", "AddSub", "--data_dir", data_dir or root / "bench", "--output_dir", output_dir,
            "--num_beams", "1", "--max_new_tokens", "2"]  # fmt: skip


# ---------------------------------------------------------------- folders are owned


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
def test_an_output_dir_in_use_is_refused_naming_the_holder(root, tmp_path, capsys):
    out = tmp_path / "eval"
    with hold_output_dir(out):
        line = refused(capsys, evaluate_args(root, out), out, root / "base4")
    assert line == (
        f"sibo evaluate: error: --output_dir {out} is in use by another sibo run (pid {os.getpid()}): "
        "wait for it to finish or choose another --output_dir"
    )
    assert not out.exists()  # the holder wrote nothing: its lock and the folder it made went with it


def test_the_lock_is_held_across_processes_and_released_by_a_kill(tmp_path):
    # Another process holding the lock as hold_output_dir does (plain Python: importing sibo takes seconds).
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"lock = open({str(tmp_path / LOCK_FILE)!r}, 'a+')\nfcntl.flock(lock, fcntl.LOCK_EX)\n"
         "lock.write(str(os.getpid())); lock.flush(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(InputError, match=rf"in use by another sibo run \(pid {holder.pid}\)"):
            claim_output_dir(tmp_path, "evaluate", {}, dry_run=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with hold_output_dir(tmp_path):  # the kernel dropped the dead holder's lock
        pass


def test_overwrite_hands_over_only_a_sibo_run(tmp_path):
    out = tmp_path / "out"
    claim_output_dir(out, "evaluate", {"num_beams": 4})
    (out / "summary.json").write_text("{}")
    with pytest.raises(InputError, match=r"holds another evaluate run \(num_beams 4 there, 1 now\)"):
        claim_output_dir(out, "evaluate", {"num_beams": 1})
    with pytest.raises(
        InputError, match=r"holds another analyze run \(written by sibo analyze, not evaluate\)"
    ):
        claim_output_dir(tmp_path / "other", "analyze", {}) or claim_output_dir(
            tmp_path / "other", "evaluate", {}
        )
    assert claim_output_dir(out, "evaluate", {"num_beams": 1}, overwrite=True) is None
    assert sorted(p.name for p in out.iterdir()) == [RUN_MARKER]  # the old run's files are gone
    assert claim_output_dir(out, "evaluate", {"num_beams": 1}) == {"num_beams": 1}  # its own run: resume
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.json").write_text("[]")
    with pytest.raises(
        InputError, match=r"already holds a dataset \(train.json\), not written by a sibo run"
    ):
        claim_output_dir(tmp_path / "data", "evaluate", {}, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"--output_dir .*/file is a file, not a folder"):
        claim_output_dir(tmp_path / "file", "evaluate", {})


@pytest.mark.integration
def test_analyze_refuses_an_output_dir_that_is_a_file_before_measuring(root, tmp_path, capsys, monkeypatch):
    (tmp_path / "out").write_text("mine")
    monkeypatch.setattr("sibo.checkpoint.load.load_model", lambda *a, **k: pytest.fail("measured first"))
    line = refused(capsys, ["analyze", "--base_model", root / "base4", "--data", root / "records.json",
                            "--n", "2", "--output_dir", tmp_path / "out"], tmp_path)  # fmt: skip
    assert line == f"sibo analyze: error: --output_dir {tmp_path / 'out'} is a file, not a folder"


# ---------------------------------------------------------------- writes are atomic, reads forgiving


def test_write_atomically_leaves_the_old_file_or_the_new_one(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    write_atomically(path, "old\n")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(InputError, match=rf"^disk full: could not write {path} \(it is unchanged\)$"):
        write_atomically(path, "new\n")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 200_000 + "]" * 200_000, "f.json: JSON nested too deep to read"),
        ('{"a": ' + "7" * 5000 + "}", "f.json: unreadable JSON (Exceeds the limit (4300 digits)"),
        (b'{"a": "\xff"}', "f.json: not UTF-8 text (invalid start byte at byte 7)"),
        ("[1, 2", "f.json: malformed JSON at line 1, column 6: Expecting ',' delimiter"),
    ],
    ids=["deep", "long-integer", "not-utf8", "malformed"],
)
def test_json_faults_are_one_line(text, message):
    with pytest.raises(InputError) as error:
        parse_json(text, "f.json")
    assert str(error.value).startswith(message)
    assert parse_json("\ufeff[1]", "f.json") == [1]  # a BOM is not an error


def scripted(model, tokenizer, prompts, num_beams=4, max_new_tokens=256, **kwargs):
    return ["The answer is 3"] * len(prompts)


def test_a_torn_multibyte_tail_a_damaged_summary_and_an_empty_run_json_do_not_block_a_rerun(
    tmp_path, monkeypatch
):
    tokenizer = build_tokenizer()
    model = build_tiny_model("llama", len(tokenizer))
    data_dir = write_benchmark(tmp_path / "bench", [
        {"instruction": f"Add {a} and 2.", "input": "", "answer": str(a + 2)} for a in range(3)
    ])  # fmt: skip
    monkeypatch.setattr("sibo.decode.batch.generate_batch", scripted)
    out = tmp_path / "out"
    config = EvalConfig("AddSub", data_dir, out, decoding=DecodingSettings(batch_size=1, num_beams=1))
    evaluate(model, tokenizer, config)
    results = out / "AddSub.jsonl"
    lines = results.read_bytes().splitlines(keepends=True)
    # the last record torn inside a multi-byte character, summary.json and run.json damaged (the old
    # code wrote them in place: a full disk left them empty)
    results.write_bytes(b"".join(lines[:2]) + '{"index": 2, "output": "é'.encode()[:-1])
    (out / "summary.json").write_text('{"datasets": ')
    (out / RUN_MARKER).unlink()
    (out / "run.json").write_text("")
    assert evaluate(model, tokenizer, config)["AddSub"].n == 3
    assert json.loads((out / "summary.json").read_text())["datasets"]["AddSub"]["n"] == 3


# ---------------------------------------------------------------- numbers stay finite


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


@pytest.mark.integration
@pytest.mark.parametrize("verb", ["generate", "evaluate", "export", "analyze"])
def test_an_adapter_with_a_nan_is_refused_naming_the_tensor(root, tmp_path, capsys, verb):
    adapter = root / "nan_adapter"
    argv = {
        "generate": ["generate", "--base_model", root / "base4", "--weights_path", adapter, "--prompt", "hi"],
        "evaluate": evaluate_args(root, tmp_path / "out", adapter),
        "export": ["export", "--base_model", root / "base4", "--weights_path", adapter, "--output_dir", tmp_path / "out"],
        "analyze": ["analyze", "--base_model", root / "base4", "--weights_path", adapter, "--data",
                    root / "records.json", "--n", "2", "--output_dir", tmp_path / "out"],
    }[verb]  # fmt: skip
    line = refused(capsys, argv, adapter, tmp_path)
    assert line.startswith(f"sibo {verb}: error: {adapter / 'adapter_model.safetensors'}: tensor base_model.")
    assert "holds 1 non-finite value(s) (nan): damaged, or written by a run that diverged" in line


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


# ---------------------------------------------------------------- damaged training state


def checkpoint(root: Path, out: Path, step: int) -> Path:
    directory = out / f"checkpoint-{step}"
    shutil.copytree(root / "adapter4", directory)
    write_training_state(directory, step)
    return directory


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (
            lambda d: torch.save(
                {"state": {0: {"exp_avg": torch.tensor([float("nan")])}}}, d / "optimizer.pt"
            ),
            "damaged training state: {d}/optimizer.pt: tensor state.0.exp_avg holds 1 non-finite value(s) (nan)",
        ),
        (
            lambda d: (d / "scheduler.pt").write_bytes(b"\0" * 64),
            "damaged training state: {d}/scheduler.pt: damaged",
        ),
        (
            lambda d: (d / "rng_state.pth").write_bytes(b"x"),
            "damaged training state: {d}/rng_state.pth: damaged",
        ),
        (
            lambda d: (d / "trainer_state.json").write_text(json.dumps({"global_step": 4})),
            "damaged {d}/trainer_state.json: missing best_global_step",
        ),
    ],
    ids=["optimizer-nan", "scheduler", "rng", "trainer-state-keys"],
)
def test_damaged_training_state_is_skipped_by_latest_and_refused_by_name(
    root, tmp_path, caplog, damage, problem
):
    previous = checkpoint(root, tmp_path, 2)
    damaged = checkpoint(root, tmp_path, 4)
    damage(damaged)
    problem = problem.format(d=damaged)
    assert resolve_resume("latest", tmp_path) == (str(previous), None)
    assert f"skipping {damaged}: {problem}" in caplog.text
    with pytest.raises(InputError) as error:
        resolve_resume(str(damaged), tmp_path)
    assert str(error.value).startswith(f"--resume_from_checkpoint {damaged}: {problem}")
    assert str(error.value).endswith(
        f"resume from the previous complete one with --resume_from_checkpoint {previous}"
    )


# ---------------------------------------------------------------- adapters fit their base


@pytest.mark.integration
@pytest.mark.parametrize(("base", "adapter", "words"), [
    (4, 6, "its tensor base_model.model.model.layers.4.mlp.up_proj.lora_A.weight [4, 32] has no module in the base"),
    (6, 4, "the base's base_model.model.model.layers.4.self_attn.q_proj.lora_A.weight [4, 32] has no tensor in the adapter"),
])  # fmt: skip
@pytest.mark.parametrize("verb", ["export", "generate"])
def test_an_adapter_of_another_depth_is_refused_naming_the_key(
    root, tmp_path, capsys, base, adapter, words, verb
):
    argv = [verb, "--base_model", root / f"base{base}", "--weights_path", root / f"adapter{adapter}"]
    argv += ["--output_dir", tmp_path / "out"] if verb == "export" else ["--prompt", "hi"]
    line = refused(capsys, argv, root / f"adapter{adapter}", tmp_path)
    assert line == (
        f"sibo {verb}: error: the adapter at {root / f'adapter{adapter}'} does not fit the base model (llama, "
        f"{base} layers, hidden size 32): {words}"
    )


# ---------------------------------------------------------------- evaluate scores honestly


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "{path}: no examples: an empty test set has no accuracy"),
        (
            [{"instruction": "Add.", "answer": "NaN"}],
            "{path}: record 0: answer 'NaN' is not a valid AddSub label",
        ),
        (
            [{"instruction": "Add.", "answer": "-Infinity"}],
            "{path}: record 0: answer '-Infinity' is not a valid AddSub label",
        ),
        (
            '[{"instruction": "Add.", "answer": 1e999}]',
            "{path}: record 0: answer 'inf' is not a valid AddSub label",
        ),
        (
            '[{"instruction": "Add.", "answer": ' + "9" * 5000 + "}]",
            "{path}: unreadable JSON (Exceeds the limit",
        ),
        ("[" * 200_000 + "]" * 200_000, "{path}: JSON nested too deep to read"),
        (
            '[{"instruction": "Add \\ud800.", "answer": "1"}]',
            "{path}: record 0: not valid text (a lone surrogate '\\ud800' at character 4)",
        ),
    ],
    ids=["empty", "nan", "minus-infinity", "1e999", "long-integer", "deep", "surrogate"],
)
def test_evaluate_refuses_test_sets_it_cannot_score_honestly(root, tmp_path, capsys, records, message):
    data_dir = write_benchmark(tmp_path / "bench", records)
    line = refused(capsys, evaluate_args(root, tmp_path / "out", data_dir=data_dir), tmp_path)
    assert line.startswith(
        "sibo evaluate: error: " + message.format(path=data_dir / "AddSub" / "test.json")
    ), line
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- text the tokenizer cannot take


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[{"instruction": "a\\udc80", "output": "b"}]',
            "record 0: field 'instruction': not valid text (a lone surrogate '\\udc80' at character 1)",
        ),
        (
            '[{"instruction": "a", "output": ' + "1" * 5000 + "}]",
            "unreadable JSON (Exceeds the limit (4300 digits)",
        ),
        ("[" * 200_000 + "]" * 200_000, "JSON nested too deep to read"),
    ],
    ids=["surrogate", "long-integer", "deep"],
)
def test_finetune_data_faults_are_one_line(root, tmp_path, capsys, text, message):
    data = tmp_path / "data.json"
    data.write_text(text)
    argv = finetune_args(root, tmp_path / "out")
    argv[argv.index("--data_path") + 1] = data
    line = refused(capsys, argv, tmp_path)
    assert line.startswith(f"sibo finetune: error: {data}: {message}"), line


def test_a_folder_as_data_path_and_a_bom_are_named_for_what_they_are(root, tmp_path, capsys):
    argv = finetune_args(root, tmp_path / "out")
    argv[argv.index("--data_path") + 1] = tmp_path
    line = refused(capsys, argv, tmp_path)
    assert line == (
        f"sibo finetune: error: {tmp_path} is a folder, but not one written by datasets' save_to_disk "
        "(it has no state.json or dataset_dict.json)"
    )
    from sibo.data import read_records_file

    (tmp_path / "bom.json").write_text("\ufeff" + (root / "records.json").read_text())
    assert len(read_records_file(tmp_path / "bom.json")) == 8


@pytest.mark.integration
def test_a_lone_surrogate_prompt_is_one_line(root, capsys):
    line = refused(
        capsys, ["generate", "--base_model", root / "base4", "--prompt", "hi \udcff"], root / "base4"
    )
    assert (
        line
        == "sibo generate: error: the instruction: not valid text (a lone surrogate '\\udcff' at character 3)"
    )


# ---------------------------------------------------------------- Ctrl-C and a full disk


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


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs at tmp_path/disk (root only); unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("this machine does not let the test mount a tmpfs")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)


def fill(disk: Path, leave: int) -> None:
    """Fill `disk` until about `leave` bytes are free."""
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(bytes(max(free - leave, 0)))


@pytest.mark.integration
def test_a_full_disk_is_one_line_naming_the_file_and_keeps_what_was_there(root, small_disk, capsys):
    out = small_disk / "eval"
    fill(small_disk, 0)
    line = refused(capsys, evaluate_args(root, out), small_disk)
    assert line == f"sibo evaluate: error: disk full: could not write {out / RUN_MARKER} (it is unchanged)"

    (small_disk / "filler").unlink()
    run = small_disk / "run"
    fill(small_disk, 48 * 1024)  # the run's marker fits, its first checkpoint does not
    line = refused(capsys, finetune_args(root, run, "--max_steps", "2", "--save_step", "1"))
    assert line.startswith("sibo finetune: error: disk full while writing "), line
    assert line.endswith("no complete checkpoint was written"), line


# ---------------------------------------------------------------- the minor items


@pytest.mark.integration
def test_a_cutoff_len_beyond_the_context_is_refused_as_generate_and_evaluate_refuse_it(
    root, tmp_path, capsys
):
    limit = json.loads((root / "base4" / "config.json").read_text())["max_position_embeddings"]
    line = refused(capsys, finetune_args(root, tmp_path / "out", "--cutoff_len", str(limit + 1)), tmp_path)
    assert line == (
        f"sibo finetune: error: --cutoff_len {limit + 1} is longer than the context of {root / 'base4'} "
        f"({limit} tokens)"
    )


def test_a_response_cut_away_entirely_is_counted_as_prompt_only():
    from sibo.data import Record, tokenize_records

    tokenizer = build_tokenizer()
    records = [Record("Add 1 and 2 " * 20, "", "3"), Record("Add 1 and 2.", "", "3")]
    cutoff = len(tokenizer(build_prompt("Add 1 and 2."))["input_ids"]) + 2  # the short one fits whole
    tokenized = tokenize_records(records, tokenizer, cutoff_len=cutoff, train_on_inputs=True)
    assert (len(tokenized.examples), tokenized.prompt_only, tokenized.dropped) == (2, 1, 0)
    tokenized = tokenize_records(records, tokenizer, cutoff_len=cutoff, train_on_inputs=False)
    assert (len(tokenized.examples), tokenized.prompt_only, tokenized.dropped) == (1, 0, 1)


def test_the_gradio_page_shows_a_status_line_never_raw_exception_text(caplog):
    from sibo.decode.app import respond

    tokenizer = build_tokenizer()
    sliders = (0.0, 0.75, 40, 1, 8)
    assert list(respond(None, tokenizer, None, "", *sliders)) == [
        ("", "**Cannot answer:** the instruction is empty")
    ]
    assert list(respond(None, tokenizer, "hi", "", 0.0, 0.75, 40, 1, None)) == [
        ("", "**Cannot answer:** max new tokens must be a number, got None")
    ]
    assert list(respond(object(), tokenizer, "hi", "", *sliders)) == [
        ("", "**Cannot answer:** the request failed (the server log has the details)")
    ]
    assert "request failed" in caplog.text  # the details go to the log


@pytest.mark.integration
def test_finetune_refuses_to_start_from_an_adapter_of_another_depth(root, tmp_path, capsys):
    argv = [
        *finetune_args(root, tmp_path / "out", "--max_steps", "1"),
        "--resume_from_checkpoint",
        root / "adapter6",
    ]
    line = refused(capsys, argv, root / "adapter6", tmp_path)
    assert line == (
        f"sibo finetune: error: --resume_from_checkpoint {root / 'adapter6'}: does not fit this adapter (the adapter "
        f"at {root / 'adapter6'} does not fit the base model (llama, 4 layers, hidden size 32): its tensor "
        "base_model.model.model.layers.4.mlp.up_proj.lora_A.weight [4, 32] has no module in the base)"
    )
