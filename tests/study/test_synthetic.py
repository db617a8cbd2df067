"""The generator's answers are right: each is recomputed here from the question text alone."""

from __future__ import annotations

import json
import re

import pytest

from sibo.errors import InputError
from sibo.study.synthetic import OPERATIONS, generate_problems, generate_splits, write_records

# Question wording -> the arithmetic it asks for, over the integers in the question in order.
_SOLVERS = [
    (re.compile(r"loses \d+ \w+ and then finds"), lambda n: n[0] - n[1] + n[2]),
    (re.compile(r"buys \d+ \w+ with \d+ \w+ in each"), lambda n: n[0] + n[1] * n[2]),
    (re.compile(r"shares \d+ \w+ equally among"), lambda n: n[0] // n[1]),
    (re.compile(r"Each of the \w+ holds"), lambda n: n[0] * n[1]),
    (re.compile(r"gives \d+ \w+ to"), lambda n: n[0] - n[1]),
    (re.compile(r"buys \d+ more"), lambda n: n[0] + n[1]),
]


def _solve(question: str) -> int:
    numbers = [int(token) for token in re.findall(r"\d+", question)]
    solvers = [solve for pattern, solve in _SOLVERS if pattern.search(question)]
    assert len(solvers) == 1, f"ambiguous or unknown wording: {question}"
    return solvers[0](numbers)


def test_answers_match_an_independent_solution():
    records = generate_problems(600, seed=3, max_operand=12)
    for record in records:
        assert set(record) == {"instruction", "input", "output", "answer"}
        assert record["input"] == ""
        assert int(record["answer"]) == _solve(record["instruction"]), record


def test_chain_of_thought_steps_are_true_and_end_with_the_answer():
    for record in generate_problems(400, seed=5):
        steps = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", record["output"])
        assert steps, record["output"]
        for left, operator, right, result in steps:
            assert eval(f"{left} {operator} {right}") == int(result), record["output"]
        assert int(steps[-1][3]) == int(record["answer"])
        assert record["output"].startswith("\nA: ")
        assert record["output"].endswith(f"The answer is {record['answer']}.")


def test_answers_are_whole_and_not_negative():
    answers = [int(record["answer"]) for record in generate_problems(500, seed=11, max_operand=9)]
    assert min(answers) >= 0
    assert max(answers) <= 9 + 9 * 9


def test_same_seed_same_problems_other_seed_other_problems():
    assert generate_problems(20, seed=7) == generate_problems(20, seed=7)
    assert generate_problems(20, seed=7) != generate_problems(20, seed=8)


def test_every_operation_is_drawn():
    questions = [record["instruction"] for record in generate_problems(300, seed=0)]
    for pattern, _ in _SOLVERS:
        assert any(pattern.search(question) for question in questions), pattern.pattern
    assert len(_SOLVERS) == len(OPERATIONS)


def test_operations_can_be_restricted():
    records = generate_problems(50, seed=1, operations=("multiply",))
    assert all("Each of the" in record["instruction"] for record in records)


def test_unknown_operation_is_an_input_error():
    with pytest.raises(InputError, match=r"unknown arithmetic operations \['power'\]"):
        generate_problems(3, operations=("add", "power"))


def test_splits_do_not_share_questions():
    train, test = generate_splits(300, 100, seed=2)
    assert len(train) == 300 and len(test) == 100
    assert not {record["instruction"] for record in train} & {record["instruction"] for record in test}
    assert len({record["instruction"] for record in test}) == 100


def test_write_records_writes_the_json_list(tmp_path):
    records = generate_problems(4, seed=0)
    path = write_records(records, tmp_path / "sub" / "train.json")
    assert json.loads(path.read_text()) == records
