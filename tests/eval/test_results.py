"""The results files of `sibo evaluate`: torn lines, rank shards merged and rescored, summary.json."""

import json

import pytest

from sibo.errors import InputError
from sibo.eval.results import as_line, consolidate, read_records, scored_datasets
from sibo.eval.tasks import Example, resolve_datasets

ADDSUB = resolve_datasets("AddSub")[0]
EXAMPLES = [Example(i, f"What is {i} + 1?", "", f"{i + 1}.0") for i in range(4)]


def record(index: int, output: str) -> dict:
    return {"index": index, "instruction": EXAMPLES[index].instruction, "output": output}


def test_read_records_skips_torn_lines_and_keeps_the_first_of_each_index(tmp_path):
    path = tmp_path / "AddSub.jsonl"
    cut_in_a_character = as_line(record(2, "é")).encode()[:-4]  # "é" is two bytes: cut between them
    path.write_bytes(
        as_line(record(0, "1")).encode()
        + as_line(record(0, "a later copy")).encode()
        + b"[1, 2]\n"
        + cut_in_a_character
        + b"\n"
        + as_line(record(1, "2")).encode()
        + b'{"index": 3, "instruction": "What'  # the kill tore the last line
    )
    assert read_records(path) == {0: record(0, "1"), 1: record(1, "2")}
    assert read_records(tmp_path / "missing.jsonl") == {}


def test_consolidate_merges_rank_shards_rescores_and_rewrites_in_index_order(tmp_path):
    path = tmp_path / "AddSub.jsonl"
    path.write_text(as_line(record(3, "The answer is 4")) + as_line(record(0, "so 7")))
    (tmp_path / "AddSub.rank1.jsonl").write_text(as_line(record(1, "2")) + as_line(record(0, "1")))

    records = consolidate(path, ADDSUB, EXAMPLES, "careful")

    assert list(records) == [0, 1, 3]
    assert [(r["prediction"], r["correct"]) for r in records.values()] == [
        (7.0, False),
        (2.0, True),
        (4.0, True),
    ]
    assert path.read_text() == "".join(map(as_line, records.values()))
    assert not (tmp_path / "AddSub.rank1.jsonl").exists()
    assert consolidate(tmp_path / "none.jsonl", ADDSUB, EXAMPLES, "careful") == {}


def test_consolidate_refuses_results_for_other_questions(tmp_path):
    path = tmp_path / "AddSub.jsonl"
    path.write_text(as_line({**record(1, "2"), "instruction": "What is 9 + 9?"}))
    with pytest.raises(
        InputError, match=r"AddSub.jsonl holds results for other data \(record 1 does not match"
    ):
        consolidate(path, ADDSUB, EXAMPLES, "careful")
    assert json.loads(path.read_text())["instruction"] == "What is 9 + 9?"  # left as it was


def test_scored_datasets_of_a_missing_a_damaged_and_a_whole_summary(tmp_path):
    summary = tmp_path / "summary.json"
    assert scored_datasets(summary) == {}
    summary.write_text('{"datasets": {"AddSub": {"n": 4')
    assert scored_datasets(summary) is None
    summary.write_text('{"datasets": [1]}')
    assert scored_datasets(summary) is None
    summary.write_text('{"datasets": {"AddSub": {"n": 4, "correct": 3}}}')
    assert scored_datasets(summary) == {"AddSub": {"n": 4, "correct": 3}}
