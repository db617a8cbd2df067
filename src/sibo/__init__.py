"""sibo: SIBO, a simple booster for parameter-efficient fine-tuning (Wen, Zhang, Fang, ACL 2024)."""

from sibo.adapters.bottleneck import BottleneckConfig  # registers the bottleneck method with peft
from sibo.core.booster import mix_initial_residual
from sibo.core.config import SiboConfig
from sibo.core.peft_model import boost_adapter, get_sibo_model, load_sibo_model, sibo_settings

__all__ = [
    "BottleneckConfig",
    "SiboConfig",
    "boost_adapter",
    "get_sibo_model",
    "load_sibo_model",
    "mix_initial_residual",
    "sibo_settings",
]
__version__ = "0.1.0"
