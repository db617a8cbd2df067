"""BottleneckLayer: a frozen module with bottleneck adapters before, beside or after it.

For each active adapter, with u its input and s its scaling (shapes (…, w) → (…, w')):

    input  ("mh_adapter"):       z = x + s·up(act(down(dropout(x)))),  y = module(z)      w = w' = width_in
    output ("output_adapter"):   y = module(x),  y + s·up(act(down(dropout(y))))          w = w' = width_out
    parallel ("parallel_adapter"): y = module(x) + s·up(act(down(dropout(x))))            w → w' = width_in → width_out

Several active adapters on one module add their branches, each reading the same u (as PEFT's
LoRA sums its adapters). SIBO hooks `adapter_dropout[name]`: it is the first module of every branch
and is called exactly once per adapter and forward, so a forward pre-hook on it changes what the
branch reads while the residual (x, or y) stays unmixed.
"""

from __future__ import annotations

import math

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.activations import ACT2FN
from transformers.pytorch_utils import Conv1D

from sibo.adapters.bottleneck.config import (
    INPUT_ADAPTER,
    OUTPUT_ADAPTER,
    PARALLEL_ADAPTER,
    BottleneckConfig,
)
from sibo.errors import InputError

MERGE_REFUSAL = (
    "bottleneck adapters cannot be merged into the base weights: up(act(down(·))) is a nonlinear function of "
    "the module's input or output, not a weight delta. Keep the adapter separate (save_pretrained, then "
    "PeftModel.from_pretrained or sibo.load_sibo_model)"
)


def module_widths(module: nn.Module) -> tuple[int, int]:
    """(input width, output width) of a Linear or a GPT-2 style Conv1D (weight stored as (in, out))."""
    if isinstance(module, nn.Linear):  # bitsandbytes' Linear8bitLt / Linear4bit are nn.Linear too
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.nf
    raise InputError(
        f"bottleneck adapters wrap Linear or Conv1D modules, not {type(module).__name__}; "
        "choose other target_modules"
    )


class BottleneckLayer(nn.Module, BaseTunerLayer):
    """Wraps one frozen module; holds one bottleneck adapter per adapter name."""

    adapter_layer_names = ("adapter_down", "adapter_up", "adapter_scaling")
    other_param_names = ("adapter_role", "scaling", "adapter_dropout", "adapter_act")

    def __init__(self, base_layer: nn.Module, adapter_name: str, role: str, config: BottleneckConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = module_widths(self.get_base_layer())
        self.adapter_down = nn.ModuleDict()
        self.adapter_up = nn.ModuleDict()
        self.adapter_scaling = nn.ParameterDict()  # only adapters with scaling="learned"
        self.adapter_dropout = nn.ModuleDict()
        self.adapter_act = nn.ModuleDict()
        self.adapter_role: dict[str, str] = {}
        self.scaling: dict[str, float] = {}  # fixed scalings
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, role, config)

    def update_layer(self, adapter_name: str, role: str, config: BottleneckConfig) -> None:
        """Add (or replace) adapter `adapter_name` in the given role."""
        width_in = self.out_features if role == OUTPUT_ADAPTER else self.in_features
        width_out = self.in_features if role == INPUT_ADAPTER else self.out_features
        self.adapter_role[adapter_name] = role
        self.adapter_down[adapter_name] = nn.Linear(width_in, config.bottleneck_size, bias=False)
        self.adapter_up[adapter_name] = nn.Linear(config.bottleneck_size, width_out, bias=False)
        self.adapter_act[adapter_name] = ACT2FN[config.non_linearity]
        p = config.adapter_dropout
        self.adapter_dropout[adapter_name] = nn.Dropout(p) if p > 0.0 else nn.Identity()
        if config.scaling == "learned":
            self.adapter_scaling[adapter_name] = nn.Parameter(torch.ones(1))
            self.scaling.pop(adapter_name, None)
        else:
            self.scaling[adapter_name] = config.scaling
            if adapter_name in self.adapter_scaling:
                del self.adapter_scaling[adapter_name]
        self.reset_bottleneck_parameters(adapter_name, config.init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def reset_bottleneck_parameters(self, adapter_name: str, init_weights: str) -> None:
        """LLM-Adapters' two schemes: upstream's checkpoints were trained from these starting points."""
        down, up = self.adapter_down[adapter_name], self.adapter_up[adapter_name]
        if init_weights == "bert":  # BertPreTrainedModel's init, as LLM-Adapters uses it
            nn.init.normal_(down.weight, mean=0.0, std=0.02)
            nn.init.normal_(up.weight, mean=0.0, std=0.02)
        else:  # "mam_adapter" (He et al. 2022): the adapter starts as the identity
            nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
            nn.init.zeros_(up.weight)

    # SIBO's contract (sibo.core.booster): the module whose input is the branch input u, and u's width.
    def sibo_branch_input(self, adapter_name: str) -> nn.Module:
        return self.adapter_dropout[adapter_name]

    def sibo_branch_in_features(self, adapter_name: str) -> int:
        return self.adapter_down[adapter_name].in_features

    def branch(self, adapter_name: str, u: torch.Tensor) -> torch.Tensor:
        """s·up(act(down(dropout(u)))) in the adapter's dtype: (…, w) → (…, w')."""
        down = self.adapter_down[adapter_name]
        u = self._cast_input_dtype(u, down.weight.dtype)
        h = self.adapter_dropout[adapter_name](u)  # SIBO's pre-hook turns u into (1-λ)·u + λ·h0 here
        out = self.adapter_up[adapter_name](self.adapter_act[adapter_name](down(h)))
        learned = self.adapter_scaling.get(adapter_name)
        return out * (self.scaling[adapter_name] if learned is None else learned)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters:
            return self.base_layer(x, *args, **kwargs)
        active = [name for name in self.active_adapters if name in self.adapter_down]
        roles = {name: self.adapter_role[name] for name in active}
        z = x
        for name in active:
            if roles[name] == INPUT_ADAPTER:
                z = z + self.branch(name, x).to(x.dtype)
        y = self.base_layer(z, *args, **kwargs)
        result = y
        for name in active:
            if roles[name] == PARALLEL_ADAPTER:
                result = result + self.branch(name, x).to(y.dtype)
            elif roles[name] == OUTPUT_ADAPTER:
                result = result + self.branch(name, y).to(y.dtype)
        return result

    @property
    def merged(self) -> bool:
        return False

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise InputError(MERGE_REFUSAL)

    def unmerge(self) -> None:
        raise InputError(MERGE_REFUSAL)

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()
