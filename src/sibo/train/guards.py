"""What keeps a fine-tuning run from losing or silently spoiling work.

- `claim_run_dir`: output_dir must be empty, this run's own folder (same settings: resume; a
  finished one is not trained again), or handed over with --overwrite. Resuming with settings that
  change the adapter's shape or base is refused naming the setting; other changes (λ, data, …) are
  allowed with a warning that says so.
- `guarded_output_dir`: the run holds output_dir's lock while it trains and saves; a full disk is one
  line naming the file and the last complete checkpoint.
- `StopOnNonFinite`: after each optimizer step, the trainable weights (and, outside fp16 loss
  scaling, their gradients) must be finite; otherwise training stops naming the first bad step,
  before its weights can reach a checkpoint or the final adapter. The check stays on the device;
  the host reads it only at logging, evaluation and checkpoint steps, where Trainer syncs anyway.
- `StopOnInterrupt`: Ctrl-C stops after the current step (no final adapter is saved) and says where
  the last complete checkpoint is (exit 130); a second Ctrl-C stops at once.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import TrainerCallback

from sibo.checkpoint.sibo_config import SIBO_CONFIG_FILE
from sibo.data_sources import split_sources
from sibo.errors import InputError, Interrupted
from sibo.eval.during_training import ACCURACY_DIR
from sibo.files import EVAL_METRICS_FILE, RUN_CONFIG_FILE, TRAIN_METRICS_FILE, disk_full, read_json
from sibo.output_dir import claim_output_dir, describe_contents, files_named, hold_output_dir, is_main_process
from sibo.prompts import TEMPLATE_FILE
from sibo.train.config import FinetuneConfig
from sibo.train.resume import CHECKPOINT_PREFIX, find_latest_checkpoint

logger = logging.getLogger(__name__)

VERB = "finetune"
# Not part of what a run is: where it goes, how it resumes, where it reports, how many CPU threads it uses
# (--threads defaults to $OMP_NUM_THREADS or the cores: another shell or machine is not another run).
_NOT_SETTINGS = ("output_dir", "resume_from_checkpoint", "overwrite", "report_to", "wandb_project",
                 "wandb_run_name", "wandb_watch", "wandb_log_model", "threads")  # fmt: skip
# A resume that changes these would load weights into another model or adapter (init_lora_weights: PiSSA and
# OLoRA move the base weights; use_rslora: the branch's scale), or optimizer state into other parameter groups
# (--lambda_lr gives λ a group of its own).
SHAPE_SETTINGS = ("base_model", "adapter_name", "lora_r", "lora_alpha", "target_modules", "bottleneck_size",
                  "non_linearity", "scaling", "use_parallel_adapter", "use_adapterp", "sibo_targets",
                  "learnable_lambda", "lambda_lr", "load_8bit", "load_4bit", "init_lora_weights", "use_rslora",
                  "modules_to_save", "loraplus_lr_ratio", "optim")  # fmt: skip


# What finetune writes in its folder (the adapter and its card, the tokenizer, the run's records, Trainer's
# checkpoints, arguments and logs): any other file there is the user's, even after a killed run.
FINETUNE_FILES = ("adapter_config.json", "adapter_model.*", SIBO_CONFIG_FILE, "README.md", "training_args.bin",
                  "tokenizer*", "tokenization_*", "*.model", "*.tiktoken", "special_tokens_map.json",
                  "added_tokens.json", "vocab.*", "merges.txt", "chat_template.*", TEMPLATE_FILE, RUN_CONFIG_FILE,
                  TRAIN_METRICS_FILE, EVAL_METRICS_FILE, f"{CHECKPOINT_PREFIX}-*", ACCURACY_DIR, "runs",
                  "emissions.csv")  # fmt: skip


def run_settings(config: FinetuneConfig) -> dict:
    """The settings that make a run what it is (recorded in the output folder's RUN_MARKER)."""
    return {key: value for key, value in asdict(config).items() if key not in _NOT_SETTINGS}


def claim_run_dir(config: FinetuneConfig, dry_run: bool = False) -> dict | None:
    """The settings of the earlier run in output_dir that this one continues (None: a fresh run); refuses
    a folder that is not this run's (see sibo.output_dir.claim_output_dir). `dry_run` writes nothing."""
    settings = run_settings(config)
    resuming = config.resume_from_checkpoint is not None
    # a marker written before threads left the settings still holds them: never compared
    may_differ = _NOT_SETTINGS + (
        tuple(key for key in settings if key not in SHAPE_SETTINGS) if resuming else ()
    )
    reads = finetune_reads(config)
    if config.resume_from_checkpoint not in (None, "latest"):
        reads.append(("--resume_from_checkpoint", config.resume_from_checkpoint))
    previous = claim_output_dir(
        config.output_dir,
        VERB,
        settings,
        config.overwrite,
        may_differ,
        dry_run,
        legacy=_legacy_run,
        reads=reads,
        writes=FINETUNE_FILES,
        # a folder finished before a setting existed ran with its default: rerun with it, it is the same run
        defaults={field.name: field.default for field in fields(FinetuneConfig)},
    )
    if previous is not None and not dry_run:
        for key in settings:
            if previous.get(key, settings[key]) != settings[key]:
                logger.warning(
                    "resuming %s with %s %r: the run started with %r", config.output_dir, key, settings[key],
                    previous[key],
                )  # fmt: skip
    return previous


def finetune_reads(config: FinetuneConfig) -> list[tuple[str, str]]:
    """What a fine-tune reads, as (flag, path): each --data_path source and --base_model. A hand-over of an
    output folder never deletes them."""
    return [("--data_path", path) for path, _, _ in split_sources(config.data_path)] + [
        ("--base_model", config.base_model)
    ]


def finished_metrics(config: FinetuneConfig, previous: dict | None) -> dict | None:
    """The train metrics of this run when output_dir already holds it finished with the same length
    (max_steps, num_epochs): nothing is left to do. A longer one resumes and trains on."""
    metrics = Path(config.output_dir) / TRAIN_METRICS_FILE
    if previous is None or config.overwrite or not metrics.is_file():
        return None
    if any(previous.get(key) != getattr(config, key) for key in ("max_steps", "num_epochs")):
        return None
    finished = read_json(metrics)
    return finished if isinstance(finished, dict) else None


def _legacy_run(directory: Path) -> dict | None:
    """A finetune folder written before RUN_MARKER existed: checkpoints and/or a final adapter with its run
    config; its settings are the run config's (or, with checkpoints only, taken as this run's). It wrote the
    files finetune writes (FINETUNE_FILES), no other."""
    if describe_contents(directory).startswith("a model") or not (
        (directory / RUN_CONFIG_FILE).is_file() or any(directory.glob(f"{CHECKPOINT_PREFIX}-*"))
    ):
        return None
    wrote = files_named(directory, FINETUNE_FILES)
    try:
        stored = read_json(directory / RUN_CONFIG_FILE)["config"]
    except (InputError, KeyError, TypeError):
        return {"verb": VERB, "settings": None, "wrote": wrote}
    settings = {k: v for k, v in stored.items() if k not in _NOT_SETTINGS}
    return {"verb": VERB, "settings": settings, "wrote": wrote}


def last_checkpoint_words(output_dir: str) -> str:
    latest = find_latest_checkpoint(output_dir)
    return f"the last complete checkpoint is {latest}" if latest else "no complete checkpoint was written"


@contextmanager
def guarded_output_dir(config: FinetuneConfig) -> Iterator[None]:
    """output_dir locked and claimed by this run (rank 0) for the block; a full disk there is one line
    naming the file and the last complete checkpoint."""
    main = is_main_process()
    with hold_output_dir(config.output_dir) if main else nullcontext():
        if main:
            claim_run_dir(config)
        try:
            yield
        except Exception as error:  # the tokenizers library's full disk is a plain Exception
            library = isinstance(error, (OSError, RuntimeError, SafetensorError))
            if not (
                disk_full(error, config.output_dir) if library else "No space left on device" in str(error)
            ):
                raise
            where = getattr(error, "filename", None) or f"a checkpoint or the adapter in {config.output_dir}"
            raise InputError(
                f"disk full while writing {where}: {last_checkpoint_words(config.output_dir)}"
            ) from None


@contextmanager
def guarded_training(trainer) -> Iterator[None]:
    """`trainer.train` under StopOnNonFinite and StopOnInterrupt; Ctrl-C is Python's again afterwards."""
    interrupt = StopOnInterrupt()
    trainer.add_callback(StopOnNonFinite())
    trainer.add_callback(interrupt)
    try:
        yield
    finally:
        interrupt.restore()
        for callback in trainer.callback_handler.callbacks:
            if getattr(callback, "training_bar", None) is not None:
                callback.training_bar.close()  # a one-line error then starts on a line of its own


class StopOnNonFinite(TrainerCallback):
    """Stop training, naming the first step whose trainable weights or gradients were not finite.

    Each optimizer step folds its check into a device tensor (the first bad step, 0 while there is
    none), so the GPU never waits for the host; the host reads it once where Trainer syncs anyway —
    at logging, evaluation, checkpoint and final steps — before anything is saved.
    """

    def __init__(self) -> None:
        self.first_bad: torch.Tensor | None = None

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        trainable = [p.detach() for p in model.parameters() if p.requires_grad]
        # fp16 loss scaling meets inf gradients by design: it skips that step, the weights stay finite.
        grads = [] if args.fp16 else [p.grad.detach() for p in model.parameters() if p.grad is not None]
        if not trainable:
            return
        # under FSDP2 each rank checks its own shards (a NaN reaches every rank through the reduced gradients)
        local = [t.to_local() if hasattr(t, "to_local") else t for t in trainable + grads]
        finite = torch.stack([norm.float() for norm in torch._foreach_norm(local)]).isfinite().all()
        if self.first_bad is None:
            self.first_bad = torch.zeros((), dtype=torch.long, device=finite.device)
        self.first_bad.masked_fill_(~finite & (self.first_bad == 0), state.global_step + 1)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if (
            control.should_log
            or control.should_evaluate
            or control.should_save
            or control.should_training_stop
        ):
            self.check(args, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.check(args, model)

    def check(self, args, model) -> None:
        """Raise InputError naming the first bad step, if there was one (one host sync)."""
        step = 0 if self.first_bad is None else int(self.first_bad)
        if not step:
            return
        what = next(
            (f"the gradient of {name}" for name, p in model.named_parameters()
             if p.grad is not None and not torch.isfinite(p.grad).all()),
            next((name for name, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()),
                 "a weight"),
        )  # fmt: skip
        raise InputError(
            f"step {step}: a weight or gradient stopped being finite ({what} is not): training stopped (the loss "
            "diverged, or the learning rate or resumed optimizer state is bad) and nothing since was saved; "
            f"{last_checkpoint_words(args.output_dir)}"
        )


class StopOnInterrupt(TrainerCallback):
    """Ctrl-C or SIGTERM (a scheduler's stop): finish the current step (and its checkpoint, if one is due),
    then report the last complete one; exit 130, or 143 for SIGTERM."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None  # the signal that asked to stop
        self._previous: dict = {}

    def _request(self, signum, frame) -> None:
        if self.requested:  # a second one: stop now
            raise KeyboardInterrupt
        self.requested = signum
        logger.warning("interrupted: stopping after the current step (Ctrl-C again stops at once)")

    def on_train_begin(self, args, state, control, **kwargs):
        try:
            self._previous = {number: signal.signal(number, self._request) for number in self.SIGNALS}
        except ValueError:  # not the main thread: the signals stay Python's
            self._previous = {}

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:  # a checkpoint due at this step is still written
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()
        if self.requested:
            kept = find_latest_checkpoint(args.output_dir) is not None
            hint = "the same command with --resume_from_checkpoint latest continues it" if kept else (
                "the same command again starts afresh")  # fmt: skip
            code = 143 if self.requested == signal.SIGTERM else 130
            raise Interrupted(
                f"interrupted after step {state.global_step}: {last_checkpoint_words(args.output_dir)} ({hint})",
                exit_code=code,
            )

    def restore(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous = {}
