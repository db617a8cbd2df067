"""files.py: the folder lock on a platform without fcntl (Windows, some embedded Pythons)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sibo

SRC = Path(sibo.__file__).parent

# Blocks fcntl as a Python without it would: `import fcntl` raises ImportError. Then imports sibo and every
# sibo module that imports files.py, and takes, contends and releases a folder lock.
WITHOUT_FCNTL = r"""
import importlib, os, sys, warnings
sys.modules["fcntl"] = None
warnings.simplefilter("ignore")  # filelock: "only soft file lock is available"
import sibo, sibo.cli
for name in sys.argv[2:]:
    importlib.import_module(name)
import filelock
from sibo.errors import InputError
from sibo.files import LOCK_FILE, claim_output_dir, hold_output_dir
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


def modules_importing_files() -> list[str]:
    """Every sibo module whose source imports sibo.files."""
    names = []
    for path in sorted(SRC.rglob("*.py")):
        if "from sibo.files import" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(SRC.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_sibo_imports_and_locks_a_folder_without_fcntl(tmp_path):
    modules = modules_importing_files()
    assert "sibo.train.recipe" in modules and len(modules) > 10  # the scan finds them
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_FCNTL, str(tmp_path), *modules],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "locked and released without fcntl"
