"""The adapter a run trains: the PEFT config its flags describe, added to the base and boosted by SIBO."""

from __future__ import annotations

import logging
import re

import torch
from peft import get_peft_model

from sibo.adapters.bottleneck import BottleneckConfig
from sibo.checkpoint.peft_model import boost_adapter
from sibo.core.booster import find_boost
from sibo.errors import InputError, first_line
from sibo.train.config import FinetuneConfig

logger = logging.getLogger(__name__)


def add_trainable_adapter(model: torch.nn.Module, peft_config, config: FinetuneConfig) -> torch.nn.Module:
    """`model` with the adapter this run trains (its weights in fp32), boosted by SIBO as `config.sibo` says:
    its branches read (1-λ)·x + λ·h0. `sibo.boost_adapter` is the library call that boosts it."""
    if getattr(peft_config, "peft_type", None) == "LORA" and peft_config.target_modules is None:
        targets = paper_targets(model.config.model_type)
        peft_config.target_modules = _peft_targets(targets)
        logger.info("LoRA on %s (the paper's targets; --target_modules chooses others)", ",".join(targets))
    try:
        model = boost_adapter(get_peft_model(model, peft_config), config.sibo)
    except InputError:  # SIBO's own refusals say what to do already
        raise
    except ValueError as error:  # e.g. target modules not found in the base model
        reason = first_line(error)
        raise InputError(
            f"cannot add a {config.adapter_name} adapter to {config.base_model}: {reason}"
        ) from None
    # Trainable weights in fp32 whatever the base's dtype: fp16 AMP cannot step fp16 parameters.
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype in (torch.float16, torch.bfloat16):
            parameter.data = parameter.data.float()
    boosted = find_boost(model)
    if config.ffn is False and config.embedding_lambda > 0:
        names = sorted({re.split(r"\.\d+\.", layer.name)[-1] for layer in boosted.layers})
        logger.warning(
            "--ffn False boosts the attention branches here (%s); LLM-Adapters' code boosts nothing with it. "
            "For plain PEFT, use --embedding_lambda 0",
            ", ".join(names) or "none of the adapted modules",
        )
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("trainable parameters: %d of %d (%.4f%%)", trainable, total, 100 * trainable / total)
    return model


# The paper's LoRA targets (q, k, v, up, down: the FFN's input-reading up_proj is what SIBO boosts), per family.
_LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
_FUSED_QKV_TARGETS = ("query_key_value", "dense_h_to_4h", "dense_4h_to_h")
PAPER_TARGETS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"), _LLAMA_TARGETS),
    "gptj": ("q_proj", "k_proj", "v_proj", "fc_in", "fc_out"),
    "opt": ("q_proj", "k_proj", "v_proj", "fc1", "fc2"),
    "gpt2": ("c_attn", "c_fc", "mlp.c_proj"),  # attn.c_proj is attention's output
    **dict.fromkeys(("gpt_neox", "bloom"), _FUSED_QKV_TARGETS),
}


def paper_targets(model_type: str) -> list[str]:
    """LoRA's default modules for `sibo finetune`: the paper's, so that a run without flags is a SIBO run;
    every linear layer for an architecture not in the table (its FFN input among them)."""
    return list(PAPER_TARGETS.get(model_type, ("all-linear",)))


def build_peft_config(config: FinetuneConfig):
    """The PEFT config of the chosen adapter: LoRA (DoRA = LoRA with use_dora) or the bottleneck adapter."""
    if config.adapter_name in ("lora", "dora"):
        from peft import LoraConfig

        try:
            init = {"true": True, "false": False}.get(config.init_lora_weights, config.init_lora_weights)
            return LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=_peft_targets(config.target_modules),
                use_dora=config.adapter_name == "dora",
                use_rslora=config.use_rslora,
                init_lora_weights=init,
                modules_to_save=config.modules_to_save,
                bias="none",
                task_type="CAUSAL_LM",
            )
        except ValueError as error:
            raise InputError(f"bad LoRA settings: {first_line(error)}") from None
    return BottleneckConfig(
        bottleneck_size=config.bottleneck_size,
        non_linearity=config.non_linearity,
        adapter_dropout=config.adapter_dropout,
        scaling=config.scaling,
        target_modules=config.target_modules,
        use_parallel_adapter=config.use_parallel_adapter,
        use_adapterp=config.use_adapterp,
        task_type="CAUSAL_LM",
    )


def _peft_targets(target_modules: list[str] | None) -> list[str] | str | None:
    """PEFT's spelling: the single word all-linear (every linear layer but the output head) is not a list."""
    return "all-linear" if target_modules == ["all-linear"] else target_modules
