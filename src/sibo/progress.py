"""Progress of slow loads on the console: a bar on a terminal, a few plain log lines when piped to a file.

transformers draws a bar per model load ("Loading weights") and, for a GGUF base, one while it
dequantizes every tensor (19–36 s for SmolLM2 on 2 CPU cores). Without -v the CLI hides the libraries'
bars, but not these: a silent half-minute reads as a hang. Piped to a file, a tqdm bar writes a
carriage-return line per update; there it becomes one log line per quarter instead.
"""

from __future__ import annotations

import io
import logging
import sys

from tqdm.auto import tqdm

logger = logging.getLogger("sibo.progress")

SLOW_LOADS = ("de-quantizing", "Loading weights", "Loading checkpoint")  # bars shown without -v …
SHOW_AFTER_S = 2.0  # … once they have run this long: a load over in a blink stays silent


class LineProgress(tqdm):
    """A tqdm whose display is a log line per quarter (0, 25, 50, 75, 100 %) reached after SHOW_AFTER_S
    (nothing written to the stream)."""

    def __init__(self, *args, **kwargs) -> None:
        self._quarter = -1
        super().__init__(*args, **{**kwargs, "file": io.StringIO(), "mininterval": 0})

    def display(self, msg=None, pos=None) -> bool:
        started = getattr(self, "start_t", None)  # tqdm displays once before it sets start_t
        if self.total and started is not None and self._time() - started >= SHOW_AFTER_S:
            quarter = 4 * self.n // self.total
            if quarter > self._quarter:
                self._quarter = quarter
                logger.info(
                    "%s %d/%d (%d%%)", self.desc.rstrip(": ."), self.n, self.total, 100 * self.n // self.total
                )
        return True


def console_bar(factory, args, kwargs):
    """transformers' tqdm hook without -v: slow loads shown (a bar, or lines when piped), the rest hidden."""
    description = str(kwargs.get("desc") or "")
    if not any(slow in description for slow in SLOW_LOADS):
        return factory(*args, **{**kwargs, "disable": True})
    if sys.stderr.isatty():
        return factory(*args, **{**kwargs, "delay": SHOW_AFTER_S})
    return LineProgress(*args, **kwargs)
