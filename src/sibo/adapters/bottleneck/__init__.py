"""Bottleneck adapters (AdapterH, AdapterP, parallel) as a peft method: `peft_type="BOTTLENECK"`.

Importing this package registers the method with peft (once; importing again changes nothing), so
that `get_peft_model`, `PeftModel.from_pretrained`, `save_pretrained`, `load_adapter`,
`add_adapter` / `set_adapter` and `disable_adapter` work as they do for LoRA.
"""

from __future__ import annotations

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import register_peft_method

from sibo.adapters.bottleneck.config import (
    INPUT_ADAPTER,
    OUTPUT_ADAPTER,
    PARALLEL_ADAPTER,
    BottleneckConfig,
    bottleneck_peft_type,
)
from sibo.adapters.bottleneck.layer import BottleneckLayer
from sibo.adapters.bottleneck.model import FFN_ROLE_TABLES, PARALLEL_TARGETS, BottleneckModel

__all__ = [
    "FFN_ROLE_TABLES",
    "INPUT_ADAPTER",
    "OUTPUT_ADAPTER",
    "PARALLEL_ADAPTER",
    "PARALLEL_TARGETS",
    "BottleneckConfig",
    "BottleneckLayer",
    "BottleneckModel",
]


def register() -> None:
    """Make peft know the method; safe to call again (a reloaded module re-points the mappings)."""
    peft_type = bottleneck_peft_type()
    if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        register_peft_method(
            name="bottleneck", config_cls=BottleneckConfig, model_cls=BottleneckModel, prefix="adapter_"
        )
    else:
        PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = BottleneckConfig
        PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = BottleneckModel
        PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = BottleneckModel.prefix


register()
