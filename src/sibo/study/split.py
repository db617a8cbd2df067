"""A held-out slice of the user's own training data, honest about copies: `sibo sweep --heldout N`.

    split = heldout_split(records, 200, seed=0)     # split.train, split.heldout, split.dropped (indices)
    train_file, heldout_file = write_split(records, split, output_dir / "heldout")

N records, drawn by a seeded permutation, leave training; every other record that is an exact or a
near copy of one of them (`sibo.eval.contamination`: the same words, or the same numbers and answer
and ≥ 80 % of the words) leaves training too, so no held-out question is trained on under another
spelling. The same seed and data give the same split, so reruns and every run of a sweep share it.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from sibo.data import Record
from sibo.errors import InputError
from sibo.eval.contamination import QuestionIndex, answer_key
from sibo.files import write_atomically

TRAIN_FILE, HELDOUT_FILE, SPLIT_FILE = "train.json", "heldout.json", "split.json"


@dataclass(frozen=True)
class HeldOutSplit:
    """Record indices: what trains, what is held out, and what neither (copies of held-out records)."""

    train: list[int]
    heldout: list[int]
    dropped: list[int]


def heldout_split(records: list[Record], count: int, seed: int) -> HeldOutSplit:
    """`count` records held out by a seeded draw; the rest train, except copies of a held-out record."""
    if not 0 < count < len(records):
        raise InputError(
            f"--heldout must be between 1 and {len(records) - 1} (the data has {len(records)} records), got {count}"
        )
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    heldout = sorted(order[:count])
    index = QuestionIndex()
    for k in heldout:
        index.add(records[k].instruction, records[k].input, answer_key(records[k].output))
    train, dropped = [], []
    for k in sorted(order[count:]):
        record = records[k]
        copied = index.copy_kind(record.instruction, record.input, answer_key(record.output))
        (dropped if copied else train).append(k)
    if not train:
        raise InputError(
            f"--heldout {count}: every other record is a copy of a held-out one; nothing is left to train on"
        )
    return HeldOutSplit(train, heldout, dropped)


def split_files(records: list[Record], split: HeldOutSplit) -> dict[str, object]:
    """What write_split writes, by file name: the training and held-out records (JSON lists), the indices."""
    return {
        TRAIN_FILE: [asdict(records[k]) for k in split.train],
        HELDOUT_FILE: [asdict(records[k]) for k in split.heldout],
        SPLIT_FILE: asdict(split),
    }


def write_split(records: list[Record], split: HeldOutSplit, folder: Path) -> tuple[Path, Path]:
    """folder/train.json and folder/heldout.json (JSON lists of records) and folder/split.json (the
    indices); a file is rewritten only when its content changes, so a rerun leaves them as they were."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in split_files(records, split).items():
        text = json.dumps(value, indent=1, ensure_ascii=False) + "\n"
        file = folder / name
        if not file.is_file() or file.read_text(encoding="utf-8") != text:
            write_atomically(file, text)
    return folder / TRAIN_FILE, folder / HELDOUT_FILE


def instruction_records(data_path: str, columns: str = "", ratios: str = "", seed: int = 42) -> list[Record]:
    """The training data's records, read, checked and (several sources) mixed as finetune does it; chat
    records are refused (their held-out loss would need the chat template's rendering, which the held-out
    scorer does not do)."""
    from sibo.data_sources import load_sources

    dataset = load_sources(data_path, columns, ratios, seed)
    if "messages" in dataset.column_names:
        raise InputError(
            f"--heldout needs instruction records (instruction, input, output); {data_path} holds chat records"
        )
    return [Record(r["instruction"], r["input"], r["output"]) for r in dataset]
