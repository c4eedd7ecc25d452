"""The risk-factor correlation heatmap (the paper's Fig. 3), drawn from what the table says."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..risk import LEVEL_COLUMN, cluster_order, correlation, duplication_report

__all__ = ["plot_risk_heatmap"]

logger = logging.getLogger(__name__)

_METHOD_NAMES = {"pearson": "Pearson r", "spearman": "Spearman ρ"}


def plot_risk_heatmap(
    df: pd.DataFrame,
    *,
    method: str = "pearson",
    ax=None,
    cluster: bool = True,
    triangle: bool = True,
    annotate: bool = True,
):
    """Annotated correlation heatmap of Age, Gender, the 21 risk factors and Level.

    Colours run from blue (r = -1) through white (0) to red (+1). Variables are ordered by
    hierarchical clustering of ``1 - r`` (:func:`nodulekit.risk.cluster_order`) so that blocks of
    related factors sit together. Level is coded Low=0, Medium=1, High=2. The title names the
    source: "synthetic cohort" when ``df.attrs["synthetic"]`` is set, otherwise the row count and
    how many rows are distinct (the Kaggle table has 152 distinct rows in 1,000).

    Parameters
    ----------
    df : pandas.DataFrame
        A risk table (:func:`nodulekit.risk.load_risk_table` or
        :func:`nodulekit.risk.synthetic_risk_table`).
    method : {"pearson", "spearman"}
        Correlation coefficient.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new 9.5 x 8.5 inch figure when omitted.
    cluster : bool
        Order variables by hierarchical clustering (otherwise in file order).
    triangle : bool
        Show only the lower triangle (each pair once, no diagonal).
    annotate : bool
        Write r in each cell (two decimals, leading zero dropped).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InvalidParameterError
        Unknown ``method`` or a table without the risk-table columns.

    References
    ----------
    .. [1] The paper's Fig. 3 "Heatmap Korelasi".
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    matrix = correlation(df, method=method)
    order = cluster_order(matrix) if cluster else list(matrix.columns)
    matrix = matrix.loc[order, order]
    mask = None
    if triangle:
        mask = np.triu(np.ones(matrix.shape, dtype=bool))
        matrix, mask = matrix.iloc[1:, :-1], mask[1:, :-1]
    if ax is None:
        fig, ax = plt.subplots(figsize=(9.5, 8.5))
    else:
        fig = ax.figure
    labels = np.vectorize(_format_r)(matrix.to_numpy()) if annotate else False
    sns.heatmap(
        matrix,
        ax=ax,
        mask=mask,
        cmap="RdBu_r",
        vmin=-1.0,
        vmax=1.0,
        center=0.0,
        annot=labels,
        fmt="",
        annot_kws={"fontsize": 7.5},
        square=True,
        linewidths=0.5,
        linecolor="white",
        xticklabels=True,
        yticklabels=True,
        cbar_kws={"shrink": 0.7, "label": f"{_METHOD_NAMES[method]} (Level: Low=0, Medium=1, High=2)"},
    )
    ax.set_xticklabels(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor", fontsize=9)
    ax.set_yticklabels(ax.get_yticklabels(), rotation=0, fontsize=9)
    ax.set_xlabel("")
    ax.set_ylabel("")
    for tick in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
        if tick.get_text() == LEVEL_COLUMN:
            tick.set_fontweight("bold")
    ax.set_title(f"{_METHOD_NAMES[method]} between lung-cancer risk factors\n{_source(df)}", fontsize=11)
    return fig


def _format_r(value: float) -> str:
    if np.isnan(value):
        return ""
    text = f"{value:.2f}".replace("0.", ".", 1)
    return ".00" if text == "-.00" else text.replace("-", "\u2212")


def _source(df: pd.DataFrame) -> str:
    if df.attrs.get("synthetic", False):
        return f"synthetic cohort, n = {len(df)} (not patient data)"
    report = duplication_report(df)
    return (
        f"{report.n_rows} rows, only {report.n_distinct_rows} distinct "
        f"({report.n_distinct_factor_vectors} distinct factor vectors)"
    )
