"""The 8 commonsense benchmarks: each instruction ends with the label keywords it accepts
("Answer format: answer1/answer2/answer3"), and a prediction is one of them.

- careful (default): cut the response where the model starts a new prompt of its own; read only
  the keywords this example's "Answer format" allows (answer5 is no answer to a 3-option
  question), as whole words ("untrue" is not "true"), in any case ("Answer2", "True",
  "answer 2"); the keyword after "answer is" wins over the first one mentioned.
- legacy: upstream's rules, byte for byte (AGI-Edgerunners/LLM-Adapters, commonsense_evaluate.py,
  `extract_answer`): the response up to a second "### Response:", then the first match of the
  dataset's fixed, case-sensitive alternation (boolq `true|false`, piqa `solution1|solution2`,
  social_i_qa / ARC / openbookqa `answer1|…|answer5`, hellaswag `ending1|…|ending4`, winogrande
  `option1|option2`), or "" when nothing matches.

A prediction is correct when it equals the label string.
"""

from __future__ import annotations

import re

from sibo.prompts import RESPONSE_MARKER, cut_at_new_prompt

DATASETS = (
    "boolq",
    "piqa",
    "social_i_qa",
    "hellaswag",
    "winogrande",
    "ARC-Easy",
    "ARC-Challenge",
    "openbookqa",
)
MAX_NEW_TOKENS = 32  # upstream's commonsense_evaluate.py budget

# Upstream's keyword sets, per dataset (also the careful fallback when an instruction names none).
KEYWORDS = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "social_i_qa": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "ARC-Challenge": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "ARC-Easy": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "openbookqa": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "hellaswag": ("ending1", "ending2", "ending3", "ending4"),
    "winogrande": ("option1", "option2"),
}
_ANSWER_FORMAT = re.compile(r"Answer format:\s*([\w/ ]+?)\s*$", re.MULTILINE)
_KEYWORD = re.compile(r"^(?P<stem>[a-z]+?)(?P<number>\d*)$")


def is_valid_label(label: str, dataset: str) -> bool:
    return label in KEYWORDS[dataset]


def extract(response: str, dataset: str, instruction: str, mode: str = "careful", cut: bool = True) -> str:
    """The label keyword a response chooses, or "" when it names none. `cut`: as in math.extract."""
    if mode == "legacy":
        return legacy_keyword(response.split(RESPONSE_MARKER)[0].strip(), dataset)
    answer = cut_at_new_prompt(response) if cut else response.strip()
    return careful_keyword(answer, allowed_keywords(instruction, dataset))


def is_correct(prediction: str, label: str, dataset: str) -> bool:
    return prediction == label


def legacy_keyword(sentence: str, dataset: str) -> str:
    """Upstream's `extract_answer`: the first keyword of the dataset's alternation, case-sensitive."""
    matches = re.findall("|".join(KEYWORDS[dataset]), sentence.strip())
    return matches[0] if matches else ""


def allowed_keywords(instruction: str, dataset: str) -> tuple[str, ...]:
    """The keywords an example's own "Answer format: a/b/c" line allows (the dataset's when it has none)."""
    match = _ANSWER_FORMAT.search(instruction)
    if match is None:
        return KEYWORDS[dataset]
    return tuple(word.strip().lower() for word in match[1].split("/") if word.strip())


def careful_keyword(answer: str, allowed: tuple[str, ...]) -> str:
    """The allowed keyword after "answer is", else the first allowed keyword mentioned; "" if none."""
    alternatives = "|".join(_keyword_pattern(keyword) for keyword in allowed)
    keyword = re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])", re.IGNORECASE)
    stated = re.search(
        rf"\banswer\s*(?:is|would be|should be|:)\s*:?\s*({keyword.pattern})", answer, re.IGNORECASE
    )
    found = stated[1] if stated else (match[0] if (match := keyword.search(answer)) else None)
    return "" if found is None else re.sub(r"\s+", "", found).lower()


def _keyword_pattern(keyword: str) -> str:
    """'answer2' also as 'answer 2' / 'Answer2'; 'true' as itself."""
    parts = _KEYWORD.match(keyword)
    if parts is None or not parts["number"]:
        return re.escape(keyword)
    return rf"{re.escape(parts['stem'])}\s?{parts['number']}"
