"""A rerun from run_config.json says when its data is no longer the data that run trained on.

`sibo finetune --config out/run_config.json` repeats a run's flags, but a data file can change under the
same name (shrunk, regenerated, edited). The run records what it read — its record count and a content
fingerprint — and a rerun that reads the same path compares: a difference is a warning naming it, since
training on the new data may be what the user wants.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from sibo.errors import InputError
from sibo.files import read_json

logger = logging.getLogger(__name__)

FINGERPRINT_BATCH = 1024  # rows hashed per step: the fingerprint depends on it, so it is fixed


def data_summary(records) -> dict:
    """{"data_records": count, "data_fingerprint": sha256 prefix} of the checked records (a datasets.Dataset):
    the rows as JSON with sorted keys, so a file, its JSONL twin and a saved folder agree."""
    digest = hashlib.sha256()
    for batch in records.iter(batch_size=FINGERPRINT_BATCH):
        digest.update(json.dumps(batch, sort_keys=True, ensure_ascii=False, default=str).encode())
    return {"data_records": len(records), "data_fingerprint": digest.hexdigest()[:16]}


def recorded_data(config_file: str | None) -> dict | None:
    """What a run_config.json given as --config recorded of its data (its data_path too); None for any other
    flags file, or a run_config.json from before the data was recorded."""
    if config_file is None or Path(config_file).suffix.lower() != ".json":
        return None
    try:
        written = read_json(Path(config_file))
    except InputError:
        return None  # the flags reader has already said what is wrong with it
    resolved = written.get("resolved") if isinstance(written, dict) else None
    config = written.get("config") if isinstance(written, dict) else None
    if not isinstance(resolved, dict) or not isinstance(config, dict) or "data_fingerprint" not in resolved:
        return None
    return {"file": str(config_file), "data_path": config.get("data_path"),
            **{key: resolved.get(key) for key in ("data_records", "data_fingerprint")}}  # fmt: skip


def warn_if_data_changed(summary: dict, data_path: str, recorded: dict | None) -> str | None:
    """Log (and return) a warning when `data_path` is the path `recorded` names but its data differs."""
    if recorded is None or not _same_path(data_path, recorded.get("data_path")):
        return None
    changes = []
    if summary["data_records"] != recorded.get("data_records"):
        changes.append(f"{summary['data_records']} records, not {recorded.get('data_records')}")
    if summary["data_fingerprint"] != recorded.get("data_fingerprint"):
        changes.append(
            f"content fingerprint {summary['data_fingerprint']}, not {recorded.get('data_fingerprint')}"
        )
    if not changes:
        return None
    warning = (
        f"{data_path} is not the data {recorded['file']} trained on: it now holds {'; '.join(changes)}; "
        "training on the data as it is now"
    )
    logger.warning(warning)
    return warning


def _same_path(a: str, b: object) -> bool:
    if not isinstance(b, str):
        return False
    return a == b or Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
