"""Answer extraction for the commonsense benchmarks: the keyword the answer format asks for."""

import json
import os
from pathlib import Path

import pytest

from sibo.errors import InputError
from sibo.eval.tasks import all_tasks, load_examples, resolve_datasets
from sibo.eval.tasks import commonsense as commonsense_tasks


def _instruction(question: str, answer_format: str) -> str:
    return f"Please choose the correct answer to the question: {question}\n\nAnswer format: {answer_format}"


ARC = _instruction(
    "Which gas do plants absorb?\n\nAnswer1: oxygen Answer2: carbon dioxide",
    "answer1/answer2/answer3/answer4",
)
SIQA = _instruction(
    "What will Tracy do?\n\nAnswer1: go Answer2: stay Answer3: sleep", "answer1/answer2/answer3"
)
BOOLQ = "Please answer the following question with true or false, question: is the sky blue?\n\nAnswer format: true/false"
PIQA = _instruction("How to dry a shirt?\n\nSolution1: oven\n\nSolution2: line", "solution1/solution2")
WINOGRANDE = "Please choose the correct answer to fill in the blank: _ won.\n\nOption1: Sarah Option2: Maria Answer format: option1/option2"
HELLASWAG = _instruction("A man is cooking.\n\nEnding1: … Ending4: …", "ending1/ending2/ending3/ending4")

# (dataset, instruction, response, careful, legacy). The seed takes the first case-sensitive match
# of its fixed alternation anywhere in the response, substrings included.
CASES = [
    ("ARC-Easy", ARC, "the correct answer is answer2", "answer2", "answer2"),
    ("ARC-Easy", ARC, "The correct answer is Answer2", "answer2", ""),
    ("ARC-Easy", ARC, "the correct answer is answer 2", "answer2", ""),
    ("ARC-Easy", ARC, "answer1 is wrong, so the correct answer is answer2", "answer2", "answer1"),
    ("ARC-Easy", ARC, "the correct answer is answer2\n\n### Instruction:\nanswer3", "answer2", "answer2"),
    ("ARC-Easy", ARC, "answer12", "", "answer1"),
    ("social_i_qa", SIQA, "the correct answer is answer5", "", "answer5"),
    ("social_i_qa", SIQA, "the correct answer is answer3", "answer3", "answer3"),
    ("boolq", BOOLQ, "the correct answer is false", "false", "false"),
    ("boolq", BOOLQ, "True", "true", ""),
    ("boolq", BOOLQ, "the claim is untrue, so the correct answer is false", "false", "true"),
    ("piqa", PIQA, "the correct answer is solution2", "solution2", "solution2"),
    ("piqa", PIQA, "Solution1", "solution1", ""),
    ("winogrande", WINOGRANDE, "the correct answer is option1", "option1", "option1"),
    ("hellaswag", HELLASWAG, "the correct answer is ending4", "ending4", "ending4"),
    ("openbookqa", ARC, "I do not know.", "", ""),
    ("openbookqa", ARC, "", "", ""),
]


@pytest.mark.parametrize("dataset, instruction, response, careful, legacy", CASES)
def test_keyword_extraction(dataset, instruction, response, careful, legacy):
    assert commonsense_tasks.extract(response, dataset, instruction, "careful") == careful
    assert commonsense_tasks.extract(response, dataset, instruction, "legacy") == legacy


def test_allowed_keywords_come_from_the_answer_format():
    assert commonsense_tasks.allowed_keywords(SIQA, "social_i_qa") == ("answer1", "answer2", "answer3")
    assert commonsense_tasks.allowed_keywords(WINOGRANDE, "winogrande") == ("option1", "option2")
    assert (
        commonsense_tasks.allowed_keywords("no format line", "hellaswag")
        == commonsense_tasks.KEYWORDS["hellaswag"]
    )


def test_families_hold_the_papers_fifteen_benchmarks():
    names = [task.name for task in all_tasks()]
    assert len(names) == 15
    assert [task.name for task in resolve_datasets("commonsense")] == list(commonsense_tasks.DATASETS)
    assert [task.name for task in resolve_datasets("arc-easy, BOOLQ,boolq")] == ["ARC-Easy", "boolq"]
    with pytest.raises(InputError, match="unknown dataset 'gsm9k'"):
        resolve_datasets("gsm8k,gsm9k")


def _data_dir() -> Path:
    return Path(
        os.environ.get("SIBO_DATA_DIR", Path(__file__).resolve().parents[4] / "shared/data/llm-adapters")
    )


@pytest.mark.skipif(
    not (_data_dir() / "ARC-Easy/test.json").is_file(), reason="LLM-Adapters data not present"
)
@pytest.mark.parametrize(
    "dataset", ["boolq", "piqa", "social_i_qa", "winogrande", "ARC-Easy", "ARC-Challenge", "openbookqa"]
)
def test_real_targets_score_perfectly_both_ways(dataset):
    """Each record's own target ("the correct answer is answer3") reads as its label under both rules."""
    task = resolve_datasets(dataset)[0]
    examples = load_examples(task, _data_dir())
    outputs = [record["output"] for record in json.loads((_data_dir() / dataset / "test.json").read_text())]
    for mode in ("careful", "legacy"):
        predictions = [
            task.extract(output, example, mode) for output, example in zip(outputs, examples, strict=True)
        ]
        assert predictions == [example.label for example in examples]
