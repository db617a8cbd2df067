"""The recipe's first phase: check every input and build what training needs, writing nothing.

`setup` runs its phases from the cheap checks to the slow loads (torchtune's `_setup_model`, `_setup_data`),
so a bad flag, data file or resume point fails before the model is read: output folder and resume point,
records, model, tokenized sets, packing, the boosted adapter. `sibo.train.recipe` trains and saves the `Run`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import set_seed

from sibo.checkpoint.config import context_length
from sibo.checkpoint.load import exported_residual, load_model, require_quantization, resolve_dtype
from sibo.data import (
    TokenizedSet,
    split_validation,
    tokenize_dataset,
    warn_of_empty_responses,
    warn_of_special_token_text,
)
from sibo.data_sources import load_sources
from sibo.errors import InputError
from sibo.eval.during_training import AccuracyDuringTraining, accuracy_during_training
from sibo.prompts import ALPACA, AUTO, CHAT, PromptTemplate, checked_template
from sibo.train.adapter import add_trainable_adapter, build_peft_config
from sibo.train.config import FinetuneConfig
from sibo.train.packing import PACKED_SDPA, enable_packing, packed_attention_kernel
from sibo.train.rerun import data_summary, warn_if_data_changed
from sibo.train.resume import finished_at, resolve_resume

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything `setup` prepared: the boosted model, its data, and how it will be batched."""

    config: FinetuneConfig
    model: torch.nn.Module
    tokenizer: object
    train_set: TokenizedSet
    val_set: TokenizedSet | None
    packing: bool
    world_size: int
    accumulation_steps: int
    dtype: torch.dtype
    resume_from: str | None  # a Trainer checkpoint to resume from
    template: PromptTemplate  # how records were rendered: recorded beside the adapter
    train_on_inputs: bool  # resolved: --train_on_inputs, else True with Alpaca's template, False with chat
    data: dict  # the records read: count and content fingerprint (sibo.train.rerun), in run_config.json
    accuracy: AccuracyDuringTraining | None = None  # --eval_datasets' scorer


def setup(config: FinetuneConfig, recorded_data: dict | None = None) -> Run:
    """Validate all input and build the model and data; raises InputError and writes nothing on bad input.
    A rerun whose data differs from `recorded_data` (the same path) is warned. The phases run from the
    cheap checks to the slow loads, so bad input fails before the model is read."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = gradient_accumulation_steps(config.batch_size, config.micro_batch_size, world_size)
    if config.quantization:
        require_quantization(config.quantization)  # now, not after the data has been read
    resume_from, start_adapter = _check_resume(config)
    peft_config = build_peft_config(config)
    train_records, val_records, data = _read_data(config, recorded_data)
    model, tokenizer, dtype = _setup_model(config)
    template = training_template(config, "messages" in train_records.column_names, tokenizer)
    train_on_inputs = template.name == ALPACA if config.train_on_inputs is None else config.train_on_inputs
    train_set, val_set = _setup_data(config, train_records, val_records, tokenizer, template, train_on_inputs)
    packing = _setup_packing(config, model, dtype)
    model = _setup_adapter(config, model, peft_config, start_adapter)
    return Run(
        config,
        model,
        tokenizer,
        train_set,
        val_set,
        packing,
        world_size,
        accumulation,
        dtype,
        resume_from,
        template,
        train_on_inputs,
        data,
        accuracy_during_training(config, tokenizer, template.name),
    )


def gradient_accumulation_steps(batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """batch_size / (micro_batch_size × world_size), which must be a whole number."""
    per_step = micro_batch_size * world_size
    if batch_size % per_step:
        raise InputError(
            f"--batch_size {batch_size} is not a multiple of --micro_batch_size {micro_batch_size} × "
            f"{world_size} process(es) = {per_step}"
        )
    return batch_size // per_step


def _check_resume(config: FinetuneConfig) -> tuple[str | None, str | None]:
    """(the Trainer checkpoint to resume from, the adapter to start from), each None when there is none; a
    fresh run into a folder holding another run's checkpoints is refused."""
    resume_from, start_adapter = resolve_resume(config.resume_from_checkpoint, config.output_dir)
    if resume_from is not None:
        finished_at(resume_from, config.max_steps, config.num_epochs)  # one past --max_steps: refused now
    if resume_from is None and not config.overwrite and any(Path(config.output_dir).glob("checkpoint-*")):
        # A fresh run would mix its checkpoints with these, and `latest` could later pick a stale one.
        raise InputError(
            f"{config.output_dir} already holds checkpoints of another run: continue it with "
            "--resume_from_checkpoint latest, hand the folder over with --overwrite, or choose another --output_dir"
        )
    return resume_from, start_adapter


def _read_data(config: FinetuneConfig, recorded_data: dict | None) -> tuple[Dataset, Dataset, dict]:
    """(training records, validation records, their count and fingerprint), read before the model loads."""
    records = load_sources(config.data_path, config.data_columns, config.data_ratios, config.seed)
    data = data_summary(records)
    warn_if_data_changed(data, config.data_path, recorded_data)
    warn_of_empty_responses(records)
    return (*split_validation(records, config.val_set_size), data)


def _setup_model(config: FinetuneConfig) -> tuple[torch.nn.Module, object, torch.dtype]:
    """(model, tokenizer, training dtype): the base loaded on this process's device, its attention set, and
    --cutoff_len checked against its context."""
    quantization = config.quantization
    if (
        exported_residual(config.base_model) is not None
    ):  # get_peft_model would wrap the residual, then reset it
        raise InputError(
            f"--base_model {config.base_model} is an exact sibo export, whose SIBO residual adapter is part of "
            "the model: a new adapter cannot train on it; train on the base it was exported from"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    model, tokenizer = load_model(
        config.base_model,
        quantization=quantization,
        device_map={"": local_rank} if quantization else None,
        trust_remote_code=config.trust_remote_code,
        threads=config.threads,
    )
    dtype = resolve_dtype("auto")
    if config.attn_implementation:
        set_attention(model, config.attn_implementation)
    limit = context_length(model)
    if limit is not None and config.cutoff_len > limit:
        raise InputError(
            f"--cutoff_len {config.cutoff_len} is longer than the context of {config.base_model} ({limit} tokens)"
        )
    return model, tokenizer, dtype


def _setup_data(
    config: FinetuneConfig,
    train_records,
    val_records,
    tokenizer,
    template: PromptTemplate,
    train_on_inputs: bool,
) -> tuple[TokenizedSet, TokenizedSet | None]:
    """(training set, validation set or None) tokenized with `template`; a split that keeps no record is refused."""
    if template.name == CHAT:
        logger.info(
            "rendering records with %s's chat template; the loss covers %s",
            config.base_model,
            "every token" if train_on_inputs else "the assistant turns",
        )
    for name, split in (("training", train_records), ("validation", val_records)):
        warn_of_special_token_text(split, tokenizer, name)
    train_set, val_set = (
        tokenize_dataset(
            split,
            tokenizer,
            config.cutoff_len,
            train_on_inputs,
            f"tokenizing {name}",
            template,
            config.data_path,
        )
        if len(split)
        else None
        for name, split in (("train", train_records), ("val", val_records))
    )
    _report_tokenized(config, "train", train_set)
    if val_set is not None:
        _report_tokenized(config, "validation", val_set)
    for split, tokenized in (("training", train_set), ("validation", val_set)):
        if tokenized is not None and not tokenized.examples:
            raise InputError(
                f"{config.data_path}: zero usable {split} records: every response is cut off at "
                f"cutoff_len={config.cutoff_len}; raise --cutoff_len"
            )
    return train_set, val_set


def _setup_packing(config: FinetuneConfig, model: torch.nn.Module, dtype: torch.dtype) -> bool:
    """Whether batches are packed: --packing, when the model keeps packed sequences apart."""
    packing = config.packing and enable_packing(model)
    if config.packing and not packing:
        logger.info(
            "%s cannot keep packed sequences apart: using length-grouped padded batches", config.base_model
        )
    elif packing:
        logger.info("padding-free packed batches: %s", packed_attention(model, dtype))
    return packing


def _setup_adapter(
    config: FinetuneConfig, model: torch.nn.Module, peft_config, start_adapter: str | None
) -> torch.nn.Module:
    """The model with its trainable, boosted adapter (seeded), its weights from `start_adapter` when given."""
    if config.quantization:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.use_gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    set_seed(config.seed)  # the adapter's initial weights
    model = add_trainable_adapter(model, peft_config, config)
    if start_adapter is not None:
        logger.info("starting from the adapter weights in %s", start_adapter)
        try:
            model.load_adapter(start_adapter, "default", is_trainable=True)
        except (RuntimeError, ValueError, KeyError) as error:
            reason = str(error).strip().splitlines()[-1].strip()
            raise InputError(
                f"--resume_from_checkpoint {start_adapter}: does not fit this adapter ({reason})"
            ) from None
    return model


def set_attention(model: torch.nn.Module, implementation: str) -> None:
    """--attn_implementation, as transformers checks it (unknown or not installed: one line)."""
    try:
        model.set_attn_implementation(implementation)
    except (ValueError, ImportError) as error:
        raise InputError(f"--attn_implementation {implementation}: {' '.join(str(error).split())}") from None


def training_template(config: FinetuneConfig, chat_records: bool, tokenizer) -> PromptTemplate:
    """--template resolved for this data: auto is chat for chat records, Alpaca's for instruction records."""
    requested = config.template
    if requested == AUTO:
        requested = CHAT if chat_records else ALPACA
    if requested == ALPACA and chat_records:
        raise InputError(
            f"{config.data_path} holds chat records, which Alpaca's template cannot render: use --template chat "
            "(or auto)"
        )
    return checked_template(requested, tokenizer, config.base_model)


def packed_attention(model: torch.nn.Module, dtype: torch.dtype) -> str:
    """How packed rows are attended on this machine: the attention implementation, and its kernel."""
    implementation = model.config._attn_implementation
    if implementation != PACKED_SDPA:
        return f"{implementation} attention"
    text_config = model.config.get_text_config()
    head_dim = getattr(text_config, "head_dim", None) or (
        text_config.hidden_size // text_config.num_attention_heads
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return f"{implementation} attention, {packed_attention_kernel(device, dtype, head_dim)}"


def _report_tokenized(config: FinetuneConfig, split: str, tokenized: TokenizedSet) -> None:
    if tokenized.truncated:
        logger.info(
            "%s: %d record(s) longer than cutoff_len=%d were truncated",
            split,
            tokenized.truncated,
            config.cutoff_len,
        )
    if tokenized.prompt_only:
        logger.warning(
            "%s: %d record(s) train on their prompt only: cutoff_len=%d cuts away their whole response",
            split,
            tokenized.prompt_only,
            config.cutoff_len,
        )
    if tokenized.dropped:
        logger.warning(
            "%s: %d record(s) dropped: their response lies beyond cutoff_len", split, tokenized.dropped
        )
