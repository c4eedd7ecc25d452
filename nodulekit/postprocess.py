"""Post-processing of segmentations: connected components, hole filling, test-time augmentation.

Every module that labels components goes through :func:`label_components`, which takes the
connectivity as a required keyword, so each caller states how its components touch:

========================================  =============  =======================================
caller                                    connectivity   neighbourhood
========================================  =============  =======================================
:func:`keep_central_component` (crops)    2              8-connected within a crop
``inference.lung_mask`` (air, 3-D)        1              6-connected (faces)
``inference.lung_mask`` (per slice)       1              4-connected
``inference.measure_nodules`` (volume)    3              26-connected
``inference.measure_nodules`` (stack)     3, in slices   8-connected within each image
``detection.blob_candidates`` (ball)      3              26-connected
``crops.crops_from_volume`` (3-D mask)    1              6-connected (faces)
``metrics.detection_scores``              1 or 2         its ``connectivity`` (default 8)
``overlay.overlay_rgb`` (boxes)           2              8-connected
``plots.study.plot_lung_ct``              1              4-connected
========================================  =============  =======================================

Connectivity follows :func:`scipy.ndimage.generate_binary_structure` (and scikit-image): 1 joins
pixels that share a face, ``ndim`` joins every pixel of the 3x3(x3) neighbourhood.

The functions are small and pure (NumPy in, NumPy out), in the manner of MONAI's
``monai/transforms/utils.py`` under ``monai/transforms/post/array.py``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from scipy import ndimage

from .errors import InvalidParameterError

__all__ = [
    "label_components",
    "component_sizes",
    "bounding_box",
    "keep_largest_components",
    "keep_central_component",
    "remove_small_objects",
    "fill_holes",
    "postprocess",
    "dihedral",
    "dihedral_tta",
    "first_output",
]


# --------------------------------------------------------------------------------------------------
# Connected components


def label_components(mask: np.ndarray, *, connectivity: int, within_slices: bool = False) -> tuple[np.ndarray, int]:
    """Label the connected components of a binary mask.

    Parameters
    ----------
    mask : ndarray, shape (rows, columns) or (slices, rows, columns)
        Non-zero = foreground.
    connectivity : int
        1 .. ``mask.ndim``: how many axes two neighbouring pixels may differ along (1 = faces only,
        ``ndim`` = the full 3x3 or 3x3x3 neighbourhood).
    within_slices : bool
        3-D masks only: components do not cross slices (the neighbours in the slices above and
        below are dropped: connectivity 1 is then 4-connected, 2 and 3 are 8-connected within each
        slice; labels stay unique over the stack).

    Returns
    -------
    labels : ndarray of int32, shape like ``mask``
        0 background, 1 .. ``count`` the components in raster order of their first pixel.
    count : int

    Raises
    ------
    InvalidParameterError
        ``connectivity`` outside 1 .. ``mask.ndim``, or ``within_slices`` on a mask that is not 3-D.

    Examples
    --------
    >>> mask = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    >>> label_components(mask, connectivity=1)[1], label_components(mask, connectivity=2)[1]
    (2, 1)
    """
    mask = np.asarray(mask)
    if not isinstance(connectivity, (int, np.integer)) or not 1 <= connectivity <= max(mask.ndim, 1):
        raise InvalidParameterError(f"connectivity must be an int in 1..{mask.ndim} for a {mask.ndim}-D mask, got {connectivity!r}")
    structure = ndimage.generate_binary_structure(mask.ndim, int(connectivity))
    if within_slices:
        if mask.ndim != 3:
            raise InvalidParameterError(f"within_slices needs a (slices, rows, columns) mask, got shape {mask.shape}")
        structure[0] = structure[2] = False
    labels, count = ndimage.label(mask, structure=structure)
    return labels, int(count)


def component_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Pixels (voxels) in each component 1 .. ``count`` of a label image, as int64 (count,).

    Counted slice by slice: ``np.bincount`` copies its input to int64, which for a 600-slice
    512x512 label volume is 1.26 GB more at the peak of a whole-scan run.
    """
    labels = np.asarray(labels)
    sizes = np.zeros(int(count) + 1, np.int64)
    for part in labels.reshape(-1, labels.shape[-1]) if labels.ndim < 3 else labels:
        sizes += np.bincount(part.ravel(), minlength=int(count) + 1)[: int(count) + 1]
    return sizes[1:]


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box (one slice per axis) that holds every non-zero element of ``mask``; None when there is none.

    ``mask`` may be boolean or a label array of any dimension (a 3-D scan, a 2-D image). One pass
    over the array finds the extent along the first axis, a second over that extent only the
    others (a whole scan's nodules or lungs fill part of it).

    Examples
    --------
    >>> mask = np.zeros((4, 5, 6), bool); mask[1:3, 2, 1:4] = True
    >>> bounding_box(mask)
    (slice(1, 3, None), slice(2, 3, None), slice(1, 4, None))
    >>> bounding_box(np.array([[0, 1, 2, 0]]))
    (slice(0, 1, None), slice(1, 3, None))
    >>> bounding_box(np.zeros((2, 2, 2), np.int32)) is None
    True
    """
    mask = np.asarray(mask)
    if mask.ndim == 0:
        raise InvalidParameterError("bounding_box needs an array of at least one dimension, got a scalar")
    planes = np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))
    if not len(planes):
        return None
    inside = mask[planes[0] : planes[-1] + 1]
    box = [slice(int(planes[0]), int(planes[-1]) + 1)]
    for axis in range(1, mask.ndim):
        found = np.flatnonzero(inside.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(found[0]), int(found[-1]) + 1))
    return tuple(box)


def keep_largest_components(mask: np.ndarray, *, connectivity: int, keep: int = 1, min_fraction: float = 0.0) -> np.ndarray:
    """Keep the ``keep`` largest components, dropping any smaller than ``min_fraction`` of the largest.

    Parameters
    ----------
    mask : ndarray, shape (rows, columns) or (slices, rows, columns)
    connectivity : int
        As in :func:`label_components`.
    keep : int
        How many components to keep (>= 1); equal sizes go to the component met first in raster order.
    min_fraction : float
        In [0, 1): components below this fraction of the largest one are dropped too.

    Returns
    -------
    ndarray of bool, shape like ``mask``
        All False when ``mask`` is empty.
    """
    if int(keep) < 1:
        raise InvalidParameterError(f"keep must be >= 1, got {keep!r}")
    if not 0 <= float(min_fraction) < 1:
        raise InvalidParameterError(f"min_fraction must be in [0, 1), got {min_fraction!r}")
    labels, count = label_components(mask, connectivity=connectivity)
    if count == 0:
        return np.zeros(labels.shape, bool)
    sizes = component_sizes(labels, count)
    order = np.argsort(-sizes, kind="stable")[: int(keep)]
    chosen = [k + 1 for k in order if sizes[k] >= float(min_fraction) * sizes[order[0]]]
    if len(chosen) > 4:
        return np.isin(labels, chosen)
    kept = labels == chosen[0]  # a few labels: comparisons, without np.isin's int64 temporaries (a scan's lungs: 10x faster)
    for label in chosen[1:]:
        kept |= labels == label
    return kept


def keep_central_component(mask: np.ndarray, *, connectivity: int = 2, fill: bool = True) -> np.ndarray:
    """Keep the component at the image centre, or the one with the pixel nearest to it.

    Parameters
    ----------
    mask : ndarray of bool, shape (rows, columns)
    connectivity : int
        As in :func:`label_components` (default 2: 8-connected, as the real-CT results were measured).
    fill : bool
        Fill the holes of the kept component (:func:`fill_holes`).

    Returns
    -------
    ndarray of bool, shape (rows, columns)
        Empty when ``mask`` is empty.

    Examples
    --------
    >>> mask = np.zeros((9, 9), bool)
    >>> mask[3:6, 3:6] = mask[0, 0] = True
    >>> int(keep_central_component(mask).sum())
    9
    """
    labels, count = label_components(mask, connectivity=connectivity)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    if count > 1:
        h, w = labels.shape
        rows, cols = np.nonzero(labels)
        distance = (rows - (h - 1) / 2.0) ** 2 + (cols - (w - 1) / 2.0) ** 2
        best = np.zeros(count + 1) + np.inf
        np.minimum.at(best, labels[rows, cols], distance)
        keep = labels == int(np.argmin(best))
    else:
        keep = labels == 1
    return fill_holes(keep) if fill else keep


def remove_small_objects(mask: np.ndarray, *, min_size: int, connectivity: int, within_slices: bool = False) -> np.ndarray:
    """Drop the components with fewer than ``min_size`` pixels (voxels).

    Parameters
    ----------
    mask : ndarray, shape (rows, columns) or (slices, rows, columns)
    min_size : int
        Smallest component kept, >= 1 (1 keeps everything).
    connectivity, within_slices
        As in :func:`label_components`.

    Returns
    -------
    ndarray of bool, shape like ``mask``
    """
    if int(min_size) < 1:
        raise InvalidParameterError(f"min_size must be >= 1, got {min_size!r}")
    labels, count = label_components(mask, connectivity=connectivity, within_slices=within_slices)
    big = np.concatenate([[False], component_sizes(labels, count) >= int(min_size)])
    return big[labels]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a binary mask (background not connected to the border, faces-connected)."""
    return ndimage.binary_fill_holes(mask)


def postprocess(probabilities: np.ndarray, *, threshold: float = 0.5) -> np.ndarray:
    """Binarise crops at ``threshold`` and apply :func:`keep_central_component` to each.

    Parameters
    ----------
    probabilities : ndarray, shape (n, rows, columns)
    threshold : float

    Returns
    -------
    ndarray of uint8, shape (n, rows, columns)
    """
    binary = np.asarray(probabilities) >= threshold
    return np.stack([keep_central_component(m) for m in binary]).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Test-time augmentation


def dihedral(image: np.ndarray, k: int, flip: int) -> np.ndarray:
    """One of the 8 symmetries of the square: ``k`` quarter turns, then a left-right flip if ``flip``.

    ``image`` is (rows, columns[, channels]); the first two axes are turned.
    """
    out = np.rot90(image, k, axes=(0, 1))
    return out[:, ::-1] if flip else out


def dihedral_tta(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    """Mean probability over the 8 flips/rotations of each image (each mapped back before averaging).

    Parameters
    ----------
    predict : callable
        Maps square images ``(n, h, w)`` to probabilities ``(n, h, w)``.
    images : ndarray, shape (n, h, w)
        Square images, preprocessed or raw as ``predict`` expects (flips commute with the
        per-image steps of the paper's pipeline).

    Returns
    -------
    ndarray of float32, shape (n, h, w)

    Examples
    --------
    >>> images = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    >>> bool(np.allclose(dihedral_tta(lambda x: x * 2, images), images * 2))
    True
    """
    images = np.asarray(images, dtype=np.float32)
    total = np.zeros(images.shape, dtype=np.float64)
    for k in range(4):
        for flip in range(2):
            view = np.ascontiguousarray(np.stack([dihedral(im, k, flip) for im in images]))
            pred = np.asarray(predict(view))
            total += np.rot90(pred[:, :, ::-1] if flip else pred, -k, axes=(1, 2))
    return (total / 8.0).astype(np.float32)


def first_output(prediction: Any) -> Any:
    """The segmentation output of a model's prediction: the first of a dict, list or tuple of outputs.

    Models with deep supervision or attention maps return several outputs; the mask comes first.
    """
    if isinstance(prediction, dict):
        prediction = next(iter(prediction.values()))
    if isinstance(prediction, (list, tuple)):
        prediction = prediction[0]
    return prediction
