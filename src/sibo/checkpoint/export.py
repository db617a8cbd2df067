"""Merge an adapter into a standalone checkpoint, exactly where SIBO allows it.

    sibo export --base_model B --weights_path W --output_dir O [--format hf|state_dict] [--approximate]

A boosted LoRA branch reads (1-λ)·x + λ·h0, so it splits into two linear terms:

    s·B·A·((1-λ)·x + λ·h0) = (1-λ)·ΔW·x  +  λ·ΔW·h0,      ΔW = s·B·A  (out, in)

The first folds into the base weight like any LoRA; the second reads h0, which no weight of a
plain checkpoint sees. The exact export therefore writes the merged base (an ordinary HF
checkpoint) plus, in O/sibo_residual/, a small SIBO adapter on exactly the boosted modules that
reads h0 alone (λ = 1) with B ← λ·s·B (per block λ when learnable, scaling folded in).
`--approximate` folds the whole ΔW and drops the h0 term, and measures what that costs on probe
prompts. Plain LoRA and λ = 0 merge exactly, as PEFT's merge_and_unload does.
`merge_for_inference` is the same exact merge kept in memory, for decoding (`sibo evaluate`,
`sibo generate`), with the h0 terms as hooks that project h0 once per step (`sibo.core.h0_branches`)
instead of a residual adapter.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer

from sibo.checkpoint.config import ExportConfig
from sibo.checkpoint.load import RESIDUAL_DIR
from sibo.core.h0_branches import add_h0_branches
from sibo.core.peft_model import boosted_adapter, get_sibo_model
from sibo.errors import InputError
from sibo.prompts import build_prompt

logger = logging.getLogger(__name__)

STATE_DICT_FILE = "model.safetensors"
# Probe prompts for --approximate: the deviation is the largest |Δlogit| over all their positions.
PROBE_INSTRUCTIONS = (
    ("Tom has 3 apples and buys 4 more. How many apples does he have now?", None),
    ("Answer the question with true or false.", "Is the sky green?"),
    ("Write one sentence about the sea.", None),
)


@dataclass
class ExportReport:
    """What was written: `exact` tells whether the files reproduce the adapter's logits."""

    output_dir: Path
    exact: bool
    files: list[Path]
    residual_modules: list[str] = field(default_factory=list)  # modules of O/sibo_residual, if written
    max_logit_deviation: float | None = None  # measured by --approximate


def merge_for_inference(model: torch.nn.Module, adapter_name: str = "default") -> torch.nn.Module:
    """`model` with the same outputs and fewer kernels per decoding step: the exact merge of `sibo export`,
    kept in memory (merged base + hooks adding λ·ΔW·h0 when λ > 0). An adapter with no exact
    merged form (bottleneck, DoRA with λ > 0, a quantized base, several adapters) comes back unmerged.
    The model is merged in place: use the returned one."""
    if not isinstance(model, PeftModel):
        return model
    lambdas = _boosted_lambdas(model, adapter_name)
    reason = (
        "it holds several adapters"
        if len(model.peft_config) > 1
        else _unmergeable_reason(model, adapter_name, lambdas)
    )
    if reason is None and model.peft_config[adapter_name].peft_type != "LORA":
        reason = f"the inference merge handles LoRA only, not {model.peft_config[adapter_name].peft_type}"
    if reason is not None:
        logger.info("decoding with the adapter unmerged: %s", reason.split(":")[0])
        return model
    merged, residual = _merge_exactly(model, adapter_name, lambdas)
    if residual:
        add_h0_branches(merged, residual)
    logger.info(
        "merged the adapter into the base weights for decoding%s",
        f"; λ·ΔW·h0 kept on {len(residual)} modules" if residual else "",
    )
    return merged.eval()


def export_adapter(model: PeftModel, tokenizer, config: ExportConfig) -> ExportReport:
    """Merge `model`'s adapter and write it; the model is merged in place (do not use it afterwards)."""
    adapter_name = config.adapter_name
    lambdas = _boosted_lambdas(model, adapter_name)  # module name in the base model -> λ of its block
    reason = _unmergeable_reason(model, adapter_name, lambdas)
    if reason is not None:
        raise InputError(reason)
    needs_residual = any(lam != 0 for lam in lambdas.values())
    if needs_residual and config.format == "state_dict" and not config.approximate:
        raise InputError(
            "a SIBO adapter with λ > 0 has no exact single-file form (its λ·ΔW·h0 term reads h0): "
            "use --format hf for the exact export, or add --approximate to drop that term"
        )

    probes = _probe_logits(model, tokenizer) if needs_residual and config.approximate else None
    if config.approximate:
        merged, residual = _fold(model, adapter_name, {}), {}
    else:
        merged, residual = _merge_exactly(model, adapter_name, lambdas)
    merged.eval()

    config.output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=config.output_dir.parent.resolve()))
    try:
        files = []
        if residual:
            files = _write_residual(merged, residual, model.peft_config[adapter_name], staging / RESIDUAL_DIR)
        files = _write_merged(merged, tokenizer, staging, config.format) + files
        report = ExportReport(config.output_dir, exact=not config.approximate or not needs_residual, files=[])
        if probes is not None:
            report.max_logit_deviation = _max_deviation(merged, probes)
        if config.output_dir.exists():
            config.output_dir.rmdir()  # empty, checked by ExportConfig
        staging.rename(config.output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report.files = [config.output_dir / path.relative_to(staging) for path in files]
    report.residual_modules = sorted(residual)
    return report


def _unmergeable_reason(model: PeftModel, adapter_name: str, lambdas: dict[str, float]) -> str | None:
    """Why the adapter has no exact merged form, or None when it has one (`lambdas`: _boosted_lambdas)."""
    peft_config = model.peft_config[adapter_name]
    peft_type = str(getattr(peft_config.peft_type, "value", peft_config.peft_type))
    if "BOTTLENECK" in peft_type.upper():
        return (
            "a bottleneck adapter cannot be merged into the base weights: its branch up(act(down(·))) is "
            "nonlinear. Keep the adapter and load it with sibo.load_sibo_model"
        )
    if peft_type != "LORA" and boosted_adapter(model, adapter_name) is not None:
        return f"sibo export merges boosted LoRA adapters only, not {peft_type}"
    if getattr(model.base_model.model.config, "quantization_config", None) is not None:
        return "a quantized base model has no merged form: load it without --load_8bit/--load_4bit"
    if getattr(peft_config, "use_dora", False) and any(lam != 0 for lam in lambdas.values()):
        return (
            "a DoRA adapter boosted with λ > 0 has no merged form: its magnitude normalises ‖W0 + ΔW‖, "
            "which the h0 term changes. Load the adapter with sibo.load_sibo_model instead"
        )
    return None


def _merge_exactly(
    model: PeftModel, adapter_name: str, lambdas: dict[str, float]
) -> tuple[torch.nn.Module, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The merged base and the λ·ΔW·h0 terms it cannot hold, as (A, λ·s·B) per module ({} when every
    λ is 0): the export writes them as a residual adapter, decoding adds them as hooks."""
    if not any(lam != 0 for lam in lambdas.values()):
        try:
            return model.merge_and_unload(), {}
        except (AttributeError, NotImplementedError) as error:
            peft_type = model.peft_config[adapter_name].peft_type
            raise InputError(f"this {peft_type} adapter cannot be merged: {error}") from None
    residual = _residual_weights(model, adapter_name, lambdas)
    return _fold(model, adapter_name, lambdas), residual


def _boosted_lambdas(model: PeftModel, adapter_name: str) -> dict[str, float]:
    """Each boosted module's name relative to the base model, with the λ of its block."""
    adapter = boosted_adapter(model, adapter_name)
    if adapter is None:
        return {}
    prefix = "base_model.model."
    return {
        layer.name.removeprefix(prefix): float(torch.as_tensor(adapter.lambda_at(layer.block)).detach())
        for layer in adapter.layers
    }


def _lora_layers(model: PeftModel, adapter_name: str) -> dict[str, LoraLayer]:
    base = model.base_model.model
    return {
        name: module
        for name, module in base.named_modules()
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A
    }


def _residual_weights(
    model: PeftModel, adapter_name: str, lambdas: dict[str, float]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A, λ·s·B) for every boosted module with λ ≠ 0: the branch that reads h0 alone."""
    layers = _lora_layers(model, adapter_name)
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
def _fold(model: PeftModel, adapter_name: str, lambdas: dict[str, float]) -> torch.nn.Module:
    """Fold (1-λ)·ΔW into each module in `lambdas`, the whole ΔW (PEFT's merge) into the others; unload."""
    for name, layer in _lora_layers(model, adapter_name).items():
        if name not in lambdas:
            layer.merge(adapter_names=[adapter_name])
            continue
        base_layer = layer.get_base_layer()
        delta = layer.get_delta_weight(adapter_name).float() * (
            1.0 - lambdas[name]
        )  # shaped like the base weight
        base_layer.weight.data = (base_layer.weight.float() + delta).to(base_layer.weight.dtype)
        if layer.lora_bias.get(adapter_name, False):
            if base_layer.bias is None:
                raise InputError(f"cannot merge lora_bias into {name}: its base layer has no bias")
            bias = layer.lora_B[adapter_name].bias.float() * layer.scaling[adapter_name]
            base_layer.bias.data = (base_layer.bias.float() + bias).to(base_layer.bias.dtype)
    return model.unload()


def _write_merged(merged: torch.nn.Module, tokenizer, directory: Path, format: str) -> list[Path]:
    if format == "hf":
        merged.save_pretrained(directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        return sorted(path for path in directory.iterdir() if path.is_file())
    from safetensors.torch import save_model

    file = directory / STATE_DICT_FILE
    save_model(merged, str(file), metadata={"format": "pt"})  # drops duplicates of tied weights
    return [file]


def _write_residual(
    merged: torch.nn.Module,
    residual: dict[str, tuple[torch.Tensor, torch.Tensor]],
    peft_config: LoraConfig,
    directory: Path,
) -> list[Path]:
    """A SIBO LoRA with λ = 1 on the boosted modules, holding (A, λ·s·B); α = r everywhere so its scaling
    is 1. Written to `directory`, then unloaded: `merged` is left the plain merged base."""
    ranks = {name: lora_a.shape[0] for name, (lora_a, _) in residual.items()}
    rank = max(ranks.values(), key=list(ranks.values()).count)
    patterns = {name: r for name, r in ranks.items() if r != rank}
    residual_config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        rank_pattern=patterns,
        alpha_pattern=patterns,
        target_modules=sorted(residual),
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=peft_config.fan_in_fan_out,
        task_type=peft_config.task_type,
        init_lora_weights=False,
    )
    booster_log = logging.getLogger("sibo.core.booster")
    level = booster_log.level
    booster_log.setLevel(logging.WARNING)  # its "boosted N modules" line would describe this inner adapter
    try:
        model = get_sibo_model(merged, residual_config, lam=1.0, targets="all")
    finally:
        booster_log.setLevel(level)
    boosted = {layer.name.removeprefix("base_model.model.") for layer in boosted_adapter(model).layers}
    if boosted != set(residual):
        raise RuntimeError(f"the residual adapter boosts {sorted(boosted)}, expected {sorted(residual)}")
    layers = _lora_layers(model, "default")
    with torch.no_grad():
        for name, (lora_a, lora_b) in residual.items():
            layers[name].lora_A["default"].weight.copy_(lora_a)
            layers[name].lora_B["default"].weight.copy_(lora_b)
    model.save_pretrained(directory)
    model.unload()
    return sorted(path for path in directory.iterdir() if path.is_file())


def _probe_batch(tokenizer, device: torch.device) -> dict[str, torch.Tensor]:
    prompts = [build_prompt(instruction, input) for instruction, input in PROBE_INSTRUCTIONS]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    return {name: tensor.to(device) for name, tensor in batch.items()}


@torch.no_grad()
def _probe_logits(model: torch.nn.Module, tokenizer) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    batch = _probe_batch(tokenizer, next(model.parameters()).device)
    return batch, model(**batch).logits.float()


@torch.no_grad()
def _max_deviation(merged: torch.nn.Module, probes: tuple[dict[str, torch.Tensor], torch.Tensor]) -> float:
    batch, reference = probes
    deviation = (
        merged(**batch).logits.float() - reference
    ).abs()  # (B, T, V), or (B, labels) for a classifier
    if deviation.dim() == 3:
        deviation = deviation[batch["attention_mask"].bool()]  # padding positions do not count
    return deviation.max().item()
