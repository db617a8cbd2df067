"""The exact merge of a SIBO LoRA adapter into its base weights: the math `sibo export` writes and
decoding (`sibo evaluate`, `sibo generate`) keeps in memory.

A boosted LoRA branch reads (1-λ)·x + λ·h0, so it splits into two linear terms:

    s·B·A·((1-λ)·x + λ·h0) = (1-λ)·ΔW·x  +  λ·ΔW·h0,      ΔW = s·B·A  (out, in)

The first folds into the base weight like any LoRA (`fold`); the second reads h0, which no
weight of a plain checkpoint sees: `merge_exactly` returns it as (A, λ·s·B) per module, which
`sibo.checkpoint.export` writes as a residual adapter and `merge_for_inference` adds as hooks
that project h0 once per step (`sibo.core.merged_hooks`). Plain LoRA and λ = 0 merge exactly, as
PEFT's merge_and_unload does.
"""

from __future__ import annotations

import logging

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils.other import AuxiliaryTrainingWrapper

from sibo.core.booster import find_boost
from sibo.core.merged_hooks import add_h0_branches
from sibo.errors import InputError

logger = logging.getLogger(__name__)


def merge_for_inference(model: torch.nn.Module, adapter_name: str = "default") -> torch.nn.Module:
    """`model` with the same outputs and fewer kernels per decoding step: the exact merge of `sibo export`,
    kept in memory (merged base + hooks adding λ·ΔW·h0 when λ > 0). An adapter with no exact
    merged form (bottleneck, DoRA with λ > 0, a quantized base, several adapters) comes back unmerged.
    The model is merged in place: use the returned one."""
    if not isinstance(model, PeftModel):
        return model
    lambdas = boosted_lambdas(model, adapter_name)
    reason = unmergeable_reason(model, adapter_name, lambdas)
    if reason is None and model.peft_config[adapter_name].peft_type != "LORA":
        reason = f"the inference merge handles LoRA only, not {model.peft_config[adapter_name].peft_type}"
    if reason is not None:
        logger.info("decoding with the adapter unmerged: %s", reason.split(":")[0])
        return model
    merged, residual = merge_exactly(model, adapter_name, lambdas)
    if residual:
        add_h0_branches(merged, residual)
    logger.info(
        "merged the adapter into the base weights for decoding%s",
        f"; λ·ΔW·h0 kept on {len(residual)} modules" if residual else "",
    )
    return merged.eval()


def unmergeable_reason(model: PeftModel, adapter_name: str, lambdas: dict[str, float]) -> str | None:
    """Why the adapter has no exact merged form, or None when it has one (`lambdas`: boosted_lambdas)."""
    names = list(model.peft_config)
    if names != [adapter_name]:  # PEFT merges and unloads the active adapter's extras, whichever is named
        return (
            f"the model holds {len(names)} adapter{'s' * (len(names) != 1)} ({', '.join(names)}): "
            f"export from a model that holds only {adapter_name!r}"
        )
    peft_config = model.peft_config[adapter_name]
    peft_type = str(getattr(peft_config.peft_type, "value", peft_config.peft_type))
    if "BOTTLENECK" in peft_type.upper():
        return (
            "a bottleneck adapter cannot be merged into the base weights: its branch up(act(down(·))) is "
            "nonlinear. Keep the adapter and load it with sibo.load_sibo_model"
        )
    if peft_type != "LORA" and find_boost(model, adapter_name) is not None:
        return f"sibo export merges boosted LoRA adapters only, not {peft_type}"
    if getattr(model.base_model.model.config, "quantization_config", None) is not None:
        return "a quantized base model has no merged form: load it without --load_8bit/--load_4bit"
    if getattr(peft_config, "use_dora", False) and any(lam != 0 for lam in lambdas.values()):
        return (
            "a DoRA adapter boosted with λ > 0 has no merged form: its magnitude normalises ‖W0 + ΔW‖, "
            "which the h0 term changes. Load the adapter with sibo.load_sibo_model instead"
        )
    return None


def merge_exactly(
    model: PeftModel, adapter_name: str, lambdas: dict[str, float]
) -> tuple[torch.nn.Module, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The merged base and the λ·ΔW·h0 terms it cannot hold, as (A, λ·s·B) per module ({} when every
    λ is 0): the export writes them as a residual adapter, decoding adds them as hooks."""
    if not any(lam != 0 for lam in lambdas.values()):
        _untie_adapted_tied_weights(model, adapter_name)
        try:
            merged = model.merge_and_unload()
        except (AttributeError, NotImplementedError) as error:
            peft_type = model.peft_config[adapter_name].peft_type
            raise InputError(f"this {peft_type} adapter cannot be merged: {error}") from None
        _untie_trained_apart(merged)
        return merged, {}
    residual = residual_weights(model, adapter_name, lambdas)
    return fold(model, adapter_name, lambdas), residual


def boosted_lambdas(model: PeftModel, adapter_name: str) -> dict[str, float]:
    """Each boosted module's name relative to the base model, with the λ of its block."""
    adapter = find_boost(model, adapter_name)
    if adapter is None:
        return {}
    prefix = "base_model.model."
    return {
        layer.name.removeprefix(prefix): float(torch.as_tensor(adapter.lambda_at(layer.block)).detach())
        for layer in adapter.layers
    }


def lora_layers(model: PeftModel, adapter_name: str) -> dict[str, LoraLayer]:
    """The LoRA layers holding `adapter_name`, by name in the base model: linear ones and embeddings."""
    base = model.base_model.model
    return {
        name: module
        for name, module in base.named_modules()
        if isinstance(module, LoraLayer)
        and (adapter_name in module.lora_A or adapter_name in module.lora_embedding_A)
    }


def residual_weights(
    model: PeftModel, adapter_name: str, lambdas: dict[str, float]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A, λ·s·B) for every boosted module with λ ≠ 0: the branch that reads h0 alone."""
    layers = lora_layers(model, adapter_name)
    residual = {}
    for name, lam in lambdas.items():
        if lam == 0:
            continue
        layer = layers[name]
        lora_a = layer.lora_A[adapter_name].weight.detach()  # (r, in)
        lora_b = layer.lora_B[adapter_name].weight.detach()  # (out, r)
        scaled_b = (lora_b.float() * (lam * layer.scaling[adapter_name])).to(lora_b.dtype)
        residual[name] = (lora_a.clone(), scaled_b)
    return residual


@torch.no_grad()
def fold(model: PeftModel, adapter_name: str, lambdas: dict[str, float]) -> torch.nn.Module:
    """Fold (1-λ)·ΔW into each module in `lambdas`, the whole ΔW (PEFT's merge) into the others (an embedding
    reads token ids, never h0: never boosted); merge what PEFT trains beside them too; unload."""
    _untie_adapted_tied_weights(model, adapter_name)
    for name, layer in lora_layers(model, adapter_name).items():
        if name not in lambdas:
            layer.merge(adapter_names=[adapter_name])
            continue
        base_layer = layer.get_base_layer()
        # shaped like the base weight
        delta = layer.get_delta_weight(adapter_name).float() * (1.0 - lambdas[name])
        base_layer.weight.data = (base_layer.weight.float() + delta).to(base_layer.weight.dtype)
        if layer.lora_bias.get(adapter_name, False):
            if base_layer.bias is None:
                raise InputError(f"cannot merge lora_bias into {name}: its base layer has no bias")
            bias = layer.lora_B[adapter_name].bias.float() * layer.scaling[adapter_name]
            base_layer.bias.data = (base_layer.bias.float() + bias).to(base_layer.bias.dtype)
    _keep_trained_copies(model, adapter_name)
    merged = model.unload()
    _untie_trained_apart(merged)
    return merged


def _keep_trained_copies(model: PeftModel, adapter_name: str) -> None:
    """Merge what PEFT trains beside the adapter's layers, as its merge does: each `modules_to_save` module's
    trained copy in its place (PEFT ≥ 0.22 unloads the original), trainable token rows
    (`trainable_token_indices`) into their embedding (an unload drops them)."""
    base = model.base_model.model
    for name, module in list(base.named_modules()):
        if isinstance(module, AuxiliaryTrainingWrapper):
            parent, _, child = name.rpartition(".")
            trained = module.unload_and_optionally_merge_module(
                merge=True, safe_merge=False, adapter_names=[adapter_name]
            )
            setattr(base.get_submodule(parent), child, trained)


def _untie_adapted_tied_weights(model: PeftModel, adapter_name: str) -> None:
    """A LoRA on a tied input embedding or head changes one side, not the other that shares its matrix: merged in
    place it would change both (a LoRA on lm_head would move the embedding, and h0), so the head gets a copy of
    the matrix (the merge then unties the config)."""
    base = model.base_model.model
    embedding, head = base.get_input_embeddings(), base.get_output_embeddings()
    if head is None or embedding is None:
        return
    adapted = [
        layer
        for layer in (embedding, head)
        if isinstance(layer, LoraLayer) and adapter_name in {*layer.lora_A, *layer.lora_embedding_A}
    ]
    head = head.get_base_layer() if isinstance(head, LoraLayer) else head
    embedding = embedding.get_base_layer() if isinstance(embedding, LoraLayer) else embedding
    if adapted and head.weight is embedding.weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)


def _untie_trained_apart(model: torch.nn.Module) -> None:
    """A tied base whose head or embedding was trained apart (modules_to_save lm_head, a LoRA on either)
    holds two matrices now: say so in its config, as PEFT's merge does, or a reload would tie them again."""
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if inputs is None or outputs is None or outputs.weight.data_ptr() == inputs.weight.data_ptr():
        return
    for config in (model.config, model.config.get_text_config()):
        if getattr(config, "tie_word_embeddings", False):
            config.tie_word_embeddings = False
