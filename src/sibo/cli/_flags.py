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
