"""GGUF base models: llama.cpp's one-file checkpoints, loaded as ordinary dense transformers models.

transformers reads a GGUF as a quantized model that refuses `save_pretrained`, merging and export;
`GgufConfig(dequantize=True)` asks it for the plain model instead, in the dtype we pass. The
tokenizer and its chat template are rebuilt from the file's metadata.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from sibo.errors import InputError, first_line

# What a damaged or foreign file raises from gguf's reader and transformers' converters.
_READ_ERRORS = (OSError, ValueError, KeyError, IndexError, struct.error)


def find_gguf(base_model: str) -> Path | None:
    """The GGUF file `base_model` names: a `.gguf` path, or the only `.gguf` in a folder that holds
    no `config.json` (a folder with one is an HF checkpoint). None for anything else."""
    path = Path(base_model).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise InputError(f"GGUF file {base_model} does not exist")
        return path
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    files = sorted(path.glob("*.gguf"))
    if len(files) > 1:
        names = ", ".join(file.name for file in files)
        raise InputError(f"{base_model} holds {len(files)} GGUF files ({names}): pass one as --base_model")
    return files[0] if files else None


def load_gguf_model(file: Path, model_class, dtype: torch.dtype, device_map: str | dict | None = None):
    """The dense model in `file` (every tensor dequantized to `dtype`), as PEFT and save_pretrained need it."""
    from transformers import GgufConfig

    _require_gguf()
    try:
        with _bar_as_transformers_bars():
            model = model_class.from_pretrained(
                str(file.parent),
                gguf_file=file.name,
                quantization_config=GgufConfig(dequantize=True),
                dtype=dtype,
                device_map=device_map,
            )
    except _READ_ERRORS as error:
        raise InputError(f"cannot load GGUF base model {file}: {first_line(error)}") from None
    model.name_or_path = model.config._name_or_path = str(file)  # adapters record the file, not its folder
    return model


@contextmanager
def _bar_as_transformers_bars() -> Iterator[None]:
    """transformers draws its "de-quantizing GGUF tensors" bar with plain tqdm: route it through its own
    tqdm, whose hook decides for every loading bar (the CLI shows them with -v only)."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    plain = gguf_utils.tqdm
    gguf_utils.tqdm = hf_logging.tqdm
    try:
        yield
    finally:
        gguf_utils.tqdm = plain


def load_gguf_tokenizer(file: Path):
    """The tokenizer (with chat template) that transformers rebuilds from the file's metadata."""
    from transformers import AutoTokenizer

    _require_gguf()
    try:
        return AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    except _READ_ERRORS as error:
        raise InputError(f"cannot load a tokenizer from GGUF file {file}: {first_line(error)}") from None


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise InputError("a GGUF base model needs the gguf package: pip install 'sibo[gguf]'") from None
