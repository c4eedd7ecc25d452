"""Segmentation metrics that say what they count: overlap, per-nodule, detection and boundary scores.

Overlap metrics (``dice``, ``iou``, ``precision``, ``recall``, ``specificity``, ``accuracy``) exist
twice: as NumPy functions for evaluation and as Keras metrics for training logs
(:class:`DiceCoefficient`, :class:`IoUMetric`, :class:`PrecisionMetric`, :class:`RecallMetric`); both
binarise with ``y_pred > threshold`` and agree to float precision.

The empty-mask policy is explicit. A ratio whose numerator and denominator are both 0 happens when
the ground truth and the prediction are both empty (a slice where the 50 % consensus is empty and
the model rightly predicts nothing). ``empty`` decides its value:

* ``"one"`` — count it as a perfect 1 (the common default; it inflates a mean Dice when many
  slices are empty),
* ``"zero"`` — count it as 0 (deflates),
* ``"exclude"`` — leave it out (NaN, skipped by the means; MONAI's ``ignore_empty`` leaves out
  every image whose ground truth is empty, which :func:`segmentation_report`'s ``"separate"`` does),

and :func:`segmentation_report` reports how many images fell in each case, so a reader can see
whether the mean moved because of them. A ratio with a zero denominator but a non-empty other set
(precision of an empty prediction on a nodule, recall of a false positive on an empty mask) is 0:
a one-sided miss is a failure, never undefined.

Pixel accuracy is reported beside :func:`background_accuracy`, the accuracy of predicting
background everywhere: on 64x64 nodule crops that baseline is already 92-98 %, which is why the
paper's "94 % accuracy" says little on its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import keras
import numpy as np
import pandas as pd
from keras import ops
from scipy import ndimage

from . import confusion  # the module, not the name: importing Keras may import this module first (see nodulekit.confusion)
from .errors import InvalidParameterError
from .postprocess import label_components

__all__ = [
    "dice",
    "iou",
    "precision",
    "recall",
    "specificity",
    "accuracy",
    "confusion_counts",
    "background_accuracy",
    "per_image_scores",
    "segmentation_report",
    "score_crops",
    "CropScores",
    "per_nodule_dice",
    "detection_scores",
    "hd95",
    "mean_surface_distance",
    "surface_distances",
    "DiceCoefficient",
    "IoUMetric",
    "PrecisionMetric",
    "RecallMetric",
    "EMPTY_POLICIES",
    "OVERLAP_METRICS",
]

logger = logging.getLogger(__name__)

#: Values of ``empty`` for the overlap functions (``segmentation_report`` also takes "separate").
EMPTY_POLICIES = ("one", "zero", "exclude")

#: The overlap metrics by name.
OVERLAP_METRICS = ("dice", "iou", "precision", "recall", "specificity", "accuracy")


# --------------------------------------------------------------------------------------------------
# Overlap metrics (NumPy)


def confusion_counts(y_true, y_pred, *, threshold: float = 0.5, per_image: bool = False) -> dict[str, np.ndarray]:
    """Pixel counts TP, FP, FN, TN of a binarised prediction.

    Parameters
    ----------
    y_true : array_like
        Ground truth; nonzero is foreground.
    y_pred : array_like, same shape
        Probabilities or a binary mask; foreground where ``y_pred > threshold`` (booleans as they are).
    threshold : float
        Binarisation threshold of ``y_pred``.
    per_image : bool
        Count each image along the first axis separately (arrays of shape (n,)) instead of all pixels
        together (0-d arrays).

    Returns
    -------
    dict
        ``{"tp", "fp", "fn", "tn"}`` as int64 arrays.
    """
    truth, pred = _binarise(y_true, y_pred, threshold)
    axes = tuple(range(1, truth.ndim)) if per_image else None
    if per_image and truth.ndim < 2:
        raise InvalidParameterError(f"per_image=True needs a leading image axis, got shape {truth.shape}")
    return {
        "tp": np.sum(truth & pred, axis=axes, dtype=np.int64),
        "fp": np.sum(~truth & pred, axis=axes, dtype=np.int64),
        "fn": np.sum(truth & ~pred, axis=axes, dtype=np.int64),
        "tn": np.sum(~truth & ~pred, axis=axes, dtype=np.int64),
    }


def dice(y_true, y_pred, *, threshold: float = 0.5, empty: str = "one", per_image: bool = False):
    """Dice coefficient ``2 TP / (2 TP + FP + FN)`` (F1 score of the foreground pixels).

    Parameters
    ----------
    y_true, y_pred, threshold, per_image
        As in :func:`confusion_counts`.
    empty : {"one", "zero", "exclude"}
        Value when ground truth and prediction are both empty: 1, 0 or NaN (see the module notes).

    Returns
    -------
    float, or ndarray of shape (n,) when ``per_image``
        In [0, 1] (NaN only for ``empty="exclude"``).

    Examples
    --------
    >>> import numpy as np
    >>> t = np.array([[1, 1, 0, 0]]); p = np.array([[1, 0, 1, 0]])
    >>> dice(t, p)  # 2*1 / (2*1 + 1 + 1)
    0.5
    >>> dice(np.zeros(4), np.zeros(4)), dice(np.zeros(4), np.zeros(4), empty="exclude")
    (1.0, nan)
    """
    c = confusion_counts(y_true, y_pred, threshold=threshold, per_image=per_image)
    return _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"], c, empty)


def iou(y_true, y_pred, *, threshold: float = 0.5, empty: str = "one", per_image: bool = False):
    """Intersection over union (Jaccard index) ``TP / (TP + FP + FN)``; arguments as in :func:`dice`."""
    c = confusion_counts(y_true, y_pred, threshold=threshold, per_image=per_image)
    return _ratio(c["tp"], c["tp"] + c["fp"] + c["fn"], c, empty)


def precision(y_true, y_pred, *, threshold: float = 0.5, empty: str = "one", per_image: bool = False):
    """Precision ``TP / (TP + FP)``; 0 for an empty prediction on a non-empty mask; as :func:`dice`."""
    c = confusion_counts(y_true, y_pred, threshold=threshold, per_image=per_image)
    return _ratio(c["tp"], c["tp"] + c["fp"], c, empty)


def recall(y_true, y_pred, *, threshold: float = 0.5, empty: str = "one", per_image: bool = False):
    """Recall (sensitivity) ``TP / (TP + FN)``; 0 for a false positive on an empty mask; as :func:`dice`."""
    c = confusion_counts(y_true, y_pred, threshold=threshold, per_image=per_image)
    return _ratio(c["tp"], c["tp"] + c["fn"], c, empty)


def specificity(y_true, y_pred, *, threshold: float = 0.5, empty: str = "one", per_image: bool = False):
    """Specificity ``TN / (TN + FP)`` (background pixels kept background); as :func:`dice`.

    Its denominator is 0 only when every pixel is foreground; ``empty`` then gives the value.
    """
    c = confusion_counts(y_true, y_pred, threshold=threshold, per_image=per_image)
    both_full = (c["fp"] + c["tn"] == 0) & (c["fn"] == 0)
    return _ratio(c["tn"], c["tn"] + c["fp"], c, empty, undefined=both_full)


def accuracy(y_true, y_pred, *, threshold: float = 0.5, per_image: bool = False):
    """Pixel accuracy ``(TP + TN) / all``; compare with :func:`background_accuracy`."""
    c = confusion_counts(y_true, y_pred, threshold=threshold, per_image=per_image)
    total = c["tp"] + c["tn"] + c["fp"] + c["fn"]
    if np.any(total == 0):
        raise InvalidParameterError("accuracy of an empty array is undefined")
    return _as_output((c["tp"] + c["tn"]) / total)


def background_accuracy(y_true) -> float:
    """Pixel accuracy of predicting background everywhere: the baseline any accuracy must beat.

    Parameters
    ----------
    y_true : array_like
        Ground-truth masks (nonzero is foreground).

    Returns
    -------
    float
        The fraction of background pixels.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((64, 64)); m[28:36, 28:36] = 1  # an 8x8 nodule in a 64x64 crop
    >>> round(background_accuracy(m), 4)
    0.9844
    """
    truth = np.asarray(y_true)
    if truth.size == 0:
        raise InvalidParameterError("y_true is empty")
    return float(np.mean(truth == 0))


_FUNCTIONS = {"dice": dice, "iou": iou, "precision": precision, "recall": recall, "specificity": specificity}


def per_image_scores(y_true, y_prob, *, threshold: float = 0.5, empty: str = "one") -> pd.DataFrame:
    """Every overlap metric for every image.

    Parameters
    ----------
    y_true : array_like, shape (n, height, width[, 1])
        Ground-truth masks.
    y_prob : array_like, same shape
        Predicted probabilities (or binary masks).
    threshold : float
        Binarisation threshold.
    empty : {"one", "zero", "exclude"}
        Value of 0/0 ratios (both empty), see :func:`dice`.

    Returns
    -------
    pandas.DataFrame
        One row per image: ``dice, iou, precision, recall, specificity, accuracy, true_pixels,
        pred_pixels, true_empty, pred_empty``.
    """
    _check_empty(empty)
    truth, pred = _binarise(y_true, y_prob, threshold)
    if truth.ndim < 2:
        raise InvalidParameterError(f"y_true must have a leading image axis, got shape {truth.shape}")
    frame = pd.DataFrame({name: fn(truth, pred, empty=empty, per_image=True) for name, fn in _FUNCTIONS.items()})
    frame["accuracy"] = accuracy(truth, pred, per_image=True)
    axes = tuple(range(1, truth.ndim))
    frame["true_pixels"] = truth.sum(axis=axes)
    frame["pred_pixels"] = pred.sum(axis=axes)
    frame["true_empty"] = frame["true_pixels"] == 0
    frame["pred_empty"] = frame["pred_pixels"] == 0
    return frame


def segmentation_report(y_true, y_prob, *, threshold: float = 0.5, empty: str = "one") -> dict:
    """Mean overlap metrics over images, the pooled Dice, the background baseline, and empty-mask counts.

    Parameters
    ----------
    y_true : array_like, shape (n, height, width[, 1])
        Ground-truth masks.
    y_prob : array_like, same shape
        Predicted probabilities.
    threshold : float
        Binarisation threshold.
    empty : {"one", "zero", "exclude", "separate"}
        How images whose ground truth is empty enter the means. ``"one"``/``"zero"``: a both-empty
        image scores 1/0; ``"exclude"``: both-empty images are left out (a false positive on an
        empty mask still scores 0); ``"separate"``: every empty-truth image is left out of the means
        and summarised apart as ``empty_correct_fraction`` (share of them predicted empty) and
        ``empty_false_positive_pixels``.

    Returns
    -------
    dict
        ``dice, iou, precision, recall, specificity, accuracy`` (means over the images counted),
        ``dice_std``, ``global_dice`` (pooled over all pixels, no empty policy needed),
        ``background_accuracy``, ``threshold``, ``empty`` and the counts ``n_images``,
        ``n_scored`` (images in the means), ``n_true_empty``, ``n_both_empty``,
        ``n_false_positive_on_empty`` (empty truth, non-empty prediction), ``n_missed`` (non-empty
        truth, empty prediction); with ``"separate"`` also ``empty_correct_fraction`` and
        ``empty_false_positive_pixels``.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.zeros((2, 4, 4)); t[0, :2, :2] = 1
    >>> p = t.copy()  # perfect on the nodule, rightly empty on the empty slice
    >>> segmentation_report(t, p, empty="one")["dice"], segmentation_report(t, p, empty="separate")["n_scored"]
    (1.0, 1)
    """
    return score_crops(y_true, y_prob, threshold=threshold, empty=empty).report


@dataclass(frozen=True)
class CropScores:
    """Everything :func:`score_crops` measures on one set of crops.

    Attributes
    ----------
    report : dict
        :func:`segmentation_report`'s dict: means over images under the ``empty`` policy, pooled
        Dice, background accuracy and the empty-mask counts.
    per_image : pandas.DataFrame
        :func:`per_image_scores` (with ``"exclude"`` for the ``"separate"`` policy).
    per_nodule : pandas.DataFrame or None
        :func:`per_nodule_dice` (empty policy ``"exclude"`` for ``"separate"``), when nodule ids
        were given.
    pooled_accuracy : float
        Pixel accuracy over all pixels of all images (every image counted, whatever ``empty``).
    """

    report: dict
    per_image: pd.DataFrame
    per_nodule: pd.DataFrame | None
    pooled_accuracy: float


def score_crops(
    y_true, y_prob, *, threshold: float = 0.5, empty: str = "one", nodule_ids: Sequence | None = None
) -> CropScores:
    """Score predicted crops against their masks: per image, pooled and (with ids) per nodule.

    The one scorer of predicted crops: the training units' validation and test scores, the real-CT
    cross-validation (:func:`nodulekit.evaluation.score_predictions`) and the study's held-out and
    baseline tables all go through it, so one ``empty`` policy means the same everywhere.

    Parameters
    ----------
    y_true, y_prob, threshold
        Masks ``(n, height, width[, 1])``, predicted probabilities or binary masks of the same
        shape, and the binarisation threshold (``y_prob > threshold``).
    empty : {"one", "zero", "exclude", "separate"}
        Empty-mask policy of the per-image means (see :func:`segmentation_report`). The per-image
        table and the per-nodule Dice take ``"exclude"`` for ``"separate"`` (a nodule empty in
        truth and prediction on every slice has no Dice).
    nodule_ids : sequence of length n, optional
        The nodule of every crop; adds the per-nodule 3-D Dice.

    Returns
    -------
    CropScores

    Examples
    --------
    >>> import numpy as np
    >>> t = np.zeros((2, 4, 4)); t[0, :2, :2] = 1
    >>> s = score_crops(t, t, empty="separate", nodule_ids=["a", "a"])
    >>> s.report["dice"], s.report["n_scored"], s.per_nodule["dice"].tolist()
    (1.0, 1, [1.0])
    """
    if empty not in (*EMPTY_POLICIES, "separate"):
        raise InvalidParameterError(f"empty must be one of {(*EMPTY_POLICIES, 'separate')}, got {empty!r}")
    image_empty = "exclude" if empty == "separate" else empty
    frame = per_image_scores(y_true, y_prob, threshold=threshold, empty=image_empty)
    truth, pred = _binarise(y_true, y_prob, threshold)
    nodules = None
    if nodule_ids is not None:
        nodules = per_nodule_dice(truth, pred, nodule_ids, empty=image_empty)
    return CropScores(
        report=_report(frame, truth, pred, threshold=threshold, empty=empty),
        per_image=frame,
        per_nodule=nodules,
        pooled_accuracy=float(accuracy(truth, pred)),
    )


def _report(frame: pd.DataFrame, truth: np.ndarray, pred: np.ndarray, *, threshold: float, empty: str) -> dict:
    """:func:`segmentation_report`'s dict from the per-image table and the binarised masks."""
    counted = ~frame["true_empty"] if empty == "separate" else np.ones(len(frame), bool)
    scored = frame[counted]
    report: dict = {}
    for name in OVERLAP_METRICS:
        values = scored[name].to_numpy(dtype=float)
        report[name] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    dice_values = scored["dice"].to_numpy(dtype=float)
    report["dice_std"] = float(np.nanstd(dice_values)) if np.isfinite(dice_values).any() else float("nan")
    pooled = confusion_counts(truth, pred)
    denominator = 2 * pooled["tp"] + pooled["fp"] + pooled["fn"]
    report["global_dice"] = float(2 * pooled["tp"] / denominator) if denominator else 1.0
    report["background_accuracy"] = background_accuracy(truth)
    both_empty = frame["true_empty"] & frame["pred_empty"]
    report.update(
        threshold=float(threshold),
        empty=empty,
        n_images=int(len(frame)),
        n_scored=int(np.isfinite(scored["dice"].to_numpy(dtype=float)).sum()),
        n_true_empty=int(frame["true_empty"].sum()),
        n_both_empty=int(both_empty.sum()),
        n_false_positive_on_empty=int((frame["true_empty"] & ~frame["pred_empty"]).sum()),
        n_missed=int((~frame["true_empty"] & frame["pred_empty"]).sum()),
    )
    if empty == "separate":
        n_true_empty = report["n_true_empty"]
        report["empty_correct_fraction"] = float(both_empty.sum() / n_true_empty) if n_true_empty else float("nan")
        report["empty_false_positive_pixels"] = int(frame.loc[frame["true_empty"], "pred_pixels"].sum())
    return report



# --------------------------------------------------------------------------------------------------
# Per-nodule and detection metrics


def per_nodule_dice(
    y_true, y_prob, nodule_ids: Sequence, *, threshold: float = 0.5, empty: str = "one"
) -> pd.DataFrame:
    """3-D Dice of each nodule: TP, FP and FN pooled over all the slices of the nodule.

    Parameters
    ----------
    y_true, y_prob : array_like, shape (n, height, width[, 1])
        Masks and probabilities of ``n`` crops.
    nodule_ids : sequence of length n
        The nodule each crop belongs to (e.g. ``cropset.table["nodule_id"]``).
    threshold : float
        Binarisation threshold.
    empty : {"one", "zero", "exclude"}
        Value for a nodule whose consensus and prediction are empty on every slice.

    Returns
    -------
    pandas.DataFrame
        One row per nodule (in order of first appearance): ``nodule_id, dice, n_slices,
        true_voxels, pred_voxels, tp``. Its ``dice.mean()`` is the per-nodule mean Dice that
        published LIDC results report (e.g. 82.15 %, Wang et al. 2017).
    """
    _check_empty(empty)
    ids = np.asarray(list(nodule_ids), dtype=object)
    counts = confusion_counts(y_true, y_prob, threshold=threshold, per_image=True)
    if len(ids) != len(counts["tp"]):
        raise InvalidParameterError(f"nodule_ids has {len(ids)} entries for {len(counts['tp'])} crops")
    frame = pd.DataFrame({"nodule_id": ids, "tp": counts["tp"], "fp": counts["fp"], "fn": counts["fn"]})
    grouped = frame.groupby("nodule_id", sort=False).agg(
        n_slices=("tp", "size"), tp=("tp", "sum"), fp=("fp", "sum"), fn=("fn", "sum")
    )
    sums = {k: grouped[k].to_numpy() for k in ("tp", "fp", "fn")}
    grouped["dice"] = np.atleast_1d(_ratio(2 * sums["tp"], 2 * sums["tp"] + sums["fp"] + sums["fn"], sums, empty))
    grouped["true_voxels"] = grouped["tp"] + grouped["fn"]
    grouped["pred_voxels"] = grouped["tp"] + grouped["fp"]
    return grouped.reset_index()[["nodule_id", "dice", "n_slices", "true_voxels", "pred_voxels", "tp"]]


def detection_scores(
    y_true, y_prob, *, threshold: float = 0.5, nodule_ids: Sequence | None = None, connectivity: int = 2
) -> dict:
    """Detection by connected components on each slice.

    A ground-truth component is *detected* when any predicted component overlaps it by at least
    one pixel; a predicted component that overlaps no ground-truth component is a *false positive*.

    Parameters
    ----------
    y_true, y_prob : array_like, shape (n, height, width[, 1])
        Masks and probabilities of ``n`` slices (crops or whole slices).
    threshold : float
        Binarisation threshold.
    nodule_ids : sequence of length n, optional
        The nodule of each slice; adds nodule-level sensitivity (a nodule is detected when any of
        its slices' components is).
    connectivity : {1, 2}
        Pixel connectivity of the components (2 = 8-neighbourhood).

    Returns
    -------
    dict
        ``n_slices, n_true_components, n_detected, sensitivity, n_pred_components,
        n_false_positives, false_positives_per_slice``; with ``nodule_ids`` also ``n_nodules``
        (with any ground truth), ``n_nodules_detected`` and ``nodule_sensitivity``. Sensitivities
        are NaN when there is nothing to detect.
    """
    if connectivity not in (1, 2):
        raise InvalidParameterError(f"connectivity must be 1 or 2, got {connectivity!r}")
    truth, pred = _binarise(y_true, y_prob, threshold)
    truth, pred = _as_slices(truth), _as_slices(pred)
    n_true = n_detected = n_pred = n_false = 0
    detected_slice = np.zeros(len(truth), bool)
    has_truth = np.zeros(len(truth), bool)
    for i, (t, p) in enumerate(zip(truth, pred)):
        true_labels, true_count = label_components(t, connectivity=connectivity)
        pred_labels, pred_count = label_components(p, connectivity=connectivity)
        hit_true = np.unique(true_labels[p & (true_labels > 0)])
        hit_pred = np.unique(pred_labels[t & (pred_labels > 0)])
        n_true += true_count
        n_detected += len(hit_true)
        n_pred += pred_count
        n_false += pred_count - len(hit_pred)
        has_truth[i] = true_count > 0
        detected_slice[i] = len(hit_true) > 0
    result = {
        "n_slices": int(len(truth)),
        "n_true_components": int(n_true),
        "n_detected": int(n_detected),
        "sensitivity": float(n_detected / n_true) if n_true else float("nan"),
        "n_pred_components": int(n_pred),
        "n_false_positives": int(n_false),
        "false_positives_per_slice": float(n_false / len(truth)) if len(truth) else float("nan"),
    }
    if nodule_ids is not None:
        ids = np.asarray(list(nodule_ids), dtype=object)
        if len(ids) != len(truth):
            raise InvalidParameterError(f"nodule_ids has {len(ids)} entries for {len(truth)} slices")
        frame = pd.DataFrame({"nodule_id": ids, "has_truth": has_truth, "detected": detected_slice})
        nodules = frame.groupby("nodule_id", sort=False).agg(has_truth=("has_truth", "any"), detected=("detected", "any"))
        nodules = nodules[nodules["has_truth"]]
        result["n_nodules"] = int(len(nodules))
        result["n_nodules_detected"] = int(nodules["detected"].sum())
        result["nodule_sensitivity"] = float(nodules["detected"].mean()) if len(nodules) else float("nan")
    return result


# --------------------------------------------------------------------------------------------------
# Boundary metrics


def surface_distances(y_true, y_pred, *, spacing: Sequence[float] | float = 1.0, threshold: float = 0.5):
    """Distances (mm) from each boundary pixel of one mask to the nearest boundary pixel of the other.

    The boundary of a mask is its foreground pixels with a background neighbour (the mask minus
    its erosion, full connectivity); a pixel outside the array counts as background.

    Parameters
    ----------
    y_true, y_pred : array_like, 2-D (rows, columns) or 3-D (slices, rows, columns)
        One mask pair (``y_pred`` binarised at ``threshold``).
    spacing : float or sequence of float
        Pixel (voxel) size in mm per axis, e.g. ``(0.703, 0.703)``, or one value for all axes.
    threshold : float
        Binarisation threshold.

    Returns
    -------
    (ndarray, ndarray)
        Distances from the true boundary to the predicted one, and back; both empty arrays when a
        mask is empty.
    """
    truth, pred = _binarise(y_true, y_pred, threshold)
    truth, pred = np.squeeze(truth), np.squeeze(pred)
    if truth.ndim not in (2, 3):
        raise InvalidParameterError(f"boundary metrics take one 2-D or 3-D mask pair, got shape {np.shape(y_true)}")
    sampling = np.broadcast_to(np.asarray(spacing, dtype=float), (truth.ndim,))
    if not np.all(np.isfinite(sampling)) or np.any(sampling <= 0):
        raise InvalidParameterError(f"spacing must be positive (mm per pixel), got {spacing!r}")
    if not truth.any() or not pred.any():
        return np.empty(0), np.empty(0)
    true_edge, pred_edge = _boundary(truth), _boundary(pred)
    to_pred = ndimage.distance_transform_edt(~pred_edge, sampling=sampling)
    to_true = ndimage.distance_transform_edt(~true_edge, sampling=sampling)
    return to_pred[true_edge], to_true[pred_edge]


def hd95(y_true, y_pred, *, spacing: Sequence[float] | float = 1.0, threshold: float = 0.5) -> float:
    """95th-percentile symmetric Hausdorff distance in mm.

    The larger of the two directed 95th percentiles of :func:`surface_distances` (as MONAI's
    ``compute_hausdorff_distance(percentile=95)``). 0 for identical masks; NaN when either mask is
    empty (undefined; count those cases separately).

    Parameters
    ----------
    y_true, y_pred, spacing, threshold
        As in :func:`surface_distances`.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((20, 20)); a[5:10, 5:10] = 1
    >>> b = np.zeros((20, 20)); b[5:10, 7:12] = 1  # shifted 2 pixels to the right
    >>> hd95(a, b, spacing=0.5)  # 2 px * 0.5 mm
    1.0
    """
    forward, backward = surface_distances(y_true, y_pred, spacing=spacing, threshold=threshold)
    if forward.size == 0:
        return float("nan")
    return float(max(np.percentile(forward, 95), np.percentile(backward, 95)))


def mean_surface_distance(y_true, y_pred, *, spacing: Sequence[float] | float = 1.0, threshold: float = 0.5) -> float:
    """Mean symmetric surface distance in mm (the mean over both directions' boundary pixels).

    0 for identical masks; NaN when either mask is empty. Arguments as in :func:`hd95`.
    """
    forward, backward = surface_distances(y_true, y_pred, spacing=spacing, threshold=threshold)
    if forward.size == 0:
        return float("nan")
    return float(np.concatenate([forward, backward]).mean())


# --------------------------------------------------------------------------------------------------
# Keras metrics


class _OverlapMetric(keras.metrics.Metric):
    """Streaming overlap metric: per-image mean (``average="image"``) or pooled pixels (``"global"``).

    Binarises ``y_pred > threshold`` exactly like the NumPy functions, so
    ``average="image"`` equals ``np.nanmean(<fn>(y_true, y_pred, empty=..., per_image=True))`` and
    ``average="global"`` equals ``<fn>(y_true, y_pred)`` over everything seen.
    """

    _kind = "dice"

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        average: str = "image",
        empty: str = "one",
        name: str | None = None,
        dtype: str | None = None,
    ):
        super().__init__(name=name or self._default_name, dtype=dtype)
        if average not in ("image", "global"):
            raise InvalidParameterError(f"average must be 'image' or 'global', got {average!r}")
        _check_empty(empty)
        self.threshold = float(threshold)
        self.average = average
        self.empty = empty
        self.counts = {
            key: self.add_variable(shape=(), initializer="zeros", name=key, dtype="float32")
            for key in ("tp", "fp", "fn", "score_sum", "n_scored")
        }

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth = ops.cast(ops.cast(y_true, "float32") > 0, "float32")
        pred = ops.cast(ops.cast(y_pred, "float32") > self.threshold, "float32")
        tp, fp, fn = confusion.soft_confusion(truth, pred)
        for key, value in (("tp", tp), ("fp", fp), ("fn", fn)):
            self.counts[key].assign_add(ops.sum(value))
        score, defined = self._score(tp, fp, fn)
        self.counts["score_sum"].assign_add(ops.sum(ops.where(defined, score, 0.0)))
        self.counts["n_scored"].assign_add(ops.sum(ops.cast(defined, "float32")))

    def _score(self, tp, fp, fn):
        numerator, denominator = self._parts(tp, fp, fn)
        both_empty = (tp + fp + fn) == 0
        fill = {"one": 1.0, "zero": 0.0, "exclude": 0.0}[self.empty]
        ratio = numerator / ops.maximum(denominator, 1.0)
        score = ops.where(denominator > 0, ratio, ops.where(both_empty, fill, 0.0))
        defined = ops.logical_not(both_empty) if self.empty == "exclude" else ops.ones_like(both_empty, dtype="bool")
        return score, defined

    def _parts(self, tp, fp, fn):
        raise NotImplementedError

    def result(self):
        if self.average == "image":
            n = self.counts["n_scored"]
            return ops.where(n > 0, self.counts["score_sum"] / ops.maximum(n, 1.0), 0.0)
        tp, fp, fn = self.counts["tp"], self.counts["fp"], self.counts["fn"]
        score, _ = self._score(ops.reshape(tp, (1,)), ops.reshape(fp, (1,)), ops.reshape(fn, (1,)))
        return score[0]

    def reset_state(self):
        for variable in self.counts.values():
            variable.assign(0.0)

    def get_config(self):
        return {
            "name": self.name,
            "dtype": self.dtype,
            "threshold": self.threshold,
            "average": self.average,
            "empty": self.empty,
        }


@keras.saving.register_keras_serializable(package="nodulekit")
class DiceCoefficient(_OverlapMetric):
    """Keras Dice metric (name ``"dice"``), agreeing with :func:`dice`.

    Parameters
    ----------
    threshold : float
        Binarisation threshold (``y_pred > threshold``).
    average : {"image", "global"}
        Mean of per-image Dice (default; as :func:`segmentation_report`) or Dice of all pixels seen.
    empty : {"one", "zero", "exclude"}
        Value of a both-empty image (see the module notes).
    name, dtype
        As for any Keras metric.
    """

    _default_name = "dice"

    def _parts(self, tp, fp, fn):
        return 2.0 * tp, 2.0 * tp + fp + fn


@keras.saving.register_keras_serializable(package="nodulekit")
class IoUMetric(_OverlapMetric):
    """Keras IoU (Jaccard) metric (name ``"iou"``), agreeing with :func:`iou`; options as :class:`DiceCoefficient`."""

    _default_name = "iou"

    def _parts(self, tp, fp, fn):
        return tp, tp + fp + fn


@keras.saving.register_keras_serializable(package="nodulekit")
class PrecisionMetric(_OverlapMetric):
    """Keras precision metric (name ``"precision"``), agreeing with :func:`precision`."""

    _default_name = "precision"

    def _parts(self, tp, fp, fn):
        return tp, tp + fp


@keras.saving.register_keras_serializable(package="nodulekit")
class RecallMetric(_OverlapMetric):
    """Keras recall metric (name ``"recall"``), agreeing with :func:`recall`."""

    _default_name = "recall"

    def _parts(self, tp, fp, fn):
        return tp, tp + fn


# --------------------------------------------------------------------------------------------------
# Helpers


def _binarise(y_true, y_pred, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(y_true)
    pred = np.asarray(y_pred)
    if truth.shape != pred.shape:
        raise InvalidParameterError(f"y_true shape {truth.shape} differs from y_pred shape {pred.shape}")
    if not np.isfinite(threshold):
        raise InvalidParameterError(f"threshold must be finite, got {threshold!r}")
    truth = truth > 0 if truth.dtype != bool else truth
    pred = pred > threshold if pred.dtype != bool else pred
    return truth, pred


def _as_slices(mask: np.ndarray) -> np.ndarray:
    if mask.ndim == 4 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim == 2:
        mask = mask[np.newaxis]
    if mask.ndim != 3:
        raise InvalidParameterError(f"expected slices of shape (n, height, width[, 1]), got {mask.shape}")
    return mask


def _boundary(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    eroded = ndimage.binary_erosion(mask, structure, border_value=0)
    return mask & ~eroded


def _check_empty(empty: str) -> None:
    if empty not in EMPTY_POLICIES:
        raise InvalidParameterError(f"empty must be one of {EMPTY_POLICIES}, got {empty!r}")


def _ratio(numerator, denominator, counts, empty: str, *, undefined=None):
    """numerator / denominator; 0/0 → the empty policy when both masks are empty, else 0."""
    _check_empty(empty)
    numerator = np.asarray(numerator, dtype=float)
    denominator = np.asarray(denominator, dtype=float)
    if undefined is None:
        undefined = (np.asarray(counts["tp"]) + np.asarray(counts["fp"]) + np.asarray(counts["fn"])) == 0
    fill = {"one": 1.0, "zero": 0.0, "exclude": np.nan}[empty]
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), 0.0)
    value = np.where((denominator == 0) & undefined, fill, value)
    return _as_output(value)


def _as_output(value: np.ndarray):
    value = np.asarray(value, dtype=float)
    return float(value) if value.ndim == 0 else value
