"""The two prompt templates: Alpaca's (upstream's, the default) and the model's own chat template.

An adapter is prompted the way it was trained: finetune records the template it used in
TEMPLATE_FILE beside the adapter (and export beside the merged model), and generate, the Gradio
page and evaluate read it back (`recorded_template`). Alpaca's is written out exactly here; upstream
builds it with indented triple-quoted f-strings, so its prompts carry stray leading spaces on every
line. The chat template is the tokenizer's own (a GGUF base's too); an instruction (and its input)
becomes one user turn, and the response is the assistant turn the model writes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from sibo.errors import InputError, first_line
from sibo.files import write_json

ALPACA, CHAT, AUTO = "alpaca", "chat", "auto"
TEMPLATES = (ALPACA, CHAT, AUTO)  # auto: the recorded one (finetune: chat for chat records)
TEMPLATE_FILE = "prompt_template.json"  # {"template": "alpaca" | "chat"}, beside an adapter or an export

INSTRUCTION_MARKER = "### Instruction:"
INPUT_MARKER = "### Input:"
RESPONSE_MARKER = "### Response:"
# A model that has not learned to stop writes on into a new section: decoding stops at any of these.
STOP_STRINGS = (INSTRUCTION_MARKER, INPUT_MARKER, RESPONSE_MARKER)


@dataclass
class TemplateChoice:
    """Which template a verb prompts with, declared once: ModelConfig and FinetuneConfig inherit it."""

    template: str = field(
        default=AUTO,
        metadata={
            "help": "prompt template: alpaca (upstream's), chat (the tokenizer's chat template), or auto: "
            "when fine-tuning, chat for chat records and alpaca for instruction records (recorded beside the "
            "adapter); when loading an adapter, the one it was trained with (its prompt_template.json), "
            "else alpaca",
            "choices": TEMPLATES,
        },
    )


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


def chat_messages(instruction: str, input: str | None = None) -> list[dict[str, str]]:
    """An instruction, and its input below it, as one user turn (how chat prompts a benchmark question)."""
    return [{"role": "user", "content": f"{instruction}\n\n{input}" if input else instruction}]


def require_chat_template(tokenizer, model_name: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            f"{model_name} has no chat template (its tokenizer defines none): use --template alpaca"
        )


@dataclass(frozen=True)
class PromptTemplate:
    """How an instruction becomes a prompt, and a completion the response: Alpaca's or the chat template."""

    name: str = ALPACA

    def __post_init__(self) -> None:
        if self.name not in (ALPACA, CHAT):
            raise InputError(f"unknown prompt template {self.name!r}: use {ALPACA} or {CHAT}")

    def prompt(self, tokenizer, instruction: str, input: str | None = None) -> str:
        """The text the model continues: up to the response marker, or the chat's open assistant turn."""
        if self.name == ALPACA:
            return build_prompt(instruction, input)
        return self.conversation_prompt(tokenizer, chat_messages(instruction, input))

    def conversation_prompt(self, tokenizer, messages: list[dict[str, str]]) -> str:
        """The text the model continues to write the next assistant turn of `messages` ({role, content}:
        system, user and assistant turns): the chat template's; Alpaca's holds one user turn only."""
        if self.name == ALPACA:
            if len(messages) != 1 or messages[0]["role"] != "user":
                raise InputError("this model was trained with the Alpaca template: send one user message")
            return build_prompt(messages[0]["content"])
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as error:  # noqa: BLE001 - jinja's TemplateError, or the template's raise_exception
            raise InputError(f"the chat template refuses this conversation ({first_line(error)})") from None

    @property
    def add_special_tokens(self) -> bool:
        """Whether the tokenizer adds its BOS to a prompt: a chat template writes its own special tokens."""
        return self.name == ALPACA

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Text that ends a response besides EOS: Alpaca's next section; a chat turn ends with its EOS."""
        return STOP_STRINGS if self.name == ALPACA else ()

    def response(self, completion: str) -> str:
        """The answer in a decoded completion (special tokens already skipped)."""
        return cut_at_next_section(completion).strip() if self.name == ALPACA else completion.strip()


def template_file(*folders: str | Path | None) -> Path | None:
    """TEMPLATE_FILE in the first of `folders` (an adapter, then its base) that has one; None if none does."""
    files = (Path(folder) / TEMPLATE_FILE for folder in folders if folder)
    return next((file for file in files if file.is_file()), None)


def recorded_template(*folders: str | Path | None) -> str | None:
    """The template recorded in the first of `folders` (an adapter, then its base) that has TEMPLATE_FILE."""
    file = template_file(*folders)
    if file is None:
        return None
    try:
        name = json.loads(file.read_text(encoding="utf-8")).get("template")
    except (OSError, json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        name = None
    if name not in (ALPACA, CHAT):
        raise InputError(f'{file}: expected {{"template": "alpaca" or "chat"}}')
    return name


def template_name(requested: str, *folders: str | Path | None) -> str:
    """`requested` (alpaca, chat, or auto: the one recorded in `folders`, else Alpaca's), not yet checked
    against a tokenizer: what a run records before its model loads."""
    if requested not in TEMPLATES:
        raise InputError(f"--template must be one of {', '.join(TEMPLATES)}, got {requested!r}")
    return (recorded_template(*folders) or ALPACA) if requested == AUTO else requested


def checked_template(name: str, tokenizer, model_name: str) -> PromptTemplate:
    """The template `name` (alpaca or chat); chat asked of a tokenizer without a chat template is an InputError."""
    if name == CHAT:
        require_chat_template(tokenizer, model_name)
    return PromptTemplate(name)


def write_template(folder: str | Path, template: PromptTemplate) -> None:
    """Record beside an adapter (or a merged model) the template it was trained with."""
    write_json(Path(folder) / TEMPLATE_FILE, {"template": template.name})
