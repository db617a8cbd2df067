"""How long `sibo --help` and `sibo <verb> --help` take, side by side with a bare `python -c pass`.

    python benchmarks/cli_startup.py              # 5 runs of each, medians
    python benchmarks/cli_startup.py --repeats 11

Each command runs in a fresh interpreter (what a user's shell does), with this checkout's sibo.
Target: every help under 1 s of wall time; the gap to `python -c pass` is what sibo's imports cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

VERBS = ("finetune", "evaluate", "generate", "export", "analyze", "demo", "sweep")
TARGET_S = 1.0


def wall_time(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command; the median is shown")
    args = parser.parse_args()
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    commands = {"python -c pass": [sys.executable, "-c", "pass"]}
    commands["sibo --help"] = [sys.executable, "-m", "sibo", "--help"]
    commands.update({f"sibo {verb} --help": [sys.executable, "-m", "sibo", verb, "--help"] for verb in VERBS})
    bare = None
    print(f"{'command':<24} {'median s':>9} {'over bare s':>12}  (target < {TARGET_S:g} s)")
    slowest = 0.0
    for name, argv in commands.items():
        median = statistics.median(wall_time(argv, env) for _ in range(args.repeats))
        bare = median if bare is None else bare
        if name != "python -c pass":
            slowest = max(slowest, median)
        print(f"{name:<24} {median:>9.3f} {median - bare:>12.3f}")
    print(
        f"slowest help: {slowest:.3f} s ({'meets' if slowest < TARGET_S else 'misses'} the {TARGET_S:g} s target)"
    )


if __name__ == "__main__":
    main()
