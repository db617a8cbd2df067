"""SIBO's h0 terms in a model merged for decoding: every A·h0 from one matmul per forward.

The exact merge (`sibo.checkpoint.export`) folds all of a LoRA adapter into the base weights except, on each
boosted module, λ·s·B·A·h0: a term that reads h0, which no base weight sees. Every one of those
terms reads the same h0, so their A matrices stack into one (Σr, hidden) matrix. A pre-hook on the
first block projects h0 through it once per forward, and each module's forward hook adds its
slice times its (λ·s·B)ᵀ to the module's output in one fused multiply-add. Per module, that is
one kernel, where a PEFT LoRA layer would run dropout, A, B, the scaling and an add.
"""

from __future__ import annotations

import torch
from torch import nn

from sibo.core.booster import find_transformer_blocks

DOWN_BUFFER = "sibo_h0_down"  # on block 0: the stacked A matrices, (Σr, hidden)
UP_BUFFER = "sibo_h0_up"  # on each module: its λ·s·B, (out, r)


class _Projection:
    """A·h0 of the current forward, (…, Σr), for the modules' hooks."""

    value: torch.Tensor | None = None


def add_h0_branches(model: nn.Module, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Make each module named in `weights` (names in `model`) add λ·s·B·A·h0 to its output;
    weights[name] = (A, λ·s·B). The terms run in the base weights' dtype, as merged decoding does."""
    _, blocks = find_transformer_blocks(model)
    modules = dict(model.named_modules())
    names = sorted(weights)
    first = next(blocks[0].parameters())
    dtype = modules[names[0]].weight.dtype
    stacked = torch.cat([weights[name][0] for name in names]).to(device=first.device, dtype=dtype)
    blocks[0].register_buffer(DOWN_BUFFER, stacked, persistent=False)
    projection = _Projection()

    def project(block: nn.Module, args: tuple, kwargs: dict) -> None:
        h0 = args[0] if args else kwargs["hidden_states"]  # (B, T, hidden), the new positions only
        projection.value = h0 @ getattr(block, DOWN_BUFFER).T

    blocks[0].register_forward_pre_hook(project, with_kwargs=True)
    start = 0
    for name in names:
        lora_a, scaled_b = weights[name]
        module = modules[name]
        module.register_buffer(
            UP_BUFFER, scaled_b.to(device=module.weight.device, dtype=dtype), persistent=False
        )
        module.register_forward_hook(_adder(projection, slice(start, start + lora_a.shape[0])))
        start += lora_a.shape[0]


def _adder(projection: _Projection, columns: slice):
    def add(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        down = projection.value[..., columns].to(output.device)
        # OPT runs its feed-forward on (B·T, hidden) rows: match the output's rows, not h0's shape
        rows = output.reshape(-1, output.shape[-1])
        return torch.addmm(rows, down.reshape(-1, down.shape[-1]), getattr(module, UP_BUFFER).T).view_as(
            output
        )

    return add
