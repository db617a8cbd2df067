"""The one model loader: a base model (+ adapter) and its tokenizer, for every verb."""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from sibo.checkpoint.config import ModelConfig
from sibo.checkpoint.gguf import find_gguf, load_gguf_model, load_gguf_tokenizer
from sibo.checkpoint.peft_model import load_sibo_model
from sibo.checkpoint.portable import base_config, is_portable_export
from sibo.checkpoint.weights import (
    ADAPTER_WEIGHTS,
    WEIGHT_LIMIT,
    check_adapter_config,
    check_finite,
    check_weights_dir,
    weights_files,
)
from sibo.core.booster import find_boost
from sibo.errors import InputError, first_line
from sibo.files import RESIDUAL_DIR
from sibo.hub import require_hub
from sibo.prompts import PromptTemplate

logger = logging.getLogger(__name__)


_MODEL_CLASSES = {
    "causal-lm": AutoModelForCausalLM,
    "sequence-classification": AutoModelForSequenceClassification,
}


@contextmanager
def booster_line_off() -> Iterator[None]:
    """The booster's "SIBO λ=1.0 targets=all" line would describe an export's residual adapter (λ·s·B held
    at λ = 1), not the adapter the user trained: callers say what it is instead."""
    booster_log = logging.getLogger("sibo.core.booster")
    level = booster_log.level
    booster_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        booster_log.setLevel(level)


def resolve_dtype(dtype: str | torch.dtype = "auto") -> torch.dtype:
    """bf16 on a GPU that supports it, else fp16 on a GPU, fp32 on CPU; or the dtype named."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        try:
            return {
                "bf16": torch.bfloat16,
                "bfloat16": torch.bfloat16,
                "fp16": torch.float16,
                "float16": torch.float16,
                "fp32": torch.float32,
                "float32": torch.float32,
            }[dtype]
        except KeyError:
            raise InputError(f"unknown dtype {dtype!r}: use auto, bf16, fp16 or fp32") from None
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def require_quantization(quantization: str) -> None:
    """InputError unless this machine can load a base in `quantization` ('8bit' or '4bit')."""
    if quantization not in ("8bit", "4bit"):
        raise InputError(f"unknown quantization {quantization!r}: use 8bit or 4bit")
    if not torch.cuda.is_available():
        raise InputError(f"--load_{quantization} needs a CUDA GPU (bitsandbytes); none is available here")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise InputError(f"--load_{quantization} needs bitsandbytes: pip install 'sibo[quant]'") from None


def quantization_config(quantization: str | None, compute_dtype: torch.dtype):
    """A BitsAndBytesConfig for 8-bit or 4-bit (QLoRA: NF4, double quantisation) bases; CUDA only."""
    if quantization is None:
        return None
    require_quantization(quantization)
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_tokenizer(
    base_model: str,
    weights_path: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    padding_side: str = "left",
    gguf_file: Path | None = None,
):
    """The adapter's tokenizer when it ships one (finetune saves it), else the base model's. Generation
    pads on the left; BERT-style classifiers read position 0 and need the right. `gguf_file`: the base's
    GGUF file when the caller has already resolved it (else it is looked up here)."""
    source = (
        weights_path
        if weights_path and (Path(weights_path) / "tokenizer_config.json").is_file()
        else base_model
    )
    if source == base_model and (gguf_file := gguf_file or find_gguf(base_model)) is not None:
        tokenizer = load_gguf_tokenizer(gguf_file)
    else:
        if not Path(source).expanduser().exists():
            require_hub(str(source), "tokenizer")
        try:
            config = {"config": base_config(source)} if is_portable_export(source) else {}
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **config)
        except (OSError, ValueError) as error:
            raise InputError(f"cannot load a tokenizer from {source}: {first_line(error)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_model(
    base_model: str,
    weights_path: str | os.PathLike | None = None,
    lam: float | None = None,
    quantization: str | None = None,
    dtype: str | torch.dtype = "auto",
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    is_trainable: bool = False,
    task: str = "causal-lm",
    threads: int | None = None,
):
    """(model, tokenizer): the base model, with the adapter at `weights_path` loaded (SIBO-boosted as saved,
    or with λ = `lam` when given) — or the base alone when weights_path is None. An exact `sibo export`
    directory loads as a base model: its SIBO residual adapter comes along. `threads`: torch's CPU
    threads for this process from now on (None leaves them as they are)."""
    if threads is not None:
        torch.set_num_threads(threads)
    if task not in _MODEL_CLASSES:
        raise InputError(f"unknown task {task!r}: use one of {sorted(_MODEL_CLASSES)}")
    gguf_file = find_gguf(base_model)  # a .gguf file, or a folder holding one
    if (
        gguf_file is None
        and base_model.startswith(("/", "./", "../", "~"))
        and not Path(base_model).expanduser().is_dir()
    ):
        raise InputError(f"base model directory {base_model} does not exist")
    weights_path = _adapter_of(base_model, weights_path)
    torch_dtype = resolve_dtype(dtype)
    quantization = quantization_config(quantization, torch_dtype)
    # before the base loads: a damaged adapter file fails in seconds (load_sibo_model then skips it)
    if weights_path is not None:
        check_adapter_config(weights_path)
        if not weights_files(weights_path, ADAPTER_WEIGHTS):  # PEFT would look for them on the Hub
            raise InputError(
                f"no adapter weights in {weights_path}: {' or '.join(ADAPTER_WEIGHTS)} is missing"
            )
        check_weights_dir(weights_path, ADAPTER_WEIGHTS)
    model = _load_base(
        base_model, gguf_file, _MODEL_CLASSES[task], torch_dtype, quantization, device_map, trust_remote_code
    )
    # a NaN or a huge value in one base weight would decode to empty answers and NaN scores, exit 0
    check_finite(model.state_dict(), f"base model {base_model}", WEIGHT_LIMIT)
    padding_side = "right" if task == "sequence-classification" else "left"
    tokenizer = load_tokenizer(base_model, weights_path, trust_remote_code, padding_side, gguf_file)
    if weights_path is not None and Path(weights_path) == Path(base_model) / RESIDUAL_DIR:
        model = _load_residual(model, base_model, Path(weights_path), lam, is_trainable)
    elif weights_path is not None:
        model = load_sibo_model(model, weights_path, lam=lam, is_trainable=is_trainable, check_files=False)
    elif lam is not None:
        logger.warning("λ=%s ignored: no adapter given", lam)
    if not is_trainable:
        model.eval()
    return model, tokenizer


def exported_residual(base_model: str) -> Path | None:
    """The SIBO residual adapter of an exact `sibo export` at `base_model` (part of that model: its merged
    weights are exact only with it), or None for any other base."""
    residual = Path(base_model) / RESIDUAL_DIR
    if not (residual.is_dir() or _needs_residual(Path(base_model))):
        return None
    if not residual.is_dir():
        raise InputError(f"the export at {base_model} is missing its SIBO residual adapter ({residual}): "
                         "export the adapter again")  # fmt: skip
    return residual


def _adapter_of(base_model: str, weights_path: str | os.PathLike | None) -> str | os.PathLike | None:
    """The adapter folder to load: `weights_path`, or an exact export's residual adapter beside its base."""
    if weights_path is not None:
        _refuse_residual_elsewhere(base_model, Path(weights_path))
    residual = exported_residual(base_model)
    if residual is not None and weights_path is not None and Path(weights_path) != residual:
        raise InputError(
            f"{base_model} is an exact sibo export: its SIBO residual adapter ({residual}) is part of it, and "
            f"a second adapter ({weights_path}) cannot load beside it; give --base_model the base it was "
            "exported from, or load the export alone"
        )
    weights_path = residual if weights_path is None else weights_path  # checked in load_model, by name
    if weights_path is not None and not Path(weights_path).is_dir():
        raise InputError(f"adapter directory {weights_path} does not exist")
    return weights_path


def _refuse_residual_elsewhere(base_model: str, weights_path: Path) -> None:
    """An export's residual adapter holds λ·ΔW·h0 for its merged base: on any other base (its adapter_config.json
    names the unmerged one) it would load as an ordinary λ = 1 adapter, without the (1-λ)·ΔW folded in."""
    export = weights_path.parent
    if weights_path.name != RESIDUAL_DIR or not _needs_residual(export):
        return
    if Path(base_model).expanduser().resolve() != export.expanduser().resolve():
        raise InputError(
            f"{weights_path} is the SIBO residual adapter of the exact export {export}, part of that model, not "
            f"an adapter of {base_model}: load the export itself (--base_model {export}, no --weights_path)"
        )


def _load_base(
    base_model: str,
    gguf_file: Path | None,
    model_class,
    torch_dtype,
    quantization,
    device_map: str | dict | None,
    trust_remote_code: bool,
) -> torch.nn.Module:
    """The base model alone: from a GGUF file, a folder, or the Hub; one InputError line when it cannot."""
    if gguf_file is not None:
        if quantization is not None:
            raise InputError("a GGUF base cannot be loaded in 8 or 4 bits: drop --load_8bit/--load_4bit")
        return load_gguf_model(gguf_file, model_class, torch_dtype, device_map)
    if not Path(base_model).expanduser().exists():
        require_hub(base_model, "base model")
    check_weights_dir(base_model)
    try:
        return model_class.from_pretrained(
            base_model,
            config=base_config(base_model) if is_portable_export(base_model) else None,
            dtype=torch_dtype,
            quantization_config=quantization,
            device_map=device_map,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError, SafetensorError, pickle.UnpicklingError) as error:
        raise InputError(f"cannot load base model {base_model}: {first_line(error)}") from None


def load_for_decoding(
    source: ModelConfig, merge: bool = True, device_map: str | dict | None = None
) -> tuple[torch.nn.Module, object, PromptTemplate]:
    """(model, tokenizer, template): the one way generate, evaluate, export, the studies and the lm-eval
    bridge load a model to decode with. The template is the one the adapter was trained with (or
    `source.template`), checked against the tokenizer; `merge`: the exact merge kept in memory (same
    outputs, fewer kernels; an adapter without an exact merged form stays unmerged)."""
    model, tokenizer = source.load(device_map=device_map)
    template = source.prompt_template(tokenizer)
    if merge:
        from sibo.core.merge import merge_for_inference

        model = merge_for_inference(model)
    return model, tokenizer, template


def _needs_residual(directory: Path) -> bool:
    """Whether `directory` is an exact export with a residual adapter: its run marker lists one, or (copied
    without the marker) its config.json says sibo_export, which only an export with a residual writes."""
    return _export_wrote_residual(directory) or is_portable_export(directory)


def _export_wrote_residual(directory: Path) -> bool:
    """Whether `directory` is an exact `sibo export` that wrote a residual adapter (its run marker says)."""
    from sibo.output_dir import RUN_MARKER

    try:
        marker = json.loads((directory / RUN_MARKER).read_text())
        return marker["verb"] == "export" and any(
            name.startswith(f"{RESIDUAL_DIR}/") for name in marker["wrote"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _load_residual(model, base_model: str, residual: Path, lam: float | None, is_trainable: bool):
    """An exact export's residual adapter: λ·s·B held at λ = 1, so a λ given here would be wrong."""
    if lam is not None:
        logger.warning(
            "λ=%s ignored: %s is an exact export, its λ is folded into the residual", lam, base_model
        )
    with booster_line_off():
        model = load_sibo_model(model, residual, is_trainable=is_trainable)
    logger.info(
        "exact export %s: the merged base and its SIBO residual adapter (λ·ΔW·h0 on %d modules)",
        base_model,
        len(find_boost(model).layers),
    )
    return model
