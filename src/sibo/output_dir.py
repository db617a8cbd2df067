"""An output folder is owned by one run, and written by one run at a time.

- `claim_output_dir`: a verb writes only into an empty folder, its own earlier run (same
  settings), or one handed over with --overwrite; never into a folder holding a model, a dataset or
  another run's files. `RUN_MARKER` records who owns it and, once the run ends, every file it wrote
  (while it runs: the new files of the names its verb writes), so --overwrite deletes exactly those —
  never a file the user added beside them, nor one the same command reads (refused, naming it).
- `hold_output_dir`: an OS lock on the folder for the whole run (sibo.folder_lock); a second run on the
  same folder stops at once, naming the holder's pid. Its exit records what the run wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

from sibo.errors import InputError
from sibo.files import write_json
from sibo.folder_lock import LOCK_FILE, check_unlocked, take_lock

RUN_MARKER = "sibo_run.json"  # {"verb", "settings", "wrote" | "kept"}: which run owns a folder, what it wrote

# What marks a folder as someone else's: the first match names it in the refusal.
_FOREIGN = (
    ("a model", ("config.json", "model*.safetensors", "pytorch_model*.bin", "*.gguf")),
    ("an adapter", ("adapter_config.json", "adapter_model.*")),
    ("a dataset", ("*.json", "*.jsonl", "*.csv", "*.parquet", "*/test.json")),
)


# ---------------------------------------------------------------- owning a folder


def claim_output_dir(
    directory: str | os.PathLike,
    verb: str,
    settings: dict,
    overwrite: bool = False,
    may_differ: tuple[str, ...] | None = (),
    dry_run: bool = False,
    legacy: Callable[[Path], dict | None] | None = None,
    reads: Sequence[tuple[str, str | os.PathLike]] = (),
    defaults: dict | None = None,
    replace_changed: bool = False,
    writes: Sequence[str] = (),
) -> dict | None:
    """Make `directory` this run's: returns the settings of this verb's earlier run there (resume), or None
    when the folder is new, empty, or handed over (and then what that run wrote deleted).

    `overwrite` is the user's hand-over: the earlier run's files go, even when its settings are these (the
    user asked to start over). `replace_changed` is a study's own folder: a run with other settings is
    replaced, one with these settings resumed.

    Refused in one line: a path that is a file; a folder in use by another run; a folder holding a model,
    a dataset or files sibo did not write; another verb's run; this verb's run with other settings (except
    keys in `may_differ`; None: any key may differ) unless handed over; a hand-over that would delete a file
    this command reads (`reads`: (flag, path) pairs). `dry_run` checks without writing (call it before the
    slow part, then again under `hold_output_dir`). `legacy(directory)` recognises a folder this verb wrote
    before RUN_MARKER existed: it returns its marker, {"verb", "settings", "wrote"}, or None. `defaults`: each
    setting's default, what an earlier run's marker without that key (written before it existed) ran with.
    `writes`: the names this verb writes (patterns as `files_named` reads them): if the run is
    killed before it records what it wrote, only files so named count as its own, never one the user adds.
    """
    directory = Path(directory)
    check_folder_path(directory)
    if dry_run and is_main_process():  # the other ranks' check may come after rank 0 took the lock
        check_unlocked(directory)
    entries = _entries(directory)
    previous = _read_marker(directory) if entries else None
    if previous is not None and previous["verb"] == verb and writes:  # a marker may predate the names
        previous = {**previous, "writes": list(writes)}
    if entries and previous is None and legacy is not None:
        previous = legacy(directory)
    if entries and previous is None and (directory / RUN_MARKER).is_file():
        raise InputError(
            f"--output_dir {directory}: its {RUN_MARKER} is damaged, so which files its run wrote is unknown: "
            "move what you need out of it and delete it, or choose another --output_dir"
        )
    if entries and previous is None:
        what = describe_contents(directory, entries)
        raise InputError(
            f"--output_dir {directory} already holds {what}, not written by a sibo run: "
            "choose an empty or new --output_dir"
        )
    if previous is not None:
        changed = _changed(previous, verb, settings, may_differ, defaults or {})
        if not changed and not overwrite:
            if not dry_run:
                _write_marker(directory, verb, settings, _kept(directory, previous), writes)
            return previous["settings"] or {}
        _refuse_deleting_inputs(directory, previous, verb, reads)
        if not overwrite and not replace_changed:
            raise InputError(
                f"--output_dir {directory} holds another {previous['verb']} run ({changed}): "
                "pass --overwrite to replace it, or choose another --output_dir"
            )
        if dry_run:
            return None
        clear_output_dir(directory, previous)
    if dry_run:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    _write_marker(directory, verb, settings, _kept(directory, None), writes)
    return None


def clear_output_dir(directory: Path, marker: dict | None = None) -> list[str]:
    """Delete what the run behind `marker` (default: the folder's own) wrote, metrics included, and the
    folders that leaves empty; files the user put there stay, and so does the lock. Returns what went."""
    marker = _read_marker(directory) if marker is None else marker
    gone = owned_files(directory, marker) if marker is not None else []
    for name in gone:
        path = directory / name
        path.unlink(missing_ok=True)
        for parent in path.parents:
            if parent == directory or any(parent.iterdir()):
                break
            parent.rmdir()
    return gone


# ---------------------------------------------------------------- what a run wrote

# Claimed by this process and not yet ended: hold_output_dir's exit records what the run wrote.
_CLAIMED: set[Path] = set()


def owned_files(directory: Path, marker: dict) -> list[str]:
    """What the run behind `marker` wrote in `directory` (paths relative to it, the marker aside): the list
    it recorded when it ended; while it runs (or after a kill) every file but those it found there, of the
    names its verb writes; for a marker without either, every file of those names (without names, every file:
    a legacy recogniser names its verb's own files)."""
    now = _files(directory)
    if isinstance(marker.get("wrote"), list):
        return sorted(now & {str(name) for name in marker["wrote"]})
    if isinstance(marker.get("kept"), list):
        now -= {str(name) for name in marker["kept"]}
    if isinstance(marker.get("writes"), list):
        now = {name for name in now if is_named(name, marker["writes"])}
    return sorted(now)


def record_written(directory: str | os.PathLike) -> None:
    """When the run that claimed `directory` in this process ends: its marker lists what it wrote, so a
    later --overwrite deletes those files and no file the user adds beside them."""
    directory = Path(directory)
    if _resolved(directory) not in _CLAIMED:
        return
    _CLAIMED.discard(_resolved(directory))
    marker = _read_marker(directory)
    if marker is None or "kept" not in marker:
        return
    # as it ends, every new file is its own: a verb's names bound only what a killed run owns
    wrote = owned_files(directory, {key: value for key, value in marker.items() if key != "writes"})
    record = {"verb": marker["verb"], "settings": marker["settings"], "wrote": wrote}
    if not record["wrote"] and not _files(directory):  # it stopped before writing: it leaves nothing behind
        (directory / RUN_MARKER).unlink(missing_ok=True)
        return
    with contextlib.suppress(OSError, InputError):  # a full disk keeps the "kept" form, just as exact
        write_json(directory / RUN_MARKER, record, default=str)


def refuse_replacing(directory: Path, verb: str, reads: Sequence[tuple[str, str | os.PathLike]] = ()) -> None:
    """For a verb that replaces its earlier output whole (export, demo): the folder's run must be this verb's,
    and nothing it wrote may be a file this command reads."""
    marker = _read_marker(directory) if directory.is_dir() else None
    if marker is None:
        return
    if marker["verb"] != verb:
        raise InputError(
            f"--output_dir {directory} holds a sibo {marker['verb']} run, not an earlier {verb}: "
            f"{verb} replaces only its own output; choose another --output_dir"
        )
    _refuse_deleting_inputs(directory, marker, verb, reads)


def run_wrote(directory: Path, name: str) -> str | None:
    """The verb of the sibo run that wrote file `name` in `directory` (it still owns it); None otherwise."""
    marker = _read_marker(directory) if directory.is_dir() else None
    return marker["verb"] if marker is not None and name in owned_files(directory, marker) else None


def user_files(directory: Path) -> list[str]:
    """The files in `directory` that the run its marker names did not write (all of them: no marker)."""
    marker = _read_marker(directory) if directory.is_dir() else None
    return (
        sorted(_files(directory) - set(owned_files(directory, marker)))
        if marker
        else sorted(_files(directory))
    )


def files_named(directory: Path, patterns: Sequence[str]) -> list[str]:
    """The files under `directory` (relative) that one of `patterns` names (`is_named`; a folder's: every
    file in it): what a legacy recogniser counts as its verb's, so a hand-over deletes only those."""
    return sorted(name for name in _files(directory) if is_named(name, patterns))


def is_named(name: str, patterns: Sequence[str]) -> bool:
    """Whether `name` lies under an entry a pattern matches (each of its parts, so `eval/*/summary.json`
    names that file in each folder under eval/), or is a half-written one (sibo.files.write_atomically)."""
    parts = name.split("/")
    if parts[-1].startswith(".") and parts[-1].endswith(".partial"):
        parts[-1] = parts[-1][1:].rpartition(".")[0].rpartition(".")[0]  # .NAME.XXXXXXXX.partial
    return any(
        len(parts) >= len(wanted) and all(map(fnmatch, parts, wanted))
        for wanted in (str(pattern).split("/") for pattern in patterns)
    )


def written_files(directory: Path) -> list[str]:
    """Every file under `directory`, relative (the marker and lock aside): a run's record of what it wrote."""
    return sorted(_files(directory))


def _write_marker(directory: Path, verb: str, settings: dict, kept: list[str], writes: Sequence[str]) -> None:
    marker = {"verb": verb, "settings": settings, "kept": kept} | ({"writes": list(writes)} if writes else {})
    write_json(directory / RUN_MARKER, marker, default=str)
    _CLAIMED.add(_resolved(directory))


def _kept(directory: Path, previous: dict | None) -> list[str]:
    """The files in `directory` that no sibo run there wrote: the run claiming it now leaves them be."""
    now = _files(directory)
    return sorted(now - set(owned_files(directory, previous))) if previous is not None else sorted(now)


def _files(directory: Path) -> set[str]:
    """Every file and link under `directory` (not followed), relative, but the lock and the marker."""
    found = set()
    for folder, subfolders, names in os.walk(directory):
        for name in names + [d for d in subfolders if os.path.islink(os.path.join(folder, d))]:
            found.add(Path(folder, name).relative_to(directory).as_posix())
    return found - {LOCK_FILE, RUN_MARKER}


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).resolve()


def _refuse_deleting_inputs(
    directory: Path, previous: dict, verb: str, reads: Sequence[tuple[str, str | os.PathLike]]
) -> None:
    """A hand-over never deletes what the same command reads (its adapter, data or benchmark files)."""
    if not reads:
        return
    out = _resolved(directory)
    owned = [_resolved(directory / name) for name in owned_files(directory, previous)]
    for flag, path in reads:
        read = _resolved(path)
        if read in out.parents:  # output_dir inside the folder read: the run's files are not what is read
            continue
        target = next((t for t in owned if t == read or read in t.parents), None)
        if target is not None:
            raise InputError(
                f"--output_dir {directory} holds a sibo {previous['verb']} run whose {target} this {verb} "
                f"reads ({flag} {path}): replacing that run would delete it; choose another --output_dir"
            )


def describe_contents(directory: Path, entries: list[Path] | None = None) -> str:
    """'a model (config.json, model.safetensors)', 'an adapter (…)', 'a dataset (…)' or 'files (…)'."""
    entries = _entries(directory) if entries is None else entries
    for kind, patterns in _FOREIGN:
        found = sorted(
            {str(p.relative_to(directory)) for pattern in patterns for p in directory.glob(pattern)}
        )
        if found:
            return f"{kind} ({', '.join(found[:3])}{', …' if len(found) > 3 else ''})"
    names = sorted(entry.name for entry in entries)
    return f"files ({', '.join(names[:3])}{', …' if len(names) > 3 else ''})"


def _entries(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return [entry for entry in directory.iterdir() if entry.name != LOCK_FILE]


def _read_marker(directory: Path) -> dict | None:
    try:
        marker = json.loads((directory / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if (
        isinstance(marker, dict)
        and isinstance(marker.get("verb"), str)
        and isinstance(marker.get("settings"), dict)
    ):
        return marker
    return None


def _changed(
    previous: dict, verb: str, settings: dict, may_differ: tuple[str, ...] | None, defaults: dict
) -> str:
    """'' when `previous` is this verb's run with these settings, else what differs, in words; a setting
    its marker lacks (added since it was written) counts as its default there."""
    if previous["verb"] != verb:
        return f"written by sibo {previous['verb']}, not {verb}"
    if may_differ is None or previous["settings"] is None:  # None: a legacy folder, settings unknown
        return ""
    # Compare as JSON stores them (tuples become lists, paths strings).
    now, defaults = json.loads(json.dumps([settings, defaults], default=str))
    before = {**{key: value for key, value in defaults.items() if key in now}, **previous["settings"]}
    keys = [key for key in {**before, **now}
            if key not in may_differ and not _same_setting(before.get(key), now.get(key))]  # fmt: skip
    return ", ".join(f"{key} {before.get(key)!r} there, {now.get(key)!r} now" for key in keys)


def _same_setting(before: object, now: object) -> bool:
    """Equal, or two spellings of one file or folder (relative and absolute, or through a symlink)."""
    if before == now:
        return True
    if not (isinstance(before, str) and isinstance(now, str) and before and now):
        return False
    try:
        return os.path.samefile(os.path.expanduser(before), os.path.expanduser(now))
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------- one writer


@contextmanager
def hold_output_dir(
    directory: str | os.PathLike, lock_file: str | os.PathLike | None = None
) -> Iterator[None]:
    """An exclusive OS lock on `directory` (its LOCK_FILE, or `lock_file`) while the block runs.

    A second run stops at once with one line naming the holder's pid. The lock dies with the process,
    so a killed run never leaves the folder locked; a finished one removes the file (before unlocking:
    whoever opened it meanwhile finds it unlinked and takes a fresh one).
    """
    directory = Path(directory)
    check_folder_path(directory)
    path = Path(lock_file) if lock_file is not None else directory / LOCK_FILE
    created = not path.parent.exists()
    lock = take_lock(directory, path)
    try:
        yield
    finally:
        if directory.is_dir():  # the user may have deleted the folder while the run held it
            record_written(directory)
        with contextlib.suppress(OSError):  # Windows cannot unlink an open file: its release removes it
            path.unlink(missing_ok=True)
        lock.release()
        if created and path.parent.is_dir() and not any(path.parent.iterdir()):
            path.parent.rmdir()  # a run that wrote nothing leaves nothing behind


def check_folder_path(directory: Path) -> None:
    """An --output_dir that can only fail later, refused now: a file, or a symbolic link to nowhere."""
    if directory.is_symlink() and not directory.exists():
        raise InputError(
            f"--output_dir {directory} is a dangling symbolic link (to {os.readlink(directory)})"
        )
    if directory.exists() and not directory.is_dir():
        raise InputError(f"--output_dir {directory} is a file, not a folder")
    existing = next(folder for folder in (directory, *directory.absolute().parents) if folder.exists())
    if not os.access(existing, os.W_OK | os.X_OK):  # before the slow part: the run could save nothing
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        raise InputError(
            f"--output_dir {directory}: cannot write there "
            f"({'Read-only file system' if read_only else 'Permission denied'})"
        )


def is_main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch (or a plain process): the one that owns output folders."""
    return int(os.environ.get("RANK", "0")) == 0
