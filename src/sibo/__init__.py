"""sibo: SIBO, a simple booster for parameter-efficient fine-tuning (Wen, Zhang, Fang, ACL 2024).

The names below load on first use, so `import sibo` (and `sibo --help`) costs no torch import.
"""

from __future__ import annotations

import importlib

# public name -> the module that defines it
_EXPORTS = {
    # importing the bottleneck subpackage registers the method with peft
    "BottleneckConfig": "sibo.adapters.bottleneck",
    "SiboConfig": "sibo.core.config",
    "boost_adapter": "sibo.checkpoint.peft_model",
    "get_sibo_model": "sibo.checkpoint.peft_model",
    "load_sibo_model": "sibo.checkpoint.peft_model",
    "mix_initial_residual": "sibo.core.booster",
    "sibo_settings": "sibo.checkpoint.peft_model",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sibo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
