"""Answer extraction for the arithmetic benchmarks: careful rules and the seed's, on real-looking outputs."""

import json
import os
import re
from pathlib import Path

import pytest
from fault_checks import evaluate_args, refused, write_benchmark

from sibo.errors import InputError
from sibo.eval.tasks import Example, load_examples, resolve_datasets
from sibo.eval.tasks import math as math_tasks

AQUA_INSTRUCTION = (
    "A rectangular piece of 150 sq m has a length which is 1m more than the 4 times the breadth. What is the "
    "perimeter of the piece? Answer Choices: (A) 60 m (B) 61 m (C) 62 m (D) 63 m (E) 64 m"
)

# (response, careful prediction, legacy prediction): the seed deletes commas, then takes the last
# match of -?\d+\.?\d* — whatever follows the answer wins, and fractions read as their denominator.
NUMBER_CASES = [
    (
        "A: There were 7 crayons. Mary took 3 out, so now there are 7 - 3 = 4 crayons. The answer is 4.",
        4.0,
        4.0,
    ),
    ("So in total there will be 3 + 6.8 = 9.8 gallons. The answer is 9.8.", 9.8, 9.8),
    (
        "He sold 1,200 tickets at $2.50 each, so he made 1,200 * 2.50 = $3,000. The answer is 3,000.",
        3000.0,
        3000.0,
    ),
    ("The number is x - 6 = ... so x = -15. The answer is -15.", -15.0, -15.0),
    ("10-3=7 apples are left.", 7.0, 7.0),
    # seed's known failures: text after the answer
    ("The answer is 18. Janet sells 16 - 3 - 4 = 9 duck eggs every day.", 18.0, 9.0),
    ("The answer is 576.\n\n### Instruction:\nJohn has 12 apples and eats 3.", 576.0, 3.0),
    ("The answer is 576.\n\nBelow is an instruction that describes a task. John has 12 apples.", 576.0, 12.0),
    ("Each person gets 3/4 of a pizza. The answer is 3/4.", 0.75, 4.0),
    ("The answer is .5 liters.", 0.5, 5.0),
    ("The answer is 5 + 3 = 8.", 8.0, 8.0),
    ("The final answer: 2,500 dollars.", 2500.0, 2500.0),
    ("So the answer is 110 tomatoes and 32 eggplants.", 110.0, 32.0),
    # a first "answer is" without a number: the second on the same line still counts
    ("The answer is as follows. 10 - 3 = 7, so the answer is 7, and 2 are left.", 7.0, 2.0),
    ("He has $4 - $297 = -$293 left. The answer is -$293.", -293.0, 293.0),
    ("I cannot tell how many apples there are.", None, None),
    ("", None, None),
]

# AQuA: the seed takes the first capital A-E anywhere ("Answer", "A train" read as A).
LETTER_CASES = [
    ("Rationale: 2(4x + 1) + 2x = 62 m.The answer is (C).", "C", "C"),
    ("Answer: D", "D", "A"),
    ("Rationale: A train covers 62 m. The answer is (C).", "C", "A"),
    ("Bill travels 3.85 miles. Between (B) and (D), the answer is (D).", "D", "B"),
    ("The answer is E.", "E", "E"),
    ("the answer is c", None, None),
    ("(B) 61 m", "B", "B"),
    ("B", "B", "B"),
    ("The perimeter is 62 m. The answer is 62 m.", "C", None),
    ("A train goes fast.", None, "A"),
    ("A train goes 60 m.", "A", "A"),  # the one option whose value the response names
    ("No idea.", None, None),
]


@pytest.mark.parametrize("response, careful, legacy", NUMBER_CASES)
def test_number_extraction(response, careful, legacy):
    assert math_tasks.extract(response, "gsm8k", "How many?", "careful") == careful
    assert math_tasks.extract(response, "gsm8k", "How many?", "legacy") == legacy


@pytest.mark.parametrize("response, careful, legacy", LETTER_CASES)
def test_letter_extraction(response, careful, legacy):
    assert math_tasks.extract(response, "AQuA", AQUA_INSTRUCTION, "careful") == careful
    assert math_tasks.extract(response, "AQuA", AQUA_INSTRUCTION, "legacy") == legacy


def test_legacy_reads_only_up_to_a_second_response_marker():
    # the seed splits the decoded text on "### Response:" and keeps the part after the prompt's
    response = "The answer is 7.\n\n### Response:\nThe answer is 9."
    assert math_tasks.extract(response, "AddSub", "", "legacy") == 7.0


def test_numbers_are_read_as_written():
    assert math_tasks.numbers_in("1,234,567 and 1,23 and -4 and 10-3 and $5.50 and 12/4") == [
        1234567.0, 1.0, 23.0, -4.0, 10.0, 3.0, 5.5, 3.0,
    ]  # fmt: skip


def test_answer_options():
    assert math_tasks.answer_options(AQUA_INSTRUCTION) == {
        "A": "60 m", "B": "61 m", "C": "62 m", "D": "63 m", "E": "64 m",
    }  # fmt: skip


@pytest.mark.parametrize(
    "prediction, label, dataset, correct",
    [
        (576.0, "576.0", "gsm8k", True),
        (576.0009, "576.0", "gsm8k", True),
        (576.002, "576.0", "gsm8k", False),
        (-15.0, "-15.0", "mawps", True),
        (None, "4", "AddSub", False),
        ("D", "D", "AQuA", True),
        ("A", "D", "AQuA", False),
        (None, "D", "AQuA", False),
    ],
)
def test_is_correct(prediction, label, dataset, correct):
    assert math_tasks.is_correct(prediction, label, dataset) is correct


def _data_dir() -> Path:
    return Path(
        os.environ.get("SIBO_DATA_DIR", Path(__file__).resolve().parents[4] / "shared/data/llm-adapters")
    )


@pytest.mark.skipif(not (_data_dir() / "AQuA/test.json").is_file(), reason="LLM-Adapters data not present")
def test_real_aqua_rationales():
    """The dataset's own rationales end in "The answer is (X)."; the seed reads the first capital instead."""
    task = resolve_datasets("AQuA")[0]
    examples = load_examples(task, _data_dir())
    outputs = [record["output"] for record in json.loads((_data_dir() / "AQuA/test.json").read_text())]
    stated = [
        task.extract(output, example, "careful") for output, example in zip(outputs, examples, strict=True)
    ]
    legacy = [
        task.extract(output, example, "legacy") for output, example in zip(outputs, examples, strict=True)
    ]
    assert len(examples) == 254
    expected = [(re.findall(r"answer is \(([A-E])\)", output) or [None])[-1] for output in outputs]
    assert stated == expected
    assert expected.count(None) == 2
    assert sum(a != b for a, b in zip(stated, legacy, strict=True)) == 49


def test_task_extract_checks_the_mode():
    task, example = resolve_datasets("AddSub")[0], Example(index=0, instruction="x", input="", label="4")
    assert task.extract("The answer is 4. Then 5.", example, "careful") == 4.0
    assert task.extract("The answer is 4. Then 5.", example, "legacy") == 5.0
    with pytest.raises(InputError, match="unknown extraction 'strict'"):
        task.extract("The answer is 4.", example, "strict")


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "{path}: no examples: an empty test set has no accuracy"),
        (
            [{"instruction": "Add.", "answer": "NaN"}],
            "{path}: record 0: answer 'NaN' is not a valid AddSub label",
        ),
        (
            [{"instruction": "Add.", "answer": "-Infinity"}],
            "{path}: record 0: answer '-Infinity' is not a valid AddSub label",
        ),
        (
            '[{"instruction": "Add.", "answer": 1e999}]',
            "{path}: record 0: answer 'inf' is not a valid AddSub label",
        ),
        (
            '[{"instruction": "Add.", "answer": ' + "9" * 5000 + "}]",
            "{path}: unreadable JSON (Exceeds the limit",
        ),
        ("[" * 200_000 + "]" * 200_000, "{path}: JSON nested too deep to read"),
        (
            '[{"instruction": "Add \\ud800.", "answer": "1"}]',
            "{path}: record 0: not valid text (a lone surrogate '\\ud800' at character 4)",
        ),
    ],
    ids=["empty", "nan", "minus-infinity", "1e999", "long-integer", "deep", "surrogate"],
)
def test_evaluate_refuses_test_sets_it_cannot_score_honestly(root, tmp_path, capsys, records, message):
    data_dir = write_benchmark(tmp_path / "bench", records)
    line = refused(capsys, evaluate_args(root, tmp_path / "out", data_dir=data_dir), tmp_path)
    assert line.startswith(
        "sibo evaluate: error: " + message.format(path=data_dir / "AddSub" / "test.json")
    ), line
    assert not (tmp_path / "out").exists()
