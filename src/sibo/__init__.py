"""sibo: SIBO, a simple booster for parameter-efficient fine-tuning (Wen, Zhang, Fang, ACL 2024).

The names below load on first use, so `import sibo` (and `sibo --help`) costs no torch import.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

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


def _register_peft_methods() -> None:
    """Teach PEFT sibo's methods (SIBO_LORA, BOTTLENECK), so that its loaders run sibo's adapters exactly."""
    import sibo.adapters.bottleneck  # noqa: F401  (registers itself)
    from sibo.core.registration import register

    register()


class _AfterPeftImport(importlib.abc.MetaPathFinder):
    """Registers sibo's methods the moment peft is imported: `import sibo` itself stays free of torch.
    (A spec found only to test that peft is installed, as transformers does, is never executed: the
    finder stays until peft really runs.)"""

    finding = False

    def find_spec(self, name, path, target=None):
        if name != "peft" or self.finding:
            return None
        self.finding = True
        try:
            spec = importlib.util.find_spec(name)  # the real finders' spec
        finally:
            self.finding = False
        if spec is not None and spec.loader is not None:
            run_peft = spec.loader.exec_module

            def exec_module(module):
                run_peft(module)
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                _register_peft_methods()

            spec.loader.exec_module = exec_module
        return spec


if "peft" in sys.modules:
    _register_peft_methods()
elif not any(isinstance(finder, _AfterPeftImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _AfterPeftImport())
