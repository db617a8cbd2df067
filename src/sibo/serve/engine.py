"""One model, many clients: requests queue up and are decoded together, one `model.generate` per batch.

A SIBO model keeps h0 in per-model state, so one thread owns the model and runs one generate at a time.
It takes the oldest waiting request, then every other waiting request with the same decoding settings
(up to `max_batch_size`; a seeded sampling request takes none, so it answers as it would alone), and
decodes them as one left-padded batch with the KV cache: on CPU a batch of 16 costs little more per step than
one row, and transformers' continuous batching (`generate_batch`) gave the same greedy tokens at about 1/1.3
of the throughput (docs/BENCHMARKS.md). Each row's new tokens go to its
request as they come (`Event`s on the request's asyncio queue), so every request can stream. A request whose
client went away is cancelled: its row stops at the next step, and a batch with none left stops decoding.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from sibo.decode.finite import finite_logits
from sibo.decode.settings import DecodingSettings, eos_token_ids, stopping_settings
from sibo.errors import InputError
from sibo.prompts import PromptTemplate

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 16


class Event(NamedTuple):
    """What the engine tells a request: kind "tokens" (ids: its new tokens), "done" (ids: all of them,
    finish_reason, prompt_tokens) or "error" (message)."""

    kind: str
    ids: list[int] = []
    finish_reason: str = ""
    prompt_tokens: int = 0
    message: str = ""


@dataclass
class Request:
    """One prompt to complete, and where its events go."""

    prompt: str
    settings: DecodingSettings
    stop: tuple[str, ...] = ()
    add_special_tokens: bool = True  # False for a chat prompt, which holds its own BOS
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def key(self) -> tuple:
        """Requests with equal keys decode in one batch. A seeded sampling request decodes alone: batch mates
        would draw from its seeded random stream, so its answer would depend on theirs."""
        s = self.settings
        if s.seed is not None and s.temperature > 0:
            return (id(self),)
        return (s.max_new_tokens, s.temperature, s.top_p, s.top_k, self.stop, self.add_special_tokens)

    def send(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class BatchingEngine:
    """The thread that owns the model: `start` it, `submit` requests from any thread, `close` to stop it."""

    def __init__(
        self, model, tokenizer, template: PromptTemplate, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    ):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.max_batch_size = max_batch_size
        tokenizer.padding_side = "left"  # new tokens follow every prompt directly
        self.waiting: queue.Queue[Request | None] = queue.Queue()
        self.batch_sizes: list[int] = []  # of every batch decoded, for tests and logs
        self._thread = threading.Thread(target=self._run, name="sibo-serve-engine", daemon=True)

    def start(self) -> BatchingEngine:
        """Start decoding what is and will be submitted."""
        self._thread.start()
        return self

    def request(self, prompt: str, settings: DecodingSettings, stop: tuple[str, ...] = ()) -> Request:
        """A request for `prompt`, written with this engine's template."""
        return Request(prompt, settings, stop, add_special_tokens=self.template.add_special_tokens)

    def submit(self, request: Request) -> None:
        self.waiting.put(request)

    def close(self) -> None:
        self.waiting.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        held: deque[Request] = deque()  # taken from the queue but not batchable with the last batch
        while True:
            first = held.popleft() if held else self.waiting.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch_size:
                try:
                    other = self.waiting.get_nowait()
                except queue.Empty:
                    break
                if other is None:
                    self.waiting.put(None)  # stop after this batch
                    break
                (batch if other.key() == first.key() else held).append(other)
            batch = [request for request in batch if not request.cancelled.is_set()]
            if batch:
                self._decode(batch)

    def _decode(self, batch: list[Request]) -> None:
        self.batch_sizes.append(len(batch))
        try:
            self._generate(batch)
        except Exception as error:  # the request fails, the server keeps serving
            if isinstance(error, InputError):  # a known cause (non-finite logits), said in one line
                logger.error("decoding a batch of %d failed: %s", len(batch), error)
            else:
                logger.exception("decoding a batch of %d failed", len(batch))
            for request in batch:
                request.send(Event("error", message=str(error)))

    @torch.inference_mode()
    def _generate(self, batch: list[Request]) -> None:
        tokenizer, first = self.tokenizer, batch[0]
        device = next(self.model.parameters()).device
        # (B, T)
        inputs = tokenizer(
            [r.prompt for r in batch],
            return_tensors="pt",
            padding=True,
            add_special_tokens=first.add_special_tokens,
        ).to(device)
        settings = first.settings
        lengths = inputs["attention_mask"].sum(-1).tolist()
        kwargs = {**settings.generate_kwargs(), **stopping_settings(self.model, tokenizer, self.template)}
        if first.stop:
            kwargs.update(stop_strings=[*self.template.stop_strings, *first.stop], tokenizer=tokenizer)
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        # a row that ended (EOS, or a stop string) is padded from the next step on
        ends = {*(eos_token_ids(self.model, tokenizer) or ()), tokenizer.pad_token_id}
        with finite_logits(self.model):  # non-finite logits fail the batch naming the cause, never "" answers
            sequences = self.model.generate(
                **inputs,
                **kwargs,
                pad_token_id=tokenizer.pad_token_id,
                streamer=_RowStreamer(batch, ends),
                stopping_criteria=StoppingCriteriaList([_Cancelled(batch)]),
                use_cache=True,
            )
        for row, request in enumerate(batch):
            ids = _until_end(sequences[row, inputs["input_ids"].shape[1] :].tolist(), ends)
            reason = "length" if len(ids) >= kwargs["max_new_tokens"] else "stop"
            request.send(Event("done", ids, reason, int(lengths[row])))


def _until_end(new: list[int], ends: set[int]) -> list[int]:
    """A row's own tokens: up to its end token (dropped) or the padding after its stop string."""
    return next((new[:at] for at, token in enumerate(new) if token in ends), new)


class _Cancelled(StoppingCriteria):
    """Ends the rows whose client has gone away (a closed connection): the batch stops once none is left."""

    def __init__(self, batch: list[Request]):
        self.batch = batch

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        cancelled = [request.cancelled.is_set() for request in self.batch]
        return torch.tensor(cancelled, dtype=torch.bool, device=input_ids.device)


class _RowStreamer(BaseStreamer):
    """Hands each row's new token to its request as generate makes it, until the row ends."""

    def __init__(self, batch: list[Request], ends: set[int]):
        self.batch, self.ends = batch, ends
        self.prompt_seen = False
        self.ended = [False] * len(batch)

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate first puts the prompts
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self.batch), -1)[:, -1].tolist()):
            if self.ended[row] or token in self.ends:
                self.ended[row] = True
                continue
            self.batch[row].send(Event("tokens", [token]))

    def end(self) -> None:
        pass
