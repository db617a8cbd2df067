"""How to decode, for every verb: one settings dataclass, the model's context length, where a response ends.

`sibo generate` streams one answer (`sibo.decode.stream`); `sibo evaluate` decodes batches
(`sibo.decode.batch`). Both take a `DecodingSettings`, check prompts against the context with
`check_fits_context`, and stop at the end tokens and the template's stop strings named here. Nothing here
imports torch: the CLI builds its flags from this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sibo.checkpoint.config import context_length
from sibo.errors import InputError
from sibo.prompts import PromptTemplate

if TYPE_CHECKING:
    import torch

CPU_BATCH_SIZE = 8  # --batch_size auto off a GPU: CPU decoding gains little from wider batches
ONE_ANSWER_TOKENS = 128  # max_new_tokens of `sibo generate` when none is given
# LLM-Adapters' evaluate.py decodes with 4 beams; `sibo evaluate` and `sibo sweep` keep that default.
UPSTREAM_EVAL_BEAMS = 4
MIN_TEMPERATURE = 1e-5  # below it, sampling is greedy to float32's precision, or overflows
# How the benchmark verbs (evaluate, sweep) show their decoding flags: upstream's beams, each task's budget.
BENCHMARK_DECODING_FLAGS = {
    "defaults": {"num_beams": UPSTREAM_EVAL_BEAMS},
    "helps": {
        "max_new_tokens": "new tokens per response (default: each benchmark's, as upstream: "
        "256 math, 32 commonsense)"
    },
}


@dataclass
class TokenBudget:
    """How many tokens a response may have, declared once: DecodingSettings and the demo's config inherit it."""

    max_new_tokens: int | None = field(
        default=None, metadata={"help": "new tokens per response (unset: the caller's budget)"}
    )


@dataclass
class DecodingSettings(TokenBudget):
    """How to decode: greedy when temperature is 0, else sampling; beams when num_beams > 1.

    A batch of benchmark questions reads batch_size and static_cache too; one streamed answer
    reads the sampling fields. max_new_tokens None means the caller's budget: the benchmark's
    (math 256, commonsense 32, as upstream) or ONE_ANSWER_TOKENS for one answer.
    """

    num_beams: int = field(default=1, metadata={"help": "beam width; 1 decodes greedily"})
    temperature: float = field(default=0.0, metadata={"help": "0 decodes greedily; > 0 samples"})
    top_p: float = field(default=0.75, metadata={"help": "nucleus sampling mass (sampling only)"})
    top_k: int = field(default=40, metadata={"help": "sample among the k likeliest tokens (sampling only)"})
    seed: int | None = field(
        default=None, metadata={"help": "random seed set before sampling, for reproducible output"}
    )
    batch_size: int | str = field(
        default="auto",
        metadata={
            "help": "questions per generate call (each has num_beams beams), or auto: as many as the GPU's "
            f"free memory holds (halved on out-of-memory), {CPU_BATCH_SIZE} on CPU"
        },
    )
    static_cache: bool = field(
        default=False,
        metadata={"help": "a static KV cache; on a GPU transformers then compiles each decoding step"},
    )

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not 0 <= self.temperature < math.inf:
            raise InputError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if 0 < self.temperature < MIN_TEMPERATURE:  # logits / temperature overflow: sampling fails part way
            raise InputError(
                f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {self.temperature:g}"
            )
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0, got {self.top_k}")
        if self.num_beams < 1:
            raise InputError(f"num_beams must be at least 1, got {self.num_beams}")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise InputError(f"seed must be in 0…{2**32 - 1}, got {self.seed}")
        if self.batch_size != "auto" and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise InputError(f"batch_size must be 'auto' or at least 1, got {self.batch_size!r}")

    def tokens_or(self, budget: int) -> int:
        """max_new_tokens, or `budget` (the task's, or one answer's) when none was given."""
        return self.max_new_tokens or budget

    def generate_kwargs(self) -> dict:
        """The keyword arguments for `model.generate` (max_new_tokens: ONE_ANSWER_TOKENS when unset)."""
        kwargs: dict = {"max_new_tokens": self.tokens_or(ONE_ANSWER_TOKENS), "num_beams": self.num_beams}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            # the model's own generation_config may ask for sampling: these would only warn
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.static_cache:
            kwargs["cache_implementation"] = "static"
        return kwargs


def benchmark_decoding(**settings) -> DecodingSettings:
    """Upstream's benchmark decoding (UPSTREAM_EVAL_BEAMS beams, greedy, each task's budget), `settings` over it."""
    return DecodingSettings(**{**BENCHMARK_DECODING_FLAGS["defaults"], **settings})


def check_fits_context(
    model: torch.nn.Module, prompt_tokens: int, max_new_tokens: int, what: str, flag: str = "--max_new_tokens"
) -> None:
    """InputError naming `what` ("the prompt", "gsm8k example 7's prompt") unless prompt + response fit; `flag`
    is how the caller sets the budget (the API's `max_tokens`)."""
    limit = context_length(model)
    if limit is None or prompt_tokens + max_new_tokens <= limit:
        return
    room = limit - prompt_tokens
    fix = f"use {flag} {room} or less" if room > 0 else "shorten it"
    raise InputError(
        f"{what} is {prompt_tokens} tokens and {flag.lstrip('-')} is {max_new_tokens}, more than the model's "
        f"context of {limit} tokens: {fix}"
    )


def eos_token_ids(model: torch.nn.Module, tokenizer) -> list[int] | None:
    """The model's own end tokens plus the tokenizer's EOS, the one fine-tuning appends to every response:
    a base whose generation config names another (or none) would otherwise never stop early."""
    config = getattr(model, "generation_config", None)
    configured = getattr(config, "eos_token_id", None)
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    # None: no end token anywhere, decode to max_new_tokens
    return list(dict.fromkeys(ids)) or None


def stopping_settings(model: torch.nn.Module, tokenizer, template: PromptTemplate = PromptTemplate()) -> dict:
    """`model.generate` keywords that end a response at its EOS, or (Alpaca) at the template's next section
    header; a chat turn ends with the EOS alone."""
    settings: dict = {"eos_token_id": eos_token_ids(model, tokenizer)}
    if template.stop_strings:
        # transformers needs the tokenizer to find the stop strings in the tokens
        settings.update(stop_strings=list(template.stop_strings), tokenizer=tokenizer)
    return settings
