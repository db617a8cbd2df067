"""The SIBO settings beside an adapter: written, read back and checked against the base.

`sibo_config.json` holds the settings, learnable λ bit-exact and the base they fit; adapter_config.json
carries them too (SIBO_LORA's block, where PEFT's own loaders read them); checkpoints of LLM-Adapters'
code keep λ as `embedding_lambda` in adapter_config.json. `sibo.checkpoint.peft_model` saves and loads
through these functions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from sibo.core.booster import BoostedAdapter, SiboConfig
from sibo.core.registration import (
    PEFT_TYPE_NAME,
    SETTINGS_FIELD,
    check_lambda_logits,
    settings_block,
    stored_settings,
)
from sibo.errors import InputError
from sibo.files import write_json

logger = logging.getLogger(__name__)

SIBO_CONFIG_FILE = "sibo_config.json"
MIXABLE_PEFT_TYPES = ("LORA", "BOTTLENECK")  # the tuners whose branches read the layer's input (DoRA is LORA)
UPSTREAM_LAMBDA_FIELD = "embedding_lambda"  # where upstream's peft fork kept λ, in adapter_config.json


def write_sibo_config(
    directory: Path, adapter: BoostedAdapter, base_config, logits: torch.Tensor | None = None
) -> None:
    """sibo_config.json: the SIBO settings, learnable λ (as logits, bit-exact) and what base it fits.

    `logits`: the full λ logits when the model's own parameter is a shard (FSDP2 DTensor, ZeRO-3).
    """
    settings = {
        **dataclasses.asdict(adapter.config),
        "base_model_type": base_config.model_type,
        "hidden_size": base_config.get_text_config().hidden_size,
        "boosted_modules": [layer.name for layer in adapter.layers],
    }
    if adapter.lambdas is not None:
        logits = (adapter.lambdas.logits if logits is None else logits).detach().float().cpu()
        settings["lambda_logits"] = logits.tolist()
        settings["lambda_per_block"] = torch.sigmoid(logits).tolist()
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / SIBO_CONFIG_FILE, settings)


def read_sibo_config(directory: Path, base_config) -> tuple[SiboConfig, list[float] | None] | None:
    """The SIBO settings saved in `directory`, checked against the base model; None if there are none."""
    file = Path(directory) / SIBO_CONFIG_FILE
    in_adapter_config = stored_settings(Path(directory))  # what PEFT's loaders boost with: it wins
    if not file.is_file():
        return in_adapter_config if in_adapter_config is not None else _upstream_sibo_config(Path(directory))
    try:
        settings = json.loads(file.read_text())
        config = SiboConfig(
            lam=settings["lam"], targets=settings["targets"], learnable_lambda=settings["learnable_lambda"]
        )
        check_lambda_logits(settings.get("lambda_logits"), config.learnable_lambda)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise InputError(f"{file}: not a valid SIBO settings file ({error})") from None
    saved = (settings.get("base_model_type"), settings.get("hidden_size"))
    here = (base_config.model_type, base_config.get_text_config().hidden_size)
    if None not in saved and saved != here:
        raise InputError(
            f"the adapter at {directory} was trained on a {saved[0]} base with hidden size {saved[1]}, "
            f"but the base model is {here[0]} with hidden size {here[1]}"
        )
    return in_adapter_config or (config, settings.get("lambda_logits"))


def mark_boosted(directory: Path, adapter: BoostedAdapter, logits: torch.Tensor | None = None) -> None:
    """Write a boosted adapter's settings into its adapter_config.json, where PEFT's loaders read them: a LoRA
    adapter becomes SIBO_LORA (PEFT without sibo refuses it, PEFT with sibo boosts it), a bottleneck adapter
    (a type only sibo's import teaches PEFT) gets its "sibo" block, a SIBO_LORA adapter boosted again its new
    one. λ = 0 leaves a plain folder (a SIBO_LORA adapter unboosted is LORA again)."""
    file = directory / "adapter_config.json"
    stored = json.loads(file.read_text())
    if stored.get("peft_type") not in (*MIXABLE_PEFT_TYPES, PEFT_TYPE_NAME):
        return
    boosted = adapter.config.lam > 0 or adapter.lambdas is not None
    # the settings written before go (a field PEFT wrote as null stays, as it was)
    marked = {key: value for key, value in stored.items() if key != SETTINGS_FIELD or value is None}
    if stored["peft_type"] in ("LORA", PEFT_TYPE_NAME):
        marked["peft_type"] = PEFT_TYPE_NAME if boosted else "LORA"
    if boosted:
        live = adapter.lambdas.logits if adapter.lambdas is not None else None
        marked[SETTINGS_FIELD] = settings_block(adapter.config, live if logits is None else logits)
    if marked != stored:
        write_json(file, marked, sort_keys=True)


# The run records `sibo finetune` and `sibo sweep` leave beside an adapter: where each keeps the flags.
_RUN_RECORDS = (("run_config.json", "config"), ("sibo_run.json", "settings"))


def refuse_missing_settings(directory: Path) -> None:
    """An adapter with no SIBO settings whose run records say λ > 0 would run as plain LoRA: refuse it."""
    for name, block in _RUN_RECORDS:
        try:
            flags = json.loads((directory / name).read_text()).get(block) or {}
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        lam = flags.get("embedding_lambda") if isinstance(flags, dict) else None
        if isinstance(lam, int | float) and (lam > 0 or flags.get("learnable_lambda")):
            raise InputError(
                f"{directory / SIBO_CONFIG_FILE} is missing, but {name} beside it records λ {lam}: without it the "
                "adapter would run as plain LoRA; restore the file, or load it plain on purpose with λ 0 "
                "(--embedding_lambda 0)"
            )


def _upstream_sibo_config(directory: Path) -> tuple[SiboConfig, None] | None:
    """The settings of a checkpoint written by LLM-Adapters' code: its λ, on the feed-forward branches that
    read the hidden state (with `--ffn True`, LLM-Adapters' code mixes h0 into those only)."""
    file = directory / "adapter_config.json"
    try:
        stored = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # PEFT reports an unreadable adapter config itself
    lam = stored.get(UPSTREAM_LAMBDA_FIELD) if isinstance(stored, dict) else None
    if lam is None or lam == 0:
        return None
    try:
        config = SiboConfig(lam=lam, targets="ffn")
    except InputError as error:
        raise InputError(f"{file}: {error}") from None
    logger.info(
        "%s was written by LLM-Adapters' code: boosting it with its %s=%s on the feed-forward branches, "
        "as upstream's --ffn True does (--embedding_lambda overrides it; 0 loads it plain)",
        directory,
        UPSTREAM_LAMBDA_FIELD,
        lam,
    )
    return config, None
