"""The logits checked where they are produced: decoding stops with one line instead of an empty answer.

Weights are checked when loaded (`sibo.checkpoint.weights.check_finite`: no NaN, no infinity, nothing
beyond ±1.8e19), yet activations can still overflow the dtype the model runs in (a bf16-trained adapter
decoded in float16, say). Greedy decoding then picks token 0 from NaN logits and prints nothing, exit 0;
a forward hook on the output layer sees the (B, T, V) logits of every step and stops at the first bad one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from sibo.checkpoint.weights import WEIGHT_LIMIT, check_finite
from sibo.errors import InputError


@contextmanager
def finite_logits(model: torch.nn.Module) -> Iterator[None]:
    """Raise InputError, naming the cause, from the first forward of `model` whose logits are not finite."""
    head = model.get_output_embeddings()
    if head is None:  # a classifier or an unusual model: nothing to watch
        yield
        return

    def check(_module, _inputs, logits) -> None:
        if isinstance(logits, torch.Tensor) and not bool(torch.isfinite(logits).all()):
            raise non_finite_logits(model, logits)

    handle = head.register_forward_hook(check)
    try:
        yield
    finally:
        handle.remove()


def non_finite_logits(model: torch.nn.Module, logits: torch.Tensor) -> InputError:
    """The error for non-finite logits: the weight that holds a bad value (a merged one too), else the
    dtype that overflowed and the largest weight, which drove it."""
    kind = "NaN" if bool(torch.isnan(logits).any()) else "infinite"
    try:
        check_finite(model.state_dict(), "the model as decoded", WEIGHT_LIMIT)
    except InputError as error:
        return InputError(f"the logits went non-finite ({kind}): {error}")
    name, largest = max(
        ((name, float(weight.detach().abs().amax())) for name, weight in model.named_parameters()
         if weight.is_floating_point() and weight.numel() and weight.device.type != "meta"),
        key=lambda item: item[1],
    )  # fmt: skip
    return InputError(
        f"the logits went non-finite ({kind}): every weight is finite, but an activation overflowed "
        f"{str(logits.dtype).removeprefix('torch.')} (the largest weight: {largest:.3g} in {name}); "
        "decode in float32 (--dtype fp32), or check the adapter"
    )
