"""Which checkpoint to resume from: never one that a kill left half-written.

Trainer writes a checkpoint's files in order — adapter, optimizer, scheduler, RNG state — and
trainer_state.json last, then deletes the checkpoints beyond save_total_limit. A kill -9 can
stop it anywhere in that sequence, so a checkpoint counts as complete only when its trainer
state parses, names its own step, and the files written before it are all still there.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from sibo.errors import InputError

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


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
    if is_complete_checkpoint(path):
        return str(path), None
    if (path / "trainer_state.json").exists():
        raise InputError(f"--resume_from_checkpoint {target}: the checkpoint was only partly written")
    if any((path / name).is_file() for name in ADAPTER_WEIGHTS):
        return None, str(path)  # a final adapter (as the seed allows): its weights, a fresh schedule
    raise InputError(
        f"--resume_from_checkpoint {target}: neither a training checkpoint nor an adapter directory"
    )


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """A checkpoint Trainer finished writing: trainer_state.json, written last, parses and names this
    step, and the adapter, optimizer, scheduler and RNG states are there (rotation deletes files)."""
    path = Path(path)
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        step = int(path.name.rsplit("-", 1)[1])
    except (OSError, ValueError, IndexError):
        return False
    if not isinstance(state, dict) or state.get("global_step") != step:
        return False
    # FSDP writes pytorch_model_fsdp_0/ + optimizer_0/ (sharded) or pytorch_model_fsdp.bin + optimizer.bin
    # (full state dict); DeepSpeed global_step*/.
    fsdp_weights = any(path.glob("pytorch_model_fsdp*"))
    has_adapter = fsdp_weights or any((path / name).is_file() for name in ADAPTER_WEIGHTS)
    has_optimizer = (path / "optimizer.pt").is_file() and (path / "scheduler.pt").is_file()
    sharded_optimizer = (
        any(path.glob("optimizer_*")) or (path / "optimizer.bin").is_file() or any(path.glob("global_step*"))
    )
    has_rng = any(path.glob("rng_state*.pth"))
    return has_adapter and has_rng and (has_optimizer or sharded_optimizer)


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The highest-step complete `checkpoint-N` in output_dir; partly written ones are skipped."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return None
    candidates = []
    for child in directory.glob("checkpoint-*"):
        suffix = child.name.rsplit("-", 1)[1]
        if child.is_dir() and suffix.isdigit():
            candidates.append((int(suffix), child))
    for _, child in sorted(candidates, reverse=True):
        if is_complete_checkpoint(child):
            return child
        logger.warning("skipping %s: only partly written", child)
    return None
