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
- adapters (small) are also read whole: a NaN, an infinity or a value beyond WEIGHT_LIMIT in any tensor
  is refused by name, so a diverged or damaged adapter never reaches generate, evaluate, export, analyze
  or a resume. A base is checked the same way once loaded (`sibo.checkpoint.load`): one min/max pass per
  tensor, small beside reading it (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import math
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


# A weight this large is damage, not training: its square (RMSNorm's mean square, attention's dot products)
# overflows float32 and bfloat16, and the logits go non-finite or collapse to one value.
WEIGHT_LIMIT = math.sqrt(torch.finfo(torch.float32).max)  # ≈ 1.8e19
_REDUCIBLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_finite(tensors: dict, where: str, limit: float = math.inf) -> None:
    """Raise InputError naming the first tensor in `tensors` (nested dicts and lists too) that holds a NaN,
    an infinity or (weights: `limit` WEIGHT_LIMIT) a value whose magnitude reaches `limit`: an adapter or
    optimizer state that diverged, or a damaged file. One min/max pass per tensor, no copy."""
    for name, tensor in _tensors(tensors, ""):
        if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.device.type == "meta":
            continue
        if tensor.numel() == 0 or _within(tensor, limit):
            continue
        what = f"tensor {name}" + (" (the learnable λ)" if "sibo_lambdas" in name else "")
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = tensor[~finite].flatten()[0].item()
            problem = f"{int((~finite).sum())} non-finite value(s) ({bad})"
        else:
            large = tensor.abs() >= limit
            bad = tensor[large].flatten()[0].item()
            problem = (
                f"{int(large.sum())} value(s) too large to compute with ({bad:.3g}; beyond ±{limit:.2g} "
                "its square overflows float32)"
            )
        raise InputError(f"{where}: {what} holds {problem}: damaged, or written by a run that diverged")


def _within(tensor: torch.Tensor, limit: float) -> bool:
    """Every value finite and of magnitude below `limit` (a NaN fails both comparisons)."""
    if tensor.is_complex():
        return bool(torch.isfinite(tensor).all()) and bool(tensor.abs().amax() < limit)
    low, high = torch.aminmax(tensor if tensor.dtype in _REDUCIBLE else tensor.float())
    return bool(low > -limit) and bool(high < limit)


def _tensors(value, prefix: str):
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{prefix}.{index}" if prefix else str(index))


def read_tensors(path: str | os.PathLike) -> dict:
    """Every tensor of a (checked) weights file, on the CPU."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def check_adapter_file(path: str | os.PathLike) -> None:
    """check_weights_file, and every value finite: an adapter is small enough to read whole."""
    check_weights_file(path)
    check_finite(read_tensors(path), str(path), WEIGHT_LIMIT)


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
    folder; a hub name or a folder without such files is left to the loader. Adapter values must be finite."""
    if Path(directory).is_dir():
        for path in weights_files(directory, patterns):
            if patterns == ADAPTER_WEIGHTS:
                check_adapter_file(path)
            else:
                check_weights_file(path)


def _reason(error: Exception) -> str:
    """The error's first sentence: torch's zip errors go on for lines about what may have happened."""
    return first_line(error).split(". ")[0].removeprefix("Error while deserializing header: ")


def check_adapter_config(directory: str | os.PathLike) -> dict:
    """adapter_config.json, read and checked before anything loads: a JSON object naming a PEFT method, with
    a number wherever that method's config holds one (PEFT would fail far from the file on "r": "eight")."""
    import dataclasses

    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    from sibo.checkpoint.config import read_adapter_config

    file = Path(directory) / "adapter_config.json"
    config = read_adapter_config(directory)
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING.get(str(config.get("peft_type")))
    if config_class is None:
        raise InputError(f"{file}: damaged: peft_type {config.get('peft_type')!r} is no PEFT method")
    for spec in dataclasses.fields(config_class):
        default, value = spec.default, config.get(spec.name)
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        if (
            numeric
            and spec.name in config
            and (isinstance(value, bool) or not isinstance(value, (int, float)))
        ):
            raise InputError(f"{file}: damaged: {spec.name} must be a number, got {value!r}"[:300])
    return config
