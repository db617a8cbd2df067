"""Flag spellings shared by the verbs: the seed's `--flag True/False` and its list syntaxes."""

from __future__ import annotations

import argparse
import json


def str2bool(value: str | bool) -> bool:
    """`--ffn True`, `--ffn false`, `--ffn 1`: the seed passes booleans as words."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "y", "t"):
        return True
    if lowered in ("false", "0", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def parse_list(value: str | list[str]) -> list[str]:
    """A list flag as the seed writes it: '["q_proj","k_proj"]', '[q_proj,k_proj]' (what a shell
    leaves of the unquoted form) or 'q_proj,k_proj'. Several shell words are joined first."""
    if isinstance(value, list):
        value = ",".join(value)
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = text.strip("[]").split(",")
        if not isinstance(parsed, list):
            raise argparse.ArgumentTypeError(f"expected a list, got {value!r}")
    else:
        parsed = text.split(",")
    items = [str(item).strip().strip("'\"") for item in parsed]
    return [item for item in items if item]


def optional_bool_flag(parser: argparse.ArgumentParser, name: str, default: bool, help: str) -> None:
    """`--name`, `--name True` and `--name False` all work."""
    parser.add_argument(
        name, type=str2bool, nargs="?", const=True, default=default, help=f"{help} (default: {default})"
    )


def add_model_flags(parser, quantization: bool = True) -> None:
    """The flags that pick a model for `sibo.checkpoint.load.load_model`, as every verb (and the seed) spells them."""
    parser.add_argument(
        "--base_model", required=True, help="base model: a folder, a .gguf file, or a hub name when online"
    )
    parser.add_argument(
        "--weights_path", "--lora_weights", dest="weights_path", default=None,
        help="adapter folder (SIBO or plain PEFT); without it the base model alone",
    )  # fmt: skip
    parser.add_argument(
        "--embedding_lambda", "--lam", dest="lam", type=float, default=None,
        help="SIBO's λ, overriding the one stored with the adapter (boosts a plain PEFT adapter too)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", default="auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), bf16, fp16 or fp32"
    )
    optional_bool_flag(parser, "--trust_remote_code", False, "run the model repository's own code")
    if quantization:
        optional_bool_flag(parser, "--load_8bit", False, "load the base model in 8 bits (CUDA, bitsandbytes)")
        optional_bool_flag(
            parser, "--load_4bit", False, "load the base model in 4 bits, NF4 (CUDA, bitsandbytes)"
        )


def add_merge_flag(parser) -> None:
    """`--merge`: decode with the adapter folded into the base weights (`sibo.checkpoint.export.merge_for_inference`)."""
    optional_bool_flag(
        parser,
        "--merge",
        True,
        "fold the adapter into the base weights for decoding: same outputs, fewer kernels "
        "(bottleneck, DoRA with λ > 0 and quantized bases stay unmerged)",
    )


def model_loading_kwargs(args: argparse.Namespace) -> dict:
    """What `add_model_flags` parsed, as keyword arguments of `sibo.checkpoint.load.load_model`."""
    load_8bit, load_4bit = getattr(args, "load_8bit", False), getattr(args, "load_4bit", False)
    return {
        "lam": args.lam,
        "dtype": args.dtype,
        "trust_remote_code": args.trust_remote_code,
        "quantization": "8bit" if load_8bit else "4bit" if load_4bit else None,
    }
