"""Held-out loss: how well a model predicts reference answers it never trained on, with no generation.

    references = [Reference("gsm8k/17", instruction, output), ...]
    encoded = encode_references(references, tokenizer)
    losses = held_out_losses(model, encoded)       # {"rationale": [...], "answer": [...]}, one per reference

For each reference, the prompt (Alpaca's template, as the study trains) and the reference output are tokenized exactly
as the finetune recipe tokenizes a training record (prompt, then output + EOS), so its rationale
loss is the training loss on a record no run saw: the mean negative log-likelihood per output
token. The answer loss is the same mean over the answer phrase alone ("The answer is 576." and
what follows it), still conditioned on the prompt and the rationale before it.
`HeldOutLossCallback` measures both at chosen optimizer steps while an adapter trains.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from sibo.prompts import build_prompt

logger = logging.getLogger(__name__)

# the math sets' rationales end "The answer is 576." (AQuA: "The answer is (D)."): the answer phrase
ANSWER_PHRASE = re.compile(r"\s*the answer is", re.IGNORECASE)


@dataclass(frozen=True)
class Reference:
    """One held-out question and its reference output; `key` names it in results ("gsm8k/17")."""

    key: str
    instruction: str
    output: str
    input: str = ""


@dataclass(frozen=True)
class Encoded:
    """A reference as token ids: prompt + output + EOS, which positions are output, which answer phrase."""

    key: str
    input_ids: list[int]
    rationale: list[bool]  # per position: an output token (or EOS), predicted from the positions before it
    answer: list[bool]  # per position: a token of the answer phrase (all False when the output has none)


def answer_start(output: str) -> int | None:
    """Where the last answer phrase (with the whitespace before it) starts in `output`, or None."""
    found = list(ANSWER_PHRASE.finditer(output))
    return found[-1].start() if found else None


def encode_references(references: list[Reference], tokenizer, max_tokens: int = 1024) -> list[Encoded]:
    """Token ids and loss masks per reference, as the finetune recipe tokenizes a record; cut at max_tokens."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    encoded = []
    for reference in references:
        prompt = tokenizer(build_prompt(reference.instruction, reference.input or None))["input_ids"]
        output = tokenizer(reference.output, add_special_tokens=False, return_offsets_mapping=True)
        ids = prompt + output["input_ids"] + eos
        start = answer_start(reference.output)
        in_answer = [start is not None and end > start for _, end in output["offset_mapping"]]
        rationale = [False] * len(prompt) + [True] * (len(ids) - len(prompt))
        answer = [False] * len(prompt) + in_answer + [False] * len(eos)
        encoded.append(Encoded(reference.key, ids[:max_tokens], rationale[:max_tokens], answer[:max_tokens]))
    return encoded


@torch.no_grad()
def held_out_losses(
    model: torch.nn.Module, encoded: list[Encoded], batch_size: int = 8
) -> dict[str, list[float]]:
    """Mean NLL per token of each reference's output ("rationale") and answer phrase ("answer"; NaN
    where a reference has none), in the order given. The model is scored in eval mode, then put back."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # longest first, so that references of similar length share a batch (little padding)
    order = sorted(range(len(encoded)), key=lambda k: -len(encoded[k].input_ids))
    losses: dict[str, list[float]] = {
        "rationale": [math.nan] * len(encoded),
        "answer": [math.nan] * len(encoded),
    }
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = len(encoded[batch[0]].input_ids)
            ids = torch.zeros(len(batch), width, dtype=torch.long)  # (B, T), right-padded
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, k in enumerate(batch):
                ids[row, : len(encoded[k].input_ids)] = torch.tensor(encoded[k].input_ids)
                mask[row, : len(encoded[k].input_ids)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            # position t predicts token t + 1: (B, T - 1)
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), ids[:, 1:].to(device), reduction="none"
            ).cpu()
            for row, k in enumerate(batch):
                for name in losses:
                    chosen = torch.tensor(getattr(encoded[k], name)[1:], dtype=torch.bool)  # (len - 1,)
                    values = nll[row, : len(chosen)][chosen]
                    losses[name][k] = float(values.mean()) if len(values) else math.nan
    finally:
        model.train(was_training)
    return losses


class HeldOutLossCallback(TrainerCallback):
    """Scores `encoded` at the optimizer steps in `points` (0: before the first step); hands each
    point's losses to `record(step, losses)`."""

    def __init__(
        self,
        encoded: list[Encoded],
        points: list[int],
        record: Callable[[int, dict[str, list[float]]], None],
        batch_size: int = 8,
    ):
        self.encoded, self.points, self.record, self.batch_size = encoded, set(points), record, batch_size

    def _score(self, step: int, model) -> None:
        logger.info("held-out loss at step %d on %d references", step, len(self.encoded))
        self.record(step, held_out_losses(model, self.encoded, self.batch_size))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if 0 in self.points and state.global_step == 0:
            self._score(0, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.points:
            self._score(state.global_step, model)


class PeriodicHeldOutLoss(HeldOutLossCallback):
    """Scores `encoded` before the first step, every `every` optimizer steps (0: never between), and after
    the last step, whatever the Trainer's step count turns out to be (epochs or --max_steps)."""

    def __init__(
        self,
        encoded: list[Encoded],
        every: int,
        record: Callable[[int, dict[str, list[float]]], None],
        batch_size: int = 8,
    ):
        super().__init__(encoded, [0], record, batch_size)
        self.every = every

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        between = range(self.every, state.max_steps, self.every) if self.every > 0 else ()
        self.points = {0, *between, state.max_steps}
        super().on_train_begin(args, state, control, model=model, **kwargs)
