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


def add_boosted_adapter(model: torch.nn.Module, peft_config, config: FinetuneConfig) -> torch.nn.Module:
    """`model` with a new adapter, boosted by SIBO as `config.sibo` says: its branches read (1-λ)·x + λ·h0."""
    try:
        model = boost_adapter(get_peft_model(model, peft_config), config.sibo)
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
    if boosted is not None and not boosted.layers and config.embedding_lambda > 0:
        logger.warning(
            "SIBO boosts no module: none of the adapted modules is a %s branch reading the hidden state; "
            "add such modules to --target_modules or choose --sibo_targets",
            config.sibo_targets,
        )
    trainable, total = model.get_nb_trainable_parameters()
    logger.info("trainable parameters: %d of %d (%.4f%%)", trainable, total, 100 * trainable / total)
    return model


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
