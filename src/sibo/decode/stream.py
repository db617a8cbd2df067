"""Decoding for one instruction: the shared prompt template in, the model's response out, streamed.

    sibo generate --base_model B --weights_path W --prompt "Add 2 and 3."

Streaming runs `model.generate` in a worker thread that feeds transformers' TextIteratorStreamer;
the caller iterates over text pieces as they are decoded. Beam search cannot stream (transformers
refuses a streamer with num_beams > 1), so beams yield the whole response once at the end.
Decoding stops at the template's next section header (transformers' stop strings), where a model
that has not learned to stop would start a new `### Instruction:` block; the header is never shown.
A SIBO model keeps h0 in per-model state, so one model must serve one generation at a time.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from sibo.errors import InputError
from sibo.files import check_text
from sibo.prompts import STOP_STRINGS, build_prompt, cut_at_next_section, next_section_at

logger = logging.getLogger(__name__)

# Config fields that name a model's context length, in the order architectures use them.
_CONTEXT_LENGTH_FIELDS = ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length")


@dataclass
class DecodingSettings:
    """How to decode: greedy when temperature is 0, else sampling; beams when num_beams > 1."""

    max_new_tokens: int = field(default=128, metadata={"help": "stop after this many generated tokens"})
    temperature: float = field(default=0.0, metadata={"help": "0 decodes greedily; > 0 samples"})
    top_p: float = field(default=0.75, metadata={"help": "nucleus sampling mass (sampling only)"})
    top_k: int = field(default=40, metadata={"help": "sample among the k likeliest tokens (sampling only)"})
    num_beams: int = field(default=1, metadata={"help": "beam search width; > 1 cannot stream"})
    seed: int | None = field(
        default=None, metadata={"help": "seed torch before sampling, for reproducible output"}
    )

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not 0 <= self.temperature < math.inf:
            raise InputError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0, got {self.top_k}")
        if self.num_beams < 1:
            raise InputError(f"num_beams must be at least 1, got {self.num_beams}")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise InputError(f"seed must be in 0…{2**32 - 1}, got {self.seed}")

    def generate_kwargs(self) -> dict:
        """The keyword arguments for `model.generate`."""
        kwargs: dict = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


def context_length(model: torch.nn.Module) -> int | None:
    """The longest sequence the model's config allows, or None when the config names no limit."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in _CONTEXT_LENGTH_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def eos_token_ids(model: torch.nn.Module, tokenizer) -> list[int] | None:
    """The model's own end tokens plus the tokenizer's EOS, the one fine-tuning appends to every response:
    a base whose generation config names another (or none) would otherwise never stop early."""
    config = getattr(model, "generation_config", None)
    configured = getattr(config, "eos_token_id", None)
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(ids)) or None  # None: no end token anywhere, decode to max_new_tokens


def stopping_settings(model: torch.nn.Module, tokenizer) -> dict:
    """`model.generate` keywords that end a response at its EOS or at the template's next section header."""
    return {
        "stop_strings": list(STOP_STRINGS),
        "tokenizer": tokenizer,  # transformers needs it to find the stop strings in the tokens
        "eos_token_id": eos_token_ids(model, tokenizer),
    }


def encode_prompt(
    tokenizer, model: torch.nn.Module, prompt: str, max_new_tokens: int
) -> dict[str, torch.Tensor]:
    """Tokenize the prompt and check that prompt + response fit the context; InputError if not."""
    inputs = tokenizer(prompt, return_tensors="pt")
    prompt_tokens = inputs["input_ids"].shape[1]
    limit = context_length(model)
    if limit is not None and prompt_tokens + max_new_tokens > limit:
        room = limit - prompt_tokens
        raise InputError(
            f"the prompt is {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}, "
            f"but the model's context holds {limit} tokens: shorten the instruction/input"
            + (f" or lower max_new_tokens to {room}" if room >= 1 else "")
        )
    device = next(model.parameters()).device
    return {name: tensor.to(device) for name, tensor in inputs.items()}


def stream_completion(
    model: torch.nn.Module, tokenizer, prompt: str, settings: DecodingSettings | None = None
) -> Iterator[str]:
    """Yield the completion of a raw prompt piece by piece (the prompt itself is not repeated)."""
    settings = settings or DecodingSettings()
    inputs = encode_prompt(tokenizer, model, prompt, settings.max_new_tokens)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    generate_kwargs = {
        **inputs,
        **settings.generate_kwargs(),
        "pad_token_id": tokenizer.pad_token_id,
        **stopping_settings(model, tokenizer),
    }
    if settings.num_beams > 1:
        with torch.inference_mode():
            output_ids = model.generate(**generate_kwargs)
        completion = tokenizer.decode(output_ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        yield cut_at_next_section(completion)
        return
    yield from _until_next_section(_stream_in_thread(model, tokenizer, generate_kwargs))


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


def _stream_in_thread(model: torch.nn.Module, tokenizer, generate_kwargs: dict) -> Iterator[str]:
    """Run generate in a worker thread; re-raise its exception here instead of hanging the reader."""
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with torch.inference_mode():
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
) -> Iterator[str]:
    """Yield the response to an instruction (with optional input), built with the shared template."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise InputError("the instruction is empty")
    check_text(instruction, "the instruction")
    check_text(input or "", "the input")
    yield from stream_completion(model, tokenizer, build_prompt(instruction, input), settings)


def generate_response(
    model: torch.nn.Module,
    tokenizer,
    instruction: str,
    input: str | None = None,
    settings: DecodingSettings | None = None,
) -> str:
    """The whole response at once (what the streamed pieces add up to)."""
    return "".join(stream_response(model, tokenizer, instruction, input, settings))
