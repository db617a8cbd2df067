"""The portable form of an exact export: a folder transformers loads on its own, with trust_remote_code.

`sibo export` writes the merged base and its residual adapter (sibo_residual/); for an adapter with λ > 0
this module then wraps the base's config.json (model_type "sibo_export", the base's config nested) and
copies `modeling_sibo.py` beside it: the one self-contained file that adds the λ·ΔW·h0 term with hooks
(read its header). Without trust_remote_code transformers refuses the folder rather than load the merged
base alone; sibo itself keeps loading the merged base plus the residual adapter through PEFT.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from sibo.checkpoint import modeling_sibo
from sibo.core.booster import find_transformer_blocks
from sibo.errors import InputError

logger = logging.getLogger(__name__)

MODELING_FILE = "modeling_sibo.py"
CONFIG_FILE = "config.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_portable(directory: Path, merged: torch.nn.Module) -> list[Path]:
    """Turn the exact export in `directory` (merged base + sibo_residual/) into one transformers can load
    with trust_remote_code; returns the file it added."""
    config_file = directory / CONFIG_FILE
    base_config = json.loads(config_file.read_text())
    blocks, _ = find_transformer_blocks(merged)
    config_file.write_text(json.dumps(modeling_sibo.export_config(base_config, blocks), indent=2) + "\n")
    shutil.copyfile(Path(modeling_sibo.__file__), directory / MODELING_FILE)
    return [directory / MODELING_FILE]


def is_portable_export(folder: str | Path) -> bool:
    """Whether `folder` holds a portable exact export (its config.json names model_type sibo_export)."""
    try:
        config = json.loads((Path(folder) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == modeling_sibo.SiboExportConfig.model_type


def base_config(folder: str | Path):
    """The merged base's config in a portable export: what sibo loads the weights with (no remote code)."""
    config = json.loads((Path(folder) / CONFIG_FILE).read_text())
    config.pop("auto_map", None)
    try:
        return modeling_sibo.SiboExportConfig(**config).base()
    except (ValueError, TypeError, KeyError) as error:
        raise InputError(
            f"{Path(folder) / CONFIG_FILE}: not a readable SIBO export config: {error}"
        ) from None


def saved_dtype(base_model: str, dtype: str) -> torch.dtype | None:
    """The dtype an export is saved in: the one --dtype names, else the base's own (a GGUF base, usually
    quantized, in bf16); None when the base records none (the export keeps the dtype it was merged in)."""
    from sibo.checkpoint.gguf import find_gguf
    from sibo.checkpoint.load import resolve_dtype

    if dtype != "auto":
        return resolve_dtype(dtype)
    if find_gguf(base_model) is not None:
        return torch.bfloat16
    config_file = Path(base_model).expanduser() / CONFIG_FILE
    if not Path(base_model).expanduser().exists():  # a Hub id: its config.json, cached when the base loaded
        from transformers.utils import cached_file

        try:
            config_file = Path(cached_file(base_model, CONFIG_FILE) or config_file)
        except OSError:  # not cached and not reachable: as a base that records no dtype
            return None
    try:
        config = json.loads(config_file.read_text())
        if config.get("model_type") == modeling_sibo.SiboExportConfig.model_type:
            config = config["base_config"]
    except (OSError, ValueError, KeyError):
        return None
    return _DTYPES.get(config.get("dtype") or config.get("torch_dtype"))
