"""Instruction records in, training examples and batches out.

A record is {instruction, input, output} (input optional), read from a JSON list, a JSONL file,
or a datasets hub name. Every bad record is reported with its file and index (or line) before
anything is trained. A record becomes one example: the prompt (the one template in
`sibo.prompts`) and the response tokenized separately — exactly what generation sees — then
joined, cut at cutoff_len, and with the prompt masked out of the loss unless train_on_inputs.

`PaddedCollator` pads a micro-batch to its longest example; it serves the models whose attention
cannot keep packed sequences apart. The padding-free batches are in `sibo.train.packing`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sibo.errors import InputError, first_line
from sibo.prompts import build_prompt

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value the loss skips
LOCAL_SUFFIXES = (".json", ".jsonl")


@dataclass(frozen=True)
class Record:
    """One instruction-following example."""

    instruction: str
    input: str
    output: str


@dataclass
class TokenizedSet:
    """Examples ready for a collator, and what happened on the way."""

    examples: list[dict[str, list[int]]]  # each: input_ids, labels (same length)
    truncated: int  # records cut at cutoff_len
    dropped: int  # records left with no token to learn from (their response was cut off)


# ---------------------------------------------------------------- reading and validation


def load_records(data_path: str) -> list[Record]:
    """The records of a local .json/.jsonl file, or of a datasets hub dataset's train split."""
    path = Path(data_path)
    if path.is_file():
        return read_records_file(path)
    if path.suffix in LOCAL_SUFFIXES or path.exists() or data_path.startswith((".", "/", "~")):
        raise InputError(f"data file {data_path} does not exist")
    return _load_hub_records(data_path)


def read_records_file(path: Path) -> list[Record]:
    """Records from a JSON list or JSONL file, each checked; InputError names the file and the place."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            raw_records = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(
                f"{path}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
            ) from None
        records = [validate_record(raw, f"{path}: record {index}") for index, raw in enumerate(raw_records)]
    elif stripped.startswith("{") or not stripped:
        records = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{path}: malformed JSON at line {line_number}: {error.msg}") from None
            records.append(validate_record(raw, f"{path}: line {line_number}"))
    else:
        raise InputError(f"{path}: expected a JSON list of records or JSONL (one record per line)")
    if not records:
        raise InputError(f"{path}: zero usable records")
    return records


def validate_record(raw: object, where: str) -> Record:
    """A Record from one parsed JSON value; `where` ('file: record 3') prefixes any error."""
    if not isinstance(raw, dict):
        raise InputError(
            f"{where}: expected an object with instruction/input/output, got {type(raw).__name__}"
        )
    for name in ("instruction", "output"):
        if name not in raw:
            raise InputError(f"{where}: missing field {name!r}")
    values = {}
    for name in ("instruction", "input", "output"):
        value = raw.get(name)
        if name == "input" and value is None:
            value = ""
        if not isinstance(value, str):
            raise InputError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
        values[name] = value
    if not values["instruction"].strip():
        raise InputError(f"{where}: field 'instruction' is empty")
    return Record(**values)


def _load_hub_records(name: str) -> list[Record]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split="train")
    except Exception as error:  # noqa: BLE001 - offline, unknown name, gated: all one message
        raise InputError(
            f"data_path {name}: not a local file, and no hub dataset of that name could be loaded "
            f"({first_line(error)})"
        ) from None
    records = [validate_record(raw, f"{name}: record {index}") for index, raw in enumerate(dataset)]
    if not records:
        raise InputError(f"{name}: zero usable records")
    return records


def split_validation(
    records: Sequence[Record], val_set_size: int, seed: int = 42
) -> tuple[list[Record], list[Record]]:
    """(train, validation): a seeded random hold-out of val_set_size records, as upstream does."""
    if val_set_size <= 0:
        return list(records), []
    if val_set_size >= len(records):
        raise InputError(
            f"val_set_size {val_set_size} leaves no training records: the data has {len(records)}; "
            "lower --val_set_size (0 disables validation)"
        )
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    held_out = set(order[:val_set_size])
    train = [record for index, record in enumerate(records) if index not in held_out]
    return train, [records[index] for index in order[:val_set_size]]


# ---------------------------------------------------------------- tokenisation


def tokenize_records(
    records: Sequence[Record],
    tokenizer,
    cutoff_len: int,
    train_on_inputs: bool = True,
    chunk_size: int = 1024,
    description: str = "tokenizing",
) -> TokenizedSet:
    """Examples for every record; records whose response is entirely cut off are dropped."""
    examples, truncated, dropped = [], 0, 0
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    with tqdm(total=len(records), desc=description, unit="rec", disable=len(records) < 5000) as progress:
        for start in range(0, len(records), chunk_size):
            chunk = records[start : start + chunk_size]
            prompts = tokenizer([build_prompt(r.instruction, r.input) for r in chunk])["input_ids"]
            responses = tokenizer([r.output for r in chunk], add_special_tokens=False)["input_ids"]
            for prompt_ids, response_ids in zip(prompts, responses, strict=True):
                example, was_cut = build_example(prompt_ids, response_ids + eos, cutoff_len, train_on_inputs)
                truncated += was_cut
                if example is None:
                    dropped += 1
                else:
                    examples.append(example)
            progress.update(len(chunk))
    return TokenizedSet(examples, truncated, dropped)


def build_example(
    prompt_ids: list[int], response_ids: list[int], cutoff_len: int, train_on_inputs: bool
) -> tuple[dict[str, list[int]] | None, bool]:
    """(example or None when nothing is left to learn, whether it was cut at cutoff_len)."""
    input_ids = (prompt_ids + response_ids)[:cutoff_len]
    masked = 0 if train_on_inputs else min(len(prompt_ids), len(input_ids))
    labels = [IGNORE_INDEX] * masked + input_ids[masked:]
    was_cut = len(prompt_ids) + len(response_ids) > cutoff_len
    # A causal LM never predicts position 0, so an example needs a label after it.
    if all(label == IGNORE_INDEX for label in labels[1:]):
        return None, was_cut
    return {"input_ids": input_ids, "labels": labels}, was_cut


# ---------------------------------------------------------------- batching


class PaddedCollator:
    """Right-pads a micro-batch to its longest example: (B, T_max) ids, mask, labels (-100 on pads)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for feature in features:
            padding = width - len(feature["input_ids"])
            batch["input_ids"].append(list(feature["input_ids"]) + [self.pad_token_id] * padding)
            batch["attention_mask"].append([1] * len(feature["input_ids"]) + [0] * padding)
            batch["labels"].append(list(feature["labels"]) + [IGNORE_INDEX] * padding)
        return {name: torch.tensor(rows, dtype=torch.long) for name, rows in batch.items()}
