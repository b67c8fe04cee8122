"""Writing a matplotlib figure to a PNG file: atomically, closed afterwards, at one resolution by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..atomic_write import replace_atomic

FIGURE_DPI = 100  # dots per inch of the PNG files the plots and attention figures are written to


def save_figure(figure: Any, path: str | Path, *, dpi: int = FIGURE_DPI, what: str = "picture") -> Path:
    """Write ``figure`` (a matplotlib ``Figure``) to ``path`` as PNG and return the path.

    The file appears whole or not at all (a failure removes the partial file and names ``path`` in an
    ``OutputError``); the figure is closed afterwards, so plotting in a loop does not accumulate figures.
    """
    import matplotlib.pyplot as plt

    try:
        return replace_atomic(Path(path), lambda tmp: figure.savefig(tmp, dpi=dpi, format="png"), what=what)
    finally:
        plt.close(figure)
