"""Write an adapter merged into a standalone checkpoint, exactly where SIBO allows it.

    sibo export --base_model B --weights_path W --output_dir O [--format hf|state_dict] [--approximate]

The merge itself is `sibo.core.merge`. The exact export writes the merged base (an ordinary HF
checkpoint) plus, in O/sibo_residual/, a small SIBO adapter on exactly the boosted modules that
reads h0 alone (λ = 1) with B ← λ·s·B (per block λ when learnable, scaling folded in): the
λ·ΔW·h0 term no plain weight can hold. `--approximate` folds the whole ΔW and drops the h0 term,
and measures what that costs on probe prompts. The prompt template the adapter was trained with
is recorded beside the merged model (prompt_template.json, in either format: a state_dict's user
prompts it the same way), so `--base_model O` prompts the way it was trained. Files are staged in
a temporary folder beside O and renamed into place, so a failed export leaves nothing behind (what a killed
one left, the next export to O removes).
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from sibo.checkpoint.config import EXPORT_VERB, ExportConfig
from sibo.checkpoint.export_card import ExportFacts, write_export_card
from sibo.checkpoint.load import booster_line_off
from sibo.checkpoint.peft_model import get_sibo_model
from sibo.checkpoint.portable import make_portable
from sibo.core.booster import find_boost
from sibo.core.merge import boosted_lambdas, fold, lora_layers, merge_exactly, unmergeable_reason
from sibo.errors import InputError
from sibo.files import RESIDUAL_DIR, disk_full, write_json
from sibo.output_dir import LOCK_FILE, RUN_MARKER, hold_output_dir, user_files, written_files
from sibo.prompts import TEMPLATE_FILE, PromptTemplate, build_prompt, write_template

logger = logging.getLogger(__name__)


STATE_DICT_FILE = "model.safetensors"
_STAGING_PREFIX = ".export-"  # the folder beside output_dir that an export writes, then renames into place
# Probe prompts for --approximate: the deviation is the largest |Δlogit| over all their positions.
PROBE_INSTRUCTIONS = (
    ("Tom has 3 apples and buys 4 more. How many apples does he have now?", None),
    ("Answer the question with true or false.", "Is the sky green?"),
    ("Write one sentence about the sea.", None),
)


@dataclass
class ExportReport:
    """What was written: `exact` tells whether the files reproduce the adapter's logits."""

    output_dir: Path
    exact: bool
    files: list[Path]
    residual_modules: list[str] = field(default_factory=list)  # modules of O/sibo_residual, if written
    max_logit_deviation: float | None = None  # measured by --approximate

    @property
    def size_bytes(self) -> int:
        """What the export folder takes on disk."""
        return sum(file.stat().st_size for file in self.output_dir.rglob("*") if file.is_file())


def export_adapter(
    model: PeftModel,
    tokenizer,
    config: ExportConfig,
    template: PromptTemplate | None = None,
    dtype: torch.dtype | None = None,
    adapter_path: str | None = None,
) -> ExportReport:
    """Merge `model`'s adapter and write it, with a model card; the model is merged in place (do not use it
    afterwards). `template`: the one the adapter was trained with, recorded beside the export (None: none
    recorded). `dtype`: the dtype to save in, after merging in the model's own (None: the model's).
    `adapter_path`: the adapter folder, named on the card."""
    adapter_name = config.adapter_name
    lambdas = boosted_lambdas(model, adapter_name)  # module name in the base model -> λ of its block
    reason = unmergeable_reason(model, adapter_name, lambdas)
    if reason is not None:
        raise InputError(reason)
    facts = _card_facts(model, config, lambdas, adapter_path)  # read before the merge changes the model
    needs_residual = any(lam != 0 for lam in lambdas.values())
    if needs_residual and config.format == "state_dict" and not config.approximate:
        raise InputError(
            "a SIBO adapter with λ > 0 has no exact single-file form (its λ·ΔW·h0 term reads h0): "
            "use --format hf for the exact export, or add --approximate to drop that term"
        )

    if needs_residual and not config.approximate:
        _require_known_architecture(model.base_model.model.config)

    probes = _probe_logits(model, tokenizer) if needs_residual and config.approximate else None
    merged, residual = _merge(model, adapter_name, lambdas, config.approximate, dtype)

    config.output_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = config.output_dir.parent / f".{config.output_dir.name}{LOCK_FILE}"
    with hold_output_dir(config.output_dir, lock_file=lock):
        parent = config.output_dir.parent.resolve()
        _remove_stale_staging(parent, config.output_dir.name)
        # made by mkdir, not mkdtemp (mode 0700): the export is as readable as the user's umask allows
        staging = parent / f"{_STAGING_PREFIX}{config.output_dir.name}-{secrets.token_hex(4)}"
        staging.mkdir()
        try:
            report = ExportReport(
                config.output_dir, exact=not config.approximate or not needs_residual, files=[]
            )
            if probes is not None:
                report.max_logit_deviation = _max_deviation(merged, probes)
            facts.max_logit_deviation = report.max_logit_deviation
            peft_config = model.peft_config[adapter_name]
            files = _write_files(
                staging, merged, residual, peft_config, tokenizer, config.format, template, facts
            )
            _readable_as_umask_allows(staging)
            config.check_output_dir()  # a run that claimed the folder meanwhile keeps it
            _replace_dir(staging, config.output_dir)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(error, Exception) and disk_full(error, config.output_dir.parent):
                raise InputError(
                    f"disk full while writing the export: {config.output_dir} is unchanged"
                ) from None
            raise
    report.files = [config.output_dir / path.relative_to(staging) for path in files]
    report.residual_modules = sorted(residual)
    return report


def _remove_stale_staging(parent: Path, name: str) -> None:
    """Delete what a killed export of `name` left staged (a whole merged model): the lock we hold says no
    export of `name` is running, and only one writes `.export-<name>-<8 hex digits>`."""
    own = re.compile(re.escape(_STAGING_PREFIX + name) + r"-[0-9a-f]{8}")
    for entry in parent.iterdir():
        if own.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            logger.info("removing %s, left by an export that did not finish", entry)
            shutil.rmtree(entry)


def _require_known_architecture(base_config) -> None:
    """modeling_sibo.py rebuilds the base's config by its model_type, from transformers' own registry (the one a
    fresh process has): a base whose code comes with trust_remote_code would write an export nothing loads."""
    remote = any(name.startswith("AutoModel") for name in getattr(base_config, "auto_map", None) or {})
    if base_config.model_type not in CONFIG_MAPPING_NAMES or remote:
        raise InputError(
            f"the base's architecture ({base_config.model_type!r}) is not transformers' own (its code comes "
            "with trust_remote_code), so an exact export would not load: add --approximate to drop the "
            "λ·ΔW·h0 term, or keep the adapter and load it with sibo"
        )


def _merge(
    model: PeftModel, adapter_name: str, lambdas: dict, approximate: bool, dtype: torch.dtype | None
) -> tuple[torch.nn.Module, dict]:
    """(merged base, residual terms by module): exactly, or with the λ·ΔW·h0 terms dropped (`approximate`);
    cast to `dtype` after merging in the model's own."""
    if approximate:
        merged, residual = fold(model, adapter_name, {}), {}
    else:
        merged, residual = merge_exactly(model, adapter_name, lambdas)
    merged.eval()
    if dtype is not None:
        merged.to(dtype)
        residual = {name: (down.to(dtype), up.to(dtype)) for name, (down, up) in residual.items()}
    return merged, residual


def _write_files(
    staging: Path,
    merged: torch.nn.Module,
    residual: dict,
    peft_config: LoraConfig,
    tokenizer,
    form: str,
    template: PromptTemplate | None,
    facts: ExportFacts,
) -> list[Path]:
    """Everything the export holds, written into `staging`: the merged model (with its residual adapter and,
    then, the code that makes it portable), the template, the model card (hf format: a state_dict export stays
    one file), and the run marker listing them; returns the files."""
    files = _write_residual(merged, residual, peft_config, staging / RESIDUAL_DIR) if residual else []
    files = _write_merged(merged, tokenizer, staging, form) + files
    if residual:  # λ > 0 on the hf format: loadable by transformers alone, with trust_remote_code
        files += make_portable(staging, merged)
    if template is not None:
        write_template(staging, template)
        files.append(staging / TEMPLATE_FILE)
    if form == "hf":
        files.append(_write_card(staging, facts, len(residual), merged))
    # what this export wrote: a later --overwrite replaces those files and keeps any the user adds
    write_json(staging / RUN_MARKER, {"verb": EXPORT_VERB, "settings": {}, "wrote": written_files(staging)})
    return files


def _card_facts(model: PeftModel, config: ExportConfig, lambdas: dict[str, float], adapter_path: str | None):
    adapter = find_boost(model, config.adapter_name)
    return ExportFacts(
        base_model=model.peft_config[config.adapter_name].base_model_name_or_path,
        adapter=adapter_path,
        lambdas=lambdas,
        learnt=adapter is not None and adapter.lambdas is not None,
        residual_modules=0,
        max_logit_deviation=None,
        dtype="",
        size_bytes=0,
    )


def _write_card(staging: Path, facts: ExportFacts, residual_modules: int, merged: torch.nn.Module) -> Path:
    """README.md: what the export is, its λ, whether it needs trust_remote_code, how it loads, its size."""
    facts.residual_modules = residual_modules
    facts.dtype = str(next(merged.parameters()).dtype).removeprefix("torch.")
    facts.classifier = type(merged).__name__.endswith("ForSequenceClassification")
    facts.size_bytes = sum(file.stat().st_size for file in staging.rglob("*") if file.is_file())
    return write_export_card(staging, facts)


def _replace_dir(staging: Path, output_dir: Path) -> None:
    """Put the finished export in place: an empty output_dir, or an earlier export (--overwrite) whose files
    go while the files the user put beside them move into the new one."""
    if not output_dir.exists():
        staging.rename(output_dir)
        return
    keep = user_files(output_dir)
    earlier = output_dir.with_name(f".{output_dir.name}.replaced-{secrets.token_hex(4)}")
    try:
        output_dir.rename(earlier)
    except OSError as error:  # a mount point (EBUSY), a folder that cannot move: nothing has changed yet
        raise InputError(
            f"cannot replace {output_dir} ({error.strerror}): the export replaces its folder whole, so a mount "
            "point cannot be it; export into a new folder inside it"
        ) from None
    staging.rename(output_dir)
    clashes = [name for name in keep if (output_dir / name).exists()]
    for name in keep:
        if name not in clashes:
            (output_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (earlier / name).rename(output_dir / name)
    if clashes:  # a user's file under a name the export writes: kept aside, never deleted
        logger.warning("kept %s from the earlier export's folder in %s: the new export writes those names",
                       ", ".join(clashes), earlier)  # fmt: skip
    else:
        shutil.rmtree(earlier)


def _readable_as_umask_allows(directory: Path) -> None:
    """safetensors (0.8) writes its files with mode 0600: give every file the mode the user's umask gives new
    files, read off the folder that mkdir just made."""
    file_mode = stat.S_IMODE(directory.stat().st_mode) & 0o666
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(file_mode)


def _write_merged(merged: torch.nn.Module, tokenizer, directory: Path, format: str) -> list[Path]:
    if format == "hf":
        merged.save_pretrained(directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        return sorted(path for path in directory.iterdir() if path.is_file())
    from safetensors.torch import save_model

    file = directory / STATE_DICT_FILE
    save_model(merged, str(file), metadata={"format": "pt"})  # drops duplicates of tied weights
    return [file]


def _write_residual(
    merged: torch.nn.Module,
    residual: dict[str, tuple[torch.Tensor, torch.Tensor]],
    peft_config: LoraConfig,
    directory: Path,
) -> list[Path]:
    """A SIBO LoRA with λ = 1 on the boosted modules, holding (A, λ·s·B); α = r everywhere so its scaling
    is 1. Written to `directory`, then unloaded: `merged` is left the plain merged base."""
    ranks = {name: lora_a.shape[0] for name, (lora_a, _) in residual.items()}
    rank = max(ranks.values(), key=list(ranks.values()).count)
    patterns = {name: r for name, r in ranks.items() if r != rank}
    residual_config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        rank_pattern=patterns,
        alpha_pattern=patterns,
        target_modules=sorted(residual),
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=peft_config.fan_in_fan_out,
        task_type=peft_config.task_type,
        init_lora_weights=False,
    )
    with booster_line_off():
        model = get_sibo_model(merged, residual_config, lam=1.0, targets="all")
    boosted = {layer.name.removeprefix("base_model.model.") for layer in find_boost(model).layers}
    if boosted != set(residual):
        raise RuntimeError(f"the residual adapter boosts {sorted(boosted)}, expected {sorted(residual)}")
    layers = lora_layers(model, "default")
    with torch.no_grad():
        for name, (lora_a, lora_b) in residual.items():
            layers[name].lora_A["default"].weight.copy_(lora_a)
            layers[name].lora_B["default"].weight.copy_(lora_b)
    model.save_pretrained(directory)
    model.unload()
    return sorted(path for path in directory.iterdir() if path.is_file())


def _probe_batch(tokenizer, device: torch.device) -> dict[str, torch.Tensor]:
    prompts = [build_prompt(instruction, input) for instruction, input in PROBE_INSTRUCTIONS]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    return {name: tensor.to(device) for name, tensor in batch.items()}


@torch.no_grad()
def _probe_logits(model: torch.nn.Module, tokenizer) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    batch = _probe_batch(tokenizer, next(model.parameters()).device)
    return batch, model(**batch).logits.float()


@torch.no_grad()
def _max_deviation(merged: torch.nn.Module, probes: tuple[dict[str, torch.Tensor], torch.Tensor]) -> float:
    batch, reference = probes
    # (B, T, V), or (B, labels) for a classifier
    deviation = (merged(**batch).logits.float() - reference).abs()
    if deviation.dim() == 3:
        deviation = deviation[batch["attention_mask"].bool()]  # padding positions do not count
    return deviation.max().item()
