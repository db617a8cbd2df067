"""The held-out split of `sibo sweep --heldout`: seeded, and no held-out record trains under another spelling."""

from __future__ import annotations

import json

import pytest

from sibo.data import Record
from sibo.errors import InputError
from sibo.study.split import heldout_split, instruction_records, write_split

# 12 questions, each a group: the question, and for some of them copies that must follow it out of training
QUESTIONS = [(f"Tom has {a} apples and buys {b} more. How many apples does he have now?", a + b)
             for a, b in [(1, 2), (3, 4), (10, 5), (7, 8), (2, 9), (6, 6), (11, 3), (4, 13), (5, 1), (8, 2), (12, 7), (9, 9)]]  # fmt: skip


def _records() -> tuple[list[Record], list[int]]:
    """The records and each one's group (its question's number)."""
    records, groups = [], []
    for number, (question, answer) in enumerate(QUESTIONS):
        output = f"{answer} apples. The answer is {answer}."
        records.append(Record(question, "", output))
        groups.append(number)
        if number % 3 == 0:  # an exact copy: other spacing and case
            records.append(Record("  " + question.upper().replace(" ", "  "), "", output))
            groups.append(number)
        if number % 2 == 0:  # a near copy: one word changed, the same numbers and answer
            records.append(Record(question.replace("buys", "gets"), "", f"The answer is {answer}.0"))
            groups.append(number)
    # the same words with other numbers: another question, never dropped for its neighbour
    records.append(Record(QUESTIONS[0][0].replace(" 2 ", " 20 "), "", "The answer is 21."))
    groups.append(len(QUESTIONS))
    return records, groups


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_held_out_record_or_copy_of_one_trains(seed):
    records, groups = _records()
    split = heldout_split(records, 4, seed)
    assert len(split.heldout) == 4
    assert sorted(split.train + split.heldout + split.dropped) == list(range(len(records)))  # a partition
    held_groups = {groups[k] for k in split.heldout}
    assert not held_groups & {groups[k] for k in split.train}  # no held-out question trains, in any spelling
    # exactly the copies of held-out questions are dropped, nothing else
    assert split.dropped == [
        k for k in range(len(records)) if groups[k] in held_groups and k not in split.heldout
    ]


def test_the_split_is_seeded_and_its_files_are_stable(tmp_path):
    records, _ = _records()
    assert heldout_split(records, 5, 7) == heldout_split(records, 5, 7)
    assert heldout_split(records, 5, 7).heldout != heldout_split(records, 5, 8).heldout
    split = heldout_split(records, 5, 7)
    train, heldout = write_split(records, split, tmp_path / "h")
    assert [r["instruction"] for r in json.loads(train.read_text())] == [
        records[k].instruction for k in split.train
    ]
    assert len(json.loads(heldout.read_text())) == 5
    assert json.loads((tmp_path / "h" / "split.json").read_text())["heldout"] == split.heldout
    stamp = train.stat().st_mtime_ns
    write_split(records, split, tmp_path / "h")  # the same split: nothing rewritten
    assert train.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("count", [0, 23])
def test_a_held_out_count_that_leaves_nothing_is_refused(count):
    records, _ = _records()
    assert len(records) == 23
    with pytest.raises(InputError, match=r"^--heldout must be between 1 and 22 \(the data has 23 records\)"):
        heldout_split(records, count, 0)


def test_several_sources_are_read_and_mixed_as_finetune_reads_them(tmp_path):
    from sibo.data_sources import load_sources

    records, _ = _records()
    first, second = tmp_path / "a.json", tmp_path / "b.jsonl"
    first.write_text(json.dumps([{"q": r.instruction, "a": r.output} for r in records[:10]]))
    second.write_text("".join(json.dumps({"q": r.instruction, "a": r.output}) + "\n" for r in records[10:]))
    sources, columns = f"{first},{second}", "instruction=q,output=a"
    assert instruction_records(sources, columns) == records  # concatenated, in order
    mixed = instruction_records(
        sources, columns, "1,3", seed=5
    )  # by ratio, as finetune's --seed 5 mixes them
    assert [r.instruction for r in mixed] == load_sources(sources, columns, "1,3", 5)["instruction"]
    assert 0 < len(mixed) < len(records)  # until the first source runs out
