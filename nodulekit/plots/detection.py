"""Figures of whole-scan detection: the FROC curve and the reliability diagram of the scores.

* :func:`plot_froc` — sensitivity against false positives per scan (log axis) for one or more
  detectors, the LUNA16 operating points marked and the CPM in the legend.
* :func:`plot_reliability` — observed fraction of nodules against the predicted score, by bins, with
  the candidates per bin: a calibrated score lies on the diagonal.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import InvalidParameterError

__all__ = ["plot_froc", "plot_reliability", "reliability_table"]


def plot_froc(results: Mapping[str, object], *, ax=None, title: str | None = None):
    """FROC curves of several detectors on the same scans (and the candidates' ceiling, dotted).

    Parameters
    ----------
    results : mapping of str to nodulekit.froc.FrocResult
        Label -> result (:func:`nodulekit.froc.froc`).
    ax : matplotlib Axes, optional
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    if not results:
        raise InvalidParameterError("plot_froc needs at least one FROC result")
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4.0))
    for label, result in results.items():
        fp = np.concatenate([[1e-3], result.fp_per_scan])
        sensitivity = np.concatenate([[0.0], result.sensitivity])
        line = ax.step(np.maximum(fp, 1e-3), sensitivity, where="post", label=f"{label} (CPM {result.cpm:.3f})")[0]
        rates = list(result.sensitivities)
        ax.plot(rates, [result.sensitivities[r] for r in rates], "o", color=line.get_color(), markersize=4)
    first = next(iter(results.values()))
    ceiling = first.n_found / max(first.n_nodules, 1)  # every candidate listed: what ranking cannot exceed
    ax.axhline(ceiling, color="0.4", linestyle=":", linewidth=1, label=f"found by any candidate ({ceiling:.2f})")
    ax.set_xscale("log")
    ax.set_xlim(1 / 16, 16)
    ax.set_xticks([0.125, 0.25, 0.5, 1, 2, 4, 8])
    ax.set_xticklabels(["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity (nodules >= 3 mm found)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    return ax.figure


def reliability_table(scores: np.ndarray, labels: np.ndarray, *, bins: int = 10) -> list[dict]:
    """Per score bin (equal width on [0, 1]): candidates, mean score, observed fraction of nodules.

    Examples
    --------
    >>> rows = reliability_table(np.array([0.05, 0.15, 0.95, 0.92]), np.array([0, 0, 1, 0]), bins=2)
    >>> [(r["n"], round(r["observed"], 2)) for r in rows]
    [(2, 0.0), (2, 0.5)]
    """
    scores = np.asarray(scores, float)
    labels = np.asarray(labels, float)
    if scores.shape != labels.shape or scores.ndim != 1 or int(bins) < 1:
        raise InvalidParameterError(f"need scores and labels of the same 1-D shape and bins >= 1, got {scores.shape}, {labels.shape}, {bins}")
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, int(bins) - 1)
    rows = []
    for k in range(int(bins)):
        inside = which == k
        if inside.any():
            rows.append({"low": float(edges[k]), "high": float(edges[k + 1]), "n": int(inside.sum()), "mean_score": float(scores[inside].mean()), "observed": float(labels[inside].mean())})
    return rows


def plot_reliability(scores: np.ndarray, labels: np.ndarray, *, bins: int = 10, ax=None, title: str | None = None):
    """Reliability diagram: observed fraction of nodules per score bin against the mean score.

    Parameters
    ----------
    scores : ndarray, shape (n,)
        Predicted probabilities of held-out candidates.
    labels : ndarray, shape (n,)
        1 where the candidate is a nodule.
    bins : int
    ax : matplotlib Axes, optional
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    rows = reliability_table(scores, labels, bins=bins)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.0))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    ax.plot([r["mean_score"] for r in rows], [r["observed"] for r in rows], "o-", label="held-out candidates")
    for r in rows:
        ax.annotate(str(r["n"]), (r["mean_score"], r["observed"]), textcoords="offset points", xytext=(4, -10), fontsize=7, color="0.3")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("score (predicted probability of a nodule)")
    ax.set_ylabel("fraction that are nodules")
    ax.legend(fontsize=8, loc="upper left")
    if title:
        ax.set_title(title, fontsize=10)
    return ax.figure
