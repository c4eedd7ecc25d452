"""Training figures: the paper's Fig. 4 (training and validation curves) and the grid-search heatmap.

Both read the tables of :func:`nodulekit.training.run_protocol` (or
:func:`nodulekit.training.load_results`), never a model, so a finished run can be re-plotted
without TensorFlow.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InvalidParameterError

__all__ = ["plot_training_curves", "plot_grid_heatmap", "TRAIN_COLOR", "VALIDATION_COLOR"]

logger = logging.getLogger(__name__)

#: The paper's colours: training red, validation blue.
TRAIN_COLOR = "tab:red"
VALIDATION_COLOR = "tab:blue"

_LABELS = {"accuracy": "pixel accuracy", "loss": "loss (focal Tversky)", "dice": "Dice"}


def plot_training_curves(
    histories: pd.DataFrame,
    *,
    phase: str = "cv",
    architectures: Sequence[str] | None = None,
    metrics: Sequence[str] = ("accuracy", "loss", "dice"),
    axes=None,
):
    """Training (red) and validation (blue) curves per epoch: accuracy on top, loss below, then Dice.

    One column per architecture. With several folds, each fold is a thin line and their mean a
    thick one; a gap between the red and the blue curves is the overfitting the paper reads from
    its Fig. 4.

    Parameters
    ----------
    histories : pandas.DataFrame
        The ``histories`` table: columns phase, architecture, fold, epoch, and ``<metric>`` /
        ``val_<metric>`` for each metric.
    phase : {"cv", "grid"}
        Which units to draw (the folds by default).
    architectures : sequence of str, optional
        Columns of the figure; default every architecture in the table.
    metrics : sequence of str
        Rows of the figure, top to bottom.
    axes : array of matplotlib.axes.Axes, optional
        ``(len(metrics), len(architectures))`` axes to draw into; a new figure when omitted.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InvalidParameterError
        If the table has no rows for ``phase`` or lacks a metric column.

    References
    ----------
    .. [1] The paper's Fig. 4 "Grafik Training dan Validasi".
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    table = histories[histories["phase"] == phase]
    if table.empty:
        raise InvalidParameterError(f"histories has no rows for phase {phase!r}")
    for metric in metrics:
        for column in (metric, f"val_{metric}"):
            if column not in table:
                raise InvalidParameterError(f"histories lacks the column {column!r}")
    architectures = list(architectures or pd.unique(table["architecture"]))
    if axes is None:
        fig, axes = plt.subplots(
            len(metrics), len(architectures), figsize=(4.2 * len(architectures), 2.6 * len(metrics)), sharex="col", squeeze=False
        )
    else:
        axes = np.asarray(axes).reshape(len(metrics), len(architectures))
        fig = axes[0, 0].figure
    group_key = "fold" if phase == "cv" else "learning_rate"
    for column, architecture in enumerate(architectures):
        part = table[table["architecture"] == architecture]
        for row, metric in enumerate(metrics):
            ax = axes[row, column]
            for prefix, color, label in (("", TRAIN_COLOR, "training"), ("val_", VALIDATION_COLOR, "validation")):
                name = f"{prefix}{metric}"
                units = list(part.groupby([group_key, "batch_size"], dropna=False))
                for _, unit in units:
                    if len(units) > 1:
                        ax.plot(unit["epoch"], unit[name], color=color, alpha=0.3, linewidth=0.8)
                mean = part.groupby("epoch")[name].mean()
                ax.plot(mean.index, mean.to_numpy(), color=color, linewidth=2, marker="o", markersize=3,
                        label=f"{label}" + (f" (mean of {len(units)})" if len(units) > 1 else ""))
            ax.set_ylabel(_LABELS.get(metric, metric))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(architecture.replace("_", " "))
                ax.legend(fontsize="small", loc="best")
            if row == len(metrics) - 1:
                ax.set_xlabel("epoch")
    fig.tight_layout()
    return fig


def plot_grid_heatmap(grid: pd.DataFrame, *, metric: str = "val_dice", architectures: Sequence[str] | None = None, axes=None):
    """Grid-search heatmap: ``metric`` per learning rate (rows) and batch size (columns).

    Failed trials (diverged, out of memory) are grey, hatched and labelled "failed"; the chosen
    trial of each architecture is outlined.

    Parameters
    ----------
    grid : pandas.DataFrame
        The ``grid`` table (architecture, learning_rate, batch_size, status, ``metric``, selected).
    metric : str
        Column to show (validation Dice by default).
    architectures : sequence of str, optional
        One panel each; default every architecture in the table.
    axes : sequence of matplotlib.axes.Axes, optional
        One axes per architecture; a new figure when omitted.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InvalidParameterError
        If ``metric`` is not a column of the table.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if metric not in grid:
        raise InvalidParameterError(f"grid table has no column {metric!r}")
    architectures = list(architectures or pd.unique(grid["architecture"]))
    if axes is None:
        fig, axes = plt.subplots(
            1, len(architectures), figsize=(4.4 * len(architectures) + 1.0, 3.8), squeeze=False, layout="constrained"
        )
        axes = axes[0]
    else:
        axes = list(np.atleast_1d(axes))
        fig = axes[0].figure
    rates = sorted(pd.unique(grid["learning_rate"]))
    sizes = sorted(pd.unique(grid["batch_size"]))
    values = grid.loc[grid["status"] == "ok", metric].astype(float)
    low, high = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    image = None
    for ax, architecture in zip(axes, architectures):
        part = grid[grid["architecture"] == architecture]
        matrix = np.full((len(rates), len(sizes)), np.nan)
        for row in part.itertuples():
            i, j = rates.index(row.learning_rate), sizes.index(row.batch_size)
            if row.status == "ok":
                matrix[i, j] = float(getattr(row, metric))
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=low, vmax=high if high > low else low + 1e-9)
        for row in part.itertuples():
            i, j = rates.index(row.learning_rate), sizes.index(row.batch_size)
            if row.status != "ok":
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.85", hatch="///", edgecolor="0.5"))
                ax.text(j, i, "failed", ha="center", va="center", fontsize=9, color="0.2")
            else:
                value = matrix[i, j]
                shade = "white" if high > low and value < (low + high) / 2 else "black"
                ax.text(j, i, "nan" if math.isnan(value) else f"{value:.3f}", ha="center", va="center", color=shade, fontsize=9)
            if "selected" in part and bool(row.selected):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="tab:red", linewidth=2.5))
        ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
        ax.set_yticks(range(len(rates)), [f"{r:g}" for r in rates])
        ax.set_xlabel("batch size")
        if ax is axes[0]:
            ax.set_ylabel("learning rate")
        ax.set_title(architecture.replace("_", " "))
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8, label=metric.replace("_", " "))
    return fig
