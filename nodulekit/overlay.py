"""Overlays without Matplotlib: a CT slice as grey levels with the found nodules drawn in colour.

:func:`overlay_rgb` draws straight into an RGB array, fast enough for one PNG per slice of a whole
scan (:func:`save_overlay`, ``inference.write_segmentation``); the Matplotlib figures built on it
live in :mod:`nodulekit.plots.inference`.

Colours: predicted contour red, ground-truth contour yellow, one green box per predicted nodule.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import InvalidParameterError
from .postprocess import label_components
from .utils import atomic_write

__all__ = ["LUNG_WINDOW", "display_scale", "overlay_rgb", "save_overlay"]

#: Lung window (low, high) in HU used to display CT: centre -600, width 1500.
LUNG_WINDOW = (-1350.0, 150.0)

_RED = (255, 40, 40)
_YELLOW = (255, 220, 0)
_GREEN = (0, 220, 0)


def display_scale(image: np.ndarray, *, window: tuple[float, float] | None | str = "auto") -> np.ndarray:
    """Map intensities to uint8 grey levels for display.

    Parameters
    ----------
    image : ndarray, shape (rows, columns)
    window : (low, high), None or "auto"
        Intensity range shown black..white. ``"auto"``: the lung window :data:`LUNG_WINDOW` when
        the image looks like HU (values below -500), else the 0.5..99.5 percentiles. ``None``: the
        image's min..max.

    Returns
    -------
    ndarray of uint8, shape (rows, columns)
    """
    image = np.asarray(image, dtype=np.float32)
    if isinstance(window, str):
        if window != "auto":
            raise InvalidParameterError(f"window must be (low, high), None or 'auto', got {window!r}")
        if image.size and float(image.min()) < -500:
            low, high = LUNG_WINDOW
        else:
            low, high = (np.percentile(image, (0.5, 99.5)) if image.size else (0.0, 1.0))
    elif window is None:
        low, high = (float(image.min()), float(image.max())) if image.size else (0.0, 1.0)
    else:
        low, high = (float(window[0]), float(window[1]))
    if not high > low:
        high = low + 1.0
    return (np.clip((image - low) / (high - low), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _boxes(mask: np.ndarray, margin: int) -> list[tuple[int, int, int, int]]:
    """(row0, col0, row1, col1) inclusive box of each 8-connected component, grown by ``margin``."""
    labels, _ = label_components(mask, connectivity=2)
    rows, columns = mask.shape
    boxes = []
    for found in ndimage.find_objects(labels):
        if found is None:
            continue
        r0, r1 = found[0].start - margin, found[0].stop - 1 + margin
        c0, c1 = found[1].start - margin, found[1].stop - 1 + margin
        boxes.append((max(r0, 0), max(c0, 0), min(r1, rows - 1), min(c1, columns - 1)))
    return boxes


def overlay_rgb(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    truth: np.ndarray | None = None,
    window: tuple[float, float] | None | str = "auto",
    boxes: bool = True,
    contours: bool = True,
    box_margin: int = 3,
) -> np.ndarray:
    """An RGB picture of a slice with the predicted nodules outlined (red) and boxed (green).

    Parameters
    ----------
    image : ndarray, shape (rows, columns)
        The slice (HU or any intensity; see :func:`display_scale`).
    mask : ndarray, shape (rows, columns), optional
        Predicted nodule mask (non-zero = nodule).
    truth : ndarray, shape (rows, columns), optional
        Ground-truth mask, outlined in yellow.
    window : (low, high), None or "auto"
        Display range, as in :func:`display_scale`.
    boxes, contours : bool
        Draw a green box around each predicted component / the red contour of the prediction.
    box_margin : int
        Pixels between a nodule and its box (>= 0).

    Returns
    -------
    ndarray of uint8, shape (rows, columns, 3)

    Examples
    --------
    >>> mask = np.zeros((32, 32), np.uint8); mask[10:15, 10:15] = 1
    >>> rgb = overlay_rgb(np.zeros((32, 32)), mask, box_margin=2)
    >>> tuple(int(v) for v in rgb[8, 12]), tuple(int(v) for v in rgb[10, 12])
    ((0, 220, 0), (255, 40, 40))
    """
    from skimage.draw import rectangle_perimeter
    from skimage.segmentation import find_boundaries

    image = np.asarray(image)
    if image.ndim != 2:
        raise InvalidParameterError(f"overlay_rgb needs one 2-D slice, got shape {image.shape}")
    if int(box_margin) < 0:
        raise InvalidParameterError(f"box_margin must be >= 0, got {box_margin!r}")
    for name, array in (("mask", mask), ("truth", truth)):
        if array is not None and np.shape(array) != image.shape:
            raise InvalidParameterError(f"{name} shape {np.shape(array)} differs from image shape {image.shape}")
    grey = display_scale(image, window=window)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if truth is not None and np.any(truth):
        rgb[find_boundaries(np.asarray(truth) > 0, mode="inner")] = _YELLOW
    if mask is not None and np.any(mask):
        mask = np.asarray(mask) > 0
        if contours:
            rgb[find_boundaries(mask, mode="inner")] = _RED
        if boxes:
            for r0, c0, r1, c1 in _boxes(mask, int(box_margin)):
                # rectangle_perimeter draws just outside (start, end): pass the inside of the box.
                rr, cc = rectangle_perimeter((r0 + 1, c0 + 1), end=(r1 - 1, c1 - 1), shape=mask.shape, clip=True)
                rgb[rr, cc] = _GREEN
    return rgb


def save_overlay(path: str | os.PathLike, image: np.ndarray, mask: np.ndarray | None = None, **options) -> Path:
    """Write :func:`overlay_rgb` of a slice as a PNG, atomically. Options as in :func:`overlay_rgb`."""
    from PIL import Image

    path = Path(path)
    rgb = overlay_rgb(image, mask, **options)
    with atomic_write(path, "wb") as handle:
        Image.fromarray(rgb).save(handle, format="PNG")
    return path
