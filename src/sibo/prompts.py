"""The one prompt template (Alpaca's, as upstream's finetune/evaluate/generate intend it).

Upstream builds it with indented triple-quoted f-strings, so its prompts carry stray leading
spaces on every line; here the template is written out exactly.
"""

from __future__ import annotations

import re

INSTRUCTION_MARKER = "### Instruction:"
INPUT_MARKER = "### Input:"
RESPONSE_MARKER = "### Response:"
# A model that has not learned to stop writes on into a new section: decoding stops at any of these.
STOP_STRINGS = (INSTRUCTION_MARKER, INPUT_MARKER, RESPONSE_MARKER)

_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    f"{INSTRUCTION_MARKER}\n{{instruction}}\n\n{INPUT_MARKER}\n{{input}}\n\n{RESPONSE_MARKER}\n"
)
_WITHOUT_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    f"{INSTRUCTION_MARKER}\n{{instruction}}\n\n{RESPONSE_MARKER}\n"
)


def build_prompt(instruction: str, input: str | None = None) -> str:
    """The prompt up to and including the response marker; the model writes what follows."""
    template = _WITH_INPUT if input else _WITHOUT_INPUT
    return template.format(instruction=instruction, input=input)


def next_section_at(text: str) -> int:
    """Where the first template section header in `text` starts; len(text) when there is none."""
    return min((at for marker in STOP_STRINGS if (at := text.find(marker)) >= 0), default=len(text))


# Where a scored response stops being an answer: the model starting another prompt of its own, in
# any spelling (any "###" header on a new line, a header without its colon, the template's preamble).
# Looser than STOP_STRINGS, which transformers needs as literal text and which decoding stops at.
_NEW_PROMPT = re.compile(
    r"\n\s*###|###\s*(?:Instruction|Input|Response)\b|Below is an instruction", re.IGNORECASE
)


def cut_at_new_prompt(response: str) -> str:
    """A scored response up to where the model begins a new prompt (the loose rule above), stripped."""
    match = _NEW_PROMPT.search(response)
    return (response[: match.start()] if match else response).strip()


def cut_at_next_section(completion: str) -> str:
    """A completion up to the next section header (and the whitespace before it): the first response only."""
    end = next_section_at(completion)
    return completion if end == len(completion) else completion[:end].rstrip()


def extract_response(generated: str) -> str:
    """The model's answer from a decoded prompt + completion (or from a completion alone)."""
    return cut_at_next_section(generated.split(RESPONSE_MARKER, 1)[-1]).strip()
