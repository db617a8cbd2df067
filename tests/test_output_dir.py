"""output_dir.py: folders owned by one run, the folder lock (on a platform without fcntl too)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fault_checks import evaluate_args, refused

import sibo
from sibo.errors import InputError
from sibo.output_dir import LOCK_FILE, RUN_MARKER, claim_output_dir, hold_output_dir, is_named

SRC = Path(sibo.__file__).parent

# Blocks fcntl as a Python without it would: `import fcntl` raises ImportError. Then imports sibo and every
# sibo module that imports output_dir.py, and takes, contends and releases a folder lock.
WITHOUT_FCNTL = r"""
import importlib, os, sys, warnings
sys.modules["fcntl"] = None
warnings.simplefilter("ignore")  # filelock: "only soft file lock is available"
import sibo, sibo.cli
for name in sys.argv[2:]:
    importlib.import_module(name)
import filelock
from sibo.errors import InputError
from sibo.output_dir import LOCK_FILE, claim_output_dir, hold_output_dir
assert not filelock.has_fcntl
out = os.path.join(sys.argv[1], "out")
with hold_output_dir(out):
    assert os.listdir(out) == [LOCK_FILE]
    for attempt in (lambda: hold_output_dir(out).__enter__(),
                    lambda: claim_output_dir(out, "evaluate", {}, dry_run=True)):
        try:
            attempt()
            raise SystemExit("a second holder got in")
        except InputError as error:
            assert f"in use by another sibo run (pid {os.getpid()})" in str(error), error
assert not os.path.exists(out), os.listdir(out)
with hold_output_dir(out):
    pass
print("locked and released without fcntl")
"""


def modules_importing_output_dir() -> list[str]:
    """Every sibo module whose source imports sibo.output_dir."""
    names = []
    for path in sorted(SRC.rglob("*.py")):
        if "from sibo.output_dir import" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(SRC.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_sibo_imports_and_locks_a_folder_without_fcntl(tmp_path):
    modules = modules_importing_output_dir()
    assert "sibo.train.guards" in modules and len(modules) >= 8  # the scan finds them
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_FCNTL, str(tmp_path), *modules],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "locked and released without fcntl"


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


@pytest.mark.parametrize("fresh", [True, False])
def test_a_folder_deleted_while_a_run_holds_it_is_let_go_quietly(tmp_path, fresh):
    """A user who deletes the output folder mid-run (after Ctrl-C in another terminal, say) gets no
    traceback from the cleanup: there is nothing left to record or remove."""
    folder = tmp_path / "out"
    if not fresh:
        folder.mkdir()
    with hold_output_dir(folder):
        (folder / "adapter_model.safetensors").write_bytes(b"x")
        shutil.rmtree(folder)
    assert not folder.exists()


@pytest.mark.parametrize(
    ("name", "named"),
    [("summary.json", False), ("eval/base/summary.json", True), ("eval/base/.summary.json.k3x9q2ab.partial", True),
     ("eval/again/summary.json", False), ("eval/base", False), ("eval/base/sub/summary.json", False),
     ("adapters/lora/checkpoint-4/optimizer.pt", True), ("adapters/lora/notes.txt", False)],
)  # fmt: skip
def test_a_name_with_folders_matches_part_by_part(name, named):
    patterns = ["eval/base/summary.json", "adapters/*/checkpoint-*"]
    assert is_named(name, patterns) is named
