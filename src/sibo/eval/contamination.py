"""Which test questions the adapter was trained on: a test question whose words and numbers (case,
spacing and punctuation aside) are also a training record's is "seen", and its score is not a
held-out score.

    questions = training_questions(Path("math_train_3k.json"))
    seen = seen_indices(examples, questions)   # {index of each seen test question}

LLM-Adapters' first math training file was built from 80 % of the seven math test sets; a model
trained on it can be scored honestly only on the rest. `sibo evaluate` reports, per set, how many
test questions appear in the training data, and with --exclude_seen scores only the unseen ones.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from sibo.errors import InputError
from sibo.eval.tasks import Example, Task
from sibo.files import RUN_CONFIG_FILE

logger = logging.getLogger(__name__)

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+")


def normalise(instruction: str, input_text: str = "") -> str:
    """A question's words and numbers, lower-cased, with spacing, punctuation and thousands separators
    erased: the key two copies of one question share. LLM-Adapters' files hold the same question as
    "2,041 part-time employees." and "2041 part-time employees ." or "didn't" and "did n't"."""
    text = f"{instruction}\n{input_text}" if input_text else instruction
    text = _THOUSANDS.sub("", text.lower())
    # numbers stay whole and delimited ("0.33" is not "33"); words join across apostrophes
    return "".join(f"<{token}>" if token[0].isdigit() else token for token in _TOKEN.findall(text))


def training_questions(train_data: Path, columns: str = "") -> set[str]:
    """The normalised questions of local training data in any shape finetune reads (JSON list, JSONL, CSV,
    Parquet, a save_to_disk folder), its columns renamed as `--data_columns` says, each record checked.
    A chat record's questions are its user turns (a test question is prompted as one)."""
    if not Path(train_data).exists():
        raise InputError(f"training data file {train_data} not found (needed to find seen test questions)")
    # here: the data modules import torch, and --help must not
    from sibo.data_sources import load_record_dataset, parse_columns

    records = load_record_dataset(str(train_data), parse_columns(columns))
    if "messages" in records.column_names:
        return {
            normalise(turn["content"])
            for conversation in records["messages"]
            for turn in conversation
            if turn["role"] == "user"
        }
    return {
        normalise(instruction, input_text)
        for instruction, input_text in zip(records["instruction"], records["input"], strict=True)
    }


def seen_indices(examples: Iterable[Example], questions: set[str]) -> set[int]:
    """The indices of the examples whose question is one of `questions`."""
    return {
        example.index for example in examples if normalise(example.instruction, example.input) in questions
    }


def _recorded_config(weights_path: str | None) -> dict | None:
    """The flags an adapter's run_config.json records: None when it has none, {} when it is unreadable."""
    file = Path(weights_path or "") / RUN_CONFIG_FILE
    if not weights_path or not file.is_file():
        return None
    try:
        config = json.loads(file.read_text(encoding="utf-8"))["config"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return {}
    return config if isinstance(config, dict) else {}


def recorded_data_columns(weights_path: str | None) -> str:
    """The --data_columns an adapter's run_config.json records ("" when none)."""
    return (_recorded_config(weights_path) or {}).get("data_columns") or ""


def recorded_training_data(weights_path: str | None) -> Path | None:
    """The data_path an adapter's run_config.json records, when it names local data still there."""
    config = _recorded_config(weights_path)
    if config is None:
        return None
    data_path = config.get("data_path")
    if not isinstance(data_path, str):
        logger.warning(
            "%s records no data_path: test questions are not checked against training data",
            Path(weights_path) / RUN_CONFIG_FILE,
        )
        return None
    if not Path(data_path).exists():
        logger.warning(
            "the adapter was trained on %s, which is not here: test questions are not checked against "
            "training data (pass --train_data FILE)",
            data_path,
        )
        return None
    return Path(data_path)


def mark_seen(
    benchmarks: list[tuple[Task, list[Example]]], train_data: Path, columns: str = ""
) -> list[tuple[Task, list[Example]]]:
    """The benchmarks with each example's `seen` set from the training data's questions."""
    questions = training_questions(train_data, columns)
    marked = []
    for task, examples in benchmarks:
        seen = seen_indices(examples, questions)
        marked.append((task, [replace(example, seen=example.index in seen) for example in examples]))
    return marked


def overlap_report(benchmarks: list[tuple[Task, list[Example]]], exclude_seen: bool) -> dict[str, dict]:
    """Per set: how many of its test questions are in the training data, logged and returned for the summary."""
    report = {}
    for task, examples in benchmarks:
        seen = sum(example.seen for example in examples)
        logger.info(
            "%s: %d of %d test questions appear in the training data%s",
            task.name,
            seen,
            len(examples),
            f"; scoring the {len(examples) - seen} unseen ones" if exclude_seen else "",
        )
        report[task.name] = {
            "seen_in_training": seen,
            "test_questions": len(examples),
            "scored": "unseen only" if exclude_seen else "all",
        }
    return report


def unseen_only(benchmarks: list[tuple[Task, list[Example]]]) -> list[tuple[Task, list[Example]]]:
    return [(task, [example for example in examples if not example.seen]) for task, examples in benchmarks]
