"""The lung mask: where a whole-scan search looks (scikit-image / SciPy morphology on HU)."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from ..errors import InvalidParameterError
from ..postprocess import bounding_box, fill_holes, keep_largest_components, label_components
from .threads import map_in_threads

__all__ = ["lung_mask", "search_region"]

logger = logging.getLogger(__name__)


def lung_mask(
    hu: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    threshold: float = -400.0,
    keep: int = 2,
    min_fraction: float = 0.05,
    closing_mm: float = 10.0,
    margin_mm: float = 0.0,
    progress: bool = False,
) -> np.ndarray:
    """Mask of the lungs in a CT slice or volume in Hounsfield units.

    1. Air-like voxels: ``hu < threshold``.
    2. The air outside the body touches the image border on every slice: components connected to
       the border of their slice are cleared (:func:`skimage.segmentation.clear_border`).
    3. 3-D connected components; the ``keep`` largest are kept (the two lungs, or one when the
       trachea joins them), ignoring any smaller than ``min_fraction`` of the largest (bowel gas).
    4. Per slice and per lung (each 2-D component on its own, so the mediastinum between the lungs
       is not bridged): a morphological closing of ``closing_mm`` and hole filling bring vessels,
       nodules inside the lung and *juxtapleural* nodules (attached to the chest wall, which only
       dent the air mask) into the mask; then a dilation of ``margin_mm``.

    Parameters
    ----------
    hu : ndarray, shape (rows, columns) or (slices, rows, columns)
        Intensities in Hounsfield units.
    spacing : sequence of float, optional
        Voxel size in mm, ``(row, column)`` or ``(slice, row, column)``; 0.7 mm pixels when omitted.
    threshold : float
        HU below which a voxel counts as air (lung parenchyma is about -850, soft tissue 0..80).
    keep : int
        How many of the largest components to keep (>= 1).
    min_fraction : float
        Components smaller than this fraction of the largest are dropped, in [0, 1).
    closing_mm, margin_mm : float
        Radius of the per-slice closing and of the final dilation, in mm (>= 0). No dilation by
        default: on LIDC-IDRI-0001 a 1 mm margin kept the consensus nodule just as fully inside
        but let a crop-trained model mark the pleura (596 instead of 451 components).
    progress : bool
        Show a progress bar over slices.

    Returns
    -------
    ndarray of bool, shape like ``hu``
        True inside the (slightly enlarged) lungs; all False when no lung is found.

    Raises
    ------
    InvalidParameterError
        On a wrong shape or an option out of range.

    Examples
    --------
    >>> hu = np.full((64, 64), -1000.0, np.float32)  # air around the body
    >>> hu[8:56, 8:56] = 40.0                         # body
    >>> hu[16:48, 12:30] = hu[16:48, 34:52] = -850.0  # two lungs
    >>> mask = lung_mask(hu, spacing=(1.0, 1.0), margin_mm=0)
    >>> bool(mask[30, 20]), bool(mask[30, 44]), bool(mask[2, 2]), bool(mask[10, 32])
    (True, True, False, False)
    """
    from skimage.segmentation import clear_border

    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim not in (2, 3):
        raise InvalidParameterError(f"lung_mask needs a (rows, columns) or (slices, rows, columns) array, got {hu.shape}")
    if int(keep) < 1:
        raise InvalidParameterError(f"keep must be >= 1, got {keep!r}")
    if not 0 <= float(min_fraction) < 1:
        raise InvalidParameterError(f"min_fraction must be in [0, 1), got {min_fraction!r}")
    if float(closing_mm) < 0 or float(margin_mm) < 0:
        raise InvalidParameterError(f"closing_mm and margin_mm must be >= 0, got {closing_mm!r}, {margin_mm!r}")
    volume = hu[None] if hu.ndim == 2 else hu
    pixel = _pixel_spacing(spacing, hu.ndim)

    air = volume < float(threshold)

    def clear(index: int) -> None:
        air[index] = clear_border(air[index])

    map_in_threads(clear, range(len(air)))  # slice by slice, each on its own: any order, the same mask
    mask = air  # the lungs replace the air inside its box; outside it the air is all False already
    box = bounding_box(air)  # the same components inside the box of the air, a fraction of the volume
    if box is not None:
        mask[box] = keep_largest_components(air[box], connectivity=1, keep=int(keep), min_fraction=float(min_fraction))
    bar = tqdm(total=len(mask), desc="lung mask", unit="slice", disable=not progress)

    def close(index: int) -> None:
        if mask[index].any():
            mask[index] = _close_fill_dilate(mask[index], pixel, float(closing_mm), float(margin_mm))
        bar.update()

    map_in_threads(close, range(len(mask)))  # each slice on its own (the distance transforms release the GIL)
    bar.close()
    return mask[0] if hu.ndim == 2 else mask



#: Below this lung-mask volume (ml) :func:`search_region` warns: a whole chest holds litres; the 12
#: slices of LIDC-IDRI-0001's upper abdomen give about 20 ml of gas taken for lung, its lowest 12
#: slices with lung about 28 ml.
SMALL_LUNG_ML = 100.0


def search_region(
    images: np.ndarray, *, units: str, spacing: Sequence[float], lungs: bool | str = "auto", options: dict | None = None
) -> np.ndarray | None:
    """Where a whole-scan search looks: the :func:`lung_mask` of CT slices, or None (everywhere).

    Parameters
    ----------
    images : ndarray, shape (slices, rows, columns)
    units : str
        Units of ``images`` (``"HU"``, ``"uint8"``, ...).
    spacing : sequence of float
        Voxel size in mm ``(slice, row, column)``, NaN where unknown (0.7 mm pixels are then assumed).
    lungs : bool or "auto"
        Use the lung mask; ``"auto"``: for images in HU of at least 256x256 pixels (whole CT slices).
    options : dict, optional
        Keyword options of :func:`lung_mask`.

    Returns
    -------
    ndarray of bool or None
        The lung mask (all False, with a warning, when no lung is found: nothing is searched), or
        None when the lungs are not used.

    Raises
    ------
    InvalidParameterError
        When ``lungs`` is not True, False or "auto".
    """
    use_lungs = lungs if isinstance(lungs, bool) else (units == "HU" and min(images.shape[1:]) >= 256)
    if lungs not in (True, False, "auto"):
        raise InvalidParameterError(f"lungs must be True, False or 'auto', got {lungs!r}")
    if not use_lungs:
        return None
    pixel = spacing if np.isfinite(spacing[1:]).all() else None
    lung = lung_mask(images, spacing=pixel, progress=False, **(options or {}))
    if not lung.any():  # searching a head or abdomen slab lists confident false positives
        logger.warning(
            "no lung found in %s (no chest in view, or not in HU?): nothing searched, no nodules; lungs=False "
            "(--lungs off) searches the whole image",
            "x".join(map(str, images.shape)),
        )
    elif pixel is not None and np.isfinite(spacing[0]):
        volume_ml = float(lung.sum()) * float(np.prod(spacing)) / 1000.0
        if volume_ml < SMALL_LUNG_ML:  # a lung apex or base alone, or gas below the diaphragm taken for lung
            logger.warning(
                "the lung mask of %s holds only %.0f ml (a whole chest holds litres): a slab at the lung's apex or base, "
                "or no lung in view and bowel or stomach gas taken for lung; the second stage was trained on whole "
                "chests and may score candidates there too high",
                "x".join(map(str, images.shape)),
                volume_ml,
            )
    return lung


def _close_fill_dilate(mask2d: np.ndarray, pixel: tuple[float, float], closing_mm: float, margin_mm: float) -> np.ndarray:
    """Close and fill each lung of a slice on its own (so the mediastinum between them stays out), then dilate."""
    labels, count = label_components(mask2d, connectivity=1)
    out = np.zeros_like(mask2d)
    for found, number in zip(ndimage.find_objects(labels), range(1, count + 1)):
        # The lung's own box: a closing by a disk never leaves the box of what it closes, a hole
        # touching the box's edge is open either way, and _close_fill pads the box for the disk.
        out[found] |= _close_fill(labels[found] == number, pixel, closing_mm)
    if margin_mm > 0:
        out = ndimage.distance_transform_edt(~out, sampling=pixel) <= margin_mm
    return out


def _close_fill(mask2d: np.ndarray, pixel: tuple[float, float], closing_mm: float) -> np.ndarray:
    """Closing and hole filling of one 2-D mask with Euclidean distances (any radius, linear time)."""
    if closing_mm > 0:
        pad = int(np.ceil(closing_mm / min(pixel))) + 1
        padded = np.pad(mask2d, pad)
        dilated = ndimage.distance_transform_edt(~padded, sampling=pixel) <= closing_mm
        closed = ndimage.distance_transform_edt(dilated, sampling=pixel) > closing_mm
        mask2d = closed[pad:-pad, pad:-pad] | mask2d
    return fill_holes(mask2d)


def _pixel_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, float]:
    if spacing is None:
        return (0.7, 0.7)
    values = [float(s) for s in spacing]
    if len(values) not in (2, 3) or not all(np.isfinite(values)) or min(values) <= 0:
        raise InvalidParameterError(f"spacing must be 2 or 3 positive mm values, got {spacing!r}")
    return (values[-2], values[-1])
