"""Messages that named the wrong fault now say what is actually wrong: one stderr line, exit 2, no
traceback, earlier files byte for byte."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from fault_checks import evaluate_args, finetune_args, refused, run, snapshot

from sibo.cli import fault_line
from sibo.cli import main as sibo_main
from sibo.testing import add_chat_template, build_tiny_model, build_tokenizer


@pytest.fixture(scope="module")
def root(root):
    questions = [{"instruction": f"Add {n} and 1.", "input": "", "answer": str(n + 1)} for n in range(5)]
    (root / "bench" / "AddSub" / "test.json").write_text(json.dumps(questions))
    return root


def test_an_assistant_only_conversation_is_named_as_such(root, tmp_path, capsys):
    tokenizer = add_chat_template(build_tokenizer())
    build_tiny_model("llama", len(tokenizer), num_layers=2).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    capsys.readouterr()  # the save's own bar
    chats = tmp_path / "chats.jsonl"
    chats.write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "Add 1 and 2."}, {"role": "assistant", "content": "3"}]}
        )
        + "\n"
        + json.dumps({"messages": [{"role": "assistant", "content": "4"}]})
        + "\n"
    )
    argv = finetune_args(root, tmp_path / "out")
    argv[argv.index("--base_model") + 1] = tmp_path / "base"
    argv[argv.index("--data_path") + 1] = chats
    line = refused(capsys, argv, tmp_path)
    assert line == (
        f"sibo finetune: error: {chats}: record 1: the conversation opens with an assistant turn: it answers no "
        "user turn"
    )


def test_a_limit_after_a_full_evaluate_says_the_folder_holds_more_results(root, tmp_path, capsys):
    out = tmp_path / "eval"
    assert run(capsys, evaluate_args(root, out))[0] == 0
    before = snapshot(out)
    line = refused(capsys, [*evaluate_args(root, out), "--limit", "3"], out)
    assert line == (
        f"sibo evaluate: error: {out / 'AddSub.jsonl'} holds a result for example 3, which this run does not "
        "score (an earlier run here scored more: without --limit, with a larger one, or without --exclude_seen): "
        "rerun with that run's flags, or use another --output_dir"
    )
    assert snapshot(out) == before


def test_a_damaged_run_marker_is_named_not_taken_for_a_dataset(root, tmp_path, capsys):
    out = tmp_path / "eval"
    assert run(capsys, evaluate_args(root, out))[0] == 0
    marker = out / "sibo_run.json"
    marker.write_text(marker.read_text()[:40])
    for extra in ([], ["--overwrite"]):
        line = refused(capsys, [*evaluate_args(root, out), *extra], out)
        assert line == (
            f"sibo evaluate: error: --output_dir {out}: its sibo_run.json is damaged, so which files its run "
            "wrote is unknown: move what you need out of it and delete it, or choose another --output_dir"
        )


def test_a_full_disk_in_evaluate_names_the_results_file(root, tmp_path, capsys, monkeypatch):
    opened = Path.open

    class FullDisk:
        """A results file on a full disk: the write fails as the OS fails it, with no file name."""

        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

    def full_open(path, mode="r", *args, **kwargs):
        file = opened(path, mode, *args, **kwargs)
        return FullDisk(file) if path.suffix == ".jsonl" and "a" in mode else file

    monkeypatch.setattr(Path, "open", full_open)
    out = tmp_path / "eval"
    line = refused(capsys, evaluate_args(root, out), root)
    assert line == (
        f"sibo evaluate: error: disk full: could not write {out / 'AddSub.jsonl'} (the results written before "
        "it are kept: the same command goes on from them once there is space)"
    )


def test_permission_denied_is_not_called_a_write_whatever_the_access():
    # chmod 000 d.json, then reading it: the open says EACCES, not whether it read or wrote
    denied = PermissionError(errno.EACCES, "Permission denied", "d.json")
    assert fault_line(denied) == "cannot access d.json: Permission denied"
    assert fault_line(OSError(errno.EPERM, "Operation not permitted")) == (
        "cannot access a file: Operation not permitted"
    )
    read_only = OSError(errno.EROFS, "Read-only file system", "out/x.json")
    assert fault_line(read_only) == "cannot write out/x.json: Read-only file system"


def test_sibo_without_a_verb_prints_its_usage_to_stderr_and_exits_2(capsys):
    assert sibo_main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: sibo [-v] <verb> [flags]")
    assert sibo_main(["--help"]) == 0  # asked for: on stdout
    captured = capsys.readouterr()
    assert captured.out.startswith("usage: sibo [-v] <verb> [flags]") and captured.err == ""
