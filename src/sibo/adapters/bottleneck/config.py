"""BottleneckConfig: the settings of one bottleneck adapter, as LLM-Adapters' `BottleneckConfig` names them.

The field names and defaults are upstream's (LLM-Adapters), so its adapter_config.json files load here
unchanged: peft picks this class by `peft_type: "BOTTLENECK"`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

from peft.config import PeftConfig
from peft.utils.peft_types import PeftType
from transformers.activations import ACT2FN

from sibo.core.registration import live_settings, peft_type_member, read_settings_block
from sibo.errors import InputError

# Where an adapter sits on the module it wraps (LLM-Adapters' names for them).
INPUT_ADAPTER = "mh_adapter"  # z = x + s·up(act(down(x))), then module(z)
OUTPUT_ADAPTER = "output_adapter"  # y = module(x), then y + s·up(act(down(y)))
PARALLEL_ADAPTER = "parallel_adapter"  # module(x) + s·up(act(down(x)))
ROLES = (INPUT_ADAPTER, OUTPUT_ADAPTER, PARALLEL_ADAPTER)

INIT_SCHEMES = ("bert", "mam_adapter")
BIAS_OPTIONS = ("none", "all")
PEFT_TYPE_NAME = "BOTTLENECK"


def bottleneck_peft_type() -> PeftType:
    """PeftType.BOTTLENECK, added to peft's enum on first use (peft only registers enum members)."""
    return peft_type_member(PEFT_TYPE_NAME)


@dataclass
class BottleneckConfig(PeftConfig):
    """A bottleneck adapter: s·up(act(down(u))) with down: w → b, up: b → w', no biases.

    Modes: AdapterH (default: input adapters on the FFN's first modules, output adapters on its last),
    AdapterP (`use_adapterp`: output adapters only, after the FFN), parallel (`use_parallel_adapter`:
    beside the wrapped module, by default q/k/v).
    """

    bottleneck_size: int = field(default=256, metadata={"help": "b, the width of the bottleneck"})
    non_linearity: str = field(
        default="tanh", metadata={"help": "the activation between down and up: any transformers ACT2FN name"}
    )
    adapter_dropout: float = field(
        default=0.0, metadata={"help": "dropout probability on the adapter's input, in [0, 1)"}
    )
    scaling: float | str = field(
        default=1.0,
        metadata={
            "help": "s, the factor on the adapter's output: a number, or 'learned' (a trainable scalar, from 1)"
        },
    )
    init_weights: str = field(
        default="bert",
        metadata={
            "help": "'bert': normal(0, 0.02) for down and up; 'mam_adapter': kaiming-uniform down, zero up "
            "(the adapter starts as the identity)"
        },
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "module names (exact, or a dotted suffix such as 'mlp.c_proj') or one regex matched against "
            "the full name; None: the mode's default for a known architecture"
        },
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "module names or a regex, as target_modules, to leave unadapted"}
    )
    use_parallel_adapter: bool = field(
        default=False, metadata={"help": "parallel adapters: module(x) + s·up(act(down(x)))"}
    )
    use_adapterp: bool = field(
        default=False,
        metadata={"help": "AdapterP (Pfeiffer): output adapters only, by default after the FFN"},
    )
    module_roles: dict[str, str] | None = field(
        default=None,
        metadata={
            "help": "role per module name (exact or dotted suffix): 'mh_adapter' (input), 'output_adapter' or "
            "'parallel_adapter'; needed for architectures without a built-in role table, and overrides it"
        },
    )
    bias: str = field(
        default="none",
        metadata={"help": "'none', or 'all': train (and save) every bias of the base model too"},
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "modules besides the adapters to train fully and save, e.g. a classifier head"},
    )
    sibo: dict | None = field(
        default=None,
        metadata={
            "help": "SIBO's settings (lam, targets, learnable_lambda, lambda_logits), written by a boosted adapter's "
            "save: PEFT's loaders then boost it as sibo's do (see sibo.core.registration)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = bottleneck_peft_type()
        size = self.bottleneck_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InputError(f"bottleneck_size must be a positive integer, got {size!r}")
        if self.non_linearity not in ACT2FN:
            raise InputError(
                f"non_linearity {self.non_linearity!r} is not a transformers activation; "
                f"choose one of {', '.join(sorted(ACT2FN))}"
            )
        dropout = self.adapter_dropout
        if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
            raise InputError(f"adapter_dropout must be a number in [0, 1), got {dropout!r}")
        self.adapter_dropout = float(dropout)
        self.scaling = _checked_scaling(self.scaling)
        if self.init_weights not in INIT_SCHEMES:
            raise InputError(f"init_weights must be one of {INIT_SCHEMES}, got {self.init_weights!r}")
        if self.use_parallel_adapter and self.use_adapterp:
            raise InputError("use_parallel_adapter and use_adapterp are two different modes: choose one")
        if self.bias not in BIAS_OPTIONS:
            raise InputError(f"bias must be one of {BIAS_OPTIONS}, got {self.bias!r}")
        for name, role in (self.module_roles or {}).items():
            if role not in ROLES:
                raise InputError(f"module_roles[{name!r}] is {role!r}; a role is one of {ROLES}")
        if isinstance(self.target_modules, list | tuple):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list | tuple):
            self.exclude_modules = set(self.exclude_modules)
        if self.sibo is not None:
            read_settings_block(self.sibo, "adapter_config.json")

    def to_dict(self) -> dict:
        return live_settings(self, super().to_dict())


def _checked_scaling(scaling: object) -> float | str:
    if scaling == "learned":
        return "learned"
    number = None
    if isinstance(scaling, str):
        # a number from a command line or an old JSON file
        with contextlib.suppress(ValueError):
            number = float(scaling)
    elif isinstance(scaling, int | float) and not isinstance(scaling, bool):
        number = float(scaling)
    # nan or inf would train an all-NaN adapter
    if number is not None and math.isfinite(number):
        return number
    raise InputError(f"scaling must be a finite number or 'learned', got {scaling!r}")
