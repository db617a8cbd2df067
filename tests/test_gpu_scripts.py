"""benchmarks/gpu_check.sh, gpu_prepare.sh and gpu_env.sh run once per lent GPU machine, with no second try:
they parse, refuse what they cannot run in one line, and a dry run on CPU leaves its summary and figures in
$OUT (three files: a device call brings back eight at most) and never touches the committed figures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("gpu_check.sh", "gpu_prepare.sh", "gpu_env.sh")
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.json"


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_gpu_scripts_parse(script):
    checked = subprocess.run(
        ["bash", "-n", str(ROOT / "benchmarks" / script)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr


def check(tmp_path: Path, root: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )


def test_an_unknown_step_is_refused_in_one_line_before_anything_runs(tmp_path):
    result = check(tmp_path, DRY="1", STEPS="overhead,no_such_step")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "no_such_step" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_study_pack_is_refused_in_one_line(tmp_path):
    """.gpu/gguf.part is the study's pack (gpu_env.sh would join it with an earlier call's first part)."""
    (tmp_path / "repo" / "benchmarks").mkdir(parents=True)
    shutil.copy(ROOT / "benchmarks" / "gpu_check.sh", tmp_path / "repo" / "benchmarks")
    (tmp_path / "repo" / ".gpu").mkdir()
    (tmp_path / "repo" / ".gpu" / "gguf.part").write_bytes(b"\0")
    result = check(tmp_path, root=tmp_path / "repo")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "gpu_prepare.sh" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_a_dry_run_writes_three_files_to_out_and_leaves_the_committed_figures_alone(tmp_path):
    if (ROOT / ".gpu" / "gguf.part").exists():
        pytest.skip(".gpu/ holds a study pack here: gpu_check.sh refuses it")
    before = RESULTS.read_bytes() if RESULTS.exists() else None
    # one benchmark step (no data needed; the whole dry run takes minutes on a loaded 2-core machine)
    result = check(tmp_path, DRY="1", STEPS="generate_speed")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "logs.tgz", "summary.txt"]
    figures = json.loads((out / "gpu_check.json").read_text())
    assert figures["dry_run"] is True
    assert {"torch", "transformers", "peft", "accelerate"} <= set(figures["versions"])
    assert all(figures["versions"][package] for package in ("transformers", "peft", "accelerate"))
    assert figures["steps"]["generate_speed"]["exit"] == 0
    assert figures["steps"]["overhead"] == "not run"
    assert figures["sibo_decode_ratio"] is not None and figures["sibo_decode_ratio_unmerged"] is not None
    assert {"finetune_packing_wins_135m", "eval_ratio_0p5b", "gsm8k_full_greedy_seconds_135m"} <= set(figures)
    with tarfile.open(out / "logs.tgz") as logs:
        assert sorted(logs.getnames()) == ["generate_speed.json", "generate_speed.log"]
    # the summary comes last in the output (a device call returns its tail), the figures in it
    tail = result.stdout[result.stdout.rindex("===== summary") :]
    assert "generate_speed: exit 0" in tail and '"sibo_decode_ratio"' in tail
    assert (RESULTS.read_bytes() if RESULTS.exists() else None) == before
