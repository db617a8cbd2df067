"""Which checkpoint to resume from: never one that a kill left half-written.

Trainer writes a checkpoint's files in order — adapter, optimizer, scheduler, RNG state — and
trainer_state.json last, then deletes the checkpoints beyond save_total_limit. A kill -9 can
stop it anywhere in that sequence, so a checkpoint counts as complete only when its trainer
state parses, names a step (its own, in a folder named checkpoint-N; a copy named otherwise is judged
by its files alone) and holds every field Trainer writes, the files written before it
are all still there, its adapter weights pass `sibo.checkpoint.weights.check_weights_dir` (finite
values included: a disk can damage a finished one), and its optimizer, scheduler and RNG states load
safely (the optimizer's moments finite).

`--resume_from_checkpoint latest` skips incomplete or damaged checkpoints with a warning that
names each and why, and resumes from the newest complete one; a damaged checkpoint named
explicitly is refused, and the message offers the previous complete one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from sibo.checkpoint.weights import (
    ADAPTER_WEIGHTS,
    check_finite,
    check_weights_dir,
    check_weights_file,
    read_tensors,
)
from sibo.errors import InputError

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"  # Trainer writes checkpoint-N (transformers' PREFIX_CHECKPOINT_DIR)


def resolve_resume(target: str | None, output_dir: str | os.PathLike) -> tuple[str | None, str | None]:
    """(Trainer checkpoint to resume, adapter directory to start from): at most one is set."""
    if not target:
        return None, None
    if target == "latest":
        latest = find_latest_checkpoint(output_dir)
        if latest is None:
            raise InputError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}")
        return str(latest), None
    path = Path(target)
    if not path.is_dir():
        raise InputError(f"--resume_from_checkpoint {target}: no such directory")
    problem = checkpoint_problem(path)
    if problem is None:
        return str(path), None
    if (path / "trainer_state.json").exists() or path.name.startswith("checkpoint-"):
        previous = find_latest_checkpoint(path.parent, before=_step(path))
        offer = (
            f"resume from the previous complete one with --resume_from_checkpoint {previous}"
            if previous is not None
            else f"no earlier complete checkpoint is in {path.parent}"
        )
        raise InputError(f"--resume_from_checkpoint {target}: {problem}; {offer}")
    if any((path / name).is_file() for name in ADAPTER_WEIGHTS):
        check_weights_dir(path, ADAPTER_WEIGHTS)
        return None, str(path)  # a final adapter (as upstream allows): its weights, a fresh schedule
    raise InputError(
        f"--resume_from_checkpoint {target}: neither a training checkpoint nor an adapter directory"
    )


def finished_at(checkpoint: str | os.PathLike, max_steps: int, num_epochs: float) -> int | None:
    """The step of a complete `checkpoint` when it already ends this run's training (its step is
    --max_steps, or with --max_steps unset, the last step of the same --num_epochs): resuming it trains
    nothing. A checkpoint past --max_steps is refused: its weights have trained longer than asked."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    step = state["global_step"]
    if max_steps > 0 and step > max_steps:
        raise InputError(
            f"--resume_from_checkpoint {checkpoint}: it has trained {step} steps, more than --max_steps "
            f"{max_steps}: resume an earlier checkpoint, or raise --max_steps"
        )
    if max_steps > 0:
        return step if step == max_steps else None
    same_length = state.get("num_train_epochs") == num_epochs and step >= state.get("max_steps", step + 1)
    return step if same_length else None


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """A checkpoint Trainer finished writing, whose adapter weights are intact (see checkpoint_problem)."""
    return checkpoint_problem(path) is None


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why a checkpoint cannot be resumed, or None: trainer_state.json, written last, must parse and name
    a step (the folder's, when it is named checkpoint-N: a copy named otherwise counts too); the adapter,
    optimizer, scheduler and RNG states must be there (rotation deletes files); the adapter weights must
    be intact."""
    path = Path(path)
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        state = None
    step = state.get("global_step") if isinstance(state, dict) else None
    if not _is_step(step) or _step(path) not in (None, step):
        return "only partly written (no trainer state of this step)"
    # FSDP writes pytorch_model_fsdp_0/ + optimizer_0/ (sharded) or pytorch_model_fsdp.bin + optimizer.bin
    # (full state dict); DeepSpeed global_step*/.
    fsdp_weights = any(path.glob("pytorch_model_fsdp*"))
    has_adapter = fsdp_weights or any((path / name).is_file() for name in ADAPTER_WEIGHTS)
    has_optimizer = (path / "optimizer.pt").is_file() and (path / "scheduler.pt").is_file()
    sharded_optimizer = (
        any(path.glob("optimizer_*")) or (path / "optimizer.bin").is_file() or any(path.glob("global_step*"))
    )
    has_rng = any(path.glob("rng_state*.pth"))
    if not (has_adapter and has_rng and (has_optimizer or sharded_optimizer)):
        return "only partly written (adapter, optimizer, scheduler or RNG state missing)"
    try:
        check_weights_dir(path, ADAPTER_WEIGHTS)
    except InputError as error:
        return f"damaged adapter weights: {error}"
    return training_state_problem(path, state)


def training_state_problem(path: Path, state: dict) -> str | None:
    """Why the optimizer, scheduler, RNG or trainer state of a checkpoint cannot be resumed, or None:
    each torch file must load safely (and the optimizer's moments be finite), the trainer state must
    hold every field Trainer writes and nothing else."""
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_pt_utils import safe_globals

    expected = {field.name for field in dataclasses.fields(TrainerState)}
    missing, unknown = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unknown:
        what = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}"
        return f"damaged {path / 'trainer_state.json'}: {what}"
    for name in ("optimizer.pt", "scheduler.pt", *sorted(p.name for p in path.glob("rng_state*.pth"))):
        file = path / name
        if not file.is_file():
            continue
        try:
            # the RNG states hold numpy arrays: allowed as Trainer allows them when it loads them
            with safe_globals():
                check_weights_file(file)
            if name == "optimizer.pt":
                check_finite(read_tensors(file), str(file))
        except InputError as error:
            return f"damaged training state: {error}"
    return None


def _step(path: Path) -> int | None:
    """N of a folder named checkpoint-N, as Trainer names its checkpoints; None for any other name."""
    head, _, suffix = path.name.rpartition("-")
    return int(suffix) if head == CHECKPOINT_PREFIX and suffix.isdigit() else None


def _is_step(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def find_latest_checkpoint(output_dir: str | os.PathLike, before: int | None = None) -> Path | None:
    """The highest-step complete `checkpoint-N` in output_dir (with N < `before` when given); partly
    written or damaged ones are skipped with a warning that says which and why."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return None
    candidates = [(_step(child), child) for child in directory.glob("checkpoint-*") if child.is_dir()]
    for step, child in sorted((c for c in candidates if c[0] is not None), reverse=True):
        if before is not None and step >= before:
            continue
        problem = checkpoint_problem(child)
        if problem is None:
            return child
        logger.warning("skipping %s: %s", child, problem)
    return None
