"""A finetune piped to a file: its first line says what it loads, training progress is plain log lines (a
tenth of the steps each), and nothing on stderr is a carriage-return update."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from fault_checks import finetune_args, make_root

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_a_piped_finetune_logs_progress_lines_and_writes_no_carriage_return(tmp_path):
    root = make_root(tmp_path)
    out = tmp_path / "out"
    argv = finetune_args(root, out, "--max_steps", "4", "--val_set_size", "2", "--eval_step", "2",
                         "--save_step", "2", "--logging_steps", "1")  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "sibo", *map(str, argv)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\r" not in result.stderr
    lines = result.stderr.splitlines()
    assert f"sibo.progress: loading base {root / 'base4'} (" in lines[0]
    progress = [line.split("sibo.progress: ", 1)[1] for line in lines if "sibo.progress: training" in line]
    assert [line.split(" in ")[0] for line in progress] == [
        "training 1/4 (25%)", "training 2/4 (50%)", "training 3/4 (75%)", "training 4/4 (100%)"
    ]  # fmt: skip
    assert all(re.search(r" in \d\d:\d\d, [\d.e+]+ (step/s|s/step)$", line) for line in progress), progress
    assert "'loss'" in result.stdout  # the Trainer's loss logs, as on a terminal
