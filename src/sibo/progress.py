"""What the console shows of slow work: a verb's first line, then bars on a terminal, log lines when piped.

Every verb that loads a model or data first logs what it loads, from where and how big (`announce`), before
it imports torch: that import alone takes seconds, a GGUF base's load half a minute more.

transformers draws a bar per model load ("Loading weights") and, for a GGUF base, one while it
dequantizes every tensor (19–36 s for SmolLM2 on 2 CPU cores). Without -v the CLI hides the libraries'
bars, but not these: a silent half-minute reads as a hang. Piped to a file, a tqdm bar writes a
carriage-return line per update; there it becomes one log line per quarter instead.
sibo's own bars (training, evaluating, tokenizing: `bar`) become a log line per tenth.
"""

from __future__ import annotations

import importlib.abc
import io
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger("sibo.progress")

SLOW_LOADS = ("de-quantizing", "Loading weights", "Loading checkpoint")  # bars shown without -v …
SHOW_AFTER_S = 2.0  # … once they have run this long: a load over in a blink stays silent


class LineProgress(tqdm):
    """A tqdm whose display is a log line per `parts`-th of the total (0, 25, 50, 75, 100 % with 4) reached
    after `show_after` seconds (default SHOW_AFTER_S), with the time so far and the rate (nothing written to
    the stream)."""

    def __init__(self, *args, parts: int = 4, show_after: float | None = None, **kwargs) -> None:
        self._parts, self._shown = parts, -1
        self._show_after = SHOW_AFTER_S if show_after is None else show_after
        super().__init__(*args, **{**kwargs, "file": io.StringIO(), "mininterval": 0})

    def display(self, msg=None, pos=None) -> bool:
        started = getattr(self, "start_t", None)  # tqdm displays once before it sets start_t
        if self.total and started is not None and self._time() - started >= self._show_after:
            part = self._parts * self.n // self.total
            if part > self._shown:
                self._shown = part
                logger.info("%s", self._line(self._time() - started))
        return True

    def _line(self, elapsed: float) -> str:
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0  # initial: resumed, not done now
        speed = f"{rate:.3g} {self.unit}/s" if rate >= 1 or not rate else f"{1 / rate:.3g} s/{self.unit}"
        postfix = f", {self.postfix}" if self.postfix else ""
        return (
            f"{self.desc.rstrip(': .')} {self.n}/{self.total} ({100 * self.n // self.total}%) "
            f"in {self.format_interval(elapsed)}, {speed}{postfix}"
        )


def bar(*args, **kwargs) -> tqdm:
    """A tqdm on a terminal; piped to a file, a log line per tenth (LineProgress), never a carriage return."""
    if sys.stderr.isatty():
        return tqdm(*args, **kwargs)
    return LineProgress(*args, parts=10, show_after=0.0, **kwargs)


def console_bar(factory, args, kwargs):
    """transformers' tqdm hook without -v: slow loads shown (a bar, or lines when piped), the rest hidden."""
    description = str(kwargs.get("desc") or "")
    if not any(slow in description for slow in SLOW_LOADS):
        return factory(*args, **{**kwargs, "disable": True})
    if sys.stderr.isatty():
        return factory(*args, **{**kwargs, "delay": SHOW_AFTER_S})
    return LineProgress(*args, **kwargs)


def announce(purpose: str, **sources: str | Sequence[str] | None) -> None:
    """A verb's first line, logged before torch is imported: what it will load, from where and how big (a
    stat, nothing read), e.g. `loading base SmolLM2-135M-Instruct.Q4_1.gguf (98.4 MB, GGUF) and adapter out
    (26.1 MB) to score on math into eval …`. `sources`: role → path, hub name, comma-separated list or list."""
    named = [f"{role} {', '.join(map(on_disk, _paths(where)))}" for role, where in sources.items() if where]
    logger.info("loading %s %s …", " and ".join(named), purpose)


@contextmanager
def announced_before(module: str, purpose: str, **sources: str | Sequence[str] | None) -> Iterator[None]:
    """`announce`, logged when the block first looks for `module` (to import it, or to ask whether it is
    installed: transformers does, just before it imports torch, which takes seconds), else at the block's end.
    A block that fails before (a bad value caught by a check that needs no library) logs only its error."""
    pending = _BeforeImport(module, lambda: announce(purpose, **sources))
    if module in sys.modules:
        pending.fire()
    sys.meta_path.insert(0, pending)
    try:
        yield
    finally:
        sys.meta_path.remove(pending)
    pending.fire()


class _BeforeImport(importlib.abc.MetaPathFinder):
    """Runs `action` once, the first time the import system looks for `module`; finds nothing itself."""

    def __init__(self, module: str, action: Callable[[], None]) -> None:
        self.module, self.action, self.fired = module, action, False

    def fire(self) -> None:
        if not self.fired:
            self.fired = True
            self.action()

    def find_spec(self, name: str, path=None, target=None) -> None:
        if name == self.module:
            self.fire()
        return None


def on_disk(path: str) -> str:
    """`path` and its size: a file's, the files' in a folder (not its subfolders: a run's checkpoints), or a
    hub name's in the local hub cache."""
    local = Path(path).expanduser()
    if local.is_dir():
        files = [file for file in local.iterdir() if file.is_file()]
    elif local.is_file():
        files = [local]
    else:
        looks_local = local.is_absolute() or path.startswith((".", "~"))
        return f"{path} ({'not found' if looks_local else _hub_copy(path)})"
    gguf = ", GGUF" if any(file.suffix == ".gguf" for file in files) else ""
    return f"{path} ({_size(sum(file.stat().st_size for file in files))}{gguf})"


def _paths(where: str | Sequence[str]) -> list[str]:
    """A list as it is; a string that is no local path but holds commas: its comma-separated parts."""
    if not isinstance(where, str):
        return [str(path) for path in where]
    return where.split(",") if "," in where and not Path(where).expanduser().exists() else [where]


def _hub_copy(name: str) -> str:
    from huggingface_hub import constants

    for kind in ("models", "datasets"):
        blobs = Path(constants.HF_HUB_CACHE) / f"{kind}--{name.replace('/', '--')}" / "blobs"
        if blobs.is_dir():
            return f"hub name, {_size(sum(file.stat().st_size for file in blobs.iterdir()))} in the hub cache"
    return "hub name, no local copy"


def _size(size: int) -> str:
    units = (("GB", 1e9), ("MB", 1e6), ("kB", 1e3))
    return next((f"{size / scale:.3g} {unit}" for unit, scale in units if size >= scale), f"{size} B")
