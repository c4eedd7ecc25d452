"""Figures of accuracy on real radiologist-annotated CT (notebook 06).

* :func:`plot_recipe_comparison` — per-nodule Dice of every recipe (mean ± sd over patient-grouped
  folds, each fold a dot), beside the published LIDC-IDRI anchors and nodulekit's target.
* :func:`plot_dice_by_size` — per-nodule Dice against the nodule's size.
"""

from __future__ import annotations

import itertools
from typing import Mapping

import numpy as np
import pandas as pd

from ..errors import InvalidParameterError

__all__ = ["PUBLISHED_ANCHORS", "plot_recipe_comparison", "plot_dice_by_size"]

#: Published per-nodule Dice on LIDC-IDRI (see PAPER.md) and the inter-reader agreement.
PUBLISHED_ANCHORS: dict[str, float] = {
    "Wang et al. 2017 (CF-CNN)": 0.8215,
    "Cao et al. (DB-ResNet)": 0.8274,
    "radiologists vs each other (published)": 0.84,
}

_VARIANT_STYLE = {"plain": ("as trained", "tab:blue"), "tta_pp": ("+ TTA + central component", "tab:green")}


def plot_recipe_comparison(
    table: pd.DataFrame,
    *,
    metric: str = "nodule_dice",
    anchors: Mapping[str, float] | None = None,
    target: float | None = 0.85,
    ax=None,
):
    """Horizontal bars of ``metric`` per recipe and variant, fold values as dots, anchors as lines.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`nodulekit.evaluation.cross_validate` rows (several recipes concatenated), with
        ``recipe``, ``variant``, ``fold`` and ``metric`` columns; extra rows without a ``fold``
        (e.g. :func:`~nodulekit.evaluation.synthetic_to_real`) are drawn as single values.
    metric : str
        Column to show (per-nodule Dice by default).
    anchors : mapping, optional
        Label -> value drawn as dashed vertical lines (default :data:`PUBLISHED_ANCHORS`).
    target : float, optional
        Drawn as a solid line.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    missing = {"recipe", "variant", metric} - set(table.columns)
    if missing:
        raise InvalidParameterError(f"table lacks the columns {sorted(missing)}")
    if table.empty:
        raise InvalidParameterError("table is empty")
    anchors = PUBLISHED_ANCHORS if anchors is None else anchors
    groups = list(table.groupby(["recipe", "variant"], sort=False))
    if ax is None:
        fig, ax = plt.subplots(figsize=(8.5, 0.45 * len(groups) + 1.6))
    else:
        fig = ax.figure
    for position, ((recipe, variant), rows) in enumerate(groups):
        label, color = _VARIANT_STYLE.get(variant, (variant, "tab:gray"))
        values = rows[metric].to_numpy(dtype=float)
        mean = float(np.mean(values))
        spread = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        ax.barh(position, mean, xerr=spread, color=color, alpha=0.55, capsize=3)
        ax.plot(values, np.full(len(values), position), "o", color=color, markersize=3.5)
        text = f"{mean:.3f} ± {spread:.3f} (n={len(values)})" if len(values) > 1 else f"{mean:.3f}"
        ax.text(0.01, position, f"{recipe} · {label}: {text}", va="center", fontsize=8)
    for (name, value), style in zip(anchors.items(), itertools.cycle(("--", "-.", ":", (0, (6, 2, 1, 2, 1, 2))))):
        ax.axvline(value, color="0.35", linestyle=style, linewidth=1, label=f"{name}: {value:.3f}")
    if target is not None:
        ax.axvline(target, color="tab:red", linewidth=1.2, label=f"nodulekit target: {target:.2f}")
    ax.set_yticks([])
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel(metric.replace("_", " "))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    ax.set_title("Real LIDC-IDRI crops, patient-grouped cross-validation")
    fig.tight_layout()
    return fig


def plot_dice_by_size(per_nodule: pd.DataFrame, sizes: pd.Series, *, ax=None):
    """Per-nodule Dice against nodule size (consensus pixels on its largest slice), one colour per recipe.

    Parameters
    ----------
    per_nodule : pandas.DataFrame
        ``pd.DataFrame(df.attrs["per_nodule"])`` of :func:`nodulekit.evaluation.cross_validate` tables
        (``nodule_id``, ``dice``, ``recipe``, ``variant``).
    sizes : pandas.Series
        Nodule id -> size (e.g. largest consensus area in pixels).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    if not {"nodule_id", "dice", "recipe"} <= set(per_nodule.columns):
        raise InvalidParameterError("per_nodule needs the columns nodule_id, dice, recipe")
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    else:
        fig = ax.figure
    data = per_nodule.dropna(subset=["dice"]).assign(size=lambda d: d["nodule_id"].map(sizes))
    for recipe, rows in data.groupby("recipe", sort=False):
        ax.scatter(rows["size"], rows["dice"], s=8, alpha=0.5, label=recipe)
    ax.set_xscale("log")
    ax.set_xlabel("nodule size: consensus pixels on its largest slice (64x64 crops)")
    ax.set_ylabel("per-nodule Dice")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8, markerscale=2)
    ax.set_title("Per-nodule Dice against nodule size")
    fig.tight_layout()
    return fig
