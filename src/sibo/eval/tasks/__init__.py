"""The paper's 15 benchmarks in LLM-Adapters' layout: <data_dir>/<Name>/test.json, a JSON list of
{instruction, input, output, answer}. One module per family (math, commonsense) knows its
dataset names, upstream's decoding budget, and how a response becomes a prediction.

    tasks = resolve_datasets("math,boolq")          # names, families, case-insensitive
    examples = load_examples(tasks[0], data_dir)   # validated: InputError names file and record
    prediction = tasks[0].extract(response, examples[0], "careful")
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from sibo.errors import InputError
from sibo.eval.tasks import commonsense, math
from sibo.files import check_text, parse_json

EXTRACTION_MODES = ("careful", "legacy")
FAMILIES: dict[str, ModuleType] = {"math": math, "commonsense": commonsense}
DATA_DIR_ENV = "SIBO_DATA_DIR"
DATA_DIR_HELP = (
    "folder holding <Name>/test.json (default: $SIBO_DATA_DIR when set, else ./dataset as upstream)"
)

Prediction = float | str | None


@dataclass(frozen=True)
class Example:
    """One test question; `label` is the dataset's answer string ("576.0", "D", "answer3"); `seen`:
    the question is also in the adapter's training data (`sibo.eval.contamination`), as an exact copy or,
    with `near_copy`, as a near one (same numbers and answer, a word or two changed)."""

    index: int
    instruction: str
    input: str
    label: str
    seen: bool = False
    near_copy: bool = False


@dataclass(frozen=True)
class Task:
    """One benchmark: its canonical name, its family module, and upstream's max_new_tokens."""

    name: str
    family: str

    @property
    def module(self) -> ModuleType:
        return FAMILIES[self.family]

    @property
    def max_new_tokens(self) -> int:
        return self.module.MAX_NEW_TOKENS

    def extract(
        self, response: str, example: Example, mode: str = "careful", chat: bool = False
    ) -> Prediction:
        """The prediction in `response`; `chat`: a chat answer, which ends at its EOS, so is not cut at a
        "###" heading as an Alpaca response running on into a new prompt is."""
        if mode not in EXTRACTION_MODES:
            raise InputError(f"unknown extraction {mode!r}: use one of {', '.join(EXTRACTION_MODES)}")
        return self.module.extract(response, self.name, example.instruction, mode, cut=not chat)

    def is_correct(self, prediction: Prediction, label: str) -> bool:
        return self.module.is_correct(prediction, label, self.name)


_BY_NAME = {
    name.lower(): Task(name, family) for family, module in FAMILIES.items() for name in module.DATASETS
}


def all_tasks() -> list[Task]:
    return list(_BY_NAME.values())


def resolve_datasets(spec: str | Sequence[str]) -> list[Task]:
    """The tasks named by "gsm8k,AQuA", "math", "commonsense" or a list of those: in order, no repeats."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    tasks: list[Task] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name.lower() in FAMILIES:
            found = [_BY_NAME[dataset.lower()] for dataset in FAMILIES[name.lower()].DATASETS]
        elif name.lower() in _BY_NAME:
            found = [_BY_NAME[name.lower()]]
        else:
            known = ", ".join(task.name for task in all_tasks())
            raise InputError(f"unknown dataset {name!r}: use math, commonsense, or any of {known}")
        tasks += [task for task in found if task not in tasks]
    if not tasks:
        raise InputError("no dataset given: pass --dataset NAME[,NAME…], math or commonsense")
    return tasks


def default_data_dir() -> Path:
    """$SIBO_DATA_DIR when set, else ./dataset (where upstream keeps them)."""
    return Path(os.environ.get(DATA_DIR_ENV) or "dataset")


def dataset_file(task: Task, data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / task.name / "test.json"


def load_examples(task: Task, data_dir: str | os.PathLike) -> list[Example]:
    """The test examples of one benchmark, every record checked before any model runs."""
    path = dataset_file(task, data_dir)
    if path.is_dir():
        raise InputError(f"dataset file {path} is a folder, not a JSON file")
    if not path.is_file():
        raise InputError(f"dataset file {path} not found (expected <data_dir>/{task.name}/test.json)")
    try:
        records = json.loads(path.read_text(encoding="utf-8").removeprefix("\ufeff"))
    except json.JSONDecodeError as error:
        raise InputError(
            f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
        ) from None
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except (RecursionError, ValueError):  # nested too deep; an integer of over 4,300 digits
        parse_json(path.read_bytes(), str(path))
        raise
    if not isinstance(records, list):
        raise InputError(f"{path}: expected a JSON list of records, found a {type(records).__name__}")
    if not records:
        raise InputError(f"{path}: no examples: an empty test set has no accuracy")
    return [_example(record, index, task, path) for index, record in enumerate(records)]


def _example(record: object, index: int, task: Task, path: Path) -> Example:
    where = f"{path}: record {index}"
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected an object, found a {type(record).__name__}")
    for key in ("instruction", "answer"):
        if key not in record:
            raise InputError(f"{where}: missing {key!r}")
    instruction, answer, input_text = record["instruction"], record["answer"], record.get("input") or ""
    if not isinstance(instruction, str) or not instruction.strip():
        raise InputError(f"{where}: 'instruction' must be a non-empty string")
    if not isinstance(input_text, str):
        raise InputError(f"{where}: 'input' must be a string")
    check_text(instruction + input_text, where)
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not task.module.is_valid_label(answer.strip(), task.name):
        raise InputError(f"{where}: answer {answer!r} is not a valid {task.name} label")
    return Example(index=index, instruction=instruction, input=input_text, label=answer.strip())
