"""Decoding for one instruction (or a conversation): the prompt template (Alpaca's or the chat's) in, the
response out, streamed.

    sibo generate --base_model B --weights_path W --prompt "Add 2 and 3."

Streaming runs `model.generate` in a worker thread that feeds transformers' TextIteratorStreamer;
the caller iterates over text pieces as they are decoded. Beam search cannot stream (transformers
refuses a streamer with num_beams > 1), so beams yield the whole response once at the end.
With Alpaca's template decoding stops at its next section header (transformers' stop strings), where
a model that has not learned to stop would start a new `### Instruction:` block; the header is never
shown. A chat turn ends with the tokenizer's EOS (<|im_end|>, …), which decoding skips.
A SIBO model keeps h0 in per-model state, so one model must serve one generation at a time: every
generate here holds one lock, whatever calls it (the Gradio page's UI and its /chat API are separate
functions to Gradio, so its concurrency limit alone lets two run at once).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator, Iterator
from contextlib import closing, contextmanager

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from sibo.decode.finite import finite_logits
from sibo.decode.settings import ONE_ANSWER_TOKENS, DecodingSettings, check_fits_context, stopping_settings
from sibo.errors import InputError
from sibo.files import check_text
from sibo.prompts import STOP_STRINGS, PromptTemplate, cut_at_next_section, next_section_at

logger = logging.getLogger(__name__)

_ONE_GENERATION = threading.Lock()  # held by each generate: h0 is state shared by the whole model


def encode_prompt(
    tokenizer, model: torch.nn.Module, prompt: str, max_new_tokens: int, add_special_tokens: bool = True
) -> dict[str, torch.Tensor]:
    """Tokenize the prompt and check that prompt + response fit the context; InputError if not.
    `add_special_tokens` False for a chat prompt, which holds its own BOS."""
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens)
    check_fits_context(model, inputs["input_ids"].shape[1], max_new_tokens, "the prompt")
    device = next(model.parameters()).device
    return {name: tensor.to(device) for name, tensor in inputs.items()}


@contextmanager
def _generating_alone(model: torch.nn.Module, seed: int | None) -> Iterator[None]:
    """Hold the one-generation lock around a generate, seeding inside it so no concurrent call draws from
    the seeded random stream; no autograd, and non-finite logits fail naming the cause."""
    with _ONE_GENERATION, torch.inference_mode(), finite_logits(model):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def stream_completion(
    model: torch.nn.Module,
    tokenizer,
    prompt: str,
    settings: DecodingSettings | None = None,
    template: PromptTemplate = PromptTemplate(),
) -> Iterator[str]:
    """Yield the completion of a prompt written with `template`, piece by piece, up to where the
    template's response ends (the prompt itself is not repeated)."""
    settings = settings or DecodingSettings()
    inputs = encode_prompt(
        tokenizer, model, prompt, settings.tokens_or(ONE_ANSWER_TOKENS), template.add_special_tokens
    )
    generate_kwargs = {
        **inputs,
        **settings.generate_kwargs(),
        "pad_token_id": tokenizer.pad_token_id,
        **stopping_settings(model, tokenizer, template),
    }
    if settings.num_beams > 1:
        with _generating_alone(model, settings.seed):
            output_ids = model.generate(**generate_kwargs)
        completion = tokenizer.decode(output_ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        # unstripped, as the streamed pieces add up
        yield cut_at_next_section(completion) if template.stop_strings else completion
        return
    pieces = _stream_in_thread(model, tokenizer, generate_kwargs, settings.seed)
    # a chat response ends at EOS, which is never shown: nothing to hold back
    yield from _until_next_section(pieces) if template.stop_strings else pieces


def _until_next_section(pieces: Generator[str, None, None]) -> Iterator[str]:
    """Pass the pieces on up to the next section header; text that may begin one (or the blank
    lines before it) is held back until the following piece tells."""
    held = ""
    with closing(pieces):
        for piece in pieces:
            held += piece
            end = next_section_at(held)
            if end < len(held):
                if response := held[:end].rstrip():
                    yield response
                return
            start = len(held)
            for marker in STOP_STRINGS:
                partial = next((k for k in range(len(marker) - 1, 0, -1) if held.endswith(marker[:k])), 0)
                start = min(start, len(held) - partial)
            ready = len(held[:start].rstrip())
            if ready:
                yield held[:ready]
                held = held[ready:]
    if held:
        yield held


class _StopWhenSet(StoppingCriteria):
    """Ends generation once the reader has gone away (a closed page, a cancelled request)."""

    def __init__(self, stop: threading.Event):
        self.stop = stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full(
            (input_ids.shape[0],), self.stop.is_set(), dtype=torch.bool, device=input_ids.device
        )


def _stream_in_thread(
    model: torch.nn.Module, tokenizer, generate_kwargs: dict, seed: int | None
) -> Iterator[str]:
    """Run generate in a worker thread; re-raise its exception here instead of hanging the reader."""
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with _generating_alone(model, seed):
                model.generate(
                    **generate_kwargs,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop)]),
                )
        except BaseException as error:  # handed to the reading thread below
            failure.append(error)
            streamer.end()

    worker = threading.Thread(target=run, name="sibo-generate", daemon=True)
    worker.start()
    try:
        yield from (piece for piece in streamer if piece)
    finally:
        stop.set()
        worker.join()
    if failure:
        raise failure[0]


def stream_response(
    model: torch.nn.Module,
    tokenizer,
    instruction: str,
    input: str | None = None,
    settings: DecodingSettings | None = None,
    template: PromptTemplate = PromptTemplate(),
) -> Iterator[str]:
    """Yield the response to an instruction (with optional input), prompted with `template`."""
    if instruction is None or isinstance(instruction, str) and not instruction.strip():
        raise InputError("the instruction is empty")  # an empty page box arrives as None
    if not isinstance(instruction, str):  # a page or API request can send anything
        raise InputError(
            f"the instruction must be text, got {type(instruction).__name__} {instruction!r}"[:200]
        )
    if input is not None and not isinstance(input, str):
        raise InputError(f"the input must be text, got {type(input).__name__} {input!r}"[:200])
    check_text(instruction, "the instruction")
    check_text(input or "", "the input")
    prompt = template.prompt(tokenizer, instruction, input)
    yield from stream_completion(model, tokenizer, prompt, settings, template)


def stream_reply(
    model: torch.nn.Module,
    tokenizer,
    messages: list[dict[str, str]],
    settings: DecodingSettings | None = None,
    template: PromptTemplate = PromptTemplate(),
) -> Iterator[str]:
    """Yield the next assistant turn of a conversation ({role, content} turns ending with the user's),
    written as the chat template writes the whole conversation: the chat page's decoding."""
    if not messages or messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise InputError("the message is empty")
    for message in messages:
        check_text(message["content"], f"the {message['role']} turn")
    prompt = template.conversation_prompt(tokenizer, messages)
    yield from stream_completion(model, tokenizer, prompt, settings, template)


def generate_response(
    model: torch.nn.Module,
    tokenizer,
    instruction: str,
    input: str | None = None,
    settings: DecodingSettings | None = None,
    template: PromptTemplate = PromptTemplate(),
) -> str:
    """The whole response at once (what the streamed pieces add up to)."""
    return "".join(stream_response(model, tokenizer, instruction, input, settings, template))
