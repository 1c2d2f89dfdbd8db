"""How our reports draw: a headless backend, and one finish for every figure (grid, legend,
layout, 110 dpi, closed so a long run does not pile figures up)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["finish", "plt"]


def finish(fig: plt.Figure, path: Path | str, ax: plt.Axes | None = None, *, grid: bool = True,
           legend: dict | None = None) -> None:
    """Grid and legend on `ax` (if given), then lay out, save and close the figure."""
    if ax is not None and grid:
        ax.grid(alpha=0.3)
    if ax is not None and legend is not None:
        ax.legend(fontsize=8, **legend)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
