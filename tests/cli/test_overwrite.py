"""--overwrite deletes what the earlier run wrote and nothing else: never a file the user put beside it, never
a file the same command reads (refused, naming it); export replaces only an earlier export; sweep and demo
claim their folders like every other verb."""

from __future__ import annotations

import json

import pytest
from fault_checks import evaluate_args, finetune_args, refused, run, snapshot

import sibo.output_dir
from sibo.errors import InputError
from sibo.output_dir import RUN_MARKER, claim_output_dir, clear_output_dir, hold_output_dir, user_files
from sibo.study.demo import prepare_output_dir


def test_a_run_records_what_it_wrote_and_overwrite_deletes_only_that(tmp_path):
    out = tmp_path / "out"
    with hold_output_dir(out):
        claim_output_dir(out, "evaluate", {"num_beams": 4})
        (out / "AddSub.jsonl").write_text("{}\n")
        (out / "sub").mkdir()
        (out / "sub" / "x.json").write_text("{}")
    assert json.loads((out / RUN_MARKER).read_text())["wrote"] == ["AddSub.jsonl", "sub/x.json"]
    (out / "NOTES.txt").write_text("mine")
    (out / "sub" / "mine.txt").write_text("mine too")
    claim_output_dir(out, "evaluate", {"num_beams": 1}, overwrite=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "NOTES.txt", RUN_MARKER, "sub", "sub/mine.txt"
    ]  # fmt: skip


def test_a_killed_run_owns_every_file_but_those_it_found(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    claim_output_dir(out, "evaluate", {"num_beams": 4})  # no hold: as a run killed before it ended
    (out / "AddSub.jsonl").write_text("{}\n")
    assert clear_output_dir(out) == ["AddSub.jsonl"]
    assert sorted(p.name for p in out.iterdir()) == [RUN_MARKER]


def test_a_killed_run_owns_only_the_names_its_verb_writes_half_written_ones_included(tmp_path):
    out = tmp_path / "out"
    claim_output_dir(out, "evaluate", {"num_beams": 4}, writes=("*.jsonl", "summary.json"))  # no hold: killed
    (out / "AddSub.jsonl").write_text("{}\n")
    (out / ".summary.json.k3x9q2ab.partial").write_text("{")  # write_atomically's, cut by the kill
    (out / "NOTES.txt").write_text("the user's, added after the kill")
    claim_output_dir(out, "evaluate", {"num_beams": 1}, overwrite=True, writes=("*.jsonl", "summary.json"))
    assert sorted(p.name for p in out.iterdir()) == ["NOTES.txt", RUN_MARKER]


def test_a_marker_from_before_runs_listed_their_files_owns_only_the_verbs_names(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / RUN_MARKER).write_text(json.dumps({"verb": "evaluate", "settings": {"num_beams": 4}}))
    (out / "AddSub.jsonl").write_text("{}\n")
    (out / "NOTES.txt").write_text("mine")
    claim_output_dir(out, "evaluate", {"num_beams": 1}, overwrite=True, writes=("*.jsonl",))
    assert sorted(p.name for p in out.iterdir()) == ["NOTES.txt", RUN_MARKER]


def test_a_run_that_ends_records_every_file_it_wrote_named_or_not(tmp_path):
    out = tmp_path / "out"
    with hold_output_dir(out):
        claim_output_dir(out, "evaluate", {"num_beams": 4}, writes=("*.jsonl",))
        (out / "AddSub.jsonl").write_text("{}\n")
        (out / "emissions.csv").write_text("a tracker's, in output_dir")
    assert json.loads((out / RUN_MARKER).read_text())["wrote"] == ["AddSub.jsonl", "emissions.csv"]


@pytest.mark.integration
def test_finetune_and_evaluate_killed_at_their_end_own_all_they_wrote_and_no_later_file(
    root, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(sibo.output_dir, "record_written", lambda directory: None)  # as a kill: "kept" stays
    train, scored = tmp_path / "run", tmp_path / "eval"
    argv = finetune_args(root, train, "--max_steps", "2", "--save_step", "1", "--eval_step", "1")
    argv[argv.index("--val_set_size") + 1] = "2"
    assert run(capsys, argv)[0] == 0
    assert run(capsys, evaluate_args(root, scored, train))[0] == 0
    for out in (train, scored):
        assert "wrote" not in json.loads((out / RUN_MARKER).read_text())
        assert user_files(out) == []  # each file the run wrote is of the names its verb declares
        (out / "NOTES.txt").write_text("added after the kill")
    code, _, err = run(capsys, [*argv, "--overwrite"])
    assert code == 0, err
    assert (train / "NOTES.txt").read_text() == "added after the kill"
    code, _, err = run(capsys, [*evaluate_args(root, scored, train), "--overwrite"])
    assert code == 0, err
    assert (scored / "NOTES.txt").read_text() == "added after the kill"


@pytest.mark.integration
def test_finetune_overwrite_keeps_the_users_notes_and_its_own_data_file(root, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, finetune_args(root, out, "--max_steps", "2", "--save_step", "1"))[0] == 0
    (out / "NOTES.txt").write_text("my notes")
    (out / "mydata.json").write_bytes((root / "records.json").read_bytes())
    mine = snapshot(out / "NOTES.txt", out / "mydata.json")
    argv = finetune_args(root, out, "--max_steps", "1", "--learning_rate", "1e-3", "--overwrite")
    argv[argv.index("--data_path") + 1] = out / "mydata.json"
    code, _, err = run(capsys, argv)
    assert code == 0, err
    assert snapshot(out / "NOTES.txt", out / "mydata.json") == mine
    assert not (out / "checkpoint-2").exists()
    assert json.loads((out / "train_metrics.json").read_text())["global_step"] == 1
    config = json.loads((out / "run_config.json").read_text())["config"]
    assert config["data_path"] == str(out / "mydata.json")


@pytest.mark.integration
def test_evaluate_overwrite_of_the_adapter_it_evaluates_is_refused_naming_it(root, tmp_path, capsys):
    c9 = tmp_path / "c9"
    assert run(capsys, finetune_args(root, c9, "--max_steps", "1", "--save_step", "1"))[0] == 0
    for extra in ([], ["--overwrite"]):
        line = refused(capsys, evaluate_args(root, c9, c9, *extra), c9)
        assert line.startswith(f"sibo evaluate: error: --output_dir {c9} holds a sibo finetune run whose "), (
            line
        )
        assert line.endswith(
            f"this evaluate reads (--weights_path {c9}): replacing that run would delete it; "
            "choose another --output_dir"
        ), line
        assert "pass --overwrite" not in line


@pytest.mark.integration
def test_evaluate_overwrite_keeps_the_users_notes(root, tmp_path, capsys):
    out = tmp_path / "eval"
    assert run(capsys, evaluate_args(root, out))[0] == 0
    (out / "notes.md").write_text("what I saw")
    assert run(capsys, evaluate_args(root, out, None, "--num_beams", "2", "--overwrite"))[0] == 0
    assert (out / "notes.md").read_text() == "what I saw"
    assert json.loads((out / "run.json").read_text())["num_beams"] == 2


@pytest.mark.integration
def test_export_overwrite_replaces_only_an_earlier_export(root, tmp_path, capsys):
    adapter = tmp_path / "A"
    assert run(capsys, finetune_args(root, adapter, "--max_steps", "1"))[0] == 0
    line = refused(
        capsys, ["export", "--weights_path", adapter, "--output_dir", adapter, "--overwrite"], adapter
    )
    assert line == (
        f"sibo export: error: --output_dir {adapter} holds a sibo finetune run, not an earlier export: "
        "export replaces only its own output; choose another --output_dir"
    )
    out = tmp_path / "merged"
    export = [
        "export",
        "--weights_path",
        root / "adapter4",
        "--base_model",
        root / "base4",
        "--output_dir",
        out,
    ]
    assert run(capsys, export)[0] == 0
    (out / "NOTES.txt").write_text("mine")
    assert run(capsys, [*export, "--overwrite"])[0] == 0
    assert (out / "NOTES.txt").read_text() == "mine"
    assert "NOTES.txt" not in json.loads((out / RUN_MARKER).read_text())["wrote"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A", "merged"]  # nothing set aside


def test_sweep_refuses_a_folder_of_the_users_files(root, tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.csv").write_text("mine\n")
    (out / "data.json").write_text("[]")
    argv = ["sweep", *finetune_args(root, out)[1:], "--lambdas", "0.1", "--seeds", "1",
            "--data_dir", root / "bench", "--datasets", "AddSub"]  # fmt: skip
    line = refused(capsys, argv, out)
    assert line == (
        f"sibo sweep: error: --output_dir {out} already holds a dataset (data.json, sweep.csv), not written "
        "by a sibo run: choose an empty or new --output_dir"
    )
    argv[argv.index("--output_dir") + 1] = root / "base4"
    line = refused(capsys, argv, root / "base4")
    assert "already holds a model (config.json, model.safetensors)" in line


def test_a_demo_rerun_keeps_what_the_user_added_and_says_what_it_replaces(tmp_path, caplog):
    out = tmp_path / "sibo_demo"
    with hold_output_dir(out):
        prepare_output_dir(out, tmp_path / "base")
        for name in ("data/train.json", "adapters/lora/adapter_config.json", "eval/lora/AddSub.jsonl"):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text("{}")
    (out / "eval" / "again").mkdir()
    (out / "eval" / "again" / "AddSub.jsonl").write_text("the user's own scoring")
    with hold_output_dir(out):
        prepare_output_dir(out, tmp_path / "base")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "eval", "eval/again", "eval/again/AddSub.jsonl", RUN_MARKER
    ]  # fmt: skip
    assert f"demo: replacing the earlier demo's 3 file(s) in {out} (adapters/, data/, eval/)" in caplog.text


def test_a_path_spelled_another_way_is_the_same_setting(tmp_path, monkeypatch):
    (tmp_path / "data.json").write_text("[]")
    (tmp_path / "link.json").symlink_to(tmp_path / "data.json")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    claim_output_dir(out, "finetune", {"data_path": str(tmp_path / "data.json"), "lora_r": 8})
    for spelling in ("data.json", "./data.json", str(tmp_path / "link.json")):
        assert claim_output_dir(out, "finetune", {"data_path": spelling, "lora_r": 8}) is not None
    with pytest.raises(InputError, match=r"holds another finetune run \(data_path .*'missing.json' now\)"):
        claim_output_dir(out, "finetune", {"data_path": "missing.json", "lora_r": 8})


@pytest.mark.integration
def test_evaluate_overwrite_scores_again_even_with_the_same_settings(root, tmp_path, capsys):
    out = tmp_path / "eval"
    assert run(capsys, evaluate_args(root, out))[0] == 0
    answers = out / "AddSub.jsonl"
    answers.write_text(answers.read_text().replace('"output": "', '"output": "STALE'))
    assert run(capsys, evaluate_args(root, out))[0] == 0  # the same run: resumed, its answers kept
    assert "STALE" in answers.read_text()
    code, _, err = run(
        capsys, evaluate_args(root, out, None, "--overwrite")
    )  # as after retraining the adapter
    assert code == 0, err
    assert "STALE" not in answers.read_text()


@pytest.mark.integration
def test_finetune_overwrite_starts_over_even_with_the_same_settings(root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = finetune_args(root, out, "--max_steps", "2", "--save_step", "1")
    assert run(capsys, argv)[0] == 0
    (out / "checkpoint-2" / "STALE").write_text("a file the earlier run wrote")
    marker = json.loads((out / RUN_MARKER).read_text())
    (out / RUN_MARKER).write_text(json.dumps({**marker, "wrote": [*marker["wrote"], "checkpoint-2/STALE"]}))
    code, out_text, err = run(capsys, [*argv, "--overwrite"])
    assert code == 0, err
    trained = [line for line in out_text.splitlines() if line.startswith("trained 2 steps, final train loss")]
    assert trained, out_text  # trained again, not "already holds this run"
    assert not (out / "checkpoint-2" / "STALE").exists()
    assert json.loads((out / "train_metrics.json").read_text())["global_step"] == 2
