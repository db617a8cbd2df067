"""Output files written whole or not at all, JSON read in one line, and the names of what verbs write.

- `write_atomically` / `write_json`: a unique temporary name in the same folder, fsync, then
  os.replace — a kill or a full disk leaves the old file or the new one, never a torn one.
- `parse_json` / `read_json`: JSON in, one-line InputError out (malformed, nested too deep, an
  integer too long for Python, not UTF-8).

Who owns an output folder, and that one run writes it at a time: `sibo.output_dir`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from sibo.errors import InputError

# ---------------------------------------------------------------- the names of what verbs write

# finetune
RUN_CONFIG_FILE = "run_config.json"
TRAIN_METRICS_FILE = "train_metrics.json"  # written last: its presence means the run finished
EVAL_METRICS_FILE = "eval_metrics.json"
# evaluate
EVAL_RUN_FILE = "run.json"  # what produced the responses in an evaluate folder, checked on resume
SUMMARY_FILE = "summary.json"
# export: an exact export keeps SIBO's λ·ΔW·h0 path here, beside the merged base
RESIDUAL_DIR = "sibo_residual"
# analyze
ANALYZE_RESULTS_FILE = "analyze.json"
ANALYZE_PLOT_FILE = "analyze.png"

# A folder sibo may not write: read-only file system, permission denied.
UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


# ---------------------------------------------------------------- writing whole files


def write_atomically(path: str | os.PathLike, content: str | bytes) -> None:
    """Write `content` to `path` whole or not at all: a unique temporary file beside it, fsync, rename.

    Disk full or a kill leaves the previous file (or none); two writers never share a temporary name.
    """
    path = Path(path)
    data = content.encode("utf-8") if isinstance(content, str) else content
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)  # as open() would: mkstemp makes it 0600
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InputError(f"disk full: could not write {path} (it is unchanged)") from None
        raise


def disk_full(error: BaseException, directory: str | os.PathLike) -> bool:
    """An OSError ENOSPC, or a torch / safetensors write error (their words vary: "file write failed",
    "iostream error", "unexpected pos") while `directory`'s disk has under 1 MiB left."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(error):
        return True
    try:
        return shutil.disk_usage(directory).free < 2**20
    except OSError:
        return False


def write_json(path: str | os.PathLike, value: object, **dumps) -> None:
    """`value` as indented JSON, written atomically."""
    dumps.setdefault("indent", 2)
    write_atomically(path, json.dumps(value, **dumps) + "\n")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import: os.umask can only be read by setting it, which would race with other threads.
_UMASK = _read_umask()


# ---------------------------------------------------------------- reading JSON


def parse_json(text: str | bytes, where: str, line: int | None = None) -> object:
    """json.loads, with every way it can fail as one line naming `where` (and `line`, for a JSONL line)."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        # A BOM is no JSON, but editors on Windows write one.
        return json.loads(text.removeprefix("\ufeff"))
    except UnicodeDecodeError as error:
        raise InputError(f"{where}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        place = f"line {line}" if line is not None else f"line {error.lineno}, column {error.colno}"
        raise InputError(f"{where}: malformed JSON at {place}: {error.msg}") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deep to read") from None
    except ValueError as error:  # an integer of more than 4,300 digits
        raise InputError(f"{where}: unreadable JSON ({str(error).split(';')[0]})") from None


def read_json(path: str | os.PathLike) -> object:
    """The JSON in `path`; InputError naming the file when it is unreadable or malformed."""
    try:
        return parse_json(Path(path).read_bytes(), str(path))
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({error.strerror})") from None


def check_text(value: str, where: str) -> str:
    """`value` if it is valid text; a lone surrogate (from a JSON escape like \\ud800) is refused."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(
            f"{where}: not valid text (a lone surrogate {value[error.start]!r} at character {error.start})"
        ) from None
    return value
