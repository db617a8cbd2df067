"""Records in, training examples and batches out.

A record is an instruction record {instruction, input, output} (input optional) or a chat record
(`sibo.chat`: messages or ShareGPT conversations), read from a JSON list or a JSONL file here,
from any other source by `sibo.data_sources`; a file holds one kind. Every bad record is reported
with its file and index (or line) before anything is trained. An instruction record with Alpaca's
template becomes the prompt (`sibo.prompts`) and the response tokenized separately — exactly what
generation sees — then joined, cut at cutoff_len, with the prompt masked out of the loss unless
train_on_inputs. With the chat template, a record (an instruction record as one user turn and its
reply) is rendered by the tokenizer's template and the loss covers the assistant turns.
`tokenize_dataset` does this over a `datasets.Dataset`, in Arrow batches.

`PaddedCollator` pads a micro-batch to its longest example; it serves the models whose attention
cannot keep packed sequences apart. The padding-free batches are in `sibo.train.packing`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sibo import chat
from sibo.chat import Conversation
from sibo.errors import InputError
from sibo.files import check_text, parse_json
from sibo.progress import bar
from sibo.prompts import ALPACA, PromptTemplate, build_prompt

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value the loss skips
LONG_WORK_ROWS = 5000  # fewer records than this are read and tokenized in a blink: no progress bar


@dataclass(frozen=True)
class Record:
    """One instruction-following example."""

    instruction: str
    input: str
    output: str


@dataclass
class TokenizedSet:
    """Examples ready for a collator, and what happened on the way."""

    # each: input_ids, labels (same length); `tokenize_dataset` gives a datasets.Dataset (+ length)
    examples: list[dict[str, list[int]]] | datasets.Dataset
    truncated: int  # records cut at cutoff_len
    dropped: int  # records left with no token to learn from (their response was cut off)
    prompt_only: int = 0  # kept with train_on_inputs, but their whole response was cut off


# ---------------------------------------------------------------- reading and validation


def read_records_file(path: Path) -> list[Record] | list[Conversation]:
    """Records from a JSON list or JSONL file, each checked; InputError names the file and the place."""
    try:
        text = path.read_text(encoding="utf-8").removeprefix("\ufeff")  # a BOM, as Windows editors write
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        raw_records = parse_json(text, str(path))
        places = [f"{path}: record {index}" for index in range(len(raw_records))]
        records = [validate_record(raw, place) for raw, place in zip(raw_records, places, strict=True)]
    elif stripped.startswith("{") or not stripped:
        records, places = [], []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            raw = parse_json(line, str(path), line=line_number)
            places.append(f"{path}: line {line_number}")
            records.append(validate_record(raw, places[-1]))
    else:
        raise InputError(f"{path}: expected a JSON list of records or JSONL (one record per line)")
    if not records:
        raise InputError(f"{path}: zero usable records")
    check_one_kind([type(record) is Conversation for record in records], places)
    return records


def check_one_kind(is_chat: Sequence[bool], places: Sequence[str]) -> None:
    """InputError at the first record whose kind (chat or instruction) differs from the first record's."""
    kinds = ("an instruction record", "a chat record")
    for index, chat_record in enumerate(is_chat):
        if chat_record != is_chat[0]:
            raise InputError(
                f"{places[index]}: {kinds[chat_record]}, but {places[0].rsplit(': ', 1)[-1]} is "
                f"{kinds[is_chat[0]]}: one data file holds one kind"
            )


def validate_record(raw: object, where: str) -> Record | Conversation:
    """A Record (or a chat record's Conversation) from one parsed JSON value; `where` ('file: record 3')
    prefixes any error."""
    if not isinstance(raw, dict):
        raise InputError(
            f"{where}: expected an object with instruction/input/output (or messages), got {type(raw).__name__}"
        )
    if chat.is_chat_record(raw):
        return chat.validate_conversation(raw, where)
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
        values[name] = check_text(value, f"{where}: field {name!r}")
    if not values["instruction"].strip():
        raise InputError(f"{where}: field 'instruction' is empty")
    return Record(**values)


def split_validation(records, val_set_size: int, seed: int = 42):
    """(train, validation): a seeded random hold-out of val_set_size records, as upstream does.

    `records` is a list of Records or a `datasets.Dataset` of rows; the halves are of the same kind.
    """
    if val_set_size <= 0:
        return records, records.select([]) if hasattr(records, "select") else []
    if val_set_size >= len(records):
        raise InputError(
            f"val_set_size {val_set_size} leaves no training records: the data has {len(records)}; "
            "lower --val_set_size (0 disables validation)"
        )
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    held_out = set(order[:val_set_size])
    train = [index for index in range(len(records)) if index not in held_out]
    keys = _record_keys(records)
    in_training = {keys[index] for index in train}
    copies = sum(keys[index] in in_training for index in order[:val_set_size])
    if copies:
        logger.warning(
            "validation: %d of its %d records are copies of training records: eval_loss (and the best checkpoint "
            "chosen by it) flatters the model; deduplicate the data",
            copies,
            val_set_size,
        )
    if hasattr(records, "select"):  # a datasets.Dataset: index it, copy nothing
        return records.select(train), records.select(order[:val_set_size])
    return [records[index] for index in train], [records[index] for index in order[:val_set_size]]


def warn_of_empty_responses(records: datasets.Dataset) -> int:
    """Say how many records have an empty response (an instruction record's output, or an assistant turn of a
    conversation): kept, as upstream keeps them, but each teaches the model to answer with nothing."""
    if "output" in records.column_names:
        empty = sum(not text.strip() for text in records["output"])
    else:
        empty = sum(
            any(turn["role"] == "assistant" and not turn["content"].strip() for turn in messages)
            for messages in records["messages"]
        )
    if empty:
        logger.warning(
            "%d of %d records have an empty response: each teaches the model to answer with nothing (is this a "
            "test file, whose answers are elsewhere?)",
            empty,
            len(records),
        )
    return empty


def warn_of_special_token_text(records: datasets.Dataset, tokenizer, split: str = "") -> int:
    """Say how many records hold the text of one of the tokenizer's special tokens ("</s>", "<|im_end|>"):
    the tokenizer reads it as that token, not as text (as transformers' tokenizers do by default), so an
    answer quoting "</s>" teaches the model to end there. Kept, as other trainers keep them. `split` names the
    records ("training", "validation")."""
    import pyarrow.compute as pc

    specials = sorted({token.content for token in tokenizer.added_tokens_decoder.values() if token.special})
    if not specials:
        return 0
    # one pass per column for all of them (a tokenizer may have hundreds): RE2 reads Python's escapes
    pattern = "|".join(re.escape(special) for special in specials)
    chat_rows = "messages" in records.column_names
    columns = ["messages"] if chat_rows else ["instruction", "input", "output"]
    holding, found = 0, set()
    for table in records.select_columns(columns).with_format("arrow").iter(batch_size=10_000):
        if chat_rows:  # a conversation holds it when one of its turns does
            turns = table.column("messages").combine_chunks()
            texts, rows = [pc.struct_field(pc.list_flatten(turns), "content")], pc.list_parent_indices(turns)
        else:
            texts, rows = table.columns, None
        hits = [pc.match_substring_regex(text, pattern) for text in texts]
        mask = functools.reduce(pc.or_, hits)
        holding += len(pc.unique(pc.filter(rows, mask))) if chat_rows else pc.sum(mask).as_py() or 0
        if len(found) < len(specials):  # which ones, read off the texts that hold one
            for text, hit in zip(texts, hits, strict=True):
                for value in pc.filter(text, hit).slice(0, 1000).to_pylist():
                    found.update(special for special in specials if special in value)
    if holding:
        logger.warning(
            "%d of %d %srecords hold the text of a special token (%s): the tokenizer reads it as that token, not "
            "as text (an end-of-text token ends the answer there); rewrite it where it is meant as text",
            holding,
            len(records),
            f"{split} " if split else "",
            ", ".join(sorted(found)),
        )
    return holding


def _record_keys(records) -> list[bytes]:
    """A digest of each record's content (a Dataset's rows read in batches, a chat row's index aside; or Records
    and Conversations), so that copies compare equal without holding the data twice."""

    def digest(content: object) -> bytes:
        return hashlib.blake2b(repr(content).encode(), digest_size=16).digest()

    if not hasattr(records, "column_names"):
        return [digest(record) for record in records]
    content = records.select_columns([name for name in records.column_names if name != "record"])
    return [
        digest(row) for batch in content.iter(batch_size=1000) for row in zip(*batch.values(), strict=True)
    ]


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
    examples, truncated, dropped, prompt_only = [], 0, 0, 0
    with bar(
        total=len(records), desc=description, unit="rec", disable=len(records) < LONG_WORK_ROWS
    ) as progress:
        for start in range(0, len(records), chunk_size):
            chunk = records[start : start + chunk_size]
            for example, was_cut, only_prompt in _tokenize_batch(
                tokenizer, [(r.instruction, r.input, r.output) for r in chunk], cutoff_len, train_on_inputs
            ):
                truncated += was_cut
                prompt_only += only_prompt
                if example is None:
                    dropped += 1
                else:
                    examples.append(example)
            progress.update(len(chunk))
    return TokenizedSet(examples, truncated, dropped, prompt_only)


def tokenize_dataset(
    dataset,
    tokenizer,
    cutoff_len: int,
    train_on_inputs: bool = True,
    description: str = "tokenizing",
    template: PromptTemplate | None = None,
    where: str = "data",
) -> TokenizedSet:
    """`tokenize_records` over a `datasets.Dataset` of records, in Arrow batches: the same examples,
    as a Dataset of input_ids, labels and length (what the Trainer's length grouping reads). Chat rows
    (a `messages` column, with the file's `record` numbers) and, with the chat template, instruction rows
    are rendered by the tokenizer's chat template; `where` (the data path) names a record it refuses."""
    import pyarrow.compute

    chat_template = template is not None and template.name != ALPACA

    def tokenize(batch: dict) -> dict[str, list]:
        if "messages" in batch:
            places = [f"{where}: record {number}" for number in batch["record"]]
            examples = _tokenize_chat_batch(tokenizer, batch["messages"], places, cutoff_len, train_on_inputs)
        else:
            rows = list(zip(batch["instruction"], batch["input"], batch["output"], strict=True))
            if chat_template:
                conversations = [chat.instruction_conversation(*row) for row in rows]
                places = [f"{where}: a record" for _ in conversations]
                examples = _tokenize_chat_batch(tokenizer, conversations, places, cutoff_len, train_on_inputs)
            else:
                examples = _tokenize_batch(tokenizer, rows, cutoff_len, train_on_inputs)
        columns = {"input_ids": [], "labels": [], "length": [], "was_cut": [], "prompt_only": []}
        for example, was_cut, only_prompt in examples:
            columns["was_cut"].append(was_cut)
            columns["prompt_only"].append(only_prompt)
            columns["input_ids"].append(example["input_ids"] if example else [])
            columns["labels"].append(example["labels"] if example else [])
            columns["length"].append(len(example["input_ids"]) if example else 0)
        return columns

    tokenized = map_rows(dataset, tokenize, remove_columns=dataset.column_names, desc=description)
    truncated = pyarrow.compute.sum(tokenized.data.column("was_cut")).as_py() or 0
    prompt_only = pyarrow.compute.sum(tokenized.data.column("prompt_only")).as_py() or 0
    # A dropped record left an empty row (length 0): filter keeps an index over the rows, no copy.
    with datasets_bars(len(tokenized) >= LONG_WORK_ROWS):
        examples = tokenized.remove_columns(["was_cut", "prompt_only"]).filter(
            lambda lengths: [length > 0 for length in lengths], input_columns="length", batched=True
        )
    return TokenizedSet(examples, truncated, len(dataset) - len(examples), prompt_only)


def map_rows(dataset, function, **kwargs):
    """`dataset.map(batched=True)`, its output beside no user file: a dataset read from a folder would
    otherwise get cache files written into that folder. In-memory datasets stay in memory."""
    from datasets.fingerprint import get_temporary_cache_files_directory

    if dataset.cache_files:
        name = f"sibo-{uuid.uuid4().hex}.arrow"
        kwargs.setdefault("cache_file_name", os.path.join(get_temporary_cache_files_directory(), name))
    with datasets_bars(len(dataset) >= LONG_WORK_ROWS):
        return dataset.map(function, batched=True, load_from_cache_file=False, **kwargs)


@contextmanager
def datasets_bars(shown: bool) -> Iterator[None]:
    """datasets' progress bars only when `shown`: a bar for work that is over in a blink is noise."""
    import datasets

    hidden_before = datasets.are_progress_bars_disabled()
    if not shown:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not shown and not hidden_before:
            datasets.enable_progress_bars()


def _tokenize_batch(tokenizer, records: list[tuple[str, str, str]], cutoff_len: int, train_on_inputs: bool):
    """(example or None, was_cut, prompt_only) for each (instruction, input, output): prompt_only when
    an example is kept (train_on_inputs) but cutoff_len left none of its response."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    prompts = tokenizer([build_prompt(instruction, input) for instruction, input, _ in records])["input_ids"]
    responses = tokenizer([output for _, _, output in records], add_special_tokens=False)["input_ids"]
    results = []
    for prompt_ids, response_ids in zip(prompts, responses, strict=True):
        example, was_cut = build_example(prompt_ids, response_ids + eos, cutoff_len, train_on_inputs)
        results.append((example, was_cut, example is not None and len(prompt_ids) >= cutoff_len))
    return results


def _tokenize_chat_batch(
    tokenizer, conversations: list[list[dict]], places: list[str], cutoff_len: int, train_on_inputs: bool
):
    """(example or None, was_cut, prompt_only) for each conversation: the chat template's text, tokenized as
    `apply_chat_template` tokenizes it, labelled on the assistant turns only unless train_on_inputs (then
    prompt_only when cutoff_len left no assistant token, where a fast tokenizer can tell)."""
    spans = not train_on_inputs or tokenizer.is_fast
    rendered = [
        chat.render(tokenizer, messages, place, spans=spans)
        for messages, place in zip(conversations, places, strict=True)
    ]
    texts = [text for text, _ in rendered]
    try:
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=spans)
    except NotImplementedError:
        raise InputError(
            "finding the assistant turns of chat records needs a fast tokenizer (offsets): use one, or "
            "--train_on_inputs True"
        ) from None
    results = []
    for index, input_ids in enumerate(encoded["input_ids"]):
        learned = chat.in_spans(encoded["offset_mapping"][index], rendered[index][1]) if spans else None
        if train_on_inputs:
            labels = list(input_ids)
        else:
            labels = [token if keep else IGNORE_INDEX for token, keep in zip(input_ids, learned, strict=True)]
        input_ids, labels = input_ids[:cutoff_len], labels[:cutoff_len]
        was_cut = len(encoded["input_ids"][index]) > cutoff_len
        example = None if nothing_to_learn(labels) else {"input_ids": input_ids, "labels": labels}
        prompt_only = (
            train_on_inputs and learned is not None and example is not None and not any(learned[:cutoff_len])
        )
        results.append((example, was_cut, prompt_only))
    return results


def nothing_to_learn(labels: list[int]) -> bool:
    """A causal LM never predicts position 0, so an example needs a label after it."""
    return all(label == IGNORE_INDEX for label in labels[1:])


def build_example(
    prompt_ids: list[int], response_ids: list[int], cutoff_len: int, train_on_inputs: bool
) -> tuple[dict[str, list[int]] | None, bool]:
    """(example or None when nothing is left to learn, whether it was cut at cutoff_len)."""
    input_ids = (prompt_ids + response_ids)[:cutoff_len]
    masked = 0 if train_on_inputs else min(len(prompt_ids), len(input_ids))
    labels = [IGNORE_INDEX] * masked + input_ids[masked:]
    was_cut = len(prompt_ids) + len(response_ids) > cutoff_len
    if nothing_to_learn(labels):
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
