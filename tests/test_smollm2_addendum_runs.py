"""benchmarks/smollm2_addendum_runs.sh: the addendum's 39 runs in its order, what is left after a stop, and
no training by any code but 252c4f3."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "smollm2_addendum_runs.sh"
PAIR = "lora lora-sibo0.2"
OTHERS = "lora-sibo0.5 lora-sibo0.2-all lora-sibo-learnable adapterh adapterh-sibo0.2"


def drive(tmp_path: Path, *args: str, study: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RESULTS": str(tmp_path / "results"), "LOGS": str(tmp_path / "logs"),
           "STUDY": str(study or tmp_path / "study"), "PYTHON": "/bin/false"}  # fmt: skip
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def finish(tmp_path: Path, folder: str, run: str) -> None:
    (tmp_path / "results" / folder / "runs" / run).mkdir(parents=True)
    (tmp_path / "results" / folder / "runs" / run / "result.json").write_text("{}")


def test_the_plan_is_the_addendums_order_and_skips_only_finished_runs(tmp_path):
    finish(tmp_path, "addendum-lr3e-3", "lora_seed0")
    finish(tmp_path, "addendum-lr3e-3", "lora-sibo0.2_seed0")
    finish(tmp_path, "addendum-lr3e-3", "lora_seed3")  # its pair stopped midway: a folder, no result.json
    (tmp_path / "results" / "addendum-lr3e-3" / "runs" / "lora-sibo0.2_seed3" / "adapter").mkdir(parents=True)
    plan = drive(tmp_path, "--plan")
    assert plan.returncode == 0, plan.stderr
    primary = [f"to do: addendum-lr3e-3 {PAIR} seed {seed} (--lora_lr 0.003)" for seed in (4, 5, 6, 7, 1, 2)]
    grid = [f"to do: addendum-lr{rate} {PAIR} seed {seed} (--lora_lr {rate})" for rate in ("6e-3", "1e-2")
            for seed in (0, 1)]  # fmt: skip
    others = [
        f"to do: addendum-lr3e-3 {OTHERS} seed {seed} (--lora_lr 0.003 --adapterh_lr 0.001)"
        for seed in (0, 1, 2)
    ]
    assert plan.stdout.splitlines() == [
        "to do: addendum-lr3e-3 lora-sibo0.2 seed 3 (--lora_lr 0.003)", *primary, *grid, *others,
        "finished before this call: 3 of 39 runs",
    ]  # fmt: skip
    assert not (tmp_path / "logs").exists()  # a plan writes nothing


def test_runs_are_trained_only_by_the_addendums_code(tmp_path):
    study = tmp_path / "other"
    subprocess.run(["git", "init", "-q", str(study)], check=True)
    subprocess.run(["git", "-C", str(study), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "not 252c4f3"], check=True)  # fmt: skip
    partial = tmp_path / "results" / "addendum-lr3e-3" / "runs" / "lora_seed0" / "adapter"
    partial.mkdir(parents=True)
    refused = drive(tmp_path, study=study)
    assert refused.returncode == 2
    assert refused.stderr == f"{study} is not at 252c4f3, the code that trains every addendum run\n"
    assert partial.is_dir()  # nothing deleted
