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
* **the model's probabilities**: mean, spread, fraction above 0.9, mean in the shell around.

:class:`CandidateClassifier` is a logistic regression on standardized features (scikit-learn to
fit; numpy to predict), saved as JSON (feature names, means, scales, coefficients, the operating
point) beside the segmenter (``classifier.json``): no pickle. Its output is the ``score`` column of
``nodules.csv``: a probability, calibrated on held-out candidates (reliability diagram in
``experiments/detection.py``).

This module sits below :mod:`nodulekit.inference` (it works on arrays and the nodule table, and
imports nothing above :mod:`nodulekit.errors` and :mod:`nodulekit.utils`), so a
:class:`~nodulekit.inference.Segmenter` can rank its own candidates.

References
----------
.. [1] A. F. Frangi, W. J. Niessen, K. L. Vincken, M. A. Viergever, "Multiscale vessel enhancement
   filtering", MICCAI 1998 (Hessian eigenvalue ratios: blob, tube, plate).
.. [2] A. A. A. Setio et al., "Pulmonary nodule detection in CT images: false positive reduction
   using multi-view convolutional networks", IEEE TMI 35(5):1160-1169, 2016 (candidate stage plus
   false-positive reduction).
"""

from __future__ import annotations

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

__all__ = [
    "CLASSIFIER_FILE",
    "FEATURE_NAMES",
    "INTENSITY_FREE_FEATURES",
    "OUTCOMES",
    "CandidateClassifier",
    "candidate_features",
    "candidate_outcomes",
    "load_classifier",
    "rank_candidates",
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
        One row per ``table`` row (same order), columns :data:`FEATURE_NAMES`.

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
    sampling = np.array([float(s) for s in spacing])
    if sampling.shape != (3,) or not np.isfinite(sampling).all() or sampling.min() <= 0:
        raise InvalidParameterError(f"candidate features need a known voxel size (slice, row, column) in mm, got {spacing!r}")
    context = _ScanContext(lung, sampling)
    objects = ndimage.find_objects(labels)
    rows = []
    for record in tqdm(table.itertuples(index=False), total=len(table), desc="candidates", unit="cand", disable=not progress):
        label = int(record.nodule_id)
        box = objects[label - 1] if label - 1 < len(objects) else None
        if box is None:
            raise InvalidParameterError(f"nodule_id {label} of the table has no voxel in labels")
        rows.append(_features(labels, label, box, record, np.asarray(probabilities), np.asarray(hu), context, sampling))
    return pd.DataFrame(rows, columns=list(FEATURE_NAMES), dtype=float)


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

    def depth(self) -> np.ndarray | None:
        """Distance (mm) from each lung voxel to the nearest voxel outside the lungs, in-plane."""
        if self.lung is not None and self._depth is None:
            self._depth = np.stack([ndimage.distance_transform_edt(s, sampling=self.sampling[1:]) for s in self.lung]).astype(np.float32)
        return self._depth


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
    depth = context.depth()[crop][inside]
    column = np.argwhere(inside)[:, 2].mean() + crop[2].start
    middle = 0.5 * (context.left + context.right)
    half = max(0.5 * (context.right - context.left), 1.0)
    return {
        "lung_depth_mm": float(depth.max()),
        "pleura_contact": float((depth <= _CONTACT_MM).mean()),
        "medial_position": float(1.0 - abs(column - middle) / half),  # 1 at the midline, 0 at the lateral wall
    }


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
        if not 0.0 <= self.threshold <= 1.0:
            raise InvalidParameterError(f"the operating threshold must be in [0, 1], got {threshold!r}")

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

        x = _matrix(features, feature_names)
        y = np.asarray(labels, bool)
        if len(y) != len(x) or y.all() or not y.any():
            raise InvalidParameterError(f"fitting needs one label per candidate and both classes, got {len(y)} labels for {len(x)} candidates, {int(y.sum())} positive")
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
        logits = ((x - self.mean) / self.scale) @ self.coefficients + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))

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
        if not isinstance(config, dict) or config.get("kind") != "logistic_regression":
            raise InvalidParameterError("not a nodulekit candidate classifier (kind must be 'logistic_regression')")
        unknown = set(config["feature_names"]) - set(FEATURE_NAMES)
        if unknown:
            raise InvalidParameterError(f"the classifier uses features nodulekit does not compute: {sorted(unknown)}")
        keys = ("mean", "scale", "coefficients", "intercept", "threshold", "metadata")
        return cls(config["feature_names"], **{k: config[k] for k in keys if k in config})

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``classifier.json`` into ``folder`` (atomically)."""
        from .utils import write_json

        path = Path(folder) / CLASSIFIER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.to_config())
        return path


def load_classifier(folder: str | os.PathLike) -> CandidateClassifier:
    """Read the second stage of a segmenter folder (``classifier.json``).

    Raises
    ------
    MissingDataError
        When the folder has no ``classifier.json`` (a segmenter without a second stage).
    ModelFileError
        When the file is not a valid classifier.
    """
    path = Path(folder) / CLASSIFIER_FILE
    if not path.is_file():
        raise MissingDataError(f"no second-stage classifier ({CLASSIFIER_FILE}) in this model folder", path=Path(folder))
    try:
        return CandidateClassifier.from_config(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"not a valid candidate classifier ({exc})", path=path) from exc


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
    return lookup[labels], ranked


def _matrix(features: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    missing = [n for n in names if n not in features]
    if missing:
        raise InvalidParameterError(f"candidate features lack {missing}")
    x = features[list(names)].to_numpy(float)
    if not np.isfinite(x).all():
        raise InvalidParameterError("candidate features hold NaN or infinite values")
    return x
