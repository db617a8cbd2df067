"""files.py: writes whole or not at all, JSON faults in one line, a full disk."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fault_checks import evaluate_args, finetune_args, refused, tmpfs

from sibo.errors import InputError
from sibo.files import parse_json, write_atomically
from sibo.output_dir import RUN_MARKER


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


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs at tmp_path/disk (root only); unmounted afterwards."""
    yield from tmpfs(tmp_path / "disk", "size=1m")


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
