"""The files an evaluate run writes: O/<dataset>.jsonl, one scored example per line (appended as it is
decoded, so a killed run resumes), rewritten whole and in index order at the end; and O/summary.json,
accuracy per dataset across the runs that share O.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from sibo.errors import InputError
from sibo.eval.tasks import Example, Task
from sibo.files import SUMMARY_FILE, read_json, write_atomically, write_json

if TYPE_CHECKING:
    from sibo.eval.config import EvalConfig

logger = logging.getLogger(__name__)

# The decoding settings summary.json records: the ones a batch of questions reads.
EVAL_DECODING_FIELDS = ("batch_size", "num_beams", "max_new_tokens", "static_cache")


@dataclass
class DatasetResult:
    """How one benchmark went: examples scored and how many were right."""

    n: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


def score(task: Task, example: Example, response: str, extraction: str, chat: bool = False) -> dict:
    """One output line: the example, the raw response, what was read from it, and whether it is right."""
    prediction = task.extract(response, example, extraction, chat)
    return {
        "index": example.index,
        "instruction": example.instruction,
        "input": example.input,
        "output": response,
        "prediction": prediction,
        "label": example.label,
        "correct": task.is_correct(prediction, example.label),
    }


def as_line(record: dict) -> str:
    """One line of a results file."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def read_records(path: Path) -> dict[int, dict]:
    """The complete records of a results file (first one wins per index); a torn line is skipped, also one
    cut inside a multi-byte character."""
    records: dict[int, dict] = {}
    if not path.is_file():
        return records
    with path.open("rb") as lines:
        for line in lines:
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                continue  # a line cut short when the run was killed
            if isinstance(record, dict) and isinstance(record.get("index"), int):
                records.setdefault(record["index"], record)
    return records


@contextmanager
def appending(path: Path) -> Iterator[TextIO]:
    """`path` opened to append result lines. A full disk names it: a file object's OSError carries no file
    name, and "could not write a file" would leave the user to guess which."""
    try:
        with path.open("a", encoding="utf-8") as out:
            yield out
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT) or error.filename is not None:
            raise
        raise InputError(
            f"disk full: could not write {path} (the results written before it are kept: the same command "
            "goes on from them once there is space)"
        ) from None


def consolidate(
    path: Path, task: Task, examples: list[Example], extraction: str, chat: bool = False
) -> dict[int, dict]:
    """Merge the rank shards into `path`, drop torn lines and duplicates, re-read every prediction
    with `extraction`, and rewrite the file in index order (atomically); returns the records."""
    shards = sorted(path.parent.glob(f"{task.name}.rank*.jsonl"))
    if not path.is_file() and not shards:
        return {}
    records = read_records(path)
    for shard in shards:
        for index, record in read_records(shard).items():
            records.setdefault(index, record)
    by_index = {example.index: example for example in examples}
    for index, record in sorted(records.items()):
        example = by_index.get(index)
        if example is None:
            raise InputError(
                f"{path} holds a result for example {index}, which this run does not score (an earlier run here "
                "scored more: without --limit, with a larger one, or without --exclude_seen): rerun with that "
                "run's flags, or use another --output_dir"
            )
        if record.get("instruction") != example.instruction or "output" not in record:
            raise InputError(
                f"{path} holds results for other data (record {index} does not match {task.name} "
                f"example {index}): use another --output_dir"
            )
    rescored = {
        index: score(task, by_index[index], records[index]["output"], extraction, chat)
        for index in sorted(records)
    }
    write_atomically(path, "".join(map(as_line, rescored.values())))
    for shard in shards:
        shard.unlink()
    return rescored


def scored_datasets(summary: Path) -> dict | None:
    """{dataset: its n, correct, accuracy…} of an earlier run's summary.json; {} when there is none yet,
    None when it is damaged."""
    if not summary.is_file():
        return {}
    try:
        datasets = read_json(summary).get("datasets", {})
    except (InputError, AttributeError):
        return None
    return datasets if isinstance(datasets, dict) else None


def main_process_results(config: EvalConfig, names: Iterable[str]) -> dict[str, DatasetResult]:
    """{dataset: result} for `names` as the main process wrote them to summary.json: the other ranks of a
    data-parallel run score only their shard, and each must see the same accuracy (the Trainer's best
    checkpoint and early stopping decide on it, on every rank alike)."""
    datasets = scored_datasets(config.output_dir / SUMMARY_FILE) or {}
    return {name: DatasetResult(datasets[name]["n"], datasets[name]["correct"]) for name in names}


def earlier_results(config: EvalConfig, run: dict, counts: dict[str, int]) -> dict[str, DatasetResult] | None:
    """{dataset: result} of an earlier summary.json in config.output_dir when it is this very scoring: the
    same run (model and decoding; the template aside, which the adapter fixes), and per dataset (`counts`)
    the same extraction and number of questions; else None. Each dataset records its own extraction: one
    folder may hold sets scored by calls with different --extraction."""
    file = config.output_dir / SUMMARY_FILE
    if not file.is_file():
        return None
    try:
        summary = read_json(file)
        datasets = summary["datasets"]
        same = _without_template(summary["run"]) == _without_template(run) and all(
            datasets[name]["n"] == count and datasets[name].get("extraction") == config.extraction
            for name, count in counts.items()
        )
        return (
            {name: DatasetResult(datasets[name]["n"], datasets[name]["correct"]) for name in counts}
            if same
            else None
        )
    except (InputError, KeyError, TypeError, AttributeError):  # damaged or older: score again
        return None


def _without_template(run: dict) -> dict:
    return {key: value for key, value in run.items() if key != "template"}


def write_summary(
    config: EvalConfig, results: dict[str, DatasetResult], run: dict, overlap: dict[str, dict]
) -> None:
    """summary.json: accuracy per dataset (and how many of its questions the training data holds),
    kept across runs that share the output directory."""
    file = config.output_dir / SUMMARY_FILE
    datasets = scored_datasets(file)
    if datasets is None:
        logger.warning("%s was damaged: it now holds this run's datasets only", file)
        datasets = {}
    for name, result in results.items():
        datasets[name] = {
            "n": result.n,
            "correct": result.correct,
            "accuracy": result.accuracy,
            "extraction": config.extraction,  # per dataset: sets of earlier calls keep the one that read them
            **overlap.get(name, {}),
        }
    summary = {
        "run": run,
        "extraction": config.extraction,  # this call's; each dataset records the one that read it
        "decoding": {name: getattr(config.decoding, name) for name in EVAL_DECODING_FIELDS},
        "train_data": str(config.train_data) if config.train_data else None,
        "datasets": datasets,
    }
    write_json(file, summary)
