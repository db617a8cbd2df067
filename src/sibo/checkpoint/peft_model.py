"""SIBO on PeftModel: create, save, load, and guard merging.

`get_sibo_model` returns the PeftModel that `peft.get_peft_model` would, with its class swapped
for a subclass that adds SIBO's pieces: the h0 capture, the settings file beside PEFT's
adapter files (PEFT drops unknown keys from adapter_config.json on load), learnable λ in
checkpoints, mixed-batch rows, and a refusal to merge away the λ·ΔW·h0 term.

Checkpoints of LLM-Adapters' code (LLM-Adapters' peft 0.3 fork) have no settings file: their λ is
`embedding_lambda` in adapter_config.json, and PEFT already reads their weights (keys without
adapter names, pickled adapter_model.bin); they load boosted as upstream ran them.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors import SafetensorError

from sibo.checkpoint.sibo_config import (
    MIXABLE_PEFT_TYPES,
    mark_boosted,
    read_sibo_config,
    refuse_missing_settings,
    write_sibo_config,
)
from sibo.checkpoint.weights import ADAPTER_WEIGHTS, check_weights_dir, read_tensors, weights_files
from sibo.core.booster import (
    BoostedAdapter,
    InitialState,
    LearnableLambda,
    SiboConfig,
    boost,
    capture_initial_state,
    find_boost,
    find_transformer_blocks,
    release,
)
from sibo.core.registration import PEFT_TYPE_NAME, loading_as_stored, plain_config, restore_lambda_logits
from sibo.errors import InputError, first_line

logger = logging.getLogger(__name__)

# PEFT calls upstream's extra config fields "saved by a higher version" and says to upgrade: they are read here.
_UPSTREAM_FIELDS_WARNING = (
    r"Unexpected keyword arguments \[('(embedding_lambda|enable_lora|merge_weights)'(, )?)+\]"
)


class SiboModelMixin:
    """What a SIBO-boosted PeftModel adds to PEFT's own class (see the module docstring)."""

    _sibo_state: InitialState
    _sibo_adapters: dict[str, BoostedAdapter]

    def save_pretrained(
        self, save_directory: str, selected_adapters: list[str] | None = None, **kwargs
    ) -> None:
        """PEFT's save, plus SIBO's settings; base embedding matrices only when asked (save_embedding_layers=True).

        sibo never resizes the vocabulary, so an adapter never needs them (targeted embeddings keep their
        LoRA weights); PEFT's "auto" would copy them whenever embeddings are targeted, and otherwise read
        config.json at the base's path to look for a resize: a GGUF base has none (a warning), a Hub id
        costs a request.
        """
        kwargs.setdefault("save_embedding_layers", False)
        super().save_pretrained(save_directory, selected_adapters=selected_adapters, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        # Under FSDP2 / ZeRO-3 this rank holds only a shard of each λ; Trainer passes the gathered state dict.
        state_dict = kwargs.get("state_dict") or {}
        for name in selected_adapters or list(self.peft_config):
            if name in self._sibo_adapters:
                directory = Path(save_directory) / name if name != "default" else Path(save_directory)
                logits = state_dict.get(f"sibo_lambdas.{name}.logits")
                write_sibo_config(directory, self._sibo_adapters[name], self.base_model.model.config, logits)
                mark_boosted(directory, self._sibo_adapters[name], logits)

    def load_adapter(self, model_id: str, adapter_name: str, is_trainable: bool = False, **kwargs):
        """PEFT's load_adapter (Trainer uses it to resume and to load the best checkpoint), plus SIBO's settings."""
        # SIBO's settings are read from the folder's files, as every loader here does
        if not Path(model_id).is_dir():
            raise InputError(
                f"adapter {model_id} is not a local folder: download it first "
                f"(huggingface_hub.snapshot_download({model_id!r})) and load that folder"
            )
        check_weights_dir(Path(model_id) / (kwargs.get("subfolder") or ""), ADAPTER_WEIGHTS)
        if adapter_name not in self.peft_config:
            self._add_plain_lora(Path(model_id) / (kwargs.get("subfolder") or ""), adapter_name, is_trainable)
        try:
            with loading_as_stored():  # the settings are read below
                result = super().load_adapter(model_id, adapter_name, is_trainable=is_trainable, **kwargs)
        except InputError:
            raise
        except (RuntimeError, ValueError) as error:  # size mismatches; targets the base lacks, a rank of 0
            raise _does_not_fit(model_id, self.base_model.model.config, error) from None
        check_adapter_fits(self, Path(model_id) / (kwargs.get("subfolder") or ""), adapter_name)
        settings = read_sibo_config(
            Path(model_id) / (kwargs.get("subfolder") or ""), self.base_model.model.config
        )
        if settings is None:
            refuse_missing_settings(Path(model_id) / (kwargs.get("subfolder") or ""))
        else:
            config, logits = settings
            if adapter_name not in self._sibo_adapters:
                boost_adapter(self, config, adapter_name)
            _restore_lambdas(self._sibo_adapters[adapter_name], logits, is_trainable, model_id)
        return result

    def _add_plain_lora(self, directory: Path, adapter_name: str, is_trainable: bool) -> None:
        """A SIBO_LORA adapter joins as the plain LoRA it is in memory (SIBO's hooks come from its settings),
        where PEFT would refuse to mix its type with LORA; a boosted bottleneck adapter without its settings, so
        that its tuner does not boost it a second time."""
        config = plain_config(directory)
        if config is not None:
            config.inference_mode = not is_trainable
            self.add_adapter(adapter_name, config)
            if is_trainable:
                self.set_requires_grad(adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        unboost(self, adapter_name)
        super().delete_adapter(adapter_name)

    def merge_adapter(self, *args, **kwargs) -> None:
        _refuse_lossy_merge(self, "merge_adapter")
        self.base_model.merge_adapter(*args, **kwargs)

    def merge_and_unload(self, *args, **kwargs) -> torch.nn.Module:
        _refuse_lossy_merge(self, "merge_and_unload")
        # PEFT may refuse (bottleneck adapters): keep SIBO in place until the merge worked
        merged = self.base_model.merge_and_unload(*args, **kwargs)
        self._remove_sibo()
        return merged

    def unload(self) -> torch.nn.Module:
        self._remove_sibo()
        return self.base_model.unload()

    def _remove_sibo(self) -> None:
        """Every SIBO hook off: the adapters are gone from the model being returned."""
        for name in list(self._sibo_adapters):
            unboost(self, name)
        self._sibo_capture.remove()

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """PEFT runs each adapter of an `adapter_names=` batch on its rows: give the branches the same rows of h0."""
        with super()._enable_peft_forward_hooks(*args, **kwargs), self._sibo_state.rows_of(kwargs):
            yield


@functools.cache
def _sibo_class(peft_class: type) -> type:
    cls = type(f"Sibo{peft_class.__name__}", (SiboModelMixin, peft_class), {"__module__": __name__})
    globals()[cls.__name__] = cls  # importable by name, so pickling works
    return cls


def _attach(model: PeftModel) -> PeftModel:
    """Turn a PeftModel into its SIBO subclass, with the h0 capture installed once. Loaded by PEFT, its
    tuner's boosts become sibo's, each adapter's λ as it was (learnt ones too)."""
    if isinstance(model, SiboModelMixin):
        return model
    tuner_boosts = dict(model.base_model.__dict__.get("_sibo_adapters", {}))
    getattr(model.base_model, "release_sibo", lambda: None)()
    model.__class__ = _sibo_class(type(model))
    model._sibo_state = InitialState()
    model._sibo_adapters = {}
    _, blocks = find_transformer_blocks(model.base_model.model)
    model._sibo_capture = capture_initial_state(blocks, model._sibo_state)
    # learnable λ live here, so .parameters() and the optimizer see them
    model.sibo_lambdas = torch.nn.ModuleDict()
    for name, earlier in tuner_boosts.items():
        _boost(model, earlier.config, name, earlier.lambdas)
    return model


def boost_adapter(model: PeftModel, config: SiboConfig, adapter_name: str = "default") -> PeftModel:
    """Boost one (more) adapter of a PeftModel with SIBO; returns the SIBO PeftModel."""
    _check_mixable(model.peft_config[adapter_name], config)
    model = _attach(model)
    if adapter_name in model._sibo_adapters:
        unboost(model, adapter_name)
    _boost(model, config, adapter_name)
    return model


def _boost(
    model: PeftModel, config: SiboConfig, adapter_name: str, lambdas: LearnableLambda | None = None
) -> None:
    """Boost an adapter of a SIBO PeftModel; a learnt λ given (`lambdas`) is kept, trainable as it was."""
    adapter = boost(model, config, model._sibo_state, adapter_name)
    model._sibo_adapters[adapter_name] = adapter
    if adapter.lambdas is not None:
        if lambdas is not None:
            adapter.lambdas = lambdas
        model.sibo_lambdas[adapter_name] = adapter.lambdas


def _check_mixable(peft_config: PeftConfig, config: SiboConfig) -> None:
    """Refuse, by name, a tuner whose branches have no input SIBO can mix h0 into (VeRA, LoHa, IA3, prompts…)."""
    peft_type = str(getattr(peft_config.peft_type, "value", peft_config.peft_type))
    if (config.lam > 0 or config.learnable_lambda) and peft_type not in (*MIXABLE_PEFT_TYPES, PEFT_TYPE_NAME):
        raise InputError(
            f"SIBO cannot boost {peft_type} adapters: their branches have no input to mix h0 into; sibo boosts "
            f"LoRA, DoRA and bottleneck adapters (AdapterH, AdapterP, parallel); use one of those, or λ 0 for plain "
            f"{peft_type}"
        )


def unboost(model: PeftModel, adapter_name: str) -> None:
    """Remove SIBO from one adapter: it runs as plain PEFT again."""
    adapter = model._sibo_adapters.pop(adapter_name, None)
    if adapter is not None:
        release(adapter, model._sibo_state)
        if adapter_name in model.sibo_lambdas:
            del model.sibo_lambdas[adapter_name]


def get_sibo_model(
    base_model: torch.nn.Module,
    peft_config: PeftConfig,
    lam: float = 0.1,
    targets: str = "ffn",
    learnable_lambda: bool = False,
    adapter_name: str = "default",
) -> PeftModel:
    """`peft.get_peft_model` with the adapter boosted by SIBO: its branches read (1-λ)·x + λ·h0."""
    config = SiboConfig(lam=lam, targets=targets, learnable_lambda=learnable_lambda)
    return boost_adapter(
        get_peft_model(base_model, peft_config, adapter_name=adapter_name), config, adapter_name
    )


def load_sibo_model(
    base_model: torch.nn.Module,
    path: str | os.PathLike,
    lam: float | None = None,
    targets: str | None = None,
    is_trainable: bool = False,
    adapter_name: str = "default",
    check_files: bool = True,
) -> PeftModel:
    """Load an adapter saved by sibo (boosted as saved), by LLM-Adapters' code (boosted with its stored λ, the
    LLM-Adapters' policy) or by plain PEFT (plain, or boosted when `lam` is given).

    `lam` (and `targets`) override the stored settings; the λ is then fixed, not learnable.
    `check_files=False`: the caller has checked the weights files already (`sibo.checkpoint.load.load_model`).
    """
    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise InputError(f"no adapter at {path}: adapter_config.json is missing")
    settings = read_sibo_config(path, base_model.config)
    if check_files:
        check_weights_dir(path, ADAPTER_WEIGHTS)
    try:
        with warnings.catch_warnings(), loading_as_stored():  # the settings are read here, below
            warnings.filterwarnings("ignore", _UPSTREAM_FIELDS_WARNING, UserWarning)
            model = PeftModel.from_pretrained(
                base_model,
                str(path),
                adapter_name=adapter_name,
                is_trainable=is_trainable,
                config=plain_config(path),  # a SIBO_LORA adapter: plain LoRA here, boosted below
            )
    except (SafetensorError, pickle.UnpicklingError) as error:  # what the check above let through
        raise InputError(f"cannot read the adapter weights in {path}: {first_line(error)}") from None
    except InputError:
        raise
    except (RuntimeError, ValueError) as error:  # size mismatches; targets the base lacks, a rank of 0
        raise _does_not_fit(path, base_model.config, error) from None
    check_adapter_fits(model, path, adapter_name)
    if lam is None and settings is None:
        refuse_missing_settings(path)
        return model
    config, logits = settings if settings is not None else (SiboConfig(), None)
    if lam is not None or targets is not None:
        config = SiboConfig(
            lam=config.lam if lam is None else lam, targets=targets or config.targets, learnable_lambda=False
        )
        logits = None
    model = boost_adapter(model, config, adapter_name)
    _restore_lambdas(model._sibo_adapters[adapter_name], logits, is_trainable, path)
    return model


def sibo_settings(model: torch.nn.Module, adapter_name: str = "default") -> SiboConfig | None:
    """The SIBO settings an adapter is boosted with, or None for a plain PEFT adapter."""
    adapter = find_boost(model, adapter_name)
    return None if adapter is None else adapter.config


def _restore_lambdas(
    adapter: BoostedAdapter, logits: list[float] | None, trainable: bool, path: str | os.PathLike
) -> None:
    """Put the learnt λ saved in the adapter at `path` into the model's (its settings were read and checked:
    a learnable adapter carries its logits), trainable when the adapter is."""
    if adapter.lambdas is None:
        return
    if logits is not None:
        restore_lambda_logits(adapter.lambdas, logits, str(path))
    adapter.lambdas.requires_grad_(trainable)


def _refuse_lossy_merge(model: SiboModelMixin, method: str) -> None:
    for name, adapter in model._sibo_adapters.items():
        if adapter.layers and (adapter.config.lam > 0 or adapter.lambdas is not None):
            raise InputError(
                f"{method} would drop SIBO's λ·ΔW·h0 term of adapter {name!r} (λ={adapter.config.lam}): a merged "
                "layer runs its base weight only. Use `sibo export` for an exact merged checkpoint"
            )


def check_adapter_fits(model: PeftModel, path: Path, adapter_name: str = "default") -> None:
    """Every tensor of the adapter file finds its module in the base (layer count included), and every
    adapted module of the base finds its tensor: PEFT drops the first silently and only warns of the second."""
    from peft.utils import get_peft_model_state_dict

    files = weights_files(path, ADAPTER_WEIGHTS)
    if not files:
        return
    saved = {name: tuple(t.shape) for file in files for name, t in read_tensors(file).items()}
    expected = {
        name: tuple(t.shape)
        for name, t in get_peft_model_state_dict(
            model, adapter_name=adapter_name, save_embedding_layers=False
        ).items()
    }
    # a plain PEFT save may carry the base's embedding matrices too (save_embedding_layers=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        allowed = set(get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=True))
    base = f"the base model ({_describe(model.base_model.model.config)})"
    extra = next((name for name in saved if name not in expected and name not in allowed), None)
    if extra is not None:
        raise InputError(
            f"the adapter at {path} does not fit {base}: its tensor {extra} {list(saved[extra])} has no "
            "module in the base"
        )
    missing = next((name for name in expected if name not in saved), None)
    if missing is not None:
        raise InputError(
            f"the adapter at {path} does not fit {base}: the base's {missing} {list(expected[missing])} has "
            "no tensor in the adapter"
        )


def _does_not_fit(path, base_config, error: RuntimeError | ValueError) -> InputError:
    """PEFT's refusal as one line: load_state_dict's size mismatch (its last line names the tensor and both
    shapes), or the adapter config PEFT cannot build on this base (targets it lacks, a rank of 0)."""
    return InputError(
        f"the adapter at {path} does not fit the base model ({_describe(base_config)}): "
        f"{str(error).strip().splitlines()[-1].strip()}"
    )


def _describe(config) -> str:
    text = config.get_text_config()
    layers = getattr(text, "num_hidden_layers", None)
    return f"{config.model_type}, {f'{layers} layers, ' if layers else ''}hidden size {text.hidden_size}"
