"""SIBO exact export, format version 1: a merged base model plus the λ·ΔW·h0 term it cannot hold.

Written by `sibo export` (the SIBO reference implementation) into an export folder as modeling_sibo.py;
it needs torch, transformers and safetensors only, not sibo or peft:

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

What it adds to the base architecture, and why. SIBO (Wen, Zhang, Fang, ACL 2024) feeds each boosted LoRA
branch (1-λ)·x + λ·h0 instead of x, where h0 is the hidden state entering the first transformer block. The
fine-tuned module computes

    y = W0·x + s·B·A·((1-λ)·x + λ·h0) = (W0 + (1-λ)·ΔW)·x + λ·ΔW·h0,      ΔW = s·B·A

The first term is an ordinary weight: model.safetensors holds it, in the base architecture's own layout
(`base_config` in config.json). The second reads h0, which no weight of that architecture sees; it is stored
as a low-rank pair per module, A (r, hidden) and λ·s·B (out, r), in sibo_residual/adapter_model.safetensors.
This file loads the base architecture unchanged and adds two kinds of forward hooks:

- a pre-hook on block 0 computes A·h0 for every boosted module at once, (B, T, Σr);
- a hook on each boosted module adds its slice of A·h0 times (λ·s·B)ᵀ to the module's output.

Block 0 sees only the new positions under a KV cache, so generate() stays exact. The merged weights alone
are not the fine-tuned model, so config.json names model_type "sibo_export": transformers refuses the folder
without trust_remote_code rather than load the merged base on its own. The loaded model is the base
architecture's class with these hooks: its save_pretrained and push_to_hub would write the merged base alone, a
plain checkpoint that loads anywhere and lacks λ·ΔW·h0, so they refuse (copy the export folder instead).
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.utils import cached_file

SIBO_EXPORT_VERSION = 1
RESIDUAL_WEIGHTS = "sibo_residual/adapter_model.safetensors"
_PREFIX, _DOWN, _UP = "base_model.model.", ".lora_A.weight", ".lora_B.weight"


class SiboExportConfig(PreTrainedConfig):
    """config.json of an export: the base's own config, nested, and where SIBO's hooks go."""

    model_type = "sibo_export"
    base_config: dict | None = None  # the merged base's config.json
    blocks: str = ""  # the ModuleList of transformer blocks, e.g. "model.layers"; h0 enters blocks[0]
    residual_weights: str = RESIDUAL_WEIGHTS
    sibo_export_version: int = SIBO_EXPORT_VERSION

    def base(self) -> PreTrainedConfig:
        """The base architecture's config, as the merged weights were saved with it."""
        if self.sibo_export_version != SIBO_EXPORT_VERSION:
            raise ValueError(
                f"this modeling_sibo.py reads SIBO export version {SIBO_EXPORT_VERSION}, "
                f"the folder is version {self.sibo_export_version}"
            )
        return AutoConfig.for_model(**self.base_config)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """Settings the caller passes (attn_implementation, output_hidden_states, …) are the base's: AutoModel
        hands them to this config, so they go into base_config, or base() would rebuild the base without them."""
        base = AutoConfig.for_model(**config_dict["base_config"])
        settings = {
            key: value
            for key, value in kwargs.items()
            if key in ("attn_implementation", "experts_implementation")
            or (hasattr(base, key) and key != "dtype")
        }
        config_dict = {**config_dict, "base_config": {**config_dict["base_config"], **settings}}
        return super().from_dict(config_dict, **kwargs)


def add_h0_terms(model: nn.Module, blocks: str, weights: dict[str, torch.Tensor]) -> None:
    """Make each module named in `weights` add λ·s·B·A·h0 to its output (keys as written by sibo export)."""
    names = sorted(key[len(_PREFIX) : -len(_DOWN)] for key in weights if key.endswith(_DOWN))
    modules = dict(model.named_modules())
    first_block = model.get_submodule(blocks)[0]
    dtype = _compute_dtype(model, modules[names[0]])
    down = torch.cat([weights[_PREFIX + name + _DOWN] for name in names])  # (Σr, hidden)
    device = next(first_block.parameters()).device
    first_block.register_buffer("sibo_h0_down", down.to(device, dtype), persistent=False)
    projection = {}

    def project(block: nn.Module, args: tuple, kwargs: dict) -> None:
        h0 = args[0] if args else kwargs["hidden_states"]  # (B, T, hidden): the new positions only
        projection["A·h0"] = h0 @ block.sibo_h0_down.T  # (B, T, Σr)

    first_block.register_forward_pre_hook(project, with_kwargs=True)
    model.save_pretrained = model.push_to_hub = _refuse_to_save  # the hooks and residual are in no state_dict
    start = 0
    for name in names:
        up = weights[_PREFIX + name + _UP]  # λ·s·B, (out, r)
        module = modules[name]
        module.register_buffer("sibo_h0_up", up.to(module.weight.device, dtype), persistent=False)
        module.register_forward_hook(_adder(projection, slice(start, start + up.shape[1])))
        start += up.shape[1]


def _refuse_to_save(*args, **kwargs):
    raise NotImplementedError(
        "this SIBO export would save as its merged base alone, a plain checkpoint without the λ·ΔW·h0 term: "
        "copy or upload the export folder as it is, or write a new one with `sibo export`"
    )


def _compute_dtype(model: nn.Module, module: nn.Module) -> torch.dtype:
    """The dtype the h0 terms run in: the module's weight's, or where that holds integers (a base loaded in 8 or
    4 bits) the model's floating parameters' (its embeddings' and norms'), which its hidden states keep."""
    if module.weight.is_floating_point():
        return module.weight.dtype
    return next(parameter.dtype for parameter in model.parameters() if parameter.is_floating_point())


def _adder(projection: dict, columns: slice):
    def add(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        down = projection["A·h0"][..., columns].to(output.device)
        rows = output.reshape(-1, output.shape[-1])  # OPT runs its feed-forward on (B·T, hidden) rows
        return torch.addmm(rows, down.reshape(-1, down.shape[-1]), module.sibo_h0_up.T).view_as(output)

    return add


class _SiboExport(PreTrainedModel):
    """Loads the base architecture with the merged weights, then adds SIBO's h0 terms (see the header)."""

    config_class = SiboExportConfig
    base_auto_class = AutoModelForCausalLM

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        folder = str(pretrained_model_name_or_path)
        hub = {
            key: kwargs[key]
            for key in ("revision", "cache_dir", "token", "local_files_only", "subfolder")
            if key in kwargs
        }
        if not isinstance(config, SiboExportConfig):
            config = SiboExportConfig.from_pretrained(folder, **hub)
        for auto_only in ("trust_remote_code", "_from_auto"):  # the base architecture is transformers' own
            kwargs.pop(auto_only, None)
        model = cls.base_auto_class.from_pretrained(folder, *model_args, config=config.base(), **kwargs)
        add_h0_terms(model, config.blocks, load_file(cached_file(folder, config.residual_weights, **hub)))
        return model

    @classmethod
    def _from_config(cls, config, **kwargs):
        raise NotImplementedError("a SIBO export needs its residual weights: load it with from_pretrained")


class SiboExportForCausalLM(_SiboExport):
    base_auto_class = AutoModelForCausalLM


class SiboExportForSequenceClassification(_SiboExport):
    base_auto_class = AutoModelForSequenceClassification


AUTO_MAP = {
    "AutoConfig": "modeling_sibo.SiboExportConfig",
    "AutoModelForCausalLM": "modeling_sibo.SiboExportForCausalLM",
    "AutoModelForSequenceClassification": "modeling_sibo.SiboExportForSequenceClassification",
}


def export_config(base_config: dict, blocks: str) -> dict:
    """The config.json of an export whose merged base was saved with `base_config`."""
    classifier = any(
        name.endswith("ForSequenceClassification") for name in base_config.get("architectures") or ()
    )
    architecture = "SiboExportForSequenceClassification" if classifier else "SiboExportForCausalLM"
    config = SiboExportConfig(
        base_config=base_config, blocks=blocks, auto_map=AUTO_MAP, architectures=[architecture]
    )
    return json.loads(config.to_json_string(use_diff=True))
