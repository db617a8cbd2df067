"""Run a script where PEFT and transformers import but sibo cannot: how a program that does not know
SIBO sees a folder sibo wrote."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap

# -S: no site, so no .pth files, and sibo's editable install is not on the path; site-packages is added back
PRELUDE = f"""
import sys
sys.path.append({sysconfig.get_paths()["purelib"]!r})
try:
    import sibo
except ImportError:
    pass
else:
    raise SystemExit("sibo is importable")
"""


def run_without_sibo(body: str) -> list[str]:
    """The lines `body` prints in a fresh interpreter without sibo; fails the test if it exits non-zero."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-S", "-c", PRELUDE + textwrap.dedent(body)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()
