"""Which test questions the adapter was trained on: a test question is "seen" when a training record
holds it as an exact copy (its words and numbers, case, spacing and punctuation aside) or as a near copy
(the same numbers and the same answer, and at least 80 % of the words), and its score is not a
held-out score. A question without numbers (boolq, piqa, …) is only ever an exact copy: the commonsense
sets wrap every question in one long template ("Please answer the following question with true or false,
question: … Answer format: true/false"), so two different questions with the same answer often share
80 % of their words or more.

    index = training_index(Path("math_train_3k.json"))
    index.copy_kind(instruction, input_text, answer)   # "exact", "near" or None

LLM-Adapters' first math training file was built from 80 % of the seven math test sets; a model
trained on it can be scored honestly only on the rest, and among the rest ~43 questions are a
training record with one word changed ("more" for "left", "2" for "two"). `sibo evaluate` reports,
per set, how many test questions appear in the training data (exact and near apart), and with
--exclude_seen scores only the others.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from sibo.errors import InputError
from sibo.eval.tasks import Example, Task
from sibo.files import RUN_CONFIG_FILE

logger = logging.getLogger(__name__)

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+")
_ANSWER_TOKEN = re.compile(r"[^\W_]+(?:\.\d+)?")  # "answer3", "576.0", "d"
_ANSWER_PHRASE = re.compile(r"answer is", re.IGNORECASE)
# Number words count as numbers ("two apples" is "2 apples"): zero to twenty and the tens. Larger
# numbers are written in digits in the math sets; "hundred" alone would turn "two hundred" into 2, 100.
_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen twenty")  # fmt: skip
_TENS = "thirty forty fifty sixty seventy eighty ninety"
NUMBER_WORDS = {word: str(value) for value, word in enumerate(_UNITS.split())} | {
    word: str(10 * tens) for tens, word in enumerate(_TENS.split(), start=3)
}
NEAR_OVERLAP = 0.8  # share of words two near copies have in common (one word of 5 changed is 0.8)


def normalise(instruction: str, input_text: str = "") -> str:
    """A question's words and numbers, lower-cased, with spacing, punctuation and thousands separators
    erased: the key two copies of one question share. LLM-Adapters' files hold the same question as
    "2,041 part-time employees." and "2041 part-time employees ." or "didn't" and "did n't"."""
    text = f"{instruction}\n{input_text}" if input_text else instruction
    text = _THOUSANDS.sub("", text.lower())
    # numbers stay whole and delimited ("0.33" is not "33"); words join across apostrophes
    return "".join(f"<{token}>" if token[0].isdigit() else token for token in _TOKEN.findall(text))


def _number(token: str) -> str:
    """A number token in one spelling: "576.0" and "576" are one answer, and so are 10.333333333333334 and
    10.333333333333332 (one file's float noise against another's): fractions are rounded to 6 places."""
    value = float(token)
    return str(int(value)) if value.is_integer() else repr(round(value, 6))


def question_words(instruction: str, input_text: str = "") -> list[str]:
    """A question's words and whole numbers in order, lower-cased, number words as digits."""
    text = f"{instruction}\n{input_text}" if input_text else instruction
    tokens = [NUMBER_WORDS.get(token, token) for token in _TOKEN.findall(_THOUSANDS.sub("", text.lower()))]
    return [_number(token) if _is_number(token) else token for token in tokens]


def _is_number(token: str) -> bool:
    return token[:1].isdigit()


def answer_key(text: str) -> str:
    """The answer a label ("576.0", "D") or a response ("… The answer is 576.") gives, in one spelling:
    the first token after the last "answer is", else the last number, else the last token."""
    text = _THOUSANDS.sub("", text.lower())
    phrases = list(_ANSWER_PHRASE.finditer(text))
    tokens = _ANSWER_TOKEN.findall(text[phrases[-1].end() :] if phrases else text)
    if not tokens:
        return ""
    numbers = [token for token in tokens if _is_number(token) and token.replace(".", "", 1).isdigit()]
    chosen = tokens[0] if phrases else (numbers[-1] if numbers else tokens[-1])
    return _number(chosen) if chosen.replace(".", "", 1).isdigit() else chosen


def word_overlap(a: Counter, b: Counter) -> float:
    """Words two questions share (counted with repeats) over the longer one's length: 1 only for the same words."""
    longest = max(sum(a.values()), sum(b.values()))
    return sum((a & b).values()) / longest if longest else 1.0


@dataclass
class QuestionIndex:
    """Training questions, looked up as exact copies (normalised text) and near copies (bucketed by their
    numbers and answer, so a lookup compares words with the few questions that share both)."""

    exact: set[str] = field(default_factory=set)
    buckets: dict[tuple, list[Counter]] = field(default_factory=dict)

    def add(self, instruction: str, input_text: str, answer: str) -> None:
        """`answer`: the record's answer as `answer_key` reads it."""
        self.exact.add(normalise(instruction, input_text))
        words = question_words(instruction, input_text)
        if _has_numbers(words):  # without numbers, only ever an exact copy
            self.buckets.setdefault(_bucket(words, answer), []).append(Counter(words))

    def copy_kind(self, instruction: str, input_text: str, answer: str) -> str | None:
        """ "exact" when a training question is this one, "near" when one has the same numbers and answer and
        ≥ NEAR_OVERLAP of the words, else None. A question without numbers is never a near copy: the
        commonsense sets' long shared template would make two different questions 80 % alike."""
        if normalise(instruction, input_text) in self.exact:
            return "exact"
        words = question_words(instruction, input_text)
        if not _has_numbers(words):
            return None
        counted = Counter(words)
        candidates = self.buckets.get(_bucket(words, answer), [])
        return "near" if any(word_overlap(counted, other) >= NEAR_OVERLAP for other in candidates) else None


def _has_numbers(words: list[str]) -> bool:
    return any(_is_number(word) for word in words)


def _bucket(words: list[str], answer: str) -> tuple:
    return tuple(sorted(word for word in words if _is_number(word))), answer


def training_records(train_data: Path, columns: str = "") -> list[tuple[str, str, str]]:
    """(instruction, input, output) of local training data in any shape finetune reads (JSON list, JSONL,
    CSV, Parquet, a save_to_disk folder), its columns renamed as `--data_columns` says, each record
    checked. A chat record gives each user turn with the reply after it (a test question is prompted
    as a user turn)."""
    # here: the data modules import torch, and --help must not
    from sibo.data_sources import load_sources, split_sources

    for path, _, _ in split_sources(
        str(train_data), columns
    ):  # several sources: every record of each is seen
        if not Path(path).exists():
            raise InputError(f"training data file {path} not found (needed to find seen test questions)")
    records = load_sources(str(train_data), columns)
    if "messages" in records.column_names:
        return [
            (
                turn["content"],
                "",
                next((t["content"] for t in conversation[k + 1 :] if t["role"] != "user"), ""),
            )
            for conversation in records["messages"]
            for k, turn in enumerate(conversation)
            if turn["role"] == "user"
        ]
    return list(zip(records["instruction"], records["input"], records["output"], strict=True))


def training_questions(train_data: Path, columns: str = "") -> set[str]:
    """The normalised questions of the training data (exact copies only)."""
    return {
        normalise(instruction, input_text)
        for instruction, input_text, _ in training_records(train_data, columns)
    }


def training_index(train_data: Path, columns: str = "") -> QuestionIndex:
    """The training data's questions for exact and near-copy lookups, each with its output's answer."""
    index = QuestionIndex()
    for instruction, input_text, output in training_records(train_data, columns):
        index.add(instruction, input_text, answer_key(output))
    return index


def seen_indices(examples: Iterable[Example], questions: set[str]) -> set[int]:
    """The indices of the examples whose question is one of `questions` (exact copies)."""
    return {
        example.index for example in examples if normalise(example.instruction, example.input) in questions
    }


def copies(examples: Iterable[Example], index: QuestionIndex) -> dict[int, str]:
    """{example index: "exact" or "near"} for the examples the training data holds."""
    found = {}
    for example in examples:
        kind = index.copy_kind(example.instruction, example.input, answer_key(example.label))
        if kind:
            found[example.index] = kind
    return found


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
    """The benchmarks with each example's `seen` (and `near_copy`) set from the training data's questions."""
    index = training_index(train_data, columns)
    marked = []
    for task, examples in benchmarks:
        found = copies(examples, index)
        marked.append(
            (
                task,
                [
                    replace(
                        example, seen=example.index in found, near_copy=found.get(example.index) == "near"
                    )
                    for example in examples
                ],
            )
        )
    return marked


def overlap_report(benchmarks: list[tuple[Task, list[Example]]], exclude_seen: bool) -> dict[str, dict]:
    """Per set: how many of its test questions are in the training data (exact and near copies apart),
    logged and returned for the summary."""
    report = {}
    for task, examples in benchmarks:
        seen = sum(example.seen for example in examples)
        near = sum(example.near_copy for example in examples)
        logger.info(
            "%s: %d of %d test questions appear in the training data: %d exact, %d near%s",
            task.name,
            seen,
            len(examples),
            seen - near,
            near,
            f"; scoring the {len(examples) - seen} unseen ones" if exclude_seen else "",
        )
        report[task.name] = {
            "seen_in_training": seen,
            "exact_copies": seen - near,
            "near_copies": near,
            "test_questions": len(examples),
            "scored": "unseen only" if exclude_seen else "all",
        }
    return report


def unseen_only(benchmarks: list[tuple[Task, list[Example]]]) -> list[tuple[Task, list[Example]]]:
    """Each set's examples the training data does not hold. A set with none left is refused: 0 of 0
    has no accuracy (scored as 0.0 it would pass for one, and a mean over its questions fails)."""
    kept = []
    for task, examples in benchmarks:
        unseen = [example for example in examples if not example.seen]
        if not unseen:
            raise InputError(
                f"{task.name}: all {len(examples)} questions scored are in the training data: "
                "nothing is left with --exclude_seen"
            )
        kept.append((task, unseen))
    return kept
