"""One writer per output folder: an OS lock (filelock: flock, LockFileEx, or its soft lock where neither
exists) whose file names the holder's pid, so a second run stops at once with one line naming it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from filelock import BaseFileLock, FileLock, Timeout, UnixFileLock, WindowsFileLock

from sibo.errors import InputError
from sibo.files import UNWRITABLE

LOCK_FILE = ".sibo.lock"  # locked while a run writes the folder; its first line is the holder's pid

# filelock's native locks (flock, LockFileEx) hand us the locked file to write our pid in; its soft lock,
# used where Python has no fcntl, writes a marker whose first line is the pid already.
_NATIVE = issubclass(FileLock, (UnixFileLock, WindowsFileLock))


def take_lock(directory: Path, path: Path) -> BaseFileLock:
    """filelock's exclusive lock on `path` (its folder made), taken now or refused in one line: naming the
    holder, or saying that sibo may not write there."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            lock = FileLock(
                path, blocking=False, thread_local=False, on_acquired=_write_pid if _NATIVE else None
            )
            try:
                lock.acquire()
                return lock
            except Timeout:
                if path.is_file():  # else the holder removed it as we opened it: take a fresh one
                    raise InputError(_in_use(directory, _holder(path))) from None
    except OSError as error:
        if error.errno not in UNWRITABLE:
            raise
        raise InputError(f"--output_dir {directory}: cannot write there ({error.strerror})") from None


def _write_pid(descriptor: int) -> None:
    """Name the holder in another run's refusal; a full disk leaves it out, the lock holds anyway."""
    with contextlib.suppress(OSError):
        os.ftruncate(descriptor, 0)
        os.lseek(descriptor, 0, os.SEEK_SET)
        os.write(descriptor, f"{os.getpid()}\n".encode())


def _holder(path: Path) -> str:
    """The pid on the lock file's first line ('' when it cannot be read)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").partition("\n")[0].strip()
    except OSError:
        return ""


def check_unlocked(directory: Path) -> None:
    """Refuse now, before the slow part, when another run holds the folder's lock."""
    path = directory / LOCK_FILE
    if not path.is_file():
        return
    probe = FileLock(path, blocking=False, thread_local=False)  # no pid written: the file keeps its holder's
    try:
        probe.acquire()
    except Timeout:
        if path.is_file():
            raise InputError(_in_use(directory, _holder(path))) from None
        return
    probe.release()


def _in_use(directory: Path, holder: str) -> str:
    return (
        f"--output_dir {directory} is in use by another sibo run (pid {holder or 'unknown'}): "
        "wait for it to finish or choose another --output_dir"
    )
