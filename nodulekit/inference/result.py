"""What a whole-scan segmentation returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["SegmentationResult"]


@dataclass
class SegmentationResult:
    """What :meth:`Segmenter.segment` found.

    Attributes
    ----------
    probabilities : ndarray of float32, shape (slices, rows, columns)
        Nodule probability per voxel (0 outside the lung mask).
    mask : ndarray of uint8, shape like ``probabilities``
        The kept nodules (after the threshold and the size filter), {0, 1}.
    labels : ndarray of int32, shape like ``probabilities``
        Voxel label = ``nodule_id`` of the nodule table, 0 elsewhere.
    nodules : pandas.DataFrame
        One row per nodule, columns :data:`NODULE_COLUMNS`.
    spacing : tuple of float
        Voxel size in mm (slice, row, column); NaN where unknown.
    lung : ndarray of bool or None
        The lung mask the search was restricted to.
    images : ndarray of float32
        The input intensities (HU for a Volume), for overlays.
    info : dict
        Mode, window, overlap, threshold, wall-clock timings in seconds (``*_s``), CPU seconds
        (``cpu_s``), numbers of windows/slices.
    """

    probabilities: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    nodules: pd.DataFrame
    spacing: tuple[float, float, float]
    lung: np.ndarray | None
    images: np.ndarray
    info: dict = field(default_factory=dict)
