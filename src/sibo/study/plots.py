"""matplotlib for the PNGs of analyze and sweep: imported lazily, on the file-only Agg backend."""

from __future__ import annotations

import io
from pathlib import Path

from sibo.errors import InputError
from sibo.files import write_atomically


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
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=120)
    pyplot().close(figure)
    write_atomically(file, image.getvalue())
