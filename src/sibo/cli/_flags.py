"""Flags from dataclasses, for every verb: one generator, upstream's spellings, one-line errors.

Each config field becomes `--<field>` (plus the spellings in `rename`), its help text from
`metadata["help"]`, its default from the field (shown once; a required field shows none), its
type from the annotation: booleans take upstream's words (`--ffn True`, `--ffn false`, bare
`--ffn`), lists take upstream's syntaxes ('["q_proj","k_proj"]', [q_proj,k_proj], q_proj,k_proj).
Every verb also takes `--config FILE` (sibo.cli.config_file): a YAML or JSON file of these flags, read
as if typed before the command line. Nothing here imports torch: `sibo <verb> --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, Field, fields
from pathlib import Path

from sibo.cli.config_file import (
    CONFIG_FLAG,
    CONFIG_HELP,
    AbbreviatedConfigFlag,
    config_file_arguments,
    split_config_flag,
)
from sibo.errors import InputError

BOOL_METAVAR = "BOOL"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad flag as an InputError (one line, exit 2), `--lr -1e-4` read as a number, and
    `--config FILE`'s settings (sibo.cli.config_file) read as flags typed before the command line's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument(CONFIG_FLAG, metavar="FILE", help=CONFIG_HELP, action=AbbreviatedConfigFlag)

    def error(self, message: str):
        raise InputError(message)

    def parse_known_args(self, args=None, namespace=None):
        path, args = split_config_flag(sys.argv[1:] if args is None else list(args))
        if path is not None:
            from_file = config_file_arguments(self, path)
            self._check_alone(from_file, path)
            args = from_file + args
        namespace, rest = super().parse_known_args(_attach_negative_numbers(args), namespace)
        namespace.config = path  # the flags file, for a verb that reads more of it (finetune: recorded data)
        return namespace, rest

    def _check_alone(self, from_file: list[str], path: str) -> None:
        """A bad value in the file is one line naming the file (required flags may come from the command line)."""
        required = [action for action in self._actions if action.required]
        for action in required:
            action.required = False
        try:
            super().parse_known_args(from_file)
        except InputError as error:
            raise InputError(f"{path}: {error}") from None
        finally:
            for action in required:
                action.required = True


def _attach_negative_numbers(args: list[str]) -> list[str]:
    """`--flag -1e-4` → `--flag=-1e-4`: argparse takes '-1e-4' for an option (it knows only '-1' and '-.5')."""
    joined: list[str] = []
    for arg in args:
        if joined and joined[-1].startswith("--") and "=" not in joined[-1] and _is_negative_number(arg):
            joined[-1] = f"{joined[-1]}={arg}"
        else:
            joined.append(arg)
    return joined


def _is_negative_number(text: str) -> bool:
    if not text.startswith("-"):
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


def str2bool(value: str | bool) -> bool:
    """`--ffn True`, `--ffn false`, `--ffn 1`: upstream passes booleans as words."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "y", "t"):
        return True
    if lowered in ("false", "0", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def parse_list(value: str | list[str]) -> list[str]:
    """A list flag as upstream writes it: '["q_proj","k_proj"]', '[q_proj,k_proj]' (what a shell
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


class _ListAction(argparse.Action):
    """nargs="+": an unquoted `["q_proj", "k_proj"]` reaches us as several shell words, joined here."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, parse_list(values))


def number_or_word(value: str) -> float | str:
    """--scaling 2 or --scaling learned."""
    try:
        return float(value)
    except ValueError:
        return value


def count_or_word(value: str) -> int | str:
    """--batch_size 16 or --batch_size auto."""
    try:
        return int(value)
    except ValueError:
        return value


_TYPES = {
    "int": int,
    "int | None": int,
    "float": float,
    "float | None": float,
    "float | str": number_or_word,
    "int | str": count_or_word,
}


def field_default(config_field: Field):
    """The field's default (MISSING when the field is required)."""
    if config_field.default_factory is not MISSING:
        return config_field.default_factory()
    return config_field.default


def _shown(value) -> str:
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def add_dataclass_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    rename: dict[str, list[str]] | None = None,
    skip: tuple[str, ...] = (),
    defaults: dict | None = None,
    helps: dict[str, str] | None = None,
    group: str | None = None,
    only_given: bool = False,
    dest_prefix: str = "",
) -> None:
    """One flag per field of the dataclass `cls` (see the module docstring).

    rename: field -> its spellings, the first shown first (`{"lam": ["--embedding_lambda", "--lam"]}`);
    defaults / helps: this verb's defaults (MISSING: the flag is required) and help texts where they differ
    from the field's;
    group: the help section, unless the field's metadata names one; only_given: a flag not given
    leaves no value (the caller applies its own defaults), while --help still shows the field's;
    dest_prefix: keeps two dataclasses' same-named fields apart in the parsed namespace.
    """
    rename, defaults, helps = rename or {}, defaults or {}, helps or {}
    for config_field in fields(cls):
        if config_field.name in skip or not config_field.init:
            continue
        section = config_field.metadata.get("group", group)
        target = parser if section is None else _group(parser, section)
        spellings = rename.get(config_field.name)
        help_text = helps.get(config_field.name, config_field.metadata["help"])
        dest = dest_prefix + config_field.name
        _add_flag(target, config_field, spellings, defaults, help_text, only_given, dest)


def _group(parser: argparse.ArgumentParser, title: str):
    """The parser's help section `title`, made on first use (several dataclasses may share one)."""
    existing = next((group for group in parser._action_groups if group.title == title), None)
    return existing or parser.add_argument_group(title)


def _add_flag(
    target,
    config_field: Field,
    spellings: list[str] | None,
    defaults: dict,
    help_text: str,
    only_given: bool,
    dest: str,
) -> None:
    name, kind = config_field.name, str(config_field.type)
    default = defaults.get(name, field_default(config_field))
    required = default is MISSING
    if not required and default is not None and default != "":
        help_text = f"{help_text} (default: {_shown(default)})"
    options = {
        "dest": dest,
        "help": help_text,
        "required": required,
        "metavar": config_field.metadata.get("metavar") or name.upper(),
    }
    if default is not MISSING:
        options["default"] = argparse.SUPPRESS if only_given else default
    if kind.startswith("bool"):
        options.update(type=str2bool, nargs="?", const=True, metavar=BOOL_METAVAR)
    elif kind.startswith(("list", "tuple")):
        empty_allowed = default == [] or default == ()
        options.update(action=_ListAction, nargs="*" if empty_allowed else "+")
    else:
        choices = config_field.metadata.get("choices")
        options.update(type=_TYPES.get(kind, str), choices=choices)
        if choices:
            # argparse shows {a,b,c} in place of the metavar
            options["metavar"] = None
    target.add_argument(*(spellings or [f"--{name}"]), **options)


def dataclass_values(
    args: argparse.Namespace, cls: type, skip: tuple[str, ...] = (), dest_prefix: str = ""
) -> dict:
    """The parsed flags of `cls`'s fields (those given, with only_given), as keyword arguments for `cls(**…)`."""
    values = {
        f.name: getattr(args, dest_prefix + f.name, MISSING)
        for f in fields(cls)
        if f.init and f.name not in skip
    }
    return {name: value for name, value in values.items() if value is not MISSING}
