"""BottleneckModel: finds the target modules of a model and wraps them in BottleneckLayers.

Which role an adapter takes on a module follows LLM-Adapters: on the feed-forward block's first
modules (up/gate/fc_in) an input adapter, on its last (down/fc_out) an output adapter; with
`use_parallel_adapter` a parallel adapter everywhere; with `use_adapterp` an output adapter
everywhere. For an architecture without a role table here, the user names roles in `module_roles`.
"""

from __future__ import annotations

import re

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from sibo.adapters.bottleneck.config import INPUT_ADAPTER, OUTPUT_ADAPTER, PARALLEL_ADAPTER, BottleneckConfig
from sibo.adapters.bottleneck.layer import MERGE_REFUSAL, BottleneckLayer, module_widths
from sibo.core.registration import BoostedTuner
from sibo.errors import InputError

_LLAMA_FFN = {"gate_proj": INPUT_ADAPTER, "up_proj": INPUT_ADAPTER, "down_proj": OUTPUT_ADAPTER}
_H_TO_4H_FFN = {"dense_h_to_4h": INPUT_ADAPTER, "dense_4h_to_h": OUTPUT_ADAPTER}
# BERT's FFN output is `layer.<i>.output.dense`; `layer.<i>.attention.output.dense` is attention's.
_BERT_FFN = {r"intermediate\.dense": INPUT_ADAPTER, r"\d+\.output\.dense": OUTPUT_ADAPTER}

# model_type -> {regex for the end of a feed-forward module's dotted name: its role}
FFN_ROLE_TABLES: dict[str, dict[str, str]] = {
    "llama": _LLAMA_FFN,
    "mistral": _LLAMA_FFN,
    "qwen2": _LLAMA_FFN,
    "gptj": {"fc_in": INPUT_ADAPTER, "fc_out": OUTPUT_ADAPTER},
    "gpt_neox": _H_TO_4H_FFN,
    "bloom": _H_TO_4H_FFN,
    "opt": {"fc1": INPUT_ADAPTER, "fc2": OUTPUT_ADAPTER},
    "gpt2": {r"mlp\.c_fc": INPUT_ADAPTER, r"mlp\.c_proj": OUTPUT_ADAPTER},  # attn.c_proj is attention's
    "bert": _BERT_FFN,
    "roberta": _BERT_FFN,
}

# model_type -> the attention projections that parallel adapters sit beside by default
PARALLEL_TARGETS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "gptj", "opt"), ("q_proj", "k_proj", "v_proj")),
    **dict.fromkeys(("gpt_neox", "bloom"), ("query_key_value",)),
    "gpt2": (r"attn\.c_attn",),
    **dict.fromkeys(
        ("bert", "roberta"), (r"attention\.self\.query", r"attention\.self\.key", r"attention\.self\.value")
    ),
}


def _ends_with(pattern: str, name: str) -> bool:
    """Whether `pattern` (a regex) matches the last dotted components of `name`."""
    return re.search(rf"(?:^|\.)(?:{pattern})$", name) is not None


def default_target_modules(config: BottleneckConfig, model_type: str | None) -> str:
    """The mode's default targets for a known architecture, as one regex over full module names."""
    table = FFN_ROLE_TABLES.get(model_type, {})
    if config.use_parallel_adapter:
        patterns = PARALLEL_TARGETS.get(model_type, ())
    elif config.use_adapterp:
        patterns = tuple(pattern for pattern, role in table.items() if role == OUTPUT_ADAPTER)
    else:
        patterns = tuple(table)
    if not patterns:
        known = sorted(FFN_ROLE_TABLES)
        raise InputError(
            f"bottleneck adapters have no default target_modules for model type {model_type!r} "
            f"(known: {', '.join(known)}); pass target_modules, and module_roles unless use_parallel_adapter"
        )
    return rf"(?:.*\.)?(?:{'|'.join(patterns)})"


def adapter_role(config: BottleneckConfig, model_type: str | None, module_name: str) -> str:
    """The role an adapter of `config` takes on the module called `module_name`."""
    if config.use_parallel_adapter:
        return PARALLEL_ADAPTER
    if config.use_adapterp:
        return OUTPUT_ADAPTER
    user_roles = {
        name: role
        for name, role in (config.module_roles or {}).items()
        if module_name == name or module_name.endswith("." + name)
    }
    if user_roles:
        return user_roles[max(user_roles, key=len)]  # the most specific name wins
    for pattern, role in FFN_ROLE_TABLES.get(model_type, {}).items():
        if _ends_with(pattern, module_name):
            return role
    leaf = module_name.rsplit(".", 1)[-1]
    raise InputError(
        f"no bottleneck adapter role for module {module_name!r} of model type {model_type!r}: name it, e.g. "
        f"module_roles={{'{leaf}': 'mh_adapter' | 'output_adapter' | 'parallel_adapter'}}, "
        "or set use_parallel_adapter=True"
    )


def base_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's named modules, less those inside PEFT layers (their base layer and adapters)."""
    found, layers = [], []
    for name, module in model.named_modules():
        if name and not any(name.startswith(layer + ".") for layer in layers):
            found.append((name, module))
            if isinstance(module, BaseTunerLayer):
                layers.append(name)
    return found


def adaptable_module_names(model: nn.Module) -> list[str]:
    """Distinct names of the model's Linear / Conv1D modules, without the block prefix ('mlp.up_proj')."""
    adaptable = nn.Linear | Conv1D | BottleneckLayer
    return sorted(
        {
            re.split(r"(?:^|\.)\d+\.", name)[-1]
            for name, module in base_modules(model)
            if isinstance(module, adaptable)
        }
    )


class BottleneckModel(BoostedTuner, BaseTuner):
    """peft's tuner for bottleneck adapters (AdapterH, AdapterP, parallel); one whose config carries SIBO
    settings is boosted as they say, whichever loader built it (BoostedTuner)."""

    prefix: str = "adapter_"  # LLM-Adapters' parameter names: checkpoints of upstream load unchanged
    tuner_layer_cls = BottleneckLayer
    target_module_mapping: dict[str, list[str]] = {}  # defaults depend on the mode: default_target_modules

    def _prepare_adapter_config(self, peft_config: BottleneckConfig, model_config: dict) -> BottleneckConfig:
        if peft_config.target_modules is None:
            peft_config.target_modules = default_target_modules(peft_config, model_config.get("model_type"))
        return peft_config

    def _prepare_model(self, peft_config: BottleneckConfig, model: nn.Module) -> None:
        """Refuse bad targets before any module is replaced, so that a refusal leaves the model untouched."""
        model_type = self.get_model_config(model).get("model_type")
        modules = base_modules(model)
        targets = peft_config.target_modules
        if isinstance(targets, str):
            missing = [] if any(re.fullmatch(targets, name) for name, _ in modules) else [targets]
        else:
            missing = sorted(
                t for t in targets if not any(name == t or name.endswith("." + t) for name, _ in modules)
            )
        if missing:
            raise InputError(
                f"no module of the {model_type} model matches target_modules entry {', '.join(map(repr, missing))}; "
                f"its Linear/Conv1D modules are: {', '.join(adaptable_module_names(model))}"
            )
        for name, module in modules:
            if self._check_target_module_exists(peft_config, name):
                adapter_role(peft_config, model_type, name)
                if isinstance(module, BaseTunerLayer) and not isinstance(module, BottleneckLayer):
                    raise InputError(
                        f"{name} holds a {type(module).__name__}; bottleneck adapters cannot wrap it"
                    )
                module_widths(module.get_base_layer() if isinstance(module, BottleneckLayer) else module)

    def _create_and_replace(
        self,
        peft_config: BottleneckConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs,
    ) -> None:
        role = adapter_role(peft_config, self.get_model_config(self.model).get("model_type"), current_key)
        if isinstance(target, BottleneckLayer):
            target.update_layer(adapter_name, role, peft_config)
            return
        new_module = BottleneckLayer(target, adapter_name, role, peft_config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added adapter trains only once set active
        self._replace_module(parent, target_name, new_module, target)

    def merge_adapter(self, *args, **kwargs) -> None:
        raise InputError(MERGE_REFUSAL)

    def _unload_and_optionally_merge(self, merge: bool = True, **kwargs) -> nn.Module:
        if merge:
            raise InputError(MERGE_REFUSAL)
        return super()._unload_and_optionally_merge(merge=False, **kwargs)
