"""`sibo finetune`: the seed's finetune.py flags, verbatim, plus ours; one flag per FinetuneConfig field.

    sibo finetune --base_model yahma/llama-7b-hf --data_path math_10k.json --output_dir out \
        --batch_size 16 --micro_batch_size 4 --num_epochs 3 --learning_rate 3e-4 --cutoff_len 256 \
        --val_set_size 120 --adapter_name lora --embedding_lambda 0.1 --ffn True
    torchrun --nproc_per_node 2 -m sibo finetune …        accelerate launch -m sibo finetune …
"""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, fields

from sibo.cli._flags import parse_list, str2bool
from sibo.train.config import FinetuneConfig

# Other spellings the seed and its forks use for the same setting.
ALIASES = {
    "target_modules": ["--lora_target_modules"],
    "use_gradient_checkpointing": ["--gradient_checkpointing"],
}


def _number_or_word(value: str) -> float | str:
    """--scaling 2 or --scaling learnable_scalar."""
    try:
        return float(value)
    except ValueError:
        return value


def _add_flag(group, config_field) -> None:
    flags = [f"--{config_field.name}", *ALIASES.get(config_field.name, [])]
    default = config_field.default if config_field.default is not MISSING else None
    shown = "not set" if default is None else repr(default)
    help_text = f"{config_field.metadata['help']} (default: {shown})"
    kind = str(config_field.type)
    choices = config_field.metadata.get("choices")
    if kind.startswith("bool"):
        # `--flag`, `--flag True`, `--flag False`: the seed passes booleans as words.
        group.add_argument(
            *flags, type=str2bool, nargs="?", const=True, default=default, metavar="BOOL", help=help_text
        )
    elif kind.startswith("list"):
        # nargs="+": an unquoted `["q_proj", "k_proj"]` reaches us as several shell words.
        group.add_argument(*flags, nargs="+", default=default, metavar="MODULES", help=help_text)
    elif kind == "float | str":
        group.add_argument(*flags, type=_number_or_word, default=default, help=help_text)
    else:
        value_type = {"int": int, "float": float}.get(kind, str)
        group.add_argument(*flags, type=value_type, default=default, choices=choices, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sibo finetune",
        description="Fine-tune a causal LM with a LoRA, DoRA or bottleneck adapter boosted by SIBO. "
        "The same command runs under `torchrun --nproc_per_node N -m sibo finetune …` and "
        "`accelerate launch -m sibo finetune …`.",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for config_field in fields(FinetuneConfig):
        group_name = config_field.metadata["group"]
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name)
        _add_flag(groups[group_name], config_field)
    return parser


def parse_config(argv: list[str] | None) -> FinetuneConfig:
    """Flags → FinetuneConfig (which checks them; bad values raise InputError)."""
    values = vars(build_parser().parse_args(argv))
    for name in ("target_modules", "modules_to_save"):
        if values[name] is not None:
            values[name] = parse_list(values[name])
    return FinetuneConfig(**values)


def main(argv: list[str] | None = None) -> int:
    from sibo.train.recipe import finetune

    config = parse_config(argv)
    metrics = finetune(config)
    if int(os.environ.get("RANK", "0")) == 0 and metrics.get("finished"):
        print(
            f"{config.output_dir} already holds this run, finished after {metrics['train'].get('global_step')} "
            "steps: nothing to do (a higher --max_steps or --num_epochs resumes it; --overwrite starts over)"
        )
    elif int(os.environ.get("RANK", "0")) == 0:
        train = metrics["train"]
        print(
            f"trained {train['global_step']} steps, final train loss {train.get('train_loss', float('nan')):.4f}"
        )
        if "eval" in metrics:
            print(f"validation loss {metrics['eval']['eval_loss']:.4f} (best adapter kept)")
        print(f"adapter, tokenizer, run config and metrics: {config.output_dir}")
    return 0
