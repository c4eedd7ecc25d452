"""Second stage of whole-scan detection: features of each candidate and a calibrated classifier.

The segmentation model marks nodules *and* vessels, pleura and hilar structures: on a whole scan
every component peaks at probability 1.0, so its probability cannot rank them. This module scores
each 3-D candidate component with the features a radiologist would use and a logistic regression
trained on candidates with known truth:

* **shape**: volume, longest axial diameter, extent along z against the in-plane size (a vessel
  running through the slices is long in z, a nodule is about as deep as it is wide), the
  eigenvalues of the inertia (covariance) tensor in mm (elongation, flatness), how much of the
  inertia ellipsoid the component fills (sphericity);
* **Hessian blob versus tube versus plate** (:func:`skimage.feature.hessian_matrix` on an isotropic
  resampling around the candidate, at the scale of its radius): a bright blob has three negative
  eigenvalues of similar size, a vessel two, the pleura one [1]_;
* **intensity**: mean, spread and percentiles of the HU inside, contrast with a shell around it;
* **position**: depth inside the lung mask, fraction touching its boundary (pleura), distance from
  the mediastinal side (hilum);
* **the model's probabilities**: mean, spread, fraction above 0.9, mean in the shell around;
* **a ball at the candidate's own scale** (:func:`ball_features`, :data:`BALL_FEATURE_NAMES`): its
  densest voxel, its share of ground-glass HU, how dense and how much lung the shell around it is.

The segmenter alone never proposes many sub-solid, ground-glass and juxtapleural nodules.
:func:`blob_candidates` is a second, model-free candidate source (a multi-scale Hessian "dot"
filter inside the lungs, [3]_), :func:`merge_candidates` unions both without listing a nodule twice,
and :func:`source_features` (:data:`SOURCE_FEATURE_NAMES`) tells a second stage where each
candidate came from (``experiments/detection_candidates.py`` measures them).

:class:`CandidateClassifier` is a logistic regression on standardized features (scikit-learn to
fit; numpy to predict), saved as JSON (feature names, means, scales, coefficients, the operating
point) beside the segmenter (``classifier.json``): no pickle. Its output is the ``score`` column of
``nodules.csv``: a probability, calibrated on held-out candidates (reliability diagram in
``experiments/detection.py``). :class:`BoostedClassifier` is gradient-boosted trees (scikit-learn's
``HistGradientBoostingClassifier`` to fit; numpy to predict, the same probabilities), its trees
saved as arrays in the same JSON, with an optional Platt step. A :class:`PerSourceClassifier` holds one
classifier of either kind per candidate source (:data:`CANDIDATE_SOURCES`), each candidate scored by its own source's: with one
in the folder, a segmenter unions its candidates with :func:`blob_candidates`
(:func:`nodulekit.inference.rank_union`). ``classifier.json`` holds either form:

* one classifier (the previous format, still read): ``{"kind": "logistic_regression",
  "feature_names", "mean", "scale", "coefficients", "intercept", "threshold", "metadata"}`` or
  ``{"kind": "gradient_boosting", "feature_names", "baseline", "calibration", "trees", "threshold",
  "metadata"}`` (each tree ``{"feature", "threshold", "missing_left", "left", "right", "value"}``,
  one entry per node); the segmenter's candidates alone are scored;
* one per source: ``{"kind": "per_source", "version": 1, "threshold", "metadata", "classifiers":
  {"segmenter": {...}, "blob": {...}}}``, each entry one classifier of either kind above (its
  ``kind`` says which); the top-level
  ``threshold`` is the operating point of the union (``--min-score`` default). Version 2 adds
  ``"patch_fusion": {"weight", "calibration"}``: the members' log-odds fused with a 3-D patch CNN's
  logit (:mod:`nodulekit.patch_scorer`, its file :data:`~nodulekit.patch_scorer.PATCH_SCORER_FILE`
  beside ``classifier.json``).

This module sits below :mod:`nodulekit.inference` (it works on arrays and the nodule table, and
imports nothing above :mod:`nodulekit.errors`, :mod:`nodulekit.utils` and :mod:`nodulekit.postprocess`), so a
:class:`~nodulekit.inference.Segmenter` can rank its own candidates.

References
----------
.. [1] A. F. Frangi, W. J. Niessen, K. L. Vincken, M. A. Viergever, "Multiscale vessel enhancement
   filtering", MICCAI 1998 (Hessian eigenvalue ratios: blob, tube, plate).
.. [2] A. A. A. Setio et al., "Pulmonary nodule detection in CT images: false positive reduction
   using multi-view convolutional networks", IEEE TMI 35(5):1160-1169, 2016 (candidate stage plus
   false-positive reduction).
.. [3] Q. Li, S. Sone, K. Doi, "Selective enhancement filters for nodules, vessels, and airway
   walls in two- and three-dimensional CT scans", Medical Physics 30(8):2040-2051, 2003.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm.auto import tqdm

from .errors import InvalidParameterError, MissingDataError, ModelFileError
from .postprocess import bounding_box, label_components
from .utils import atomic_write, write_json

__all__ = [
    "CLASSIFIER_FILE",
    "FEATURE_NAMES",
    "INTENSITY_FREE_FEATURES",
    "OUTCOMES",
    "BOOSTING_DEFAULTS",
    "BoostedClassifier",
    "CandidateClassifier",
    "CANDIDATE_SOURCES",
    "PerSourceClassifier",
    "candidate_features",
    "candidate_outcomes",
    "fit_platt",
    "load_classifier",
    "rank_candidates",
    "BLOB_COLUMNS",
    "BLOB_RADII_MM",
    "BALL_FEATURE_NAMES",
    "SOURCE_FEATURE_NAMES",
    "ball_features",
    "blob_candidates",
    "FAINT_BLOB_PASS",
    "faint_blob_candidates",
    "merge_candidates",
    "source_features",
]

logger = logging.getLogger(__name__)

#: File name of the second stage inside a segmenter folder.
CLASSIFIER_FILE = "classifier.json"

#: Features of :func:`candidate_features`, in order.
FEATURE_NAMES = (
    "log_volume_mm3",
    "log_diameter_mm",
    "z_extent_mm",
    "z_extent_ratio",
    "single_slice",
    "log_elongation",
    "log_flatness",
    "ellipsoid_fill",
    "sphericity",
    "hessian_blob",
    "hessian_plate",
    "hessian_strength",
    "hu_mean",
    "hu_std",
    "hu_p10",
    "hu_p90",
    "hu_contrast",
    "lung_depth_mm",
    "pleura_contact",
    "medial_position",
    "probability_mean",
    "probability_std",
    "probability_high",
    "probability_shell",
)

#: Features of :func:`ball_features` (also returned by :func:`candidate_features`), measured on a ball
#: of the candidate's own radius at its centre and on a lung shell around it: the densest voxel
#: (calcification), the share of ground-glass HU, how much of the shell is dense (vessels leaving a
#: bifurcation, a nodule sits in air) and how much of it is lung (pleura, mediastinum). Not in
#: :data:`FEATURE_NAMES`: a classifier stored before them does not name them and scores as before.
BALL_FEATURE_NAMES = ("ball_hu_max", "ball_ggo_fraction", "shell_dense_fraction", "shell_lung_fraction")

#: Features that depend on HU or on a lung mask: the HU statistics, ``hessian_strength`` (in HU) and
#: the position features (0 without a lung mask).
_INTENSITY_OR_LUNG_FEATURES = ("hu_mean", "hu_std", "hu_p10", "hu_p90", "hu_contrast", "hessian_strength", "lung_depth_mm", "pleura_contact", "medial_position")

#: The features that mean the same on display-scaled images (8-bit crops min-max scaled per crop,
#: like the LIDC PNG release) without a lung mask: shape, the Hessian eigenvalue *ratios*
#: (unchanged by an intensity scale; an offset moves them slightly through the zero padding of the
#: Hessian's filter at the crop border) and the model's probabilities; 15 of the 24.
INTENSITY_FREE_FEATURES = tuple(name for name in FEATURE_NAMES if name not in _INTENSITY_OR_LUNG_FEATURES)

#: Outcomes of :func:`candidate_outcomes`.
OUTCOMES = ("positive", "negative", "partial")

#: Voxels within this distance (mm) of the lung mask's boundary touch the pleura.
_CONTACT_MM = 1.5
#: Isotropic grid (mm) on which the Hessian is computed.
_HESSIAN_MM = 1.0


def candidate_features(
    labels: np.ndarray,
    table: pd.DataFrame,
    *,
    probabilities: np.ndarray,
    hu: np.ndarray,
    lung: np.ndarray | None,
    spacing: Sequence[float],
    progress: bool = False,
) -> pd.DataFrame:
    """Features of every candidate component (module docstring: which and why).

    Parameters
    ----------
    labels : ndarray of int, shape (slices, rows, columns)
        Candidate components, label = ``nodule_id`` of ``table``
        (:func:`nodulekit.inference.measure_nodules`).
    table : pandas.DataFrame
        The nodule table: ``nodule_id``, ``n_slices``, ``diameter_mm``, ``volume_mm3``.
    probabilities : ndarray of float, shape like ``labels``
        The segmentation model's probabilities.
    hu : ndarray of float, shape like ``labels``
        The scan in Hounsfield units.
    lung : ndarray of bool or None
        The lung mask the search was restricted to (``None``: the whole image; the position
        features are then 0).
    spacing : sequence of float
        Voxel size in mm (slice, row, column), all known.
    progress : bool
        Progress bar over candidates.

    Returns
    -------
    pandas.DataFrame
        One row per ``table`` row (same order), columns :data:`FEATURE_NAMES` then
        :data:`BALL_FEATURE_NAMES` (:func:`ball_features`; a classifier uses the ones it names).

    Raises
    ------
    InvalidParameterError
        On shapes that differ, a 2-D input or an unknown spacing.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InvalidParameterError(f"candidate features need a 3-D scan (slices, rows, columns), got shape {labels.shape}")
    for name, array in (("probabilities", probabilities), ("hu", hu), ("lung", lung)):
        if array is not None and np.shape(array) != labels.shape:
            raise InvalidParameterError(f"{name} shape {np.shape(array)} differs from labels shape {labels.shape}")
    sampling = _voxel_size(spacing, "candidate features need")
    context = _ScanContext(lung, sampling)
    objects = ndimage.find_objects(labels)
    rows = []
    for record in tqdm(table.itertuples(index=False), total=len(table), desc="candidates", unit="cand", disable=not progress):
        label = int(record.nodule_id)
        box = objects[label - 1] if label - 1 < len(objects) else None
        if box is None:
            raise InvalidParameterError(f"nodule_id {label} of the table has no voxel in labels")
        rows.append(_features(labels, label, box, record, np.asarray(probabilities), np.asarray(hu), context, sampling))
    features = pd.DataFrame(rows, columns=list(FEATURE_NAMES), dtype=float)
    centred = table if {"centroid_z", "centroid_y", "centroid_x"} <= set(table.columns) else _with_centres(labels, table)
    return features.join(ball_features(centred, hu=np.asarray(hu), lung=lung, spacing=spacing).set_index(features.index))


def candidate_outcomes(labels: np.ndarray, table: pd.DataFrame, marks: np.ndarray) -> np.ndarray:
    """Truth of each candidate against readers' marks: on a mark, clear of every mark, or partly on one.

    A candidate is ``"positive"`` when its centre (``centroid_z``, ``centroid_y``, ``centroid_x``
    rounded to the nearest voxel, the centre the FROC hit rule uses) lies on a marked voxel,
    ``"negative"`` when none of its voxels is marked, and ``"partial"`` otherwise (it overlaps a mark
    but its centre is off it, e.g. a vessel running into a nodule): neither a hit nor a clean
    false positive, for the caller to ignore or count as it states.

    Parameters
    ----------
    labels : ndarray of int, shape (slices, rows, columns)
        Candidate components, label = ``nodule_id`` of ``table``.
    table : pandas.DataFrame
        ``nodule_id``, ``centroid_z``, ``centroid_y``, ``centroid_x`` (voxels).
    marks : ndarray of bool, shape like ``labels``
        What the readers marked (e.g. the union of their masks).

    Returns
    -------
    ndarray of str, shape (len(table),)
        One of :data:`OUTCOMES` per row.

    Raises
    ------
    InvalidParameterError
        On shapes that differ or a ``nodule_id`` without voxels.

    Examples
    --------
    >>> labels = np.array([[[1, 1, 1, 0, 2, 2, 0, 3]]])
    >>> marks = np.array([[[0, 1, 0, 0, 0, 1, 0, 0]]], bool)
    >>> table = pd.DataFrame({"nodule_id": [1, 2, 3], "centroid_z": [0.0, 0.0, 0.0],
    ...                       "centroid_y": [0.0, 0.0, 0.0], "centroid_x": [1.0, 4.5, 7.0]})
    >>> candidate_outcomes(labels, table, marks).tolist()
    ['positive', 'partial', 'negative']
    """
    labels = np.asarray(labels)
    marks = np.asarray(marks, bool)
    if labels.ndim != 3 or marks.shape != labels.shape:
        raise InvalidParameterError(f"labels and marks must be 3-D arrays of one shape, got {labels.shape} and {marks.shape}")
    if not len(table):
        return np.array([], dtype=object).astype(str)
    ids = table["nodule_id"].to_numpy(int)
    marked = ndimage.sum_labels(marks, labels, ids) if labels.max() else np.zeros(len(ids))
    sizes = np.bincount(labels.ravel(), minlength=int(ids.max()) + 1)[ids]
    if (sizes == 0).any():
        raise InvalidParameterError(f"nodule_id {int(ids[sizes == 0][0])} of the table has no voxel in labels")
    centres = np.rint(table[["centroid_z", "centroid_y", "centroid_x"]].to_numpy(float)).astype(int)
    centres = np.clip(centres, 0, np.array(labels.shape) - 1)
    on_mark = marks[tuple(centres.T)]
    return np.where(on_mark, "positive", np.where(np.asarray(marked) > 0, "partial", "negative"))


class _ScanContext:
    """Per-scan quantities shared by all candidates: distance to the lung boundary, lung extent."""

    def __init__(self, lung: np.ndarray | None, sampling: np.ndarray):
        self.lung = None if lung is None else np.asarray(lung, bool)
        self.sampling = sampling
        self._depth: np.ndarray | None = None
        if self.lung is not None and self.lung.any():
            columns = np.flatnonzero(self.lung.any(axis=(0, 1)))
            self.left, self.right = float(columns[0]), float(columns[-1])
        else:
            self.lung = None

    def depth(self, crop: tuple[slice, ...] | None = None) -> np.ndarray | None:
        """Distance (mm) from each lung voxel to the nearest voxel outside the lungs, in-plane (of ``crop`` when given).

        Filled in float32 slice by slice (no float64 copy of the scan), each slice when first
        needed, inside the lungs' in-plane bounding box and one voxel around it: every voxel
        outside that box is outside the lungs, so the ring holds a nearest one of every lung voxel.
        """
        if self.lung is None:
            return None
        if self._depth is None:
            self._depth = np.zeros(self.lung.shape, np.float32)
            self._filled = np.zeros(len(self.lung), bool)
            rows = np.flatnonzero(self.lung.any(axis=(0, 2)))
            self._plane = (slice(max(int(rows[0]) - 1, 0), int(rows[-1]) + 2), slice(max(int(self.left) - 1, 0), int(self.right) + 2))
        for index in range(len(self.lung))[slice(None) if crop is None else crop[0]]:
            if not self._filled[index]:
                self._depth[index][self._plane] = ndimage.distance_transform_edt(self.lung[index][self._plane], sampling=self.sampling[1:])
                self._filled[index] = True
        return self._depth if crop is None else self._depth[crop]


def _features(labels, label, box, record, probabilities, hu, context: _ScanContext, sampling) -> dict:
    """One candidate's features (see FEATURE_NAMES)."""
    margin = (2, *(int(np.ceil(max(5.0, float(record.diameter_mm)) / s)) for s in sampling[1:]))
    crop = tuple(slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(box, margin, labels.shape))
    inside = labels[crop] == label
    shell = ndimage.binary_dilation(inside, iterations=2) & ~inside & (labels[crop] == 0)
    hu_in, hu_crop = hu[crop][inside], hu[crop]
    p_in = probabilities[crop][inside]
    coords = np.argwhere(inside) * sampling
    covariance = np.cov(coords.T) if len(coords) > 1 else np.zeros((3, 3))
    covariance = covariance + np.diag(sampling**2 / 12.0)  # a voxel's own extent: no zero eigenvalue
    eigen = np.sort(np.linalg.eigvalsh(covariance))[::-1]
    semi_axes = np.sqrt(5.0 * eigen)  # a solid ellipsoid's semi-axes from its second moments
    volume = float(inside.sum() * np.prod(sampling))
    radius = (3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0)
    z_extent = float(record.n_slices) * sampling[0]
    blob, plate, strength = _hessian(hu_crop, inside, sampling, radius)
    row = {
        "log_volume_mm3": np.log(volume),
        "log_diameter_mm": np.log(max(float(record.diameter_mm), 0.1)),
        "z_extent_mm": z_extent,
        "z_extent_ratio": z_extent / max(float(record.diameter_mm), 0.1),
        "single_slice": float(record.n_slices == 1),
        "log_elongation": 0.5 * np.log(eigen[0] / eigen[1]),
        "log_flatness": 0.5 * np.log(eigen[1] / eigen[2]),
        "ellipsoid_fill": volume / (4.0 / 3.0 * np.pi * np.prod(semi_axes)),
        "sphericity": radius / semi_axes[0],
        "hessian_blob": blob,
        "hessian_plate": plate,
        "hessian_strength": strength,
        "hu_mean": float(hu_in.mean()),
        "hu_std": float(hu_in.std()),
        "hu_p10": float(np.percentile(hu_in, 10)),
        "hu_p90": float(np.percentile(hu_in, 90)),
        "hu_contrast": float(hu_in.mean() - (hu_crop[shell].mean() if shell.any() else hu_in.mean())),
        "probability_mean": float(p_in.mean()),
        "probability_std": float(p_in.std()),
        "probability_high": float((p_in >= 0.9).mean()),
        "probability_shell": float(probabilities[crop][shell].mean()) if shell.any() else 0.0,
    }
    row.update(_position(context, crop, inside))
    return row


def _hessian(hu_crop: np.ndarray, inside: np.ndarray, sampling: np.ndarray, radius_mm: float) -> tuple[float, float, float]:
    """Hessian eigenvalue ratios at the candidate's centre, on a 1 mm isotropic grid, at the scale of its radius.

    Returns (blob, plate, strength): with eigenvalues sorted by magnitude |l1| <= |l2| <= |l3|,
    blob = l1 / l3 and plate = l2 / l3 (about 1 and 1 for a bright blob, 0 and 1 for a tube, 0
    and 0 for a plate; negative when the sign differs), strength = |l3| * sigma^2 in HU
    (scale-normalised contrast).
    """
    from skimage.feature import hessian_matrix

    zoom = sampling / _HESSIAN_MM
    image = ndimage.zoom(np.clip(hu_crop, -1000, 400).astype(np.float32), zoom, order=1)
    mask = ndimage.zoom(inside.astype(np.float32), zoom, order=1) >= 0.5
    if not mask.any():
        mask = np.zeros_like(mask)
        mask[tuple(np.array(mask.shape) // 2)] = True
    sigma = max(1.0, radius_mm / np.sqrt(3.0)) / _HESSIAN_MM
    elements = hessian_matrix(image, sigma=sigma, order="rc", use_gaussian_derivatives=False)
    centre = tuple(np.round(np.argwhere(mask).mean(axis=0)).astype(int))
    if not mask[centre]:  # a curved candidate whose centroid falls outside it: its nearest voxel
        points = np.argwhere(mask)
        centre = tuple(points[np.argmin(((points - np.array(centre)) ** 2).sum(axis=1))])
    h00, h01, h02, h11, h12, h22 = (float(element[centre]) for element in elements)  # skimage's upper-triangle order
    eig = np.linalg.eigvalsh(np.array([[h00, h01, h02], [h01, h11, h12], [h02, h12, h22]]))
    eig = eig[np.argsort(np.abs(eig))]
    top = eig[2] if abs(eig[2]) > 1e-6 else 1e-6
    return float(eig[0] / top), float(eig[1] / top), float(abs(eig[2]) * sigma**2)


def _position(context: _ScanContext, crop, inside) -> dict:
    """Depth inside the lungs, pleural contact and medial position of a candidate."""
    if context.lung is None:
        return {"lung_depth_mm": 0.0, "pleura_contact": 0.0, "medial_position": 0.0}
    depth = context.depth(crop)[inside]
    column = np.argwhere(inside)[:, 2].mean() + crop[2].start
    middle = 0.5 * (context.left + context.right)
    half = max(0.5 * (context.right - context.left), 1.0)
    return {
        "lung_depth_mm": float(depth.max()),
        "pleura_contact": float((depth <= _CONTACT_MM).mean()),
        "medial_position": float(1.0 - abs(column - middle) / half),  # 1 at the midline, 0 at the lateral wall
    }


#: Ground-glass HU band of ``ball_ggo_fraction``; HU above which a shell voxel is dense.
_GGO_HU = (-800.0, -300.0)
_DENSE_HU = -500.0
#: The shell of :func:`ball_features` lies between these multiples of the candidate's radius.
_SHELL = (1.25, 2.0)
#: Smallest ball radius (mm): about a voxel's in-plane size for a 3 mm nodule.
_MIN_BALL_MM = 1.5


def ball_features(table: pd.DataFrame, *, hu: np.ndarray, lung: np.ndarray | None, spacing: Sequence[float]) -> pd.DataFrame:
    """:data:`BALL_FEATURE_NAMES` of each candidate: a ball of its own radius at its centre, and a lung shell around it.

    The ball's radius is the blob filter's (``blob_radius_mm``) for a blob candidate and the
    equivalent sphere's of ``volume_mm3`` otherwise (at least 1.5 mm); the shell lies between 1.25
    and 2 radii, its lung voxels only (all of it without a lung mask or without lung in it).

    Parameters
    ----------
    table : pandas.DataFrame
        ``centroid_z``, ``centroid_y``, ``centroid_x`` (voxels), ``volume_mm3``; optional
        ``blob_radius_mm`` (mm; missing or not positive: not a blob).
    hu : ndarray of float, shape (slices, rows, columns)
        The scan in Hounsfield units.
    lung : ndarray of bool or None
        The lung mask (``None``: the whole image is lung).
    spacing : sequence of float
        Voxel size in mm (slice, row, column), all known.

    Returns
    -------
    pandas.DataFrame
        One row per ``table`` row (same order and index).

    Raises
    ------
    InvalidParameterError
        On a scan that is not 3-D, a lung mask of another shape or an unknown spacing.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3 or (lung is not None and np.shape(lung) != hu.shape):
        raise InvalidParameterError(f"ball features need a 3-D scan and a lung mask of its shape, got {hu.shape} and {np.shape(lung)}")
    sampling = _voxel_size(spacing, "ball features need")
    lung = np.ones(hu.shape, bool) if lung is None else np.asarray(lung, bool)
    centres = table[["centroid_z", "centroid_y", "centroid_x"]].to_numpy(float)
    radii = _ball_radii(table)
    rows = [_ball(hu, lung, sampling, centre, radius) for centre, radius in zip(centres, radii)]
    return pd.DataFrame(rows, columns=list(BALL_FEATURE_NAMES), index=table.index, dtype=float)


def _ball_radii(table: pd.DataFrame) -> np.ndarray:
    """Each candidate's ball radius (mm): the blob filter's, else the equivalent sphere's."""
    sphere = np.cbrt(3.0 * table["volume_mm3"].to_numpy(float) / (4.0 * np.pi))
    blob = pd.to_numeric(table["blob_radius_mm"], errors="coerce").to_numpy(float) if "blob_radius_mm" in table else np.full(len(table), np.nan)
    return np.maximum(np.where(np.isfinite(blob) & (blob > 0), blob, sphere), _MIN_BALL_MM)


def _ball(hu, lung, sampling, centre, radius) -> dict:
    """One candidate's ball features (see :func:`ball_features`)."""
    outer = _SHELL[1] * radius
    voxel = np.clip(np.rint(centre).astype(int), 0, np.array(hu.shape) - 1)
    half = np.ceil(outer / sampling).astype(int) + 1
    box = tuple(slice(max(c - h, 0), min(c + h + 1, n)) for c, h, n in zip(voxel, half, hu.shape))
    distance = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(np.ogrid[box], centre, sampling)))
    ball = distance <= radius
    if not ball.any():
        ball = distance <= distance.min()
    shell = (distance > _SHELL[0] * radius) & (distance <= outer)
    shell_lung = shell & lung[box]
    inside, around = hu[box][ball], hu[box][shell_lung if shell_lung.any() else shell]
    return {
        "ball_hu_max": float(inside.max()),
        "ball_ggo_fraction": float(((inside >= _GGO_HU[0]) & (inside <= _GGO_HU[1])).mean()),
        "shell_dense_fraction": float((around > _DENSE_HU).mean()) if around.size else 0.0,
        "shell_lung_fraction": float(shell_lung.sum() / max(int(shell.sum()), 1)),
    }


def _with_centres(labels: np.ndarray, table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with each component's centre of mass (voxels) as ``centroid_z``, ``centroid_y``, ``centroid_x``."""
    ids = table["nodule_id"].to_numpy(int)
    centres = np.array(ndimage.center_of_mass(np.ones(labels.shape), labels, ids), float).reshape(-1, 3)
    return table.assign(centroid_z=centres[:, 0], centroid_y=centres[:, 1], centroid_x=centres[:, 2])


# --------------------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------------------


class CandidateClassifier:
    """Logistic regression on standardized candidate features, evaluated with numpy.

    Parameters
    ----------
    feature_names : sequence of str
        The features, in the order of ``coefficients``.
    mean, scale : sequence of float
        Standardization: ``(x - mean) / scale``.
    coefficients : sequence of float
        One weight per standardized feature.
    intercept : float
    threshold : float
        The default operating point: candidates scoring below it are not listed (``--min-score``),
        in [0, 1].
    metadata : dict, optional
        How it was trained and measured (training data, the false positives per scan the
        threshold targets, held-out numbers).

    Examples
    --------
    >>> model = CandidateClassifier(["a", "b"], mean=[0, 0], scale=[1, 2], coefficients=[1.0, -1.0], intercept=0.0)
    >>> model.predict_proba(pd.DataFrame({"a": [0.0, 2.0], "b": [0.0, 4.0]})).round(3).tolist()
    [0.5, 0.5]
    """

    def __init__(
        self,
        feature_names: Sequence[str],
        *,
        mean: Sequence[float],
        scale: Sequence[float],
        coefficients: Sequence[float],
        intercept: float,
        threshold: float = 0.0,
        metadata: dict | None = None,
    ) -> None:
        self.feature_names = [str(n) for n in feature_names]
        self.mean = np.asarray(mean, float)
        self.scale = np.asarray(scale, float)
        self.coefficients = np.asarray(coefficients, float)
        self.intercept = float(intercept)
        self.threshold = float(threshold)
        self.metadata = dict(metadata or {})
        count = len(self.feature_names)
        if not count or any(a.shape != (count,) for a in (self.mean, self.scale, self.coefficients)):
            raise InvalidParameterError(f"a classifier needs one mean, scale and coefficient per feature ({count} features)")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.coefficients).all() and (self.scale > 0).all()):
            raise InvalidParameterError("classifier means and coefficients must be finite and scales positive")
        _check_threshold(threshold)

    def __repr__(self) -> str:
        return f"CandidateClassifier({len(self.feature_names)} features, threshold={self.threshold:.3g})"

    @classmethod
    def fit(
        cls,
        features: pd.DataFrame,
        labels: np.ndarray,
        *,
        feature_names: Sequence[str] = FEATURE_NAMES,
        regularization: float = 1.0,
        seed: int = 0,
        metadata: dict | None = None,
    ) -> CandidateClassifier:
        """Fit a logistic regression (scikit-learn, L2, ``C = regularization``) on standardized features.

        Parameters
        ----------
        features : pandas.DataFrame
            One row per candidate, at least ``feature_names``.
        labels : ndarray of bool
            True for candidates on a reference nodule.
        feature_names : sequence of str
        regularization : float
            Inverse L2 strength (> 0).
        seed : int
        metadata : dict, optional

        Returns
        -------
        CandidateClassifier
            With ``threshold`` 0 (every candidate listed); set it from validation data.
        """
        from sklearn.linear_model import LogisticRegression

        x, y = _training_rows(features, labels, feature_names)
        if float(regularization) <= 0:
            raise InvalidParameterError(f"regularization must be > 0, got {regularization!r}")
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 1e-9, scale, 1.0)
        model = LogisticRegression(C=float(regularization), max_iter=5000, random_state=seed)
        model.fit((x - mean) / scale, y)
        return cls(feature_names, mean=mean, scale=scale, coefficients=model.coef_[0], intercept=float(model.intercept_[0]), metadata=metadata)

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """Calibrated probability that each candidate is a nodule, shape (n,)."""
        x = _matrix(features, self.feature_names)
        return _sigmoid(((x - self.mean) / self.scale) @ self.coefficients + self.intercept)

    def to_config(self) -> dict:
        """JSON-serialisable form (what ``classifier.json`` holds)."""
        return {
            "kind": "logistic_regression",
            "feature_names": self.feature_names,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coefficients": self.coefficients.tolist(),
            "intercept": self.intercept,
            "threshold": self.threshold,
            "metadata": self.metadata,
        }

    @classmethod
    def from_config(cls, config: dict) -> CandidateClassifier:
        """Inverse of :meth:`to_config`."""
        return _from_config(cls, config, "logistic_regression", "candidate classifier", ("mean", "scale", "coefficients", "intercept", "threshold", "metadata"))

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``classifier.json`` into ``folder`` (atomically)."""
        return _save_config(self.to_config(), folder)


#: Settings of :meth:`BoostedClassifier.fit` (scikit-learn's names), their defaults.
BOOSTING_DEFAULTS = {"max_iter": 100, "learning_rate": 0.1, "max_leaf_nodes": 15, "min_samples_leaf": 20, "l2_regularization": 0.0}

#: Arrays of one tree of a :class:`BoostedClassifier`, one entry per node (node 0 is the root).
TREE_KEYS = ("feature", "threshold", "missing_left", "left", "right", "value")


class BoostedClassifier:
    """Gradient-boosted trees on candidate features (scikit-learn to fit; numpy to predict).

    Each tree is stored as arrays, one entry per node (:data:`TREE_KEYS`): the feature a node splits
    on and its threshold (a row goes left when its value is ``<= threshold``), where a missing (NaN)
    value goes (``missing_left``), the left and right child (``-1`` at a leaf) and the leaf's value
    (log-odds). The score is ``sigmoid(a * raw + b)`` with ``raw = baseline + sum of the leaf values
    of the rows' leaves`` and ``(a, b) = calibration`` (a Platt step fitted on out-of-fold scores;
    ``(1, 0)`` without one): the same probabilities as
    :meth:`sklearn.ensemble.HistGradientBoostingClassifier.predict_proba` without calibration, and no
    pickle (:meth:`to_config` is what ``classifier.json`` holds, kind ``gradient_boosting``).

    Parameters
    ----------
    feature_names : sequence of str
        The features, in the order the trees' ``feature`` indices refer to.
    trees : sequence of dict
        One dict of :data:`TREE_KEYS` arrays per tree, in boosting order.
    baseline : float
        The log-odds every row starts from.
    calibration : sequence of float, optional
        ``(a, b)`` of the Platt step; ``(1, 0)`` (none) by default.
    threshold : float
        The default operating point (``--min-score``), in [0, 1].
    metadata : dict, optional
        How it was trained and measured.

    Examples
    --------
    >>> stump = {"feature": [0, 0, 0], "threshold": [1.0, 0.0, 0.0], "missing_left": [True, False, False],
    ...          "left": [1, -1, -1], "right": [2, -1, -1], "value": [0.0, -2.0, 2.0]}
    >>> model = BoostedClassifier(["a"], trees=[stump], baseline=0.0)
    >>> model.predict_proba(pd.DataFrame({"a": [0.5, 3.0]})).round(3).tolist()
    [0.119, 0.881]
    """

    def __init__(
        self,
        feature_names: Sequence[str],
        *,
        trees: Sequence[dict],
        baseline: float,
        calibration: Sequence[float] = (1.0, 0.0),
        threshold: float = 0.0,
        metadata: dict | None = None,
    ) -> None:
        self.feature_names = [str(n) for n in feature_names]
        self.trees = [_check_tree(tree, len(self.feature_names)) for tree in trees]
        self.baseline = float(baseline)
        self.calibration = tuple(float(c) for c in calibration)
        self.threshold = float(threshold)
        self.metadata = dict(metadata or {})
        if not self.feature_names or not self.trees:
            raise InvalidParameterError("a boosted classifier needs at least one feature and one tree")
        if len(self.calibration) != 2 or not np.isfinite([self.baseline, *self.calibration]).all():
            raise InvalidParameterError(f"a boosted classifier needs a finite baseline and calibration (a, b), got {baseline!r}, {calibration!r}")
        _check_threshold(threshold)

    def __repr__(self) -> str:
        return f"BoostedClassifier({len(self.feature_names)} features, {len(self.trees)} trees, threshold={self.threshold:.3g})"

    @classmethod
    def fit(cls, features: pd.DataFrame, labels: np.ndarray, *, feature_names: Sequence[str] = FEATURE_NAMES, seed: int = 0, metadata: dict | None = None, **settings) -> BoostedClassifier:
        """Fit scikit-learn's ``HistGradientBoostingClassifier`` (no early stopping) and export its trees.

        Parameters
        ----------
        features, labels : pandas.DataFrame, ndarray of bool
            The candidates (at least ``feature_names``) and whether each lies on a reference nodule.
        feature_names : sequence of str
            The features the trees split on, in this order.
        seed : int
            scikit-learn's ``random_state``.
        metadata : dict, optional
            How it was trained.
        **settings
            Any of :data:`BOOSTING_DEFAULTS` (``max_iter``, ``learning_rate``, ``max_leaf_nodes``,
            ``min_samples_leaf``, ``l2_regularization``).

        Returns
        -------
        BoostedClassifier
            Without calibration and with ``threshold`` 0; set both from validation data
            (:meth:`calibrate`).
        """
        unknown = set(settings) - set(BOOSTING_DEFAULTS)
        if unknown:
            raise InvalidParameterError(f"unknown boosting settings {sorted(unknown)}; expected some of {list(BOOSTING_DEFAULTS)}")
        x, y = _training_rows(features, labels, feature_names)
        return cls.from_sklearn(_fit_boosting(x, y, seed=seed, **{**BOOSTING_DEFAULTS, **settings}), feature_names, metadata=metadata)

    @classmethod
    def from_sklearn(cls, model, feature_names: Sequence[str], *, metadata: dict | None = None) -> BoostedClassifier:
        """The trees of a fitted binary ``HistGradientBoostingClassifier`` (numerical features only)."""
        if len(getattr(model, "classes_", ())) != 2 or any(len(step) != 1 for step in model._predictors):
            raise InvalidParameterError("only a fitted binary HistGradientBoostingClassifier can be exported")
        trees = []
        for (predictor,) in model._predictors:
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                raise InvalidParameterError("categorical splits cannot be exported")
            leaf = nodes["is_leaf"].astype(bool)
            trees.append({
                "feature": np.where(leaf, 0, nodes["feature_idx"]).astype(int).tolist(),
                "threshold": np.where(leaf, 0.0, nodes["num_threshold"]).tolist(),
                "missing_left": nodes["missing_go_to_left"].astype(bool).tolist(),
                "left": np.where(leaf, -1, nodes["left"].astype(int)).tolist(),
                "right": np.where(leaf, -1, nodes["right"].astype(int)).tolist(),
                "value": np.where(leaf, nodes["value"], 0.0).tolist(),
            })
        return cls(feature_names, trees=trees, baseline=float(np.ravel(model._baseline_prediction)[0]), metadata=metadata)

    def raw_score(self, features: pd.DataFrame) -> np.ndarray:
        """The trees' log-odds before calibration, shape (n,)."""
        return self.raw_score_matrix(_matrix(features, self.feature_names))

    def raw_score_matrix(self, x: np.ndarray) -> np.ndarray:
        """:meth:`raw_score` of a matrix (rows x ``feature_names``; NaN goes where each split sends missing values)."""
        x = np.asarray(x, float)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise InvalidParameterError(f"need a matrix of {len(self.feature_names)} feature columns, got shape {x.shape}")
        raw = np.full(len(x), self.baseline)
        for tree in self._arrays:
            raw += tree["value"][_leaves(tree, x)]
        return raw

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        """Calibrated probability that each candidate is a nodule, shape (n,)."""
        a, b = self.calibration
        return _sigmoid(a * self.raw_score(features) + b)

    def calibrate(self, raw: np.ndarray, labels: np.ndarray) -> BoostedClassifier:
        """Set the Platt step from out-of-fold raw scores and their labels (:func:`fit_platt`; in place, returns ``self``)."""
        self.calibration = fit_platt(raw, labels)
        return self

    @property
    def _arrays(self) -> list[dict]:
        if getattr(self, "_cache", None) is None:
            self._cache = [{k: np.asarray(tree[k], bool if k == "missing_left" else float if k in ("threshold", "value") else int) for k in TREE_KEYS} for tree in self.trees]
        return self._cache

    def to_config(self) -> dict:
        """JSON-serialisable form (what ``classifier.json`` holds)."""
        return {
            "kind": "gradient_boosting",
            "feature_names": self.feature_names,
            "baseline": self.baseline,
            "calibration": list(self.calibration),
            "trees": self.trees,
            "threshold": self.threshold,
            "metadata": self.metadata,
        }

    @classmethod
    def from_config(cls, config: dict) -> BoostedClassifier:
        """Inverse of :meth:`to_config`."""
        return _from_config(cls, config, "gradient_boosting", "boosted classifier", ("trees", "baseline", "calibration", "threshold", "metadata"))

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``classifier.json`` into ``folder`` (atomically)."""
        return _save_config(self.to_config(), folder)


def fit_platt(raw: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Platt scaling: ``(a, b)`` of the logistic regression ``sigmoid(a * raw + b)`` of labels on log-odds (unpenalized).

    Fit it on scores the model did not train on (out-of-fold), or it learns the model's overconfidence.

    Examples
    --------
    >>> a, b = fit_platt(np.array([-2.0, -1.0, 1.0, 2.0, 0.5, -0.5]), np.array([0, 0, 1, 1, 0, 1]))
    >>> a > 0
    True
    """
    from sklearn.linear_model import LogisticRegression

    raw = np.asarray(raw, float).reshape(-1, 1)
    y = np.asarray(labels, bool)
    if len(y) != len(raw) or y.all() or not y.any():
        raise InvalidParameterError("calibration needs one label per score and both classes")
    model = LogisticRegression(C=1e6, max_iter=1000).fit(raw, y)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def _fit_boosting(x: np.ndarray, y: np.ndarray, *, seed: int, **settings):
    """A fitted ``HistGradientBoostingClassifier`` (no early stopping, so every setting means what it says)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(early_stopping=False, random_state=seed, **settings).fit(x, y)


def _check_tree(tree: dict, n_features: int) -> dict:
    """One tree's arrays as lists, checked: equal lengths, children inside the tree and after their parent, known features."""
    if not isinstance(tree, dict) or set(tree) != set(TREE_KEYS):
        raise InvalidParameterError(f"a tree needs exactly the arrays {list(TREE_KEYS)}")
    arrays = {k: np.asarray(tree[k]) for k in TREE_KEYS}
    size = len(arrays["left"])
    if not size or any(a.shape != (size,) for a in arrays.values()):
        raise InvalidParameterError("a tree's arrays must be non-empty and of one length")
    left, right = arrays["left"].astype(int), arrays["right"].astype(int)
    inner = left >= 0
    nodes = np.arange(size)
    if (inner != (right >= 0)).any() or (left[inner] <= nodes[inner]).any() or (right[inner] <= nodes[inner]).any() or max(left.max(), right.max()) >= size:
        raise InvalidParameterError("a tree's children must be later nodes of the same tree (-1 at both sides of a leaf)")
    feature = arrays["feature"].astype(int)
    if (feature < 0).any() or (feature >= n_features).any() or not np.isfinite(arrays["value"].astype(float)).all() or np.isnan(arrays["threshold"].astype(float)).any():
        raise InvalidParameterError("a tree's features must index its classifier's features and its values be finite")
    return {k: arrays[k].tolist() for k in TREE_KEYS}


def _leaves(tree: dict, x: np.ndarray) -> np.ndarray:
    """The leaf each row of ``x`` falls into, vectorised over rows (children always follow their parent)."""
    node = np.zeros(len(x), int)
    rows = np.arange(len(x))
    while True:
        inner = tree["left"][node] >= 0
        if not inner.any():
            return node
        value = x[rows, tree["feature"][node]]
        go_left = np.where(np.isnan(value), tree["missing_left"][node], value <= tree["threshold"][node])
        node = np.where(inner, np.where(go_left, tree["left"][node], tree["right"][node]), node)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))


#: Candidate sources of a :class:`PerSourceClassifier`, the keys of its classifiers.
CANDIDATE_SOURCES = ("segmenter", "blob")

#: Version of the per-source ``classifier.json`` format this nodulekit reads and writes.
PER_SOURCE_VERSION = 1
#: The version of a per-source classifier that fuses a patch scorer (older readers refuse it rather than ignore the patch scorer).
PATCH_FUSION_VERSION = 2


class PerSourceClassifier:
    """One classifier per candidate source (:class:`CandidateClassifier` or :class:`BoostedClassifier`): each candidate scored by its own source's.

    The segmentation model's probability features mean nothing on a candidate only the blob filter
    found, so one logistic regression per source ranks the union of both far better than one for
    all (``experiments/detection_candidates.py``); boosted trees split on the source themselves, and
    the shipped stage holds the same boosted model for both. Scores of both are probabilities and
    are ranked together.

    Parameters
    ----------
    classifiers : dict
        ``{"segmenter": ..., "blob": ...}`` (:data:`CANDIDATE_SOURCES`), each a
        :class:`CandidateClassifier` or a :class:`BoostedClassifier`.
    threshold : float
        The default operating point of the union (``--min-score``), in [0, 1].
    metadata : dict, optional
        How it was trained and measured.
    blob_options : dict, optional
        Keyword arguments of :func:`blob_candidates` for the blob candidates it was trained on and
        ranks (:func:`nodulekit.inference.rank_union`); with a ``"faint"`` entry,
        :func:`faint_blob_candidates` (that entry its second pass). Empty (the default): the
        defaults of :func:`blob_candidates`. Saved in ``classifier.json`` only when not empty.
    patch_fusion : dict, optional
        ``{"weight": w, "calibration": [a, b]}``: the stage also fuses a patch scorer
        (:class:`nodulekit.patch_scorer.PatchScorer`, :data:`~nodulekit.patch_scorer.PATCH_SCORER_FILE`
        beside ``classifier.json``): a candidate's probability is ``sigmoid(a * ((1 - w) * trees + w * patch) + b)``
        with ``trees`` its member's log-odds before calibration (boosted members only) and ``patch`` the
        scorer's logit, passed to :meth:`predict_proba` as ``patch_logits``. Saved only when given.
    patch_scorer : object, optional
        The patch scorer itself (set by :func:`nodulekit.inference.load_segmenter`, which reads it);
        :meth:`save` writes it beside ``classifier.json`` (its ``save(folder)``).

    Examples
    --------
    >>> low = CandidateClassifier(["a"], mean=[0], scale=[1], coefficients=[1.0], intercept=-5.0)
    >>> high = CandidateClassifier(["a"], mean=[0], scale=[1], coefficients=[1.0], intercept=5.0)
    >>> model = PerSourceClassifier({"segmenter": low, "blob": high}, threshold=0.5)
    >>> model.predict_proba(pd.DataFrame({"a": [0.0, 0.0], "source": ["segmenter", "blob"]})).round(3).tolist()
    [0.007, 0.993]
    """

    def __init__(
        self,
        classifiers: dict,
        *,
        threshold: float = 0.0,
        metadata: dict | None = None,
        blob_options: dict | None = None,
        patch_fusion: dict | None = None,
        patch_scorer: object | None = None,
    ) -> None:
        if not isinstance(classifiers, dict) or set(classifiers) != set(CANDIDATE_SOURCES):
            raise InvalidParameterError(f"a per-source classifier needs exactly the sources {list(CANDIDATE_SOURCES)}, got {sorted(classifiers) if isinstance(classifiers, dict) else classifiers!r}")
        if not all(isinstance(c, (CandidateClassifier, BoostedClassifier)) for c in classifiers.values()):
            raise InvalidParameterError("each source of a per-source classifier needs a CandidateClassifier or a BoostedClassifier")
        _check_threshold(threshold)
        self.classifiers = {source: classifiers[source] for source in CANDIDATE_SOURCES}
        self.threshold = float(threshold)
        self.metadata = dict(metadata or {})
        self.blob_options = dict(blob_options or {})
        rest = {k: v for k, v in self.blob_options.items() if k != "faint"}
        _blob_settings({**rest, **dict(self.blob_options.get("faint") or {})}, "a per-source classifier's blob_options")
        self.patch_fusion = _check_patch_fusion(patch_fusion, self.classifiers)
        self.patch_scorer = patch_scorer

    def __repr__(self) -> str:
        return f"PerSourceClassifier({', '.join(CANDIDATE_SOURCES)}, threshold={self.threshold:.3g})"

    def predict_proba(self, features: pd.DataFrame, patch_logits: np.ndarray | None = None) -> np.ndarray:
        """Probability that each candidate is a nodule, by the classifier of its ``source`` column, shape (n,).

        Rows without a ``source`` column are segmenter candidates. With :attr:`patch_fusion`,
        ``patch_logits`` (the patch scorer's logit of each row) are needed and fused (class docstring).
        """
        if self.patch_fusion is None:
            return self._by_source(features, "predict_proba")
        if patch_logits is None or np.shape(patch_logits) != (len(features),):
            raise InvalidParameterError(f"this second stage fuses a patch scorer: need one patch logit per candidate ({len(features)}), got {None if patch_logits is None else np.shape(patch_logits)}")
        weight, (a, b) = self.patch_fusion["weight"], self.patch_fusion["calibration"]
        fused = (1.0 - weight) * self._by_source(features, "raw_score") + weight * np.asarray(patch_logits, float)
        return _sigmoid(a * fused + b)

    def _by_source(self, features: pd.DataFrame, method: str) -> np.ndarray:
        """``method`` of each row's member (its ``source``), shape (n,)."""
        sources = features["source"].to_numpy(str) if "source" in features else np.full(len(features), CANDIDATE_SOURCES[0])
        unknown = sorted(set(sources) - set(CANDIDATE_SOURCES))
        if unknown:
            raise InvalidParameterError(f"unknown candidate source(s) {unknown}; expected {list(CANDIDATE_SOURCES)}")
        scores = np.zeros(len(features))
        for source, classifier in self.classifiers.items():
            mine = sources == source
            if mine.any():
                scores[mine] = getattr(classifier, method)(features[mine])
        return scores

    def patch_logits(self, table: pd.DataFrame, *, hu: np.ndarray, probabilities: np.ndarray, spacing: Sequence[float]) -> np.ndarray | None:
        """The patch scorer's logits of a nodule table's candidates, or None when the stage fuses none.

        Raises
        ------
        MissingDataError
            When the stage fuses a patch scorer that was not loaded (:attr:`patch_scorer` is None).
        """
        if self.patch_fusion is None:
            return None
        if self.patch_scorer is None:
            raise MissingDataError("this second stage fuses a patch scorer, but none was loaded with it (load the model folder with nodulekit.load_segmenter)")
        return self.patch_scorer.logits(table, hu=hu, probabilities=probabilities, spacing=spacing)

    def to_config(self) -> dict:
        """JSON-serialisable form (what ``classifier.json`` holds; module docstring)."""
        config = {
            "kind": "per_source",
            "version": PER_SOURCE_VERSION if self.patch_fusion is None else PATCH_FUSION_VERSION,
            "threshold": self.threshold,
            "metadata": self.metadata,
            "classifiers": {source: classifier.to_config() for source, classifier in self.classifiers.items()},
        }
        if self.blob_options:
            config["blob_options"] = self.blob_options
        if self.patch_fusion is not None:
            config["patch_fusion"] = self.patch_fusion
        return config

    def blob_candidates(self, hu: np.ndarray, lung: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, pd.DataFrame]:
        """The blob candidates of a scan with :attr:`blob_options` (:func:`blob_candidates` or :func:`faint_blob_candidates`)."""
        options = dict(self.blob_options)
        return faint_blob_candidates(hu, lung, spacing, **options) if "faint" in options else blob_candidates(hu, lung, spacing, **options)

    @classmethod
    def from_config(cls, config: dict) -> PerSourceClassifier:
        """Inverse of :meth:`to_config`."""
        if not isinstance(config, dict) or config.get("kind") != "per_source":
            raise InvalidParameterError("not a nodulekit per-source classifier (kind must be 'per_source')")
        if config.get("version") not in (PER_SOURCE_VERSION, PATCH_FUSION_VERSION):
            raise InvalidParameterError(f"per-source classifier version {config.get('version')!r}; this nodulekit reads versions {PER_SOURCE_VERSION} and {PATCH_FUSION_VERSION}")
        entries = config["classifiers"]
        if not isinstance(entries, dict) or set(entries) != set(CANDIDATE_SOURCES):
            raise InvalidParameterError(f"'classifiers' must hold exactly {list(CANDIDATE_SOURCES)}")
        classifiers = {source: member_from_config(entries[source]) for source in CANDIDATE_SOURCES}
        return cls(classifiers, threshold=config["threshold"], metadata=config.get("metadata"), blob_options=config.get("blob_options"), patch_fusion=config.get("patch_fusion"))

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``classifier.json`` into ``folder`` (atomically), and the patch scorer beside it when the stage has one."""
        if self.patch_scorer is not None:
            self.patch_scorer.save(folder)
        return _save_config(self.to_config(), folder)


def _check_patch_fusion(fusion: dict | None, classifiers: dict) -> dict | None:
    """A per-source classifier's ``patch_fusion`` entry, checked: a weight in [0, 1], a Platt step (a, b), boosted members."""
    if fusion is None:
        return None
    try:
        weight, (a, b) = float(fusion["weight"]), (float(v) for v in fusion["calibration"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidParameterError(f'patch_fusion must be {{"weight": w, "calibration": [a, b]}}, got {fusion!r}') from exc
    if not 0.0 <= weight <= 1.0 or not np.isfinite([a, b]).all():
        raise InvalidParameterError(f"patch_fusion needs a weight in [0, 1] and a finite calibration, got {fusion!r}")
    if not all(isinstance(c, BoostedClassifier) for c in classifiers.values()):
        raise InvalidParameterError("patch_fusion needs boosted members (it fuses their log-odds)")
    return {**{k: v for k, v in fusion.items() if k not in ("weight", "calibration")}, "weight": weight, "calibration": [a, b]}


#: The kinds of one classifier (a :class:`PerSourceClassifier`'s member, or a whole ``classifier.json``).
MEMBER_KINDS = {"logistic_regression": CandidateClassifier, "gradient_boosting": BoostedClassifier}


def member_from_config(config: dict) -> CandidateClassifier | BoostedClassifier:
    """One classifier from its config, by its ``kind`` (:data:`MEMBER_KINDS`)."""
    kind = config.get("kind", "logistic_regression") if isinstance(config, dict) else None
    if kind not in MEMBER_KINDS:
        raise InvalidParameterError(f"unknown classifier kind {kind!r}; expected one of {list(MEMBER_KINDS)}")
    return MEMBER_KINDS[kind].from_config(config)


def _save_config(config: dict, folder: str | os.PathLike) -> Path:
    """Write a classifier's config as ``folder/classifier.json`` (atomically); the path.

    Logistic regressions are indented; a config with trees is written compactly (one line: its
    thousands of node arrays would take a line per number).
    """
    path = Path(folder) / CLASSIFIER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    kinds = {config.get("kind")} | {member.get("kind") for member in config.get("classifiers", {}).values()}
    if "gradient_boosting" not in kinds:
        write_json(path, config)
        return path
    with atomic_write(path) as handle:
        json.dump(config, handle, separators=(",", ":"), sort_keys=True)
    return path


def load_classifier(folder: str | os.PathLike) -> CandidateClassifier | BoostedClassifier | PerSourceClassifier:
    """Read the second stage of a segmenter folder (``classifier.json``, either form of the module docstring).

    Returns
    -------
    CandidateClassifier, BoostedClassifier or PerSourceClassifier
        One classifier (a file of kind ``logistic_regression`` or ``gradient_boosting``) or one per
        source (``per_source``, each member of either kind).

    Raises
    ------
    MissingDataError
        When the folder has no ``classifier.json`` (a segmenter without a second stage).
    ModelFileError
        When the file is not a valid classifier of either form (the message names the file).
    """
    path = Path(folder) / CLASSIFIER_FILE
    if not path.is_file():
        raise MissingDataError(f"no second-stage classifier ({CLASSIFIER_FILE}) in this model folder", path=Path(folder))
    try:
        config = json.loads(path.read_text())
        if isinstance(config, dict) and config.get("kind") == "per_source":
            return PerSourceClassifier.from_config(config)
        return member_from_config(config)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelFileError(f"not a valid candidate classifier ({type(exc).__name__}: {exc})", path=path) from exc


def rank_candidates(
    labels: np.ndarray,
    table: pd.DataFrame,
    scores: np.ndarray,
    *,
    min_score: float | None = None,
    max_nodules: int | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Sort candidates by score, keep those at or above ``min_score`` (at most ``max_nodules``), renumber.

    Parameters
    ----------
    labels : ndarray of int
        Component labels = ``table["nodule_id"]``.
    table : pandas.DataFrame
        The nodule table.
    scores : ndarray, shape (len(table),)
        One score per table row.
    min_score : float, optional
        Drop candidates scoring lower, in [0, 1].
    max_nodules : int, optional
        Keep at most this many (>= 0).

    Returns
    -------
    labels : ndarray of int32
        Relabelled: 1 = the highest score; dropped candidates become 0.
    table : pandas.DataFrame
        Sorted by falling score, with a ``score`` column and ``nodule_id`` renumbered.

    Examples
    --------
    >>> labels = np.array([[0, 1, 2, 3]])
    >>> table = pd.DataFrame({"nodule_id": [1, 2, 3]})
    >>> new, ranked = rank_candidates(labels, table, np.array([0.2, 0.9, 0.5]), min_score=0.3)
    >>> new.tolist(), ranked["score"].tolist()
    ([[0, 0, 1, 2]], [0.9, 0.5])
    """
    scores = np.asarray(scores, float)
    if scores.shape != (len(table),):
        raise InvalidParameterError(f"need one score per candidate ({len(table)}), got shape {scores.shape}")
    if min_score is not None and not 0.0 <= float(min_score) <= 1.0:
        raise InvalidParameterError(f"min_score must be in [0, 1], got {min_score!r}")
    if max_nodules is not None and int(max_nodules) < 0:
        raise InvalidParameterError(f"max_nodules must be >= 0, got {max_nodules!r}")
    ranked = table.assign(score=scores).sort_values("score", ascending=False, kind="stable")
    if min_score is not None:
        ranked = ranked[ranked["score"] >= float(min_score)]
    if max_nodules is not None:
        ranked = ranked.head(int(max_nodules))
    lookup = np.zeros(int(max(np.max(labels, initial=0), table["nodule_id"].max() if len(table) else 0)) + 1, np.int32)
    lookup[ranked["nodule_id"].to_numpy(int)] = np.arange(1, len(ranked) + 1, dtype=np.int32)
    ranked = ranked.assign(nodule_id=np.arange(1, len(ranked) + 1)).reset_index(drop=True)
    labels = np.asarray(labels)
    relabelled = np.zeros(labels.shape, np.int32)  # written on the candidates' voxels only (a whole scan is mostly 0)
    box = bounding_box(labels)
    if box is not None:
        inside = labels[box]
        labelled = inside != 0  # a gather over every voxel of the box took 2.5 s on 600 slices; over the labelled ones, 0.1 s
        relabelled[box][labelled] = lookup[inside[labelled]]
    return relabelled, ranked


def _check_threshold(threshold: float) -> None:
    """An operating threshold is a probability."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise InvalidParameterError(f"the operating threshold must be in [0, 1], got {threshold!r}")


def _training_rows(features: pd.DataFrame, labels: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The feature matrix and boolean labels to fit on, checked: one label per row and both classes."""
    x = _matrix(features, names)
    y = np.asarray(labels, bool)
    if len(y) != len(x) or y.all() or not y.any():
        raise InvalidParameterError(f"fitting needs one label per candidate and both classes, got {len(y)} labels for {len(x)} candidates, {int(y.sum())} positive")
    return x, y


def _from_config(cls, config: dict, kind: str, noun: str, keys: Sequence[str]):
    """``cls(feature_names, **keys)`` of a config of ``kind`` whose features nodulekit computes."""
    if not isinstance(config, dict) or config.get("kind") != kind:
        raise InvalidParameterError(f"not a nodulekit {noun} (kind must be '{kind}')")
    unknown = set(config["feature_names"]) - set(FEATURE_NAMES) - set(BALL_FEATURE_NAMES) - set(SOURCE_FEATURE_NAMES)
    if unknown:
        raise InvalidParameterError(f"the classifier uses features nodulekit does not compute: {sorted(unknown)}")
    return cls(config["feature_names"], **{k: config[k] for k in keys if k in config})


def _matrix(features: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    missing = [n for n in names if n not in features]
    if missing:
        raise InvalidParameterError(f"candidate features lack {missing}")
    x = features[list(names)].to_numpy(float)
    if not np.isfinite(x).all():
        raise InvalidParameterError("candidate features hold NaN or infinite values")
    return x


# --------------------------------------------------------------------------------------------------
# A model-free candidate source: multi-scale 3-D blob (dot) filter
# --------------------------------------------------------------------------------------------------

#: Columns of the candidate table of :func:`blob_candidates` (centres in voxels of the scan).
BLOB_COLUMNS = ("nodule_id", "centroid_z", "centroid_y", "centroid_x", "n_slices", "diameter_mm", "volume_mm3", "blob_strength", "blob_radius_mm", "source")

#: Features that tell where a candidate came from, for a second stage trained on the union of both
#: sources (:func:`source_features`); not part of :data:`FEATURE_NAMES` (the shipped classifier).
SOURCE_FEATURE_NAMES = ("from_blob", "log_blob_strength")

#: Nodule radii (mm) at which :func:`blob_candidates` looks, 3 to 30 mm nodules, about 1.25x apart up
#: to 10 mm. The six radii before, (1.5, 2.5, 4.0, 6.5, 10.0, 15.0), missed more nodules between their
#: scales: union candidate recall 0.883 with them, 0.917 with these, at the same 60 blobs per scan
#: (60 training scans; ``experiments/detection_candidates.py ceiling``, README "Whole scans").
BLOB_RADII_MM = (1.5, 2.0, 2.5, 3.2, 4.0, 5.0, 6.5, 8.0, 10.0, 15.0)


def blob_candidates(
    hu: np.ndarray,
    lung: np.ndarray,
    spacing: Sequence[float],
    *,
    radii_mm: Sequence[float] = BLOB_RADII_MM,
    grid_mm: float = 1.25,
    margin_mm: float = 2.0,
    hu_floor: float = -750.0,
    hu_ceiling: float = -100.0,
    threshold: float = 10.0,
    max_candidates: int = 60,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Nodule candidates without a model: peaks of a multi-scale Hessian "dot" filter inside the lungs.

    A bright blob has three negative Hessian eigenvalues of similar size, a vessel two and the
    pleura one. Li's dot enhancement ``|l_small|**2 / |l_large|`` (zero unless all three are
    negative) keeps blobs and suppresses tubes and plates (Li et al. 2003). The scan is clipped to
    ``[-1000, hu_ceiling]`` HU (so ground glass at -700..-500 HU is not outweighed by solid tissue),
    set to -1000 HU outside the lung mask dilated by ``margin_mm`` (the chest wall beside a
    juxtapleural nodule becomes air, the nodule a blob), averaged over blocks of whole voxels of
    about ``grid_mm`` (doubled for every doubling of ``sigma / 1.5`` beyond it; never finer than the
    slices), smoothed with a Gaussian of ``sigma = radius / sqrt(3)`` and differentiated by central
    differences at the voxels of at least ``hu_floor`` HU only; the response is scale-normalized
    (``sigma**2``, in HU). Local maxima (26 neighbours) inside the lung mask above ``threshold`` are
    candidates, strongest first, one per place (a weaker peak closer to a kept one than the larger
    of their radii plus half the smaller is dropped), at most ``max_candidates``.

    Each candidate's component is the ball of its radius around the peak, restricted to voxels of at
    least ``hu_floor`` HU connected to the peak (the whole ball when the peak voxel itself is
    fainter), never taking voxels of a stronger candidate.

    Parameters
    ----------
    hu : ndarray of float, shape (slices, rows, columns)
        The scan in Hounsfield units.
    lung : ndarray of bool, shape like ``hu``
        Lung mask (:func:`nodulekit.inference.lung_mask`).
    spacing : sequence of float
        Voxel size in mm (slice, row, column).
    radii_mm : sequence of float
        Nodule radii to look for (> 0).
    grid_mm : float
        Finest resampling grid in mm (> 0).
    margin_mm : float
        Dilation of the lung mask (>= 0) that keeps juxtapleural nodules.
    hu_floor, hu_ceiling : float
        Faintest HU a nodule may have at its centre (after smoothing); HU above ``hu_ceiling`` are clipped.
    threshold : float
        Smallest scale-normalized dot response (HU) of a candidate (>= 0).
    max_candidates : int
        Keep at most this many, the strongest (>= 1).

    Returns
    -------
    labels : ndarray of int32, shape like ``hu``
        0 background, ``k`` = the candidate with ``nodule_id`` k (1 = the strongest).
    table : pandas.DataFrame
        One row per candidate with :data:`BLOB_COLUMNS`: the peak (voxels of the scan, the centre
        the FROC hit rule uses), the component's slices, the equivalent diameter of its largest
        slice, its volume, the response (``blob_strength``, HU) and radius, ``source="blob"``.

    Raises
    ------
    InvalidParameterError
        On a shape that is not 3-D, a lung mask of another shape, an unknown spacing or an option
        out of range.

    References
    ----------
    Q. Li, S. Sone, K. Doi, Medical Physics 30(8):2040-2051, 2003 (the dot enhancement filter; the module docstring lists it in full).
    """
    hu = np.asarray(hu)
    lung = np.asarray(lung, bool)
    sampling = _check_scan(hu, lung, spacing)
    kept = _peaks(hu, lung, sampling, radii_mm, grid_mm, margin_mm, hu_floor, hu_ceiling, threshold, max_candidates)
    labels = np.zeros(hu.shape, np.int32)
    rows = _paint_peaks(labels, [], kept, hu, lung, sampling, hu_floor, margin_mm)
    return labels, pd.DataFrame(rows, columns=list(BLOB_COLUMNS))


def _paint_peaks(labels, rows: list, peaks, hu, lung, sampling, hu_floor, margin_mm) -> list:
    """Paint ``peaks`` in order after the components already in ``labels`` (``rows`` their table rows); all rows."""
    for peak in peaks:
        row = _paint(labels, len(rows) + 1, peak, hu, lung, sampling, hu_floor, margin_mm)
        if row is not None:
            rows.append(row)
    return rows


#: The faint pass of :func:`faint_blob_candidates`: the scan clipped at -300 HU (solid tissue no
#: longer outweighs ground glass at -700..-500 HU), a lower threshold, at most 15 more blobs.
FAINT_BLOB_PASS = {"hu_ceiling": -300.0, "threshold": 5.0, "max_candidates": 15}


def faint_blob_candidates(
    hu: np.ndarray,
    lung: np.ndarray,
    spacing: Sequence[float],
    *,
    faint: dict | None = None,
    **options,
) -> tuple[np.ndarray, pd.DataFrame]:
    """:func:`blob_candidates` plus a second, small pass aimed at faint (ground-glass) blobs.

    The first pass is :func:`blob_candidates` with ``options``. The second runs the same filter
    with ``faint`` overriding them (:data:`FAINT_BLOB_PASS` when None; its ``max_candidates`` is
    how many it may add) and keeps its strongest peaks that no first-pass peak covers (one closer
    than the larger of their radii plus half the smaller, as within one pass). Its components are
    painted after the first pass's, on free voxels only, with its own ``hu_floor`` if given.

    Parameters
    ----------
    hu, lung, spacing
        As :func:`blob_candidates`.
    faint : dict, optional
        Keyword arguments of :func:`blob_candidates` for the second pass (over ``options``).
    **options
        Keyword arguments of :func:`blob_candidates` for both passes.

    Returns
    -------
    labels, table
        As :func:`blob_candidates`; the table has one more column, ``blob_pass`` (1 or 2), and the
        second pass's rows follow the first's.

    Raises
    ------
    InvalidParameterError
        As :func:`blob_candidates`, or on an unknown option.
    """
    faint = dict(FAINT_BLOB_PASS if faint is None else faint)
    first = _blob_settings(options)
    second = _blob_settings({**options, **faint})
    hu = np.asarray(hu)
    lung = np.asarray(lung, bool)
    sampling = _check_scan(hu, lung, spacing)
    kept = _peaks(hu, lung, sampling, *first.values())
    cap = int(second["max_candidates"])
    # a solid blob clipped at a lower ceiling is a plateau of a few peaks, all covered by its first-pass peak: look further down
    more = _peaks(hu, lung, sampling, *{**second, "max_candidates": cap + 4 * len(kept)}.values())
    more = np.array([peak for peak in more if not _covered(peak, kept, sampling)][:cap]).reshape(-1, 5)
    labels = np.zeros(hu.shape, np.int32)
    rows = _paint_peaks(labels, [], kept, hu, lung, sampling, first["hu_floor"], first["margin_mm"])
    passes = [1] * len(rows)
    rows = _paint_peaks(labels, rows, more, hu, lung, sampling, second["hu_floor"], second["margin_mm"])
    table = pd.DataFrame(rows, columns=list(BLOB_COLUMNS))
    table["blob_pass"] = passes + [2] * (len(rows) - len(passes))
    return labels, table


def _blob_settings(options: dict, caller: str = "faint_blob_candidates") -> dict:
    """:func:`blob_candidates`'s keyword options in its order, its defaults for those not in ``options``."""
    settings = {name: p.default for name, p in inspect.signature(blob_candidates).parameters.items() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(options) - set(settings))
    if unknown:
        raise InvalidParameterError(f"{caller} takes the options of blob_candidates ({', '.join(settings)}), not {', '.join(unknown)}")
    settings.update(options)
    return settings


def _covered(peak: np.ndarray, kept: np.ndarray, sampling: np.ndarray) -> bool:
    """Whether a kept peak lies closer to ``peak`` than the larger of their radii plus half the smaller (:func:`_suppress`'s rule)."""
    if not len(kept):
        return False
    distance = np.sqrt((((kept[:, :3] - peak[:3]) * sampling) ** 2).sum(axis=1))
    return bool((distance <= np.maximum(kept[:, 3], peak[3]) + 0.5 * np.minimum(kept[:, 3], peak[3])).any())


def blob_peaks(hu: np.ndarray, lung: np.ndarray, spacing: Sequence[float], **options) -> np.ndarray:
    """The peaks that :func:`blob_candidates` keeps, strongest first, before it paints their components.

    ``options`` are :func:`blob_candidates`'s keyword arguments (its defaults for those not given);
    ``max_candidates=None`` returns every peak of every scale above ``threshold``, strongest first,
    without the one-per-place suppression. Errors as :func:`blob_candidates`.

    Returns
    -------
    ndarray of float, shape (n, 5)
        One row per kept peak: its centre (z, y, x in voxels of the scan), radius (mm) and
        scale-normalized dot response (HU); at most ``max_candidates`` rows.
    """
    settings = _blob_settings(options, "blob_peaks")
    hu = np.asarray(hu)
    lung = np.asarray(lung, bool)
    return _peaks(hu, lung, _check_scan(hu, lung, spacing), *(settings[name] for name in settings))


def _peaks(hu, lung, sampling, radii_mm, grid_mm, margin_mm, hu_floor, hu_ceiling, threshold, max_candidates) -> np.ndarray:
    """:func:`blob_peaks` of a checked scan and spacing, every option given (in :func:`blob_candidates`'s order)."""
    radii = np.asarray(radii_mm, float)
    if radii.ndim != 1 or not len(radii) or not (radii > 0).all() or grid_mm <= 0 or margin_mm < 0 or threshold < 0 or (max_candidates is not None and int(max_candidates) < 1):
        raise InvalidParameterError("blob_candidates needs radii_mm > 0, grid_mm > 0, margin_mm >= 0, threshold >= 0 and max_candidates >= 1")
    if not lung.any():
        return np.zeros((0, 5))
    box = _box(lung, sampling, 3.0 * radii.max())
    image = hu[box].astype(np.float32)
    np.clip(image, -1000.0, hu_ceiling, out=image)  # in place: one copy of the lungs' box, not two
    base_step = np.maximum(np.round(grid_mm / sampling), 1).astype(int)
    base, inside = _block_mean(image, lung[box], base_step)
    del image
    grids: dict[float, tuple] = {}
    peaks = []
    for radius in radii:
        grid = float(grid_mm * 2.0 ** np.floor(np.log2(max(radius / np.sqrt(3.0) / 1.5 / grid_mm, 1.0))))  # grid_mm, doubled for larger blobs
        if grid not in grids:
            step = np.maximum(np.round(grid / (sampling * base_step)), 1).astype(int)
            small, small_inside = _block_mean(base, inside, step)
            small[~_dilate(small_inside, sampling * base_step * step, margin_mm)] = -1000.0  # the chest wall and mediastinum become air
            grids[grid] = (small, small_inside, base_step * step)
        peaks.append(_dot_peaks(*grids[grid], sampling, radius, hu_floor, threshold))
    peaks = np.concatenate(peaks)
    peaks[:, :3] += [s.start for s in box]
    if max_candidates is None:
        return peaks[np.argsort(-peaks[:, 4], kind="stable")]
    kept = _suppress(peaks, sampling, int(max_candidates))
    return np.array(kept).reshape(-1, 5)


def merge_candidates(
    segmenter_labels: np.ndarray,
    segmenter_table: pd.DataFrame,
    blob_labels: np.ndarray,
    blob_table: pd.DataFrame,
    *,
    spacing: Sequence[float],
    min_distance_mm: float = 3.0,
) -> tuple[np.ndarray, pd.DataFrame]:
    """The union of two candidate sources, each nodule once.

    A blob is the segmenter's nodule again, and is dropped, when it overlaps a segmenter component
    whose centre lies within the blob's radius (at least ``min_distance_mm``) of the blob's peak. A
    blob that only touches a component centred elsewhere (a nodule at the end of a vessel the
    segmenter marked with it, whose centre falls off the nodule) is kept, without the voxels the
    segmenter's component already has; a segmenter component gets the strongest response of the
    blobs overlapping it as its ``blob_strength`` (0 when none: vessels and pleura rarely have one).

    Parameters
    ----------
    segmenter_labels, blob_labels : ndarray of int, same 3-D shape
        Components, label = ``nodule_id`` of their table.
    segmenter_table, blob_table : pandas.DataFrame
        Their tables (:func:`nodulekit.inference.measure_nodules`, :func:`blob_candidates`):
        ``nodule_id`` and the centre columns; ``blob_strength`` and ``blob_radius_mm`` for blobs.
    spacing : sequence of float
        Voxel size in mm (slice, row, column).
    min_distance_mm : float
        Smallest distance (mm) within which a segmenter centre makes a blob a duplicate.

    Returns
    -------
    labels : ndarray of int32
        Segmenter components keep their ids; kept blobs follow (``len(segmenter_table) + 1``, ...).
    table : pandas.DataFrame
        Both tables stacked with ``nodule_id`` renumbered likewise, ``source`` ("segmenter" or
        "blob") and ``blob_strength``.

    Raises
    ------
    InvalidParameterError
        On label volumes of different shapes or not 3-D, or an unknown spacing.

    Examples
    --------
    >>> seg = np.array([[[1, 1, 0, 0, 0, 0]]])
    >>> blob = np.array([[[0, 1, 0, 2, 2, 0]]])
    >>> centres = {"centroid_z": 0.0, "centroid_y": 0.0}
    >>> seg_table = pd.DataFrame({"nodule_id": [1], "centroid_x": [0.5], **centres})
    >>> blob_table = pd.DataFrame({"nodule_id": [1, 2], "centroid_x": [1.0, 3.5], **centres,
    ...                            "blob_strength": [50.0, 30.0], "blob_radius_mm": [2.0, 2.0]})
    >>> labels, table = merge_candidates(seg, seg_table, blob, blob_table, spacing=(1.0, 1.0, 1.0))
    >>> labels.tolist(), table["source"].tolist(), table["blob_strength"].tolist()
    ([[[1, 1, 0, 2, 2, 0]]], ['segmenter', 'blob'], [50.0, 30.0])
    """
    segmenter_labels = np.asarray(segmenter_labels)
    blob_labels = np.asarray(blob_labels)
    if segmenter_labels.ndim != 3 or segmenter_labels.shape != blob_labels.shape:
        raise InvalidParameterError(f"candidate labels must be 3-D arrays of one shape, got {segmenter_labels.shape} and {blob_labels.shape}")
    sampling = _voxel_size(spacing, "merging candidates needs")
    centre_columns = ["centroid_z", "centroid_y", "centroid_x"]
    box = bounding_box(blob_labels) or _no_box(blob_labels)  # blobs fill a small part of a scan: the voxel-wise work stays inside their box
    segmenter_in, blob_in = segmenter_labels[box], blob_labels[box]
    both = (segmenter_in > 0) & (blob_in > 0)
    pairs = np.unique(np.stack([segmenter_in[both], blob_in[both]], axis=1), axis=0) if both.any() else np.zeros((0, 2), int)
    strength = dict(zip(blob_table["nodule_id"].to_numpy(int), blob_table["blob_strength"].to_numpy(float))) if "blob_strength" in blob_table else {}
    radius = dict(zip(blob_table["nodule_id"].to_numpy(int), blob_table["blob_radius_mm"].to_numpy(float))) if "blob_radius_mm" in blob_table else {}
    segmenter_centres = dict(zip(segmenter_table["nodule_id"].to_numpy(int), segmenter_table[centre_columns].to_numpy(float)))
    blob_centres = dict(zip(blob_table["nodule_id"].to_numpy(int), blob_table[centre_columns].to_numpy(float)))
    segmenter_strength = dict.fromkeys(segmenter_table["nodule_id"].to_numpy(int), 0.0)
    duplicates = set()
    for segment, blob in pairs:
        segmenter_strength[int(segment)] = max(segmenter_strength.get(int(segment), 0.0), strength.get(int(blob), 0.0))
        distance = np.sqrt((((segmenter_centres[int(segment)] - blob_centres[int(blob)]) * sampling) ** 2).sum())
        if distance <= max(radius.get(int(blob), 0.0), float(min_distance_mm)):
            duplicates.add(int(blob))
    only_blob = (segmenter_in == 0) & (blob_in > 0)
    free = np.bincount(blob_in[only_blob], minlength=int(np.max(blob_in, initial=0)) + 1)
    ids = blob_table["nodule_id"].to_numpy(int)
    keep = np.array([i not in duplicates and i < len(free) and free[i] > 0 for i in ids], bool)
    blobs = blob_table[keep]
    count = int(max(np.max(segmenter_labels, initial=0), len(segmenter_table)))
    lookup = np.zeros(int(max(np.max(blob_in, initial=0), ids.max() if len(ids) else 0)) + 1, np.int32)
    new_ids = np.arange(count + 1, count + 1 + len(blobs), dtype=np.int32)
    lookup[blobs["nodule_id"].to_numpy(int)] = new_ids
    merged = np.zeros(segmenter_labels.shape, np.int32)  # written in the two boxes only: no whole-scan copy
    segmenter_box = bounding_box(segmenter_labels) or _no_box(segmenter_labels)
    merged[segmenter_box] = segmenter_labels[segmenter_box]
    merged[box][only_blob] = lookup[blob_in[only_blob]]  # the segmenter's voxels are there already; lookup[0] = 0 elsewhere
    first = segmenter_table.assign(source="segmenter", blob_strength=[segmenter_strength.get(int(i), 0.0) for i in segmenter_table["nodule_id"]])
    second = blobs.assign(nodule_id=new_ids, source="blob")
    table = pd.concat([first, second], ignore_index=True) if len(second) else first.reset_index(drop=True)
    return merged, table


def source_features(table: pd.DataFrame) -> pd.DataFrame:
    """:data:`SOURCE_FEATURE_NAMES` of a merged candidate table (:func:`merge_candidates`).

    ``from_blob`` is 1 for candidates only the blob filter found, ``log_blob_strength`` the log of
    1 + the filter response in HU (for a segmenter component, that of the strongest blob on it; 0
    without one and for tables without those columns).
    """
    blob = table["source"].eq("blob").to_numpy(float) if "source" in table else np.zeros(len(table))
    strength = table["blob_strength"].fillna(0.0).to_numpy(float) if "blob_strength" in table else np.zeros(len(table))
    return pd.DataFrame({"from_blob": blob, "log_blob_strength": np.log1p(np.maximum(strength, 0.0))}, index=table.index)


def _check_scan(hu: np.ndarray, lung: np.ndarray, spacing) -> np.ndarray:
    if hu.ndim != 3 or lung.shape != hu.shape:
        raise InvalidParameterError(f"blob candidates need a 3-D scan and a lung mask of its shape, got {hu.shape} and {lung.shape}")
    return _voxel_size(spacing, "blob candidates need")


def _voxel_size(spacing, need: str) -> np.ndarray:
    """``spacing`` as a (3,) array of known, positive mm, or an error that starts with ``need``."""
    sampling = np.array([float(s) for s in spacing]) if np.ndim(spacing) == 1 else np.zeros(0)
    if sampling.shape != (3,) or not np.isfinite(sampling).all() or sampling.min() <= 0:
        raise InvalidParameterError(f"{need} a known voxel size (slice, row, column) in mm, got {spacing!r}")
    return sampling


def _dilate(mask: np.ndarray, sampling: np.ndarray, margin_mm: float) -> np.ndarray:
    """Dilation by ``margin_mm`` within each slice (a square)."""
    size = 2 * np.ceil(margin_mm / sampling[1:]).astype(int) + 1
    grown = ndimage.maximum_filter1d(mask.view(np.uint8), int(size[0]), axis=1)
    return ndimage.maximum_filter1d(grown, int(size[1]), axis=2).view(bool)


def _no_box(labels: np.ndarray) -> tuple[slice, ...]:
    """An empty box of ``labels``' dimension (its slices select nothing), for labels without a component."""
    return (slice(0, 0),) * np.ndim(labels)


def _box(mask: np.ndarray, sampling: np.ndarray, pad_mm: float) -> tuple[slice, ...]:
    """Bounding box of ``mask`` (not empty) enlarged by ``pad_mm``."""
    pads = np.ceil(pad_mm / np.asarray(sampling, float)).astype(int)
    return tuple(slice(max(b.start - int(pad), 0), min(b.stop + int(pad), n)) for b, pad, n in zip(bounding_box(mask), pads, mask.shape))


def _block_mean(image: np.ndarray, mask: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``image`` averaged and ``mask`` or-ed over blocks of ``step`` voxels (the remainder at the far ends dropped)."""
    step = np.minimum(step, image.shape)  # a thin scan keeps at least one block per axis
    if (step == 1).all():
        return image.copy(), mask
    shape = np.array(image.shape) // step
    small = np.zeros(shape, np.float32)
    inside = np.zeros(shape, bool)
    for offset in np.ndindex(*step):
        part = tuple(slice(int(o), int(o + n * k), int(k)) for o, n, k in zip(offset, shape, step))
        small += image[part]
        inside |= mask[part]
    small /= float(np.prod(step))
    return small, inside


def _dot_peaks(small, inside, step, sampling, radius, hu_floor, threshold) -> np.ndarray:
    """Peaks inside the lungs (z, y, x in input voxels, radius mm, response) of the dot filter at one scale on one resampled grid."""
    sigma = radius / np.sqrt(3.0)
    grid = sampling * step
    smooth = np.pad(ndimage.gaussian_filter(small, sigma / grid, mode="nearest"), 1, mode="edge")
    flat = smooth.ravel()
    strides = np.array([smooth.shape[1] * smooth.shape[2], smooth.shape[2], 1])
    look = inside & (smooth[1:-1, 1:-1, 1:-1] >= hu_floor)
    index = (np.argwhere(look) + 1) @ strides
    hessian = _hessian_at(flat, index, strides, grid)
    steepest, _, flattest = _eigenvalues(*hessian)
    response = np.where(flattest < 0, flattest**2 / np.maximum(-steepest, 1e-6), 0.0) * sigma**2  # all three negative: a bright blob
    strong = response >= threshold
    index, response = index[strong], response[strong]
    dense = np.zeros(flat.shape, np.float32)
    dense[index] = response
    offsets = (np.argwhere(np.ones((3, 3, 3))) - 1) @ strides
    peak = (dense[index[:, None] + offsets[None]] <= response[:, None]).all(axis=1)
    where = np.stack(np.unravel_index(index[peak], smooth.shape), axis=1) - 1
    out = np.zeros((len(where), 5))
    out[:, :3] = where * step + (step - 1) / 2.0  # block centres in input voxels
    out[:, 3] = radius
    out[:, 4] = response[peak]
    return out


def _hessian_at(flat: np.ndarray, index: np.ndarray, strides: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, ...]:
    """Central-difference Hessian (h00, h11, h22, h01, h02, h12) of a padded volume at flat indices."""
    centre = flat[index]
    diagonal = [(flat[index + s] - 2.0 * centre + flat[index - s]) / g**2 for s, g in zip(strides, grid)]
    cross = []
    for i, j in ((0, 1), (0, 2), (1, 2)):
        si, sj = strides[i], strides[j]
        value = flat[index + si + sj] - flat[index + si - sj] - flat[index - si + sj] + flat[index - si - sj]
        cross.append(value / (4.0 * grid[i] * grid[j]))
    return (*diagonal, *cross)


def _eigenvalues(a, b, c, d, e, f):
    """Eigenvalues (smallest, middle, largest) of symmetric 3x3 matrices [[a, d, e], [d, b, f], [e, f, c]], closed form."""
    q = (a + b + c) / 3.0
    p1 = d * d + e * e + f * f
    p = np.sqrt(np.maximum(((a - q) ** 2 + (b - q) ** 2 + (c - q) ** 2 + 2.0 * p1) / 6.0, 1e-12))
    aq, bq, cq = (a - q) / p, (b - q) / p, (c - q) / p
    dp, ep, fp = d / p, e / p, f / p
    determinant = aq * (bq * cq - fp * fp) - dp * (dp * cq - fp * ep) + ep * (dp * fp - bq * ep)
    phi = np.arccos(np.clip(determinant / 2.0, -1.0, 1.0)) / 3.0
    largest = q + 2.0 * p * np.cos(phi)
    smallest = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)
    return smallest, 3.0 * q - largest - smallest, largest


def _suppress(peaks: np.ndarray, sampling: np.ndarray, count: int) -> list[np.ndarray]:
    """Strongest peaks first; a peak closer to a kept one than the larger radius plus half the smaller is dropped."""
    order = np.argsort(-peaks[:, 4], kind="stable")[: 20 * count]
    kept: list[np.ndarray] = []
    for peak in peaks[order]:
        if kept and _covered(peak, np.array(kept), sampling):
            continue
        kept.append(peak)
        if len(kept) == count:
            break
    return kept


def _paint(labels, label, peak, hu, lung, sampling, hu_floor, margin_mm) -> dict | None:
    """Write one blob candidate's component into ``labels`` (free voxels only); its table row, or None when it has none."""
    radius = float(peak[3])
    centre = np.clip(np.rint(peak[:3]).astype(int), 0, np.array(labels.shape) - 1)
    half = np.maximum(np.ceil(radius / sampling).astype(int), 1)
    box = tuple(slice(max(c - h, 0), min(c + h + 1, n)) for c, h, n in zip(centre, half, labels.shape))
    grids = np.ogrid[box]
    distance = sum(((g - p) * s) ** 2 for g, p, s in zip(grids, peak[:3], sampling))
    component = (distance <= max(radius, 0.5 * sampling.max()) ** 2) & (labels[box] == 0) & _dilate(lung[box], sampling, margin_mm)
    local = tuple(c - b.start for c, b in zip(centre, box))
    bright = component & (hu[box] >= hu_floor)
    if bright[local]:
        connected, _ = label_components(bright, connectivity=3)
        component = connected == connected[local]
    if not component.any():
        return None
    labels[box][component] = label
    areas = component.sum(axis=(1, 2))
    return {
        "nodule_id": label,
        "centroid_z": float(peak[0]),
        "centroid_y": float(peak[1]),
        "centroid_x": float(peak[2]),
        "n_slices": int((areas > 0).sum()),
        "diameter_mm": float(2.0 * np.sqrt(areas.max() * sampling[1] * sampling[2] / np.pi)),
        "volume_mm3": float(component.sum() * np.prod(sampling)),
        "blob_strength": float(peak[4]),
        "blob_radius_mm": radius,
        "source": "blob",
    }
