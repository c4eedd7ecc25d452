"""Two candidate sources, one ranked list: the segmenter's components and the blob filter's.

:meth:`Segmenter.segment <nodulekit.inference.Segmenter.segment>` calls :func:`rank_union` on a CT
volume in HU with a lung mask when its second stage is a
:class:`~nodulekit.detection.PerSourceClassifier`: the model-free
:func:`~nodulekit.detection.blob_candidates` inside the lungs find the sub-solid and juxtapleural
nodules the segmenter never proposes, :func:`~nodulekit.detection.merge_candidates` lists each
nodule once, and every candidate is scored by its source's member of the classifier (the numbers:
README "Whole scans: ranked candidates and FROC").
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pandas as pd

from ..detection import PerSourceClassifier, candidate_features, merge_candidates, rank_candidates, source_features
from .measure import NODULE_COLUMNS, measure_labels

__all__ = ["rank_union"]


def rank_union(
    labels: np.ndarray,
    nodules: pd.DataFrame,
    *,
    probabilities: np.ndarray,
    hu: np.ndarray,
    lung: np.ndarray,
    spacing: Sequence[float],
    classifier: PerSourceClassifier,
    min_score: float | None = None,
    max_nodules: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """Union the segmenter's candidates with the blob candidates, score each by its source's classifier, rank.

    Parameters
    ----------
    labels : ndarray of int, shape (slices, rows, columns)
        The segmenter's components, label = ``nodule_id`` of ``nodules``.
    nodules : pandas.DataFrame
        Their table (:func:`~nodulekit.inference.measure_nodules`).
    probabilities : ndarray of float, shape like ``labels``
        The segmentation model's probabilities.
    hu : ndarray of float, shape like ``labels``
        The scan in Hounsfield units.
    lung : ndarray of bool, shape like ``labels``
        The lung mask (where the blob filter looks).
    spacing : sequence of float
        Voxel size in mm (slice, row, column), all known.
    classifier : nodulekit.detection.PerSourceClassifier
        The second stage; its ``blob_options`` are the blob filter's (the defaults of
        :func:`~nodulekit.detection.blob_candidates` when empty, as shipped; a ``"faint"`` entry
        adds :func:`~nodulekit.detection.faint_blob_candidates`'s second pass).
    min_score : float, optional
        Drop candidates scoring lower; default ``classifier.threshold``.
    max_nodules : int, optional
        Keep at most this many, the highest scores.
    progress : bool
        A progress bar over the candidates' features (the second stage's longest step).

    Returns
    -------
    labels : ndarray of int32
        The kept candidates, 1 = the highest score; a blob candidate's component is its painted
        ball (:func:`~nodulekit.detection.blob_candidates`) less the segmenter's voxels. A blob whose
        peak lies on a segmenter candidate scoring at least as high, within its equivalent radius
        of its centre, is that candidate again and is not listed.
    table : pandas.DataFrame
        :data:`NODULE_COLUMNS` plus ``source`` ("segmenter" or "blob") and ``score``, sorted by
        falling score. A blob candidate's centre (``centroid_*``) is the filter's peak (the centre
        the FROC hit rule was measured with); its other columns measure its component.
    timings : dict
        ``blob_s`` (seconds of the blob filter), ``blob_candidates`` (how many it proposed) and
        ``candidates`` (the union's, before ``min_score`` and ``max_nodules``).
    """
    tick = time.perf_counter()
    blob_labels, blob_table = classifier.blob_candidates(hu, lung, spacing)
    blob_seconds = time.perf_counter() - tick
    merged_labels, merged = merge_candidates(labels, nodules, blob_labels, blob_table, spacing=spacing)
    del blob_labels
    features = candidate_features(merged_labels, merged, probabilities=probabilities, hu=hu, lung=lung, spacing=spacing, progress=progress)
    frame = features.join(source_features(merged)).assign(source=merged["source"].to_numpy())
    scores = classifier.predict_proba(frame, classifier.patch_logits(merged, hu=hu, probabilities=probabilities, spacing=spacing)) if len(merged) else np.zeros(0)
    scores = _drop_shadowed_blobs(merged_labels, merged, scores, spacing)
    table = _measured(merged_labels, merged, probabilities=probabilities, hu=hu, spacing=spacing)
    floor = classifier.threshold if min_score is None else float(min_score)
    ranked_labels, ranked = rank_candidates(merged_labels, table, scores, min_score=floor, max_nodules=max_nodules)
    return ranked_labels, ranked, {"blob_s": blob_seconds, "blob_candidates": int(len(blob_table)), "candidates": int(len(merged))}


def _drop_shadowed_blobs(labels: np.ndarray, merged: pd.DataFrame, scores: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Scores with blob candidates that are the same finding as a better segmenter candidate set to -1.

    A blob is a segmenter candidate seen again, and is not listed twice, when its peak lies on that
    component, within the component's equivalent radius of its centre (the LUNA16 hit rule with the
    component as the nodule), and the component scores at least as high: e.g. a peak on the rim of
    a large nodule, left with a few voxels once the segmenter's are taken. A blob on an elongated
    component centred elsewhere (a nodule inside a vessel component), or one scoring higher than
    the component, stays.
    """
    scores = np.asarray(scores, float).copy()
    sampling = np.asarray(spacing, float)
    ids = merged["nodule_id"].to_numpy(int)
    centres = merged[["centroid_z", "centroid_y", "centroid_x"]].to_numpy(float)
    row_of = {int(i): k for k, i in enumerate(ids)}
    sources = merged["source"].to_numpy()
    for row in np.flatnonzero(sources == "blob"):
        peak = tuple(np.clip(np.round(centres[row]).astype(int), 0, np.array(labels.shape) - 1))
        under = row_of.get(int(labels[peak]))
        if under is None or sources[under] != "segmenter" or scores[under] < scores[row]:
            continue
        distance = float(np.linalg.norm((centres[row] - centres[under]) * sampling))
        if distance <= float(merged.iloc[under]["equivalent_diameter_mm"]) / 2:
            scores[row] = -1.0  # below any min_score: rank_candidates drops it
    return scores


def _measured(labels: np.ndarray, merged: pd.DataFrame, *, probabilities, hu, spacing) -> pd.DataFrame:
    """The merged table with :data:`NODULE_COLUMNS` and ``source``: blob rows measured on their components."""
    blob = merged["source"].eq("blob").to_numpy()
    segmenter = merged[~blob].reindex(columns=[*NODULE_COLUMNS, "source"])
    if not blob.any():
        return segmenter.reset_index(drop=True)
    measured = measure_labels(labels, merged.loc[blob, "nodule_id"].to_numpy(int), spacing=spacing, probabilities=probabilities, hu=hu)
    peak = merged.loc[blob, ["centroid_z", "centroid_y", "centroid_x"]].to_numpy(float)
    measured[["centroid_z", "centroid_y", "centroid_x"]] = peak
    measured[["centroid_z_mm", "centroid_y_mm", "centroid_x_mm"]] = peak * np.asarray(spacing, float)
    measured["source"] = "blob"
    return pd.concat([segmenter, measured], ignore_index=True) if len(segmenter) else measured
