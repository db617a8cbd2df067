"""`sibo finetune`: upstream's finetune.py flags, verbatim, plus ours; one flag per FinetuneConfig field.

    sibo finetune --base_model yahma/llama-7b-hf --data_path math_10k.json --output_dir out \
        --batch_size 16 --micro_batch_size 4 --num_epochs 3 --learning_rate 3e-4 --cutoff_len 256 \
        --val_set_size 120 --adapter_name lora --embedding_lambda 0.1 --ffn True
    torchrun --nproc_per_node 2 -m sibo finetune …        accelerate launch -m sibo finetune …
"""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING

from sibo.cli._flags import ArgumentParser, add_dataclass_flags, dataclass_values
from sibo.progress import announced_before
from sibo.train.config import FinetuneConfig

# How finetune (and sweep) show FinetuneConfig's flags: other spellings upstream and its forks use for the
# same setting; the shared groups' fields under "model and data", where finetune's reading differs, its own.
FINETUNE_FLAGS = {
    "rename": {
        "target_modules": ["--target_modules", "--lora_target_modules"],
        "use_gradient_checkpointing": ["--use_gradient_checkpointing", "--gradient_checkpointing"],
    },
    "defaults": {"base_model": MISSING},  # required: there is no adapter to read it from
    "helps": {
        "base_model": "base model: a folder, a .gguf file, or a hub name when online",
        "eval_datasets": "benchmarks scored at every evaluation, as `sibo evaluate --dataset` names them "
        "(AddSub,gsm8k; math); logged as eval_<Name>_accuracy (needs --val_set_size)",
    },
    "group": "model and data",
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="sibo finetune",
        description="Fine-tune a causal LM with a LoRA, DoRA or bottleneck adapter boosted by SIBO. "
        "The same command runs under `torchrun --nproc_per_node N -m sibo finetune …` and "
        "`accelerate launch -m sibo finetune …`.",
    )
    add_dataclass_flags(parser, FinetuneConfig, **FINETUNE_FLAGS)
    return parser


def parse_config(argv: list[str] | None) -> FinetuneConfig:
    """Flags → FinetuneConfig (which checks them; bad values raise InputError)."""
    return FinetuneConfig(**dataclass_values(build_parser().parse_args(argv), FinetuneConfig))


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    values = dataclass_values(args, FinetuneConfig)
    # what is coming, once the config's plain checks pass and its last ones import torch (seconds), before
    # the model loads (half a minute for a GGUF); a bad value those plain checks catch is the only line
    with announced_before("torch", f"to fine-tune into {values['output_dir']}", base=values["base_model"],
                          data=values["data_path"]):  # fmt: skip
        config = FinetuneConfig(**values)
    from sibo.train.recipe import finetune
    from sibo.train.rerun import recorded_data

    metrics = finetune(config, recorded_data=recorded_data(getattr(args, "config", None)))
    if int(os.environ.get("RANK", "0")) == 0 and metrics.get("finished"):
        print(
            f"{config.output_dir} already holds this run, finished after {metrics['train'].get('global_step')} "
            "steps: nothing to do (the same command with a higher --max_steps or --num_epochs and "
            "--resume_from_checkpoint latest trains on; --overwrite starts over)"
        )
    elif int(os.environ.get("RANK", "0")) == 0:
        train = metrics["train"]
        print(
            f"trained {train['global_step']} steps, final train loss {train.get('train_loss', float('nan')):.4f}"
        )
        if train.get("stopped_early"):
            stop = train["stopped_early"]
            print(
                f"stopped early at step {stop['step']}: best {stop['metric']} {stop['best']:.4f} at {stop['best_checkpoint']}"
            )
        if "eval" in metrics:
            print(f"validation loss {metrics['eval']['eval_loss']:.4f} (best adapter kept)")
        print(f"adapter, tokenizer, run config and metrics: {config.output_dir}")
    return 0
