"""One way to draw and save a figure for the HTML reports (EDA, run report): matplotlib on the Agg
backend (no screen), PNG at 96 dpi, the figure closed after saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["pyplot", "save_figure"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (headless machines, CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(path: Path, fig: Any) -> str:
    """Save ``fig`` as ``path`` (tight layout) and close it; returns the file name for the page."""
    fig.tight_layout()
    fig.savefig(path, dpi=96)
    pyplot().close(fig)
    return path.name
