"""`sibo <verb> --config run.yaml`: a run's flags kept in a YAML or JSON file; the command line wins.

    base_model: HuggingFaceTB/SmolLM2-135M
    data_path: math.jsonl
    embedding_lambda: 0.1
    lora_target_modules: [q_proj, v_proj]
    ffn: true

Keys are the verb's flag names without `--` (any spelling the flag takes); a value is what the flag
takes (a list for a list flag, true/false for a switch), and null leaves the flag's default. A finetune
run's run_config.json is such a file: its "config" block holds the run's flags. Each setting becomes a
`--flag=value` argument ahead of the command line, so it passes the same checks as a typed flag, and a
flag typed after it wins.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
from pathlib import Path

from sibo.errors import InputError
from sibo.files import read_json

CONFIG_FLAG = "--config"
CONFIG_HELP = (
    "a YAML or JSON file of flag: value settings (a finetune run's run_config.json repeats that run); "
    "flags on the command line win"
)


class AbbreviatedConfigFlag(argparse.Action):
    """`--config FILE` is read before parsing; argparse reaches this only for an abbreviation (`--conf`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        raise InputError(f"{CONFIG_FLAG} must be written in full: its file is read before the other flags")


# In a run_config.json's "config" block, what the run did to its folder, not a setting of the run: replayed, the
# next run would delete the recorded run's folder (--overwrite) or resume it (--resume_from_checkpoint)
FOLDER_ACTIONS = ("overwrite", "resume_from_checkpoint")
MAX_FILE_BYTES = 1 << 20  # a flags file is a few hundred bytes; anything near this is not one
MAX_LIST_ITEMS = 10_000  # target_modules of the largest models are a few hundred names


def split_config_flag(args: list[str]) -> tuple[str | None, list[str]]:
    """(the --config file or None, the other arguments)."""
    path, rest = None, []
    arguments = iter(args)
    for arg in arguments:
        if arg == CONFIG_FLAG or arg.startswith(f"{CONFIG_FLAG}="):
            if path is not None:
                raise InputError(f"{CONFIG_FLAG} given twice: one file holds a run's settings")
            path = arg.partition("=")[2] if "=" in arg else next(arguments, None)
            if not path:
                raise InputError(f"argument {CONFIG_FLAG}: expected one argument")
        else:
            rest.append(arg)
    return path, rest


def config_file_arguments(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """The file's settings as `--flag=value` arguments of `parser`, in the file's order."""
    flags = _flags_by_key(parser)
    arguments, seen = [], {}
    for key, value in read_settings(path).items():
        name = str(key).lstrip("-")
        action = flags.get(name)
        if action is None:
            raise InputError(f"{path}: unknown key {key!r}{_closest(name, flags, parser.prog)}")
        if action.dest in seen:
            first = seen[action.dest]
            raise InputError(f"{path}: {first} (line {_line_of(path, first)}) and {key} (line "
                             f"{_line_of(path, key)}) set the same flag: keep one"[:300])  # fmt: skip
        seen[action.dest] = key
        if value is not None:
            arguments.append(f"--{name}={_flag_text(value, action, path, name)}")
    return arguments


def read_settings(path: str) -> dict:
    """The file's key: value mapping (run_config.json's "config" block, its FOLDER_ACTIONS left out); one line
    naming the file if it is bad."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{CONFIG_FLAG} {path}: no such file")
    if file.stat().st_size > MAX_FILE_BYTES:
        raise InputError(
            f"{path}: {file.stat().st_size:,} bytes, more than a flags file holds ({MAX_FILE_BYTES:,})"
        )
    if file.suffix.lower() == ".json":
        settings = read_json(file)
        _refuse_repeated_json_keys(file)
    else:
        settings = _read_yaml(file)
    if isinstance(settings, dict) and isinstance(settings.get("config"), dict):
        settings = {key: value for key, value in settings["config"].items() if key not in FOLDER_ACTIONS}
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise InputError(f"{path}: expected flag: value settings, got a {type(settings).__name__}")
    return settings


def _refuse_repeated_json_keys(file: Path) -> None:
    """A key given twice in a JSON object: json keeps the last silently; we name both lines."""

    def pairs(items: list) -> dict:
        keys = [key for key, _ in items]
        repeated = next((key for index, key in enumerate(keys) if key in keys[:index]), None)
        if repeated is not None:
            text = file.read_text(encoding="utf-8-sig")
            pattern = re.compile(rf'"{re.escape(repeated)}"\s*:')
            lines = [text.count("\n", 0, found.start()) + 1 for found in pattern.finditer(text)][:2]
            where = f" (lines {lines[0]} and {lines[1]})" if len(lines) == 2 else ""
            raise InputError(f"{file}: key {repeated!r} given twice{where}: keep one"[:300])
        return dict(items)

    json.loads(file.read_text(encoding="utf-8-sig"), object_pairs_hook=pairs)


def _line_of(path: str, key: str) -> str:
    """The line where `key` is set in the flags file (its first setting), as text; "?" if not found."""
    text = Path(path).read_text(encoding="utf-8-sig")
    quoted = re.escape(key)
    pattern = (
        rf'"{quoted}"\s*:' if Path(path).suffix.lower() == ".json" else rf"^[ \t]*[\"']?{quoted}[\"']?[ \t]*:"
    )
    found = re.search(pattern, text, re.MULTILINE)
    return str(text.count("\n", 0, found.start()) + 1) if found else "?"


def _read_yaml(file: Path) -> object:
    # here, not at the top: only a run given --config pays for the import
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """SafeLoader that refuses a key given twice in one mapping, naming both lines."""

        def construct_mapping(self, node, deep=False):
            first = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, str) and key in first:
                    raise InputError(f"{file}: key {key!r} given twice (lines {first[key]} and "
                                     f"{key_node.start_mark.line + 1}): keep one"[:300])  # fmt: skip
                first.setdefault(key, key_node.start_mark.line + 1) if isinstance(key, str) else None
            return super().construct_mapping(node, deep=deep)

    try:
        return yaml.load(file.read_bytes(), Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except OSError as error:
        raise InputError(f"{file}: cannot be read ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        place = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise InputError(f"{file}: malformed YAML{place}: {problem}") from None


def _flags_by_key(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every long spelling of every flag, without its dashes (--help and --config aside)."""
    return {
        option.removeprefix("--"): action
        for action in parser._actions
        if action.dest not in ("help", "config")
        for option in action.option_strings
        if option.startswith("--")
    }


def _closest(name: str, flags: dict, prog: str) -> str:
    close = difflib.get_close_matches(name, flags, n=1)
    return f": the closest flag is --{close[0]}" if close else f": `{prog} --help` lists the flags"


def _flag_text(value: object, action: argparse.Action, path: str, name: str) -> str:
    """A YAML/JSON value as the text the flag would be typed with."""
    if isinstance(value, dict):
        raise InputError(f"{path}: {name}: expected a value or a list, got a mapping")
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, list):
        if len(value) > MAX_LIST_ITEMS:
            raise InputError(
                f"{path}: {name}: {len(value):,} items, more than a list flag takes ({MAX_LIST_ITEMS:,})"
            )
        nested = next((index for index, item in enumerate(value) if isinstance(item, (list, dict))), None)
        if nested is not None:
            raise InputError(f"{path}: {name}: expected a flat list of plain values, but item {nested} is a "
                             f"{type(value[nested]).__name__}")  # fmt: skip
        # a list flag reads JSON; a flag of comma-separated names (--dataset) reads a,b
        return json.dumps(value) if action.nargs in ("+", "*") else ",".join(map(str, value))
    return str(value)
