"""SIBO_LORA: a boosted LoRA adapter as a PEFT method of its own, so that it runs exactly or not at all.

A LoRA adapter that SIBO boosts (λ > 0, or a learnt λ) is saved with `"peft_type": "SIBO_LORA"` and its
settings in adapter_config.json's `"sibo"` block. PEFT without sibo knows no such type and refuses the
folder (a KeyError naming SIBO_LORA), where a LORA type would have run it as plain LoRA, silently dropping
λ·B·A·(h0 - x). With sibo imported, PEFT knows the type: `PeftModel.from_pretrained`, `load_adapter`,
`AutoPeftModelForCausalLM` and transformers' `model.load_adapter` build its LoRA layers through
`SiboLoraModel`, which boosts them with `sibo.core.booster.boost` as the settings say, the same hooks
sibo's own loaders install. A boosted bottleneck adapter (a type PEFT knows only through sibo) keeps its
BOTTLENECK type and carries the same block, which its tuner reads the same way (`BoostedTuner`). A learnt λ
loaded by PEFT trains when the adapter does, and PEFT's own save writes it back. A λ = 0 adapter stays a
plain folder that loads anywhere.

sibo's own loaders (`sibo.load_sibo_model`) read the same block and load the weights as plain LoRA,
boosted by `SiboModelMixin` (sibo.checkpoint.peft_model), which also trains λ and saves.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, LoraModel, PeftConfig
from peft.config import PeftConfigMixin
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils.peft_types import PeftType, register_peft_method

from sibo.core.config import SiboConfig
from sibo.errors import InputError

logger = logging.getLogger(__name__)

PEFT_TYPE_NAME = "SIBO_LORA"
SETTINGS_FIELD = "sibo"  # the block in adapter_config.json
# For whoever opens adapter_config.json in a program that refuses it.
NOTE = "a SIBO adapter (arXiv 2402.11896): `import sibo` before loading it with peft or transformers"


def peft_type_member(name: str) -> PeftType:
    """PeftType[name], added to peft's enum on first use (peft registers enum members only)."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = member._value_ = name
    member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)  # EnumType.__setattr__ refuses new members
    return member


def settings_block(config: SiboConfig, logits: torch.Tensor | None) -> dict:
    """adapter_config.json's "sibo" block: the settings, and a learnt λ as logits (bit-exact in JSON)."""
    block = {"lam": config.lam, "targets": config.targets, "learnable_lambda": config.learnable_lambda}
    if logits is not None:
        block["lambda_logits"] = logits.detach().float().cpu().tolist()
    return {**block, "note": NOTE}


def read_settings_block(block, where: str) -> tuple[SiboConfig, list[float] | None]:
    """The SiboConfig and learnt λ logits of a "sibo" block; one line naming `where` when it is damaged."""
    try:
        config = SiboConfig(
            lam=block["lam"], targets=block["targets"], learnable_lambda=block["learnable_lambda"]
        )
        logits = block.get("lambda_logits")
        check_lambda_logits(logits, config.learnable_lambda)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise InputError(
            f"{where}: the SIBO settings (its {SETTINGS_FIELD!r} block) are damaged ({error})"
        ) from None
    return config, logits if config.learnable_lambda else None


def check_lambda_logits(logits, learnable: bool) -> None:
    """A learnt λ as stored: finite numbers, one per transformer block (counted by `restore_lambda_logits`, where
    the model is known); ValueError saying what is wrong. A fixed λ keeps none."""
    if not learnable:
        return
    if logits is None:
        raise ValueError("a learnt λ without its lambda_logits")
    numbers = isinstance(logits, list) and logits and all(_finite_number(value) for value in logits)
    if not numbers:
        raise ValueError("lambda_logits must be finite numbers, one per block")


def _finite_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def restore_lambda_logits(lambdas: torch.nn.Module, logits: list[float], where: str) -> None:
    """Copy a stored learnt λ into the model's (a LearnableLambda): one value per transformer block, or an
    InputError naming `where`."""
    blocks = lambdas.logits.numel()
    if len(logits) != blocks:
        raise InputError(
            f"{where}: the learnt λ has {len(logits)} values (lambda_logits), the model {blocks} transformer "
            "blocks: one per block"
        )
    with torch.no_grad():
        lambdas.logits.copy_(torch.tensor(logits, dtype=lambdas.logits.dtype))


def stored_settings(directory: Path) -> tuple[SiboConfig, list[float] | None] | None:
    """The SIBO settings in a folder's adapter_config.json (a SIBO_LORA adapter, or a boosted bottleneck
    adapter's "sibo" block); None for any other folder."""
    file = Path(directory) / "adapter_config.json"
    try:
        stored = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # PEFT reports an unreadable adapter config itself
    if not isinstance(stored, dict):
        return None
    if stored.get("peft_type") != PEFT_TYPE_NAME and stored.get(SETTINGS_FIELD) is None:
        return None
    return read_settings_block(stored.get(SETTINGS_FIELD), str(file))


def plain_config(directory: Path) -> PeftConfig | None:
    """A folder's adapter config without its SIBO settings (sibo boosts it itself): a SIBO_LORA adapter as
    plain LoRA, a boosted bottleneck adapter without its "sibo" block; None for any other folder."""
    stored = json.loads((Path(directory) / "adapter_config.json").read_text())
    if stored.get("peft_type") != PEFT_TYPE_NAME and stored.get(SETTINGS_FIELD) is None:
        return None
    stored.pop(SETTINGS_FIELD, None)
    if stored["peft_type"] == PEFT_TYPE_NAME:
        return LoraConfig.from_peft_type(**{**stored, "peft_type": "LORA"})
    return PeftConfig.from_peft_type(**stored)


@dataclass
class SiboLoraConfig(LoraConfig):
    """LoRA settings plus SIBO's: what PEFT reads from a SIBO_LORA adapter_config.json."""

    sibo: dict | None = field(
        default=None,
        metadata={
            "help": "SIBO's settings: lam, targets, learnable_lambda, lambda_logits (a learnt λ per block)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = peft_type_member(PEFT_TYPE_NAME)
        read_settings_block(self.sibo, "adapter_config.json")

    def to_dict(self) -> dict:
        return live_settings(self, super().to_dict())


class BoostedTuner:
    """What a PEFT tuner adds to boost the adapters whose config carries SIBO settings (its `sibo` field), in
    whatever loader built them: SiboLoraModel, and the bottleneck adapters' BottleneckModel.

    A learnt λ lives here as a parameter (`sibo_lambdas`), trainable when the adapter is (`is_trainable=True`),
    and the config writes its current value back on save (`live_settings`), so PEFT's own save keeps it.
    """

    def inject_adapter(self, model: torch.nn.Module, adapter_name: str, *args, **kwargs) -> None:
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        config = self.peft_config[adapter_name]
        if getattr(config, SETTINGS_FIELD, None) is not None:
            self._boost(adapter_name, config, *read_settings_block(config.sibo, "adapter_config.json"))

    def _boost(self, adapter_name: str, peft_config, config: SiboConfig, logits: list[float] | None) -> None:
        # booster imported here: peft's import runs register() while booster may still be importing peft
        from sibo.core.booster import InitialState, boost, capture_initial_state, find_transformer_blocks

        if "_sibo_state" not in self.__dict__:  # one h0 capture for every adapter of the model
            self._sibo_state = InitialState()
            self._sibo_adapters = {}  # adapter name -> BoostedAdapter
            self._sibo_capture = capture_initial_state(
                find_transformer_blocks(self.model)[1], self._sibo_state
            )
            self.sibo_lambdas = torch.nn.ModuleDict()  # learnt λ: PeftModel.parameters() sees them
        adapter = boost(self.model, config, self._sibo_state, adapter_name)
        if adapter.lambdas is not None:
            restore_lambda_logits(adapter.lambdas, logits, "adapter_config.json")
            adapter.lambdas.requires_grad_(not peft_config.inference_mode)
            self.sibo_lambdas[adapter_name] = adapter.lambdas
            peft_config.__dict__["_sibo_live_lambdas"] = adapter.lambdas  # not a field: to_dict reads it
        self._sibo_adapters[adapter_name] = adapter

    @classmethod
    def _get_adapter_state_dict(cls, *args, **kwargs) -> dict[str, torch.Tensor]:
        """PEFT's adapter tensors, less a learnt λ: adapter_config.json keeps it (live_settings)."""
        state = super()._get_adapter_state_dict(*args, **kwargs)
        return {key: value for key, value in state.items() if ".sibo_lambdas." not in key}

    def _release(self, adapter_name: str) -> None:
        from sibo.core.booster import release

        adapter = self.__dict__.get("_sibo_adapters", {}).pop(adapter_name, None)
        if adapter is None:
            return
        release(adapter, self._sibo_state)
        if adapter_name in self.sibo_lambdas:
            del self.sibo_lambdas[adapter_name]
        config = self.peft_config.get(adapter_name)
        if config is not None:
            config.__dict__.pop("_sibo_live_lambdas", None)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs) -> Iterator[None]:
        """PEFT's `adapter_names=` batch, each adapter on its rows, with h0 cut to the same rows; refused for a
        tuner that would ignore the names (PEFT runs the active adapter on every row of a bottleneck batch)."""
        peft_hooks = getattr(super(), "_enable_peft_forward_hooks", None)
        if peft_hooks is None:
            if kwargs.get("adapter_names") is not None:
                raise InputError(
                    f"adapter_names= (a batch of several adapters) runs LoRA adapters only, not "
                    f"{type(self).__name__}'s: run one adapter per batch (set_adapter)"
                )
            yield
            return
        state = self.__dict__.get("_sibo_state")
        with peft_hooks(*args, **kwargs), state.rows_of(kwargs) if state is not None else nullcontext():
            yield

    def release_sibo(self) -> None:
        """Remove every SIBO hook this tuner installed (sibo's own loaders install theirs)."""
        for name in list(self.__dict__.get("_sibo_adapters", {})):
            self._release(name)
        if "_sibo_state" in self.__dict__:
            self._sibo_capture.remove()
            del self._sibo_state

    def delete_adapter(self, adapter_name: str) -> None:
        self._release(adapter_name)
        super().delete_adapter(adapter_name)

    def _unload_and_optionally_merge(self, merge: bool = True, *args, **kwargs):
        if merge and self.__dict__.get("_sibo_adapters"):
            raise InputError(
                "merging would drop SIBO's λ·ΔW·h0 term: a merged layer runs its base weight only. "
                "Use `sibo export` for an exact merged checkpoint"
            )
        self.release_sibo()
        return super()._unload_and_optionally_merge(merge, *args, **kwargs)


def live_settings(config, stored: dict) -> dict:
    """A config's `to_dict()` with its "sibo" block's learnt λ as trained now (set by BoostedTuner._boost)."""
    lambdas = config.__dict__.get("_sibo_live_lambdas")
    if lambdas is not None and stored.get(SETTINGS_FIELD):
        logits = lambdas.logits.detach().float().cpu().tolist()
        stored[SETTINGS_FIELD] = {**stored[SETTINGS_FIELD], "lambda_logits": logits}
    return stored


class SiboLoraModel(BoostedTuner, LoraModel):
    """LoraModel whose SIBO_LORA adapters are boosted as their settings say, in whatever loader built them."""


# ---------------------------------------------------------------- adapters written before SIBO_LORA

PRE31_SETTINGS_FILE = "sibo_config.json"  # beside a LORA or BOTTLENECK adapter_config.json, before issue 31
_SIBO_LOADING = contextvars.ContextVar("sibo_loading", default=False)


@contextmanager
def loading_as_stored() -> Iterator[None]:
    """sibo's own loaders read sibo_config.json themselves: PEFT's config loading leaves it alone meanwhile."""
    token = _SIBO_LOADING.set(True)
    try:
        yield
    finally:
        _SIBO_LOADING.reset(token)


def with_pre31_settings(config: PeftConfig, directory: Path) -> PeftConfig:
    """A LoRA or bottleneck config read from a local folder that sibo wrote before SIBO_LORA (its settings in
    sibo_config.json beside it, λ > 0), given those settings, so that PEFT's loaders boost it: SIBO_LORA for
    LoRA, the "sibo" block for a bottleneck adapter. Any other config comes back as it is."""
    peft_type = str(getattr(config.peft_type, "value", config.peft_type))
    file = Path(directory) / PRE31_SETTINGS_FILE
    if _SIBO_LOADING.get() or peft_type not in ("LORA", "BOTTLENECK") or not file.is_file():
        return config
    if getattr(config, SETTINGS_FIELD, None) is not None:
        return config
    try:
        stored = json.loads(file.read_text())
        block = {key: stored[key] for key in ("lam", "targets", "learnable_lambda")}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{file}: not a valid SIBO settings file ({error})") from None
    if stored.get("lambda_logits") is not None:
        block["lambda_logits"] = stored["lambda_logits"]
    settings, _ = read_settings_block(block, str(file))
    if settings.lam == 0 and not settings.learnable_lambda:
        return config  # λ 0: the plain adapter it is
    logger.info("%s: boosting this adapter, written before SIBO_LORA, with its %s", directory, file.name)
    if peft_type == "BOTTLENECK":
        config.sibo = {**block, "note": NOTE}
        return config
    fields = {**config.to_dict(), "peft_type": PEFT_TYPE_NAME, SETTINGS_FIELD: {**block, "note": NOTE}}
    fields.pop("runtime_config", None)  # a runtime setting, never read from a file
    return SiboLoraConfig.from_peft_type(**fields)


def _read_pre31_settings_too(load):
    """PeftConfig.from_pretrained (every PEFT and transformers loader reads the config through it), followed
    by with_pre31_settings for a local folder."""

    @functools.wraps(load)
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, **kwargs):
        config = load(cls, pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        path = os.path.join(pretrained_model_name_or_path, subfolder or "")
        return with_pre31_settings(config, Path(path)) if os.path.isdir(path) else config

    from_pretrained.sibo_wrapped = load
    return classmethod(from_pretrained)


def register() -> None:
    """Make PEFT know SIBO_LORA (and peft's PeftConfig find it), and read the settings of adapters written
    before it; safe to call again."""
    load = PeftConfigMixin.__dict__["from_pretrained"].__func__
    PeftConfigMixin.from_pretrained = _read_pre31_settings_too(getattr(load, "sibo_wrapped", load))
    peft_type = peft_type_member(PEFT_TYPE_NAME)
    if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        register_peft_method(name=PEFT_TYPE_NAME.lower(), config_cls=SiboLoraConfig, model_cls=SiboLoraModel,
                             prefix=LoraModel.prefix)  # fmt: skip
    else:  # a reloaded module re-points the mappings
        PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = SiboLoraConfig
        PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = SiboLoraModel
        PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = LoraModel.prefix
