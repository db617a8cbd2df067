"""The one prompt template (Alpaca's, as the seed's finetune/evaluate/generate intend it).

The seed builds it with indented triple-quoted f-strings, so its prompts carry stray leading
spaces on every line; here the template is written out exactly.
"""

from __future__ import annotations

RESPONSE_MARKER = "### Response:"

_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n" + RESPONSE_MARKER + "\n"
)
_WITHOUT_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n" + RESPONSE_MARKER + "\n"
)


def build_prompt(instruction: str, input: str | None = None) -> str:
    """The prompt up to and including the response marker; the model writes what follows."""
    template = _WITH_INPUT if input else _WITHOUT_INPUT
    return template.format(instruction=instruction, input=input)


def extract_response(generated: str) -> str:
    """The model's answer from a decoded prompt + completion (or from a completion alone)."""
    return generated.split(RESPONSE_MARKER, 1)[-1].strip()
