"""The one prompt template (Alpaca's, as upstream's finetune/evaluate/generate intend it).

Upstream builds it with indented triple-quoted f-strings, so its prompts carry stray leading
spaces on every line; here the template is written out exactly.
"""

from __future__ import annotations

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


def cut_at_next_section(completion: str) -> str:
    """A completion up to the next section header (and the whitespace before it): the first response only."""
    end = next_section_at(completion)
    return completion if end == len(completion) else completion[:end].rstrip()


def extract_response(generated: str) -> str:
    """The model's answer from a decoded prompt + completion (or from a completion alone)."""
    return cut_at_next_section(generated.split(RESPONSE_MARKER, 1)[-1]).strip()
