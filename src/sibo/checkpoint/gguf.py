"""GGUF base models: llama.cpp's one-file checkpoints, loaded as ordinary dense transformers models.

transformers reads a GGUF as a quantized model that refuses `save_pretrained`, merging and export;
`GgufConfig(dequantize=True)` asks it for the plain model instead, in the dtype we pass. The
tokenizer and its chat template are rebuilt from the file's metadata.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from sibo.errors import InputError, first_line

# What a damaged or foreign file raises from gguf's reader and transformers' converters (NotImplementedError: a
# quant type gguf cannot dequantize, an architecture the installed gguf does not know).
_READ_ERRORS = (OSError, ValueError, KeyError, IndexError, struct.error, NotImplementedError)
# llama.cpp's gguf-split names its parts NAME-00001-of-00003.gguf and records split.count in each
_SPLIT_NAME = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


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
    _refuse_split(file)
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
    _refuse_split(file)
    try:
        return AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    except _READ_ERRORS as error:
        raise InputError(f"cannot load a tokenizer from GGUF file {file}: {first_line(error)}") from None


def _refuse_split(file: Path) -> None:
    """transformers reads one GGUF file: given the first part of a split model it would load the tensors of
    that part alone, silently."""
    name = _SPLIT_NAME.search(file.name)
    parts = int(name.group(2)) if name else _split_count(file)
    if parts > 1:
        raise InputError(
            f"{file} is one part of a GGUF split into {parts} files, which transformers cannot read: "
            f"merge them with `llama-gguf-split --merge {file} merged.gguf` and pass merged.gguf"
        )


def _split_count(file: Path) -> int:
    """The split.count the file's metadata records (1 when none)."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(file).get_field("split.count")
    except _READ_ERRORS:
        return 1  # the loader reports a damaged file in its own words
    return 1 if field is None else int(field.parts[field.data[0]][0])  # contents() is newer than gguf 0.10


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise InputError("a GGUF base model needs the gguf package: pip install 'sibo[gguf]'") from None
