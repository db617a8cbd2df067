"""What keeps a fine-tuning run from losing or silently spoiling work.

- `claim_run_dir`: output_dir must be empty, this run's own folder (same settings: resume; a
  finished one is not trained again), or handed over with --overwrite. Resuming with settings that
  change the adapter's shape or base is refused naming the setting; other changes (λ, data, …) are
  allowed with a warning that says so.
- `StopOnNonFinite`: after each optimizer step, the trainable weights (and, outside fp16 loss
  scaling, their gradients) must be finite; otherwise training stops naming the step, before the
  step's weights can reach a checkpoint. One device sync per optimizer step, not per micro-batch.
- `StopOnInterrupt`: Ctrl-C stops after the current step (no final adapter is saved) and says where
  the last complete checkpoint is (exit 130); a second Ctrl-C stops at once.
"""

from __future__ import annotations

import errno
import logging
import shutil
import signal
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import TrainerCallback

from sibo.errors import InputError, Interrupted
from sibo.files import RUN_CONFIG_FILE, TRAIN_METRICS_FILE, claim_output_dir, describe_contents, read_json
from sibo.train.config import FinetuneConfig
from sibo.train.resume import find_latest_checkpoint

logger = logging.getLogger(__name__)

VERB = "finetune"
# Not part of what a run is: where it goes, how it resumes, where it reports.
_NOT_SETTINGS = ("output_dir", "resume_from_checkpoint", "overwrite", "report_to", "wandb_project",
                 "wandb_run_name", "wandb_watch", "wandb_log_model")  # fmt: skip
# A resume that changes these would load weights into another model or adapter.
SHAPE_SETTINGS = ("base_model", "adapter_name", "lora_r", "lora_alpha", "target_modules", "bottleneck_size",
                  "non_linearity", "scaling", "use_parallel_adapter", "use_adapterp", "sibo_targets",
                  "learnable_lambda", "load_8bit", "load_4bit")  # fmt: skip


def run_settings(config: FinetuneConfig) -> dict:
    """The settings that make a run what it is (recorded in the output folder's RUN_MARKER)."""
    return {key: value for key, value in asdict(config).items() if key not in _NOT_SETTINGS}


def claim_run_dir(config: FinetuneConfig, dry_run: bool = False) -> dict | None:
    """The settings of the earlier run in output_dir that this one continues (None: a fresh run); refuses
    a folder that is not this run's (see sibo.files.claim_output_dir). `dry_run` writes nothing."""
    settings = run_settings(config)
    resuming = config.resume_from_checkpoint is not None
    may_differ = tuple(key for key in settings if key not in SHAPE_SETTINGS) if resuming else ()
    previous = claim_output_dir(
        config.output_dir, VERB, settings, config.overwrite, may_differ, dry_run, legacy=_legacy_run
    )
    if previous is not None and not dry_run:
        for key in settings:
            if previous.get(key, settings[key]) != settings[key]:
                logger.warning(
                    "resuming %s with %s %r: the run started with %r", config.output_dir, key, settings[key],
                    previous[key],
                )  # fmt: skip
    return previous


def finished_metrics(config: FinetuneConfig, previous: dict | None) -> dict | None:
    """The train metrics of this run when output_dir already holds it finished (nothing left to do)."""
    metrics = Path(config.output_dir) / TRAIN_METRICS_FILE
    if previous is None or config.overwrite or not metrics.is_file():
        return None
    finished = read_json(metrics)
    return finished if isinstance(finished, dict) else None


def _legacy_run(directory: Path) -> dict | None:
    """A finetune folder written before RUN_MARKER existed: checkpoints and/or a final adapter with its
    run config; its settings are the run config's (or, with checkpoints only, taken as this run's)."""
    if describe_contents(directory).startswith("a model") or not (
        (directory / RUN_CONFIG_FILE).is_file() or any(directory.glob("checkpoint-*"))
    ):
        return None
    try:
        stored = read_json(directory / RUN_CONFIG_FILE)["config"]
    except (InputError, KeyError, TypeError):
        return {"verb": VERB, "settings": None}
    return {"verb": VERB, "settings": {k: v for k, v in stored.items() if k not in _NOT_SETTINGS}}


def last_checkpoint_words(output_dir: str) -> str:
    latest = find_latest_checkpoint(output_dir)
    return f"the last complete checkpoint is {latest}" if latest else "no complete checkpoint was written"


def disk_full(error: BaseException, output_dir: str) -> bool:
    """An OSError ENOSPC, or a torch / safetensors write error (their words vary: "file write failed",
    "iostream error", "unexpected pos") on a disk with under 1 MiB left."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(error):
        return True
    try:
        return shutil.disk_usage(output_dir).free < 2**20
    except OSError:
        return False


class StopOnNonFinite(TrainerCallback):
    """Stop training, naming the step, when a trainable weight or gradient stops being finite."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        # fp16 loss scaling meets inf gradients by design: it skips that step, the weights stay finite.
        tensors = [p for _, p in trainable]
        if not args.fp16:
            tensors += [p.grad for _, p in trainable if p.grad is not None]
        if not tensors:
            return
        norms = torch._foreach_norm([t.detach() for t in tensors])
        if bool(torch.isfinite(torch.stack([n.float().cpu() for n in norms])).all()):
            return
        step = state.global_step + 1
        what = next(
            (f"the gradient of {name}" for name, p in trainable
             if not args.fp16 and p.grad is not None and not torch.isfinite(p.grad).all()),
            next((name for name, p in trainable if not torch.isfinite(p).all()), "a weight"),
        )  # fmt: skip
        raise InputError(
            f"step {step}: {what} is not finite (the loss diverged, or the learning rate or resumed optimizer "
            f"state is bad): training stopped and nothing of this step was saved; "
            f"{last_checkpoint_words(args.output_dir)}"
        )


class StopOnInterrupt(TrainerCallback):
    """Ctrl-C: finish the current step (and its checkpoint, if one is due), then report the last complete one."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _request(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("interrupted: stopping after the current step (Ctrl-C again stops at once)")

    def on_train_begin(self, args, state, control, **kwargs):
        try:
            self._previous = signal.signal(signal.SIGINT, self._request)
        except ValueError:  # not the main thread: Ctrl-C stays Python's
            self._previous = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:  # a checkpoint due at this step is still written
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()
        if self.requested:
            raise Interrupted(
                f"interrupted after step {state.global_step}: {last_checkpoint_words(args.output_dir)} "
                "(continue with --resume_from_checkpoint latest)"
            )

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
