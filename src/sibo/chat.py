"""Chat records: OpenAI-style `messages` and ShareGPT `conversations`, checked, and rendered with the
tokenizer's own chat template, with the characters of each assistant turn marked for the loss.

    {"messages": [{"role": "system", "content": …}, {"role": "user", …}, {"role": "assistant", …}]}
    {"conversations": [{"from": "human", "value": …}, {"from": "gpt", "value": …}]}

The loss covers what the model is to write: each assistant turn's content and the template's
end-of-turn marker after it. Those spans are found by rendering the conversation turn by turn
(the prompt before a turn with the generation prompt, then through the turn), as LLaMA-Factory and
TRL do for templates without `{% generation %}` markers.
"""

from __future__ import annotations

from dataclasses import dataclass

from sibo.errors import InputError, first_line
from sibo.files import check_text
from sibo.prompts import chat_messages

CHAT_FIELDS = ("messages", "conversations")  # the record fields that hold a conversation
# OpenAI roles, and ShareGPT's speaker names for them
ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}


@dataclass(frozen=True)
class Conversation:
    """One chat record: {role, content} turns (ShareGPT's from/value read into these)."""

    messages: list[dict[str, str]]


def is_chat_record(raw: dict) -> bool:
    return any(raw.get(name) is not None for name in CHAT_FIELDS)


def validate_conversation(raw: dict, where: str) -> Conversation:
    """A Conversation from one parsed record; `where` ('file: record 3') prefixes any error."""
    field = next(name for name in CHAT_FIELDS if raw.get(name) is not None)
    if any(raw.get(name) is not None for name in ("instruction", "output")):
        raise InputError(f"{where}: has both {field!r} and instruction/output: a record is one or the other")
    turns = raw[field]
    if not isinstance(turns, list) or not turns:
        raise InputError(f"{where}: field {field!r} must be a non-empty list of turns")
    messages = []
    for number, turn in enumerate(turns):
        at = f"{where}: {field}[{number}]"
        if not isinstance(turn, dict):
            raise InputError(
                f"{at}: expected an object with role/content (or from/value), got {type(turn).__name__}"
            )
        # A column read by `datasets` holds every key any turn has: the absent ones are None.
        keys = ("role", "content") if turn.get("role") is not None else ("from", "value")
        role, content = (turn.get(key) for key in keys)
        if role not in ROLES:
            raise InputError(
                f"{at}: {keys[0]} {role!r} is not one of system, user, assistant (ShareGPT: system, human, gpt)"
            )
        if not isinstance(content, str):
            raise InputError(f"{at}: {keys[1]} must be a string, got {type(content).__name__}")
        messages.append({"role": ROLES[role], "content": check_text(content, at)})
    if "assistant" not in (message["role"] for message in messages):
        raise InputError(f"{where}: no assistant turn: nothing to learn from")
    if any(message["role"] == "system" for message in messages[1:]):
        raise InputError(f"{where}: a system turn may only come first")
    return Conversation(messages)


def instruction_conversation(instruction: str, input: str, output: str) -> list[dict[str, str]]:
    """An instruction record as a chat: the instruction (and input) the user turn, the output the reply."""
    return [*chat_messages(instruction, input), {"role": "assistant", "content": output}]


def render(
    tokenizer, messages: list[dict[str, str]], where: str, spans: bool
) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as the chat template writes it and, when `spans`, the [start, end) characters of
    each assistant turn; InputError naming the record when the template refuses it or does not write
    the conversation turn by turn."""

    def write(turns: list[dict[str, str]], generation_prompt: bool = False) -> str:
        try:
            return tokenizer.apply_chat_template(
                turns, tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as error:  # noqa: BLE001 - jinja's TemplateError, or the template's raise_exception
            raise InputError(
                f"{where}: the chat template refuses this conversation ({first_line(error)})"
            ) from None

    text = write(messages)
    found = []
    for index, message in enumerate(messages if spans else []):
        if message["role"] != "assistant":
            continue
        if index == 0:  # the template has no prompt to render before it ("an empty conversation")
            raise InputError(
                f"{where}: the conversation opens with an assistant turn: it answers no user turn"
            )
        before = write(messages[:index], generation_prompt=True)
        through = text if index == len(messages) - 1 else write(messages[: index + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise InputError(
                f"{where}: the chat template does not write this conversation turn by turn, so its assistant "
                f"turns cannot be told apart: --train_on_inputs True trains on every token"
            )
        found.append((len(before), len(through)))
    return text, found


def in_spans(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """For each token (its character offsets), whether it starts inside an assistant turn."""
    return [any(start <= begin < end for start, end in spans) for begin, _ in offsets]
