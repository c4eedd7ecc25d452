"""Figures. One submodule per family of figures; every function takes ``ax=`` (or makes its own
axes) and returns the Figure. :func:`save_figure` writes them all the same way."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..utils import atomic_write

__all__ = ["save_figure", "DPI"]

#: Resolution of every saved figure.
DPI = 150


def save_figure(fig, number: int | str, slug: str, *, folder: str | os.PathLike = "figures") -> Path:
    """Save ``fig`` as ``<folder>/figNN_<slug>.png`` (fixed dpi, tight bounding box), atomically.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    number : int or str
        Figure number (``3`` → ``fig03``) or a label such as ``"S1"``.
    slug : str
        Short lowercase name, e.g. ``"risk_heatmap"``.
    folder : path
        Where to write; created if needed.
    """
    tag = f"{number:02d}" if isinstance(number, int) else str(number)
    slug = re.sub(r"[^a-z0-9]+", "_", slug.lower()).strip("_")
    path = Path(folder) / f"fig{tag}_{slug}.png"
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI, bbox_inches="tight")
    return path
