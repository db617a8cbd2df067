"""SIBO, the simple booster for PEFT (Wen, Zhang, Fang, ACL 2024, arXiv 2402.11896), in one module.

Deep stacks over-smooth: token representations grow alike with depth. SIBO gives every adapter
branch an *initial residual*: the branch reads (1-λ)·x + λ·h0 instead of x, h0 being the hidden
state that enters the first transformer block, while the frozen base weight still reads x:

    LoRA:        y = W0·x + s·B·A·dropout((1-λ)·x + λ·h0)
    DoRA:        y = W0·x + (g-1)·W0·x' + g·s·B·A·((1-λ)·x' + λ·h0),  x' = dropout(x), g = m / ‖W0 + s·B·A‖
    bottleneck:  y = z + s·up(act(down(dropout((1-λ)·u + λ·h0))))       (u = the adapter's input)

It is built from two hooks and no fork of any model code: a forward pre-hook on block 0 stores
h0 for the current forward pass, and a forward pre-hook on the first module of each eligible
branch (LoRA's dropout, DoRA's magnitude module, a bottleneck adapter's dropout) mixes h0 into
that module's input (in training, block 0's hook also hands transformers' gradient checkpointing its h0). Only branches inside a transformer block whose input width is the hidden
size can take h0; `targets` chooses among them. The hooks are safe to rerun: transformers' gradient
checkpointing reruns a block in backward with the h0 of its own forward, even after later forwards
(torch's checkpoint_wrapper and DeepSpeed's rerun with the last forward's: one forward per backward).
h0 stays aligned with x under KV caching (block 0 sees the new positions only), left padding, beam
search and packed sequences.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.variants import DoraLinearVariant
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.integrations import dequantize_module_weight
from peft.utils.other import transpose
from torch import nn

from sibo.core.config import SiboConfig
from sibo.errors import InputError

logger = logging.getLogger(__name__)

_ATTENTION_PART = re.compile(r"attn|attention", re.IGNORECASE)


class LastMix(NamedTuple):
    """The mix a branch just computed: q/k/v (and gate/up) of a block read the same x, so they share it."""

    x: torch.Tensor
    adapter_name: str
    block: int
    mixed: torch.Tensor


class Branch(NamedTuple):
    """Where SIBO hooks a PEFT layer: the module whose input is the branch's input, how, and its width."""

    module: nn.Module
    kind: str  # "input": mix the module's input; "dora": DoRA's magnitude module (see _register_mixing_hook)
    in_features: int


class InitialState:
    """h0 of the current forward pass, shared by every boosted branch of one model."""

    def __init__(self) -> None:
        self.h0: torch.Tensor | None = None
        # adapter name -> rows of the batch it runs on, while PEFT runs an `adapter_names=` mixed batch
        self.adapter_rows: dict[str, torch.Tensor] | None = None
        self.last_mix: LastMix | None = None
        # Until each boosted adapter's branches have been seen mixing h0 once (see check_branches_mixed):
        self.unverified: list[BoostedAdapter] = []
        self.mixed: set[str] | None = None  # names of the branches that mixed in this forward

    @contextmanager
    def rows_of(self, peft_kwargs: dict) -> Iterator[None]:
        """While PEFT runs each adapter of an `adapter_names=` batch on its rows (its forward's or generate's
        keyword arguments): each adapter's branches read the same rows of h0."""
        names = peft_kwargs.get("adapter_names")
        if names is None:
            yield
            return
        if isinstance(peft_kwargs.get("num_beams"), int):
            names = [name for name in names for _ in range(peft_kwargs["num_beams"])]  # as PEFT expands them
        self.adapter_rows = {
            adapter: torch.tensor([i for i, n in enumerate(names) if n == adapter]) for adapter in set(names)
        }
        try:
            yield
        finally:
            self.adapter_rows = None

    def for_branch(self, adapter_name: str) -> torch.Tensor:
        if self.h0 is None:
            raise InputError("SIBO found no h0: call the whole model, not a single layer")
        if self.adapter_rows is None:
            return self.h0
        return self.h0[self.adapter_rows[adapter_name].to(self.h0.device)]


class LearnableLambda(nn.Module):
    """One λ per transformer block, λ_i = sigmoid(θ_i), so it stays in (0, 1) by construction."""

    def __init__(self, lam: float, num_blocks: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.full((num_blocks,), math.log(lam / (1.0 - lam))))

    def forward(self, block: int) -> torch.Tensor:
        return torch.sigmoid(self.logits[block])


@dataclass
class BoostedLayer:
    name: str  # the module's name in the model
    layer: nn.Module  # the PEFT layer (LoRA or bottleneck)
    block: int  # index of the transformer block it sits in


@dataclass
class BoostedAdapter:
    config: SiboConfig
    layers: list[BoostedLayer]
    lambdas: LearnableLambda | None
    handles: list = field(default_factory=list, repr=False)
    adapter_name: str = "default"

    def lambda_at(self, block: int) -> float | torch.Tensor:
        """The λ block `block` mixes with: the config's number, or that block's learnable one."""
        return self.config.lam if self.lambdas is None else self.lambdas(block)


def find_boost(model: nn.Module, adapter_name: str = "default") -> BoostedAdapter | None:
    """The boost of an adapter of a SIBO PeftModel (`sibo.checkpoint.peft_model` keeps them in
    `_sibo_adapters`); None for a plain PEFT adapter."""
    return getattr(model, "_sibo_adapters", {}).get(adapter_name)


def mix_initial_residual(x: torch.Tensor, h0: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """(1-λ)·x + λ·h0 — SIBO's initial residual, in x's dtype, device and layout."""
    if h0.dtype != x.dtype or h0.device != x.device:  # a model split over devices, or a bf16 branch
        h0 = h0.to(device=x.device, dtype=x.dtype)
    if h0.shape != x.shape:  # OPT flattens (B, T, H) to (B·T, H) before its feed-forward layers
        h0 = h0.reshape(x.shape)
    if isinstance(lam, torch.Tensor):
        lam = lam.to(device=x.device, dtype=x.dtype)
    elif lam == 1.0:  # a merged model's residual adapter reads h0 alone: skip the kernel
        return h0  # what lerp gives at weight 1 too
    return torch.lerp(x, h0, lam)  # x + λ·(h0 - x): exact at λ = 0, one fused kernel


def find_transformer_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of transformer blocks: the first one as long as the config's layer count."""
    config = model.config.get_text_config()
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == config.num_hidden_layers:
            return name, module
    raise InputError(
        f"SIBO found no list of {config.num_hidden_layers} transformer blocks in {type(model).__name__}"
    )


class Handles(NamedTuple):
    """Hook handles removed together."""

    handles: tuple

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def capture_initial_state(blocks: nn.ModuleList, state: InitialState) -> Handles:
    """Store the input of block 0 — h0 — on every forward, and check after the last block, until each
    boosted adapter has passed once, that its branches mixed h0; returns the hooks' handles."""

    def store_h0(module, args, kwargs):
        state.h0 = args[0] if args else kwargs["hidden_states"]  # (B, T, H), new positions only
        state.last_mix = None
        state.mixed = set() if state.unverified else None
        if module.training and torch.is_grad_enabled():  # when transformers checkpoints blocks
            _checkpoint_with_h0(blocks, state)

    def check(module, args, output):
        if state.mixed is not None and state.adapter_rows is None:
            check_branches_mixed(state)

    return Handles(
        (
            blocks[0].register_forward_pre_hook(store_h0, with_kwargs=True),
            blocks[-1].register_forward_hook(check),
            _CheckpointUnwrap(blocks),
        )
    )


def _checkpoint_with_h0(blocks: nn.ModuleList, state: InitialState) -> None:
    """Gradient checkpointing reruns a block in backward, when a later forward may have replaced h0: the rerun
    must mix its own forward's h0. transformers' blocks checkpoint through `_gradient_checkpointing_func`, set
    anew by each gradient_checkpointing_enable; a wrapper of another state is a copied or earlier model's."""
    for block in blocks:
        checkpointing = getattr(block, "_gradient_checkpointing_func", None)
        if checkpointing is not None and getattr(checkpointing, "state", None) is not state:
            block._gradient_checkpointing_func = _CheckpointWithH0(checkpointing, state)


class _CheckpointWithH0:
    """A block's checkpoint function whose function, run in the forward and rerun in backward, mixes the h0
    of the forward that called it."""

    def __init__(self, checkpoint, state: InitialState) -> None:
        self.checkpoint = checkpoint.checkpoint if isinstance(checkpoint, _CheckpointWithH0) else checkpoint
        self.state = state

    def __call__(self, function, *args, **kwargs):
        h0 = self.state.h0

        def with_its_h0(*inner_args, **inner_kwargs):
            self.state.h0 = h0
            return function(*inner_args, **inner_kwargs)

        return self.checkpoint(with_its_h0, *args, **kwargs)


class _CheckpointUnwrap(NamedTuple):
    """Gives each block its own checkpoint function back when SIBO's hooks come off."""

    blocks: nn.ModuleList

    def remove(self) -> None:
        for block in self.blocks:
            checkpointing = getattr(block, "_gradient_checkpointing_func", None)
            if isinstance(checkpointing, _CheckpointWithH0):
                block._gradient_checkpointing_func = checkpointing.checkpoint


def check_branches_mixed(state: InitialState) -> None:
    """Every branch a boosted adapter ran in this forward mixed h0: a fused kernel, a replaced forward or a
    compiled graph that computes the LoRA branch without calling its modules would train plain LoRA."""
    for adapter in list(state.unverified):
        running = [layer.name for layer in adapter.layers if _runs(layer.layer, adapter.adapter_name)]
        skipped = [name for name in running if name not in state.mixed]
        if skipped:
            shown = ", ".join(skipped[:4]) + (f" and {len(skipped) - 4} more" if len(skipped) > 4 else "")
            raise InputError(
                f"SIBO's mixing did not run in {len(skipped)} of {len(running)} boosted modules ({shown}): a fused "
                "kernel, a replaced forward or a compiled graph skipped their LoRA modules, so they would run as plain "
                "LoRA; turn that kernel off for SIBO adapters"
            )
        if running:
            state.unverified.remove(adapter)
    state.mixed = None


def _runs(layer: nn.Module, adapter_name: str) -> bool:
    """Whether PEFT runs `adapter_name`'s branch in this layer (active, not disabled)."""
    return not layer.disable_adapters and adapter_name in layer.active_adapters


def _branch(layer: nn.Module, adapter_name: str) -> Branch | None:
    """Where a PEFT layer's branch for `adapter_name` can take h0; None for layers SIBO cannot boost."""
    if isinstance(layer, LoraLayer):
        variant = getattr(layer, "lora_variant", {}).get(adapter_name)
        if variant is None:
            return Branch(layer.lora_dropout[adapter_name], "input", layer.in_features)
        if isinstance(variant, DoraLinearVariant):
            # DoRA calls lora_dropout only in training with p > 0: hook its magnitude module instead.
            return Branch(layer.lora_magnitude_vector[adapter_name], "dora", layer.in_features)
        return None
    if hasattr(layer, "sibo_branch_input"):
        return Branch(
            layer.sibo_branch_input(adapter_name), "input", layer.sibo_branch_in_features(adapter_name)
        )
    return None


def _register_mixing_hook(module: nn.Module, kind: str, adapter: BoostedAdapter, layer: BoostedLayer,
                          state: InitialState):  # fmt: skip
    adapter_name, block = adapter.adapter_name, layer.block

    def mix(x: torch.Tensor) -> torch.Tensor:
        if state.mixed is not None:
            state.mixed.add(layer.name)
        # q/k/v (and gate/up) of a block read the same x: mix it once.
        last = state.last_mix
        if last is not None and last.x is x and (last.adapter_name, last.block) == (adapter_name, block):
            return last.mixed
        mixed = mix_initial_residual(x, state.for_branch(adapter_name), adapter.lambda_at(block))
        state.last_mix = LastMix(x, adapter_name, block, mixed)
        return mixed

    if kind == "input":
        return module.register_forward_pre_hook(lambda _, args: (mix(args[0]), *args[1:]))

    def mix_dora(dora, args, kwargs):
        x = args[0]
        if kwargs.get("base_result") is None:
            # Training with dropout: DoRA would recompute W0·x' from its input; keep it reading x', not the mix.
            # As PEFT computes it (in x's dtype: a bf16 base reads the adapter's fp32 x'), with the bias DoRA
            # takes off a given base_result.
            base = kwargs["base_layer"]
            weight = transpose(dequantize_module_weight(base).to(x.dtype), dora.fan_in_fan_out)
            kwargs["base_result"] = nn.functional.linear(
                x, weight, None if base.bias is None else base.bias.to(x.dtype)
            )
        return (mix(x), *args[1:]), kwargs

    return module.register_forward_pre_hook(mix_dora, with_kwargs=True)


def boost(
    model: nn.Module, config: SiboConfig, state: InitialState, adapter_name: str = "default"
) -> BoostedAdapter:
    """Mix h0 into every eligible branch of `adapter_name` in a PEFT-wrapped `model`."""
    hidden_size = model.config.get_text_config().hidden_size
    blocks_name, blocks = find_transformer_blocks(model)
    block_prefixes = [f"{blocks_name}.{i}." for i in range(len(blocks))]
    boosted, skipped = [], {}
    for name, layer in model.named_modules():
        if not _has_adapter(layer, adapter_name):
            continue
        branch = _branch(layer, adapter_name)
        width = None if branch is None else branch.in_features
        block = next((i for i, prefix in enumerate(block_prefixes) if name.startswith(prefix)), None)
        if branch is None:
            reason = f"{_variant_name(layer, adapter_name)} branches sibo cannot mix"
        elif block is None:
            reason = "outside the transformer blocks"
        elif width != hidden_size:
            reason = f"reading width {width}, not the hidden size {hidden_size}"
        elif config.targets != "all" and _role(name[len(block_prefixes[block]) :]) != config.targets:
            reason = f"not {config.targets}"
        else:
            boosted.append((BoostedLayer(name, layer, block), branch))
            continue
        skipped.setdefault(reason, []).append(name if block is None else name[len(block_prefixes[block]) :])

    device = next(model.parameters()).device
    lambdas = LearnableLambda(config.lam, len(blocks)).to(device) if config.learnable_lambda else None
    adapter = BoostedAdapter(config, [layer for layer, _ in boosted], lambdas, adapter_name=adapter_name)
    for boosted_layer, branch in boosted:
        adapter.handles.append(
            _register_mixing_hook(branch.module, branch.kind, adapter, boosted_layer, state)
        )
        if config.lam > 0 or config.learnable_lambda:
            adapter.handles.append(
                boosted_layer.layer.register_forward_pre_hook(_refuse_merged(adapter_name))
            )
    if config.lam > 0 or config.learnable_lambda:  # λ = 0 is plain PEFT: nothing to report
        if not boosted:
            raise InputError(_boosts_nothing(config, skipped))
        state.unverified.append(adapter)
        logger.info(
            "SIBO λ=%s%s targets=%s: boosted %d of %d adapted modules%s",
            config.lam,
            " (learnable, one per block)" if config.learnable_lambda else "",
            config.targets,
            len(boosted),
            len(boosted) + sum(map(len, skipped.values())),
            _skipped_once(skipped),
        )
    return adapter


def _boosts_nothing(config: SiboConfig, skipped: dict[str, list[str]]) -> str:
    """Why a boosted adapter has no branch that reads h0, and the three ways out, in one line."""
    names = ",".join(sorted({name.rsplit(".", 1)[-1] for names in skipped.values() for name in names}))
    wanted = {"ffn": "FFN input", "attn": "attention input", "all": "branch reading the hidden state"}
    unmixable = "".join(f" ({reason})" for reason in skipped if "cannot mix" in reason)
    return (
        f"SIBO λ {config.lam} boosts nothing: targets {names or 'none'} have no {wanted[config.targets]}"
        f"{unmixable}; "
        "add up_proj (the paper's targets: q_proj,k_proj,v_proj,up_proj,down_proj), choose targets attn or all "
        "(--sibo_targets), or use λ 0 for plain PEFT (--embedding_lambda 0)"
    )


def _variant_name(layer: nn.Module, adapter_name: str) -> str:
    variant = getattr(layer, "lora_variant", {}).get(adapter_name)
    return type(variant if variant is not None else layer).__name__


def release(adapter: BoostedAdapter, state: InitialState) -> None:
    """Remove an adapter's hooks: its branches run as plain PEFT again."""
    for handle in adapter.handles:
        handle.remove()
    if adapter in state.unverified:
        state.unverified.remove(adapter)


_SKIPS_SAID: set[str] = set()  # a study loads the same kind of adapter many times: say why once


def _skipped_once(skipped: dict[str, list[str]]) -> str:
    why = "; ".join(
        f"{len(names)} {reason} ({', '.join(sorted(set(names)))})" for reason, names in skipped.items()
    )
    if not why or why in _SKIPS_SAID:
        return ""
    _SKIPS_SAID.add(why)
    return f"; skipped {why}"


def _has_adapter(layer: nn.Module, adapter_name: str) -> bool:
    """Whether `layer` is an adapted layer holding `adapter_name` (any PEFT tuner, so none goes uncounted)."""
    if isinstance(layer, LoraLayer):
        return adapter_name in layer.lora_A
    if hasattr(layer, "sibo_branch_input"):
        return adapter_name in getattr(layer, "adapter_dropout", {})
    return isinstance(layer, BaseTunerLayer) and any(
        adapter_name in getattr(layer, attribute, {}) for attribute in layer.adapter_layer_names
    )


def _role(name_in_block: str) -> str:
    """'attn' for modules under an attention sub-module, else 'ffn' (mlp, fc1, intermediate, …)."""
    return "attn" if any(_ATTENTION_PART.search(part) for part in name_in_block.split(".")) else "ffn"


def _refuse_merged(adapter_name: str):
    """A merged layer runs its base weight only, silently dropping the λ·ΔW·h0 term: refuse it."""

    def check(layer, args):
        if not layer.disable_adapters and adapter_name in getattr(layer, "merged_adapters", ()):
            raise InputError(
                f"adapter {adapter_name!r} is merged into a SIBO-boosted layer, which drops its λ·ΔW·h0 term; "
                "unmerge it, or use `sibo export` for an exact merged checkpoint"
            )

    return check
