"""train/resume.py: damaged training state is skipped by --resume_from_checkpoint latest and refused
by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sibo.errors import InputError
from sibo.testing import write_training_state
from sibo.train.resume import resolve_resume


def checkpoint(root: Path, out: Path, step: int) -> Path:
    directory = out / f"checkpoint-{step}"
    shutil.copytree(root / "adapter4", directory)
    write_training_state(directory, step)
    return directory


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (
            lambda d: torch.save(
                {"state": {0: {"exp_avg": torch.tensor([float("nan")])}}}, d / "optimizer.pt"
            ),
            "damaged training state: {d}/optimizer.pt: tensor state.0.exp_avg holds 1 non-finite value(s) (nan)",
        ),
        (
            lambda d: (d / "scheduler.pt").write_bytes(b"\0" * 64),
            "damaged training state: {d}/scheduler.pt: damaged",
        ),
        (
            lambda d: (d / "rng_state.pth").write_bytes(b"x"),
            "damaged training state: {d}/rng_state.pth: damaged",
        ),
        (
            lambda d: (d / "trainer_state.json").write_text(json.dumps({"global_step": 4})),
            "damaged {d}/trainer_state.json: missing best_global_step",
        ),
    ],
    ids=["optimizer-nan", "scheduler", "rng", "trainer-state-keys"],
)
def test_damaged_training_state_is_skipped_by_latest_and_refused_by_name(
    root, tmp_path, caplog, damage, problem
):
    previous = checkpoint(root, tmp_path, 2)
    damaged = checkpoint(root, tmp_path, 4)
    damage(damaged)
    problem = problem.format(d=damaged)
    assert resolve_resume("latest", tmp_path) == (str(previous), None)
    assert f"skipping {damaged}: {problem}" in caplog.text
    with pytest.raises(InputError) as error:
        resolve_resume(str(damaged), tmp_path)
    assert str(error.value).startswith(f"--resume_from_checkpoint {damaged}: {problem}")
    assert str(error.value).endswith(
        f"resume from the previous complete one with --resume_from_checkpoint {previous}"
    )


def test_a_checkpoint_named_otherwise_is_judged_by_its_trainer_state_and_files(root, tmp_path):
    original = checkpoint(root, tmp_path / "out", 4)
    best = shutil.copytree(original, tmp_path / "best")
    assert resolve_resume(str(best), tmp_path / "out") == (str(best), None)
    (best / "rng_state.pth").unlink()
    with pytest.raises(InputError) as error:
        resolve_resume(str(best), tmp_path / "out")
    assert str(error.value) == (
        f"--resume_from_checkpoint {best}: only partly written (adapter, optimizer, scheduler or RNG state "
        f"missing); no earlier complete checkpoint is in {tmp_path}"
    )
