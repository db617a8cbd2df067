"""matplotlib for the PNGs of analyze and sweep: imported lazily, on the file-only Agg backend."""

from __future__ import annotations

import os
from pathlib import Path

from sibo.errors import InputError


def pyplot():
    """matplotlib's pyplot (no display needed); a clear error when the plot extra is missing."""
    try:
        import matplotlib
    except ImportError:
        raise InputError("the plot needs matplotlib: pip install 'sibo[plot]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def save_figure(figure, file: Path) -> None:
    """Write the PNG whole or not at all (a kill mid-write leaves no half file), then free the figure."""
    partial = file.with_name(f".{file.name}.partial")
    figure.savefig(partial, format="png", dpi=120)
    pyplot().close(figure)
    os.replace(partial, file)
