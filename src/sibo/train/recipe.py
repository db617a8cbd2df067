"""The fine-tuning recipe: a causal LM + a LoRA / DoRA / bottleneck adapter boosted by SIBO, on
instruction records, with transformers' Trainer.

    sibo finetune --base_model BASE --data_path math_10k.json --output_dir out --adapter_name lora \
        --embedding_lambda 0.1 --target_modules '["q_proj","k_proj","v_proj","up_proj","down_proj"]'

`setup` (sibo.train.setup) checks everything that can be wrong with the input — flags, data, model,
adapter — before anything is written to output_dir; `train` runs the Trainer (and resumes from a complete
checkpoint); `save` writes the adapter, SIBO settings, tokenizer, run config and metrics. The
same command runs on one CPU, one GPU, under `torchrun --nproc_per_node N` and under
`accelerate launch` (DDP, FSDP, DeepSpeed): the Trainer and accelerate do the distribution.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainerState, TrainingArguments

from sibo import __version__
from sibo.checkpoint.peft_model import sibo_settings
from sibo.checkpoint.weights import WEIGHT_LIMIT, check_finite
from sibo.data import PaddedCollator
from sibo.errors import InputError
from sibo.eval.during_training import accuracy_curve
from sibo.files import EVAL_METRICS_FILE, RUN_CONFIG_FILE, TRAIN_METRICS_FILE, write_json
from sibo.prompts import write_template
from sibo.train.card import adapter_card, write_adapter_card
from sibo.train.config import FinetuneConfig
from sibo.train.early_stopping import early_stopping, stopped_early
from sibo.train.guards import claim_run_dir, finished_metrics, guarded_output_dir, guarded_training
from sibo.train.loraplus import LoraPlusTrainer
from sibo.train.packing import PackingCollator
from sibo.train.progress import log_progress_when_piped
from sibo.train.resume import find_latest_checkpoint, finished_at, is_complete_checkpoint
from sibo.train.setup import Run, packed_attention, setup
from sibo.train.trainer import SiboTrainer
from sibo.train.trainer_settings import evaluation_settings, passed_through

logger = logging.getLogger(__name__)

__all__ = ["FinetuneConfig", "Run", "finetune", "find_latest_checkpoint", "is_complete_checkpoint"]


def finetune(
    config: FinetuneConfig, callbacks: list[TrainerCallback] | None = None, recorded_data: dict | None = None
) -> dict:
    """setup → train → save, with output_dir locked; returns the train (and eval) metrics. When output_dir
    already holds this run finished, nothing is trained: its metrics come back with "finished": True.
    `recorded_data`: what the run_config.json being repeated recorded of its data (sibo.train.rerun)."""
    finished = finished_metrics(config, claim_run_dir(config, dry_run=True))
    if finished is not None:
        return {"train": finished, "finished": True}
    run = setup(config, recorded_data)
    with guarded_output_dir(config):
        trainer = train(run, callbacks)
        return save(run, trainer)


# ---------------------------------------------------------------- train


def training_arguments(run: Run) -> TrainingArguments:
    """Upstream's Trainer settings in transformers v5 spelling, plus precision, packing and DDP fixes,
    and on a GPU no host waits in the step: fused AdamW, non-blocking batch copies, no NaN check. The
    TrainingArguments settings given by their own names (sibo.train.trainer_settings) pass through."""
    config = run.config
    on_gpu = torch.cuda.is_available()
    return TrainingArguments(
        **passed_through(config),
        **evaluation_settings(config, validating=run.val_set is not None),
        output_dir=config.output_dir,
        per_device_train_batch_size=config.micro_batch_size,
        per_device_eval_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=run.accumulation_steps,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps
        if config.warmup_ratio is None
        else config.warmup_ratio,  # v5: < 1 is a ratio
        optim=config.optim or ("adamw_torch_fused" if on_gpu else "adamw_torch"),  # fused: one kernel for all
        bf16=on_gpu and run.dtype == torch.bfloat16,
        fp16=on_gpu and run.dtype == torch.float16,
        use_cpu=not on_gpu,
        # Batches go to the GPU from pinned memory without waiting: the host queues the step meanwhile.
        accelerator_config={"non_blocking": True} if on_gpu else None,
        logging_steps=config.logging_steps,
        logging_nan_inf_filter=False,  # its check reads the loss back from the GPU at every micro-step
        use_liger_kernel=config.use_liger_kernel,
        # Packed batches have nothing to group; padded ones waste least when grouped by length.
        train_sampling_strategy="group_by_length" if config.group_by_length or not run.packing else "random",
        # Non-reentrant checkpointing: DDP would otherwise see parameters "marked ready twice".
        activation_checkpointing=config.use_gradient_checkpointing and not config.quantization,
        activation_checkpointing_kwargs={"use_reentrant": False},
        ddp_find_unused_parameters=False if run.world_size > 1 else None,
        remove_unused_columns=False,
        report_to=config.integrations(),
        run_name=config.wandb_run_name or None,
        seed=config.seed,
        data_seed=config.seed,
    )


def train(run: Run, callbacks: list[TrainerCallback] | None = None) -> Trainer:
    """Run the Trainer (resuming when asked); output_dir is created here, after setup passed."""
    config = run.config
    for name, value in (("WANDB_PROJECT", config.wandb_project), ("WANDB_WATCH", config.wandb_watch),
                        ("WANDB_LOG_MODEL", config.wandb_log_model)):  # fmt: skip
        if value:
            os.environ[name] = value
    collator = PackingCollator() if run.packing else PaddedCollator(run.tokenizer.pad_token_id)

    run.model.config.use_cache = False  # a KV cache would let packed sequences attend to each other
    loraplus = {"loraplus_lr_ratio": config.loraplus_lr_ratio} if config.loraplus_lr_ratio else {}
    trainer = (LoraPlusTrainer if loraplus else SiboTrainer)(
        **loraplus,
        model=run.model,
        args=training_arguments(run),
        train_dataset=run.train_set.examples,
        eval_dataset=run.val_set.examples if run.val_set is not None else None,
        data_collator=collator,
        processing_class=run.tokenizer,
        callbacks=[WarmupCheck(), *early_stopping(config), *(callbacks or [])],
    )
    trainer.accuracy, trainer.lambda_lr = run.accuracy, config.lambda_lr
    if trainer.is_fsdp_enabled and config.learnable_lambda:
        refuse_fsdp_dropping_lambda(trainer.accelerator.state.fsdp_plugin)
    log_progress_when_piped(trainer)
    logger.info(
        "training on %d examples (%s batches), global batch %d = %d micro × %d accumulation × %d process(es)",
        len(run.train_set.examples),
        "packed" if run.packing else "padded, length-grouped",
        config.batch_size,
        config.micro_batch_size,
        run.accumulation_steps,
        run.world_size,
    )
    if run.resume_from:
        finished = finished_at(run.resume_from, config.max_steps, config.num_epochs)
        if finished is not None:
            return _finished_trainer(run, trainer, finished)
        logger.info("resuming from %s", run.resume_from)
    with guarded_training(trainer):
        trainer.train(resume_from_checkpoint=run.resume_from)
    return trainer


def refuse_fsdp_dropping_lambda(plugin) -> None:
    """A learnt λ is in an FSDP checkpoint only with FSDP2 and full state dicts: FSDP1, or sharded state dicts,
    save PEFT's adapter weights alone, so resume and the best checkpoint would restart λ silently."""
    state_dict_type = getattr(plugin.state_dict_type, "name", str(plugin.state_dict_type))
    if plugin.fsdp_version != 2 or state_dict_type != "FULL_STATE_DICT":
        raise InputError(
            f"--learnable_lambda under FSDP needs fsdp_version: 2 and fsdp_state_dict_type: FULL_STATE_DICT "
            f"(this launch: version {plugin.fsdp_version}, {state_dict_type}): otherwise checkpoints drop the learnt "
            "λ, and resume and the best checkpoint restart it; see examples/accelerate/fsdp.yaml"
        )


def _finished_trainer(run: Run, trainer: Trainer, step: int) -> Trainer:
    """A checkpoint at the run's last step: its state is the run's end, nothing is trained. The final adapter
    is the one an uninterrupted run ends with: with validation the best checkpoint's, else this one's."""
    trainer.state = TrainerState.load_from_json(str(Path(run.resume_from) / "trainer_state.json"))
    final = _final_checkpoint(trainer, run.resume_from)
    logger.info("%s is step %d, the run's last: saving %s as the final adapter, training nothing", run.resume_from,
                step, final)  # fmt: skip
    run.model.load_adapter(final, "default", is_trainable=True)
    return trainer


def _final_checkpoint(trainer: Trainer, last: str) -> str:
    """The best checkpoint when the Trainer would load it at the end (load_best_model_at_end), else the last
    one; a best checkpoint deleted since is forgotten, as Trainer's own resume forgets it."""
    best = trainer.state.best_model_checkpoint
    if best is not None and not Path(best).is_dir():
        logger.warning("the best checkpoint %s is gone: %s becomes the final adapter", best, last)
        trainer.state.best_model_checkpoint = best = None
    return best if trainer.args.load_best_model_at_end and best is not None else last


class WarmupCheck(TrainerCallback):
    """Warns when warm-up is half the run or more; the Trainer knows the planned steps only here."""

    def on_train_begin(self, args, state, control, **kwargs):
        warning = warmup_warning(args.get_warmup_steps(state.max_steps), state.max_steps, args.learning_rate)
        if warning and state.is_world_process_zero:
            logger.warning(warning)


def warmup_warning(warmup_steps: int, planned_steps: int, learning_rate: float) -> str | None:
    """One line when the linear warm-up takes half the run or more, and so what the learning rate reaches:
    a short run with upstream's --warmup_steps 100 trains at a fraction of --learning_rate throughout."""
    if planned_steps < 1 or 2 * warmup_steps < planned_steps:
        return None
    fix = "lower --warmup_steps for a run this short"
    if warmup_steps >= planned_steps:
        # the last of steps 0 … n-1 runs at lr × (n-1)/warmup
        reached = learning_rate * (planned_steps - 1) / warmup_steps
        return (
            f"--warmup_steps {warmup_steps} ≥ the {planned_steps} planned steps: the learning rate only climbs "
            f"to {reached:.3g} of --learning_rate {learning_rate:g}; {fix}"
        )
    return (
        f"--warmup_steps {warmup_steps} is at least half the {planned_steps} planned steps: the learning rate "
        f"reaches {learning_rate:g} only at step {warmup_steps}, then decays to 0 by step {planned_steps}; {fix}"
    )


# ---------------------------------------------------------------- save


def save(run: Run, trainer: Trainer) -> dict:
    """Adapter + SIBO settings + tokenizer (trainer.save_model), run config and metrics, in output_dir."""
    output_dir = Path(run.config.output_dir)
    if trainer.is_fsdp_enabled:  # gather the shards: the final adapter must load without FSDP
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    else:
        trainable = {name: p.detach() for name, p in run.model.named_parameters() if p.requires_grad}
        check_finite(trainable, f"the final adapter (not saved to {output_dir})", WEIGHT_LIMIT)
    trainer.save_model(str(output_dir))
    metrics = {"train": _train_metrics(trainer)}
    if run.val_set is not None:
        trainer.accuracy = None  # the best checkpoint's accuracies are in the log history already
        metrics["eval"] = trainer.evaluate()
    if trainer.is_world_process_zero():
        write_template(output_dir, run.template)
        write_json(output_dir / RUN_CONFIG_FILE, resolved_run_config(run, trainer), default=str)
        card = adapter_card(run.model, run.config, run.template.name, len(run.train_set.examples), metrics)
        write_adapter_card(output_dir, card)
        if "eval" in metrics:
            write_json(output_dir / EVAL_METRICS_FILE, metrics["eval"], default=str)
        write_json(
            output_dir / TRAIN_METRICS_FILE, metrics["train"], default=str
        )  # last: the run is finished
        logger.info("saved the adapter, tokenizer, run config and metrics to %s", output_dir)
    return metrics


def _train_metrics(trainer: Trainer) -> dict:
    history = trainer.state.log_history
    summary = next((entry for entry in reversed(history) if "train_runtime" in entry), {})
    curve = accuracy_curve(history)
    return {
        **summary,
        **({"accuracy": curve} if curve else {}),  # {Name: [[step, accuracy], …]}
        "global_step": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_metric": trainer.state.best_metric,  # of --metric_for_best_model (eval_loss by default)
        "metric_for_best_model": trainer.args.metric_for_best_model,
        "stopped_early": stopped_early(trainer),
        "log_history": history,
    }


def resolved_run_config(run: Run, trainer: Trainer) -> dict:
    """The flags as resolved, plus what the run decided (batching, precision, processes)."""
    settings = sibo_settings(run.model)
    return {
        "config": asdict(run.config),
        "resolved": {
            "world_size": run.world_size,
            "template": run.template.name,
            "train_on_inputs": run.train_on_inputs,
            "gradient_accumulation_steps": run.accumulation_steps,
            "packing": run.packing,
            "attention": getattr(run.model.config, "_attn_implementation", None),
            "packed_attention": packed_attention(run.model, run.dtype) if run.packing else None,
            "optim": trainer.args.optim,
            "use_liger_kernel": trainer.args.use_liger_kernel,
            "dtype": str(run.dtype).removeprefix("torch."),
            "bf16": trainer.args.bf16,
            "fp16": trainer.args.fp16,
            **run.data,
            "train_examples": len(run.train_set.examples),
            "train_truncated": run.train_set.truncated,
            "train_dropped": run.train_set.dropped,
            "val_examples": len(run.val_set.examples) if run.val_set else 0,
            "sibo": asdict(settings) if settings is not None else None,
            "resumed_from": run.resume_from,
        },
        "versions": {
            "sibo": __version__,
            "torch": torch.__version__,
            "transformers": _version("transformers"),
            "peft": _version("peft"),
        },
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
