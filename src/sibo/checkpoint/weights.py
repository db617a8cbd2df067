"""The one guarded reader: every weights file sibo hands to transformers or PEFT is checked here first.

A damaged, truncated, wrong-format or unsafe file would otherwise surface as a SafetensorError,
an UnpicklingError or a zip-reader RuntimeError from deep inside `from_pretrained`; here it
becomes an `InputError` naming the file and what is wrong.

What the check sees, cheaply and exactly, without reading the tensor data:
- .safetensors: the header length, header JSON, dtypes and shapes, offsets that tile the data
  region, and a file size equal to the header's declared end (`safetensors.safe_open` validates
  all of that). So truncation, extra bytes, a zero-filled file and byte flips in the header are
  caught. Flips inside the tensor data are not: the format has no checksum, the file loads.
- .bin / .pt (torch.save): unpickled with torch's weights_only (memory-mapped for the zip
  format, so no data is read); a pickle that names anything but tensors and plain containers is
  refused — nothing in it runs. A truncated zip (no central directory), a zero-filled file and
  flips in the pickle are caught; flips in the stored tensor bytes are not.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from sibo.errors import InputError, first_line

# (safetensors files, torch.save files) a loader reads from a folder; it takes the safetensors when present.
BASE_WEIGHTS = ("model*.safetensors", "pytorch_model*.bin")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def check_weights_file(path: str | os.PathLike) -> None:
    """Raise InputError naming `path` unless it is a complete, well-formed, safe weights file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            with safe_open(path, framework="pt") as weights:
                weights.keys()
        except (SafetensorError, OSError) as error:
            raise InputError(f"{path}: damaged or not a safetensors file ({_reason(error)})") from None
        return
    try:
        # mmap maps the storages instead of reading them; the legacy (pre-zip) format cannot be mapped.
        torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        unsafe = next((line for line in str(error).splitlines() if "GLOBAL" in line), None)
        if unsafe is not None:
            raise InputError(
                f"{path}: refused: the pickle holds more than plain tensors and would run code on load "
                f"({unsafe.strip()}); sibo loads weights with torch's weights_only"
            ) from None
        raise InputError(f"{path}: damaged or not a torch.save file ({_reason(error)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise InputError(f"{path}: damaged or not a torch.save file ({_reason(error)})") from None


def weights_files(directory: str | os.PathLike, patterns: tuple[str, str]) -> list[Path]:
    """The files of `patterns` a loader will read from `directory`: the safetensors ones, else the .bin ones."""
    directory = Path(directory)
    for pattern in patterns:
        found = sorted(path for path in directory.glob(pattern) if path.is_file())
        if found:
            return found
    return []


def check_weights_dir(directory: str | os.PathLike, patterns: tuple[str, str] = BASE_WEIGHTS) -> None:
    """Check every weights file a loader will read from a local model (or, with ADAPTER_WEIGHTS, adapter)
    folder; a hub name or a folder without such files is left to the loader."""
    if Path(directory).is_dir():
        for path in weights_files(directory, patterns):
            check_weights_file(path)


def _reason(error: Exception) -> str:
    """The error's first sentence: torch's zip errors go on for lines about what may have happened."""
    return first_line(error).split(". ")[0].removeprefix("Error while deserializing header: ")
