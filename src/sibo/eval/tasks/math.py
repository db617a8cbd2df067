"""The 7 arithmetic benchmarks: numeric answers (AQuA: an option letter), and how to read them.

Two ways to turn a response into a prediction:

- careful (default): cut the response where the model starts a new prompt of its own, prefer
  the number after "The answer is" (the LLM-Adapters training targets end that way) over the last
  number, and read numbers as written: thousands separators, negatives, decimals, fractions.
  AQuA: the option letter in "(D)", "answer is D", "Answer: D", or the option whose value the
  answer names — never any capital letter.
- legacy: upstream's rules, byte for byte (AGI-Edgerunners/LLM-Adapters, evaluate.py,
  `extract_answer_number` / `extract_answer_letter`): the response up to a second
  "### Response:", commas deleted, the last match of `-?\\d+\\.?\\d*`; AQuA: the first capital
  A–E anywhere ("Answer: (C)" reads as A). Upstream has no rule for mawps; legacy uses the
  number rule there too.

Both score a number as correct when |prediction − label| ≤ 0.001, as upstream does.
"""

from __future__ import annotations

import math
import re

from sibo.prompts import RESPONSE_MARKER, cut_at_new_prompt

DATASETS = ("AddSub", "MultiArith", "SingleEq", "gsm8k", "AQuA", "SVAMP", "mawps")
MAX_NEW_TOKENS = 256  # upstream's evaluate.py budget
TOLERANCE = 0.001  # upstream's `miss`
OPTION_LETTERS = "ABCDE"

# A number as people write it. Not inside a word or after a decimal point; a minus sign only when
# it is attached to the digits and not a binary minus ("10-3" and "10 - 3" read as 10 and 3,
# "is -3" as -3); "1,234,567" only with groups of three; "3/4" as 0.75.
_NUMBER = re.compile(
    r"(?<![\w.)])(?P<sign>[-−])?\$?"
    r"(?P<value>\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<denominator>\d+(?:\.\d+)?)(?![\d/]))?"
)
# "The answer is 42", "the final answer: 42", "Answer = 42", "the answer would be 42". The rest of the
# line is captured in a lookahead, so finditer visits a second phrase on the same line too.
_ANSWER_PHRASE = re.compile(
    r"\banswer\s*(?:is|would be|will be|should be|[:=])\s*:?\s*(?=(?P<rest>[^\n]*))", re.IGNORECASE
)
_SENTENCE_END = re.compile(r"\.(?:\s|$)|[!?;](?:\s|$)")
_LETTER_AFTER_ANSWER = re.compile(
    r"\banswer\s*(?:is|would be|will be|should be|[:=])\s*:?\s*(?:option|choice)?\s*"
    r"\(?(?P<letter>(?-i:[A-E]))\)?(?![\w'])",
    re.IGNORECASE,
)
_PARENTHESISED_LETTER = re.compile(r"\(([A-E])\)")
_LONE_LETTER = re.compile(r"^\(?([A-E])(?:[).:]|$)")
_OPTIONS = re.compile(r"\(([A-E])\)\s*(.*?)(?=\s*\([A-E]\)|$)", re.DOTALL)


def is_valid_label(label: str, dataset: str) -> bool:
    """AQuA labels are option letters; every other label a number."""
    if dataset == "AQuA":
        return label in tuple(OPTION_LETTERS)
    try:
        # "NaN", "inf" and 1e999 parse, but no prediction can ever equal them
        return math.isfinite(float(label))
    except ValueError:
        return False


def extract(
    response: str, dataset: str, instruction: str, mode: str = "careful", cut: bool = True
) -> float | str | None:
    """The prediction in a response: a number, or for AQuA an option letter; None when there is none.
    `cut`: read only up to where the model starts a new Alpaca prompt (a chat answer ends at its EOS)."""
    if mode == "legacy":
        segment = response.split(RESPONSE_MARKER)[0].strip()
        return legacy_letter(segment) if dataset == "AQuA" else legacy_number(segment)
    answer = cut_at_new_prompt(response) if cut else response.strip()
    return careful_letter(answer, instruction) if dataset == "AQuA" else careful_number(answer)


def is_correct(prediction: float | str | None, label: str, dataset: str) -> bool:
    if prediction is None:
        return False
    if dataset == "AQuA":
        return prediction == label
    return abs(float(label) - float(prediction)) <= TOLERANCE


# -- upstream's rules ---------------------------------------------------------------------------


def legacy_number(sentence: str) -> float | None:
    """Upstream's `extract_answer_number`: commas deleted, then the last `-?\\d+\\.?\\d*` (inf → None)."""
    matches = re.findall(r"-?\d+\.?\d*", sentence.replace(",", ""))
    return float(matches[-1]) if matches else None


def legacy_letter(sentence: str) -> str | None:
    """Upstream's `extract_answer_letter`: the first capital A–E anywhere in the response."""
    matches = re.findall(r"A|B|C|D|E", sentence.strip())
    return matches[0] if matches else None


# -- careful rules ------------------------------------------------------------------------------


def numbers_in(text: str) -> list[float]:
    """Every number in `text`, in order, read as written ("1,234.5" → 1234.5, "3/4" → 0.75, "-2" → -2)."""
    values = []
    for match in _NUMBER.finditer(text):
        value = float(match["value"].replace(",", ""))
        if match["denominator"] is not None:
            denominator = float(match["denominator"])
            if denominator == 0:
                continue
            value /= denominator
        if match["sign"]:
            value = -value
        values.append(value)
    return values


def careful_number(answer: str) -> float | None:
    """The number after the first "answer is" (after its last "=" when it states a sum), else the last number."""
    for phrase in _ANSWER_PHRASE.finditer(answer):
        clause = phrase["rest"]
        end = _SENTENCE_END.search(clause)
        clause = clause[: end.start()] if end else clause
        if "=" in clause:
            clause = clause.rsplit("=", 1)[1]
        values = numbers_in(clause)
        if values:
            return values[0]
    values = numbers_in(answer)
    return values[-1] if values else None


def answer_options(instruction: str) -> dict[str, str]:
    """AQuA's "Answer Choices: (A) 60 m (B) 61 m …" as {"A": "60 m", "B": "61 m", …}."""
    choices = instruction.rsplit("Answer Choices:", 1)[-1]
    return {letter: text.strip() for letter, text in _OPTIONS.findall(choices)}


def careful_letter(answer: str, instruction: str = "") -> str | None:
    """The option an AQuA response chooses: "answer is (D)" / "Answer: D", else the last "(D)",
    else a response that starts with the letter, else the one option whose value the answer names."""
    match = _LETTER_AFTER_ANSWER.search(answer)
    if match:
        return match["letter"].upper()
    parenthesised = _PARENTHESISED_LETTER.findall(answer)
    if parenthesised:
        return parenthesised[-1]
    lone = _LONE_LETTER.match(answer)
    if lone:
        return lone[1]
    value = careful_number(answer)
    if value is None:
        return None
    matching = [
        letter
        for letter, text in answer_options(instruction).items()
        if (values := numbers_in(text)) and abs(values[0] - value) <= TOLERANCE
    ]
    return matching[0] if len(matching) == 1 else None
