"""Nodules as measured objects: connected components in mm, and their match with ground truth.

References
----------
.. [1] S. G. Armato III et al., "The Lung Image Database Consortium (LIDC) and Image Database
   Resource Initiative (IDRI)", Med. Phys. 38:915-931, 2011 (nodules >= 3 mm).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from ..errors import InvalidParameterError
from ..postprocess import bounding_box, component_sizes, label_components
from .result import SegmentationResult

__all__ = ["NODULE_COLUMNS", "measure_labels", "measure_nodules", "match_nodules"]

#: Columns of the nodule table returned by :func:`measure_nodules`.
NODULE_COLUMNS = (
    "nodule_id",  # 1 = largest by volume
    "image",  # which image/stack the nodule is in (0 for a single volume)
    "slice_first",
    "slice_last",
    "n_slices",
    "largest_slice",  # slice with the largest nodule area, where the diameter is measured
    "centroid_z",
    "centroid_y",
    "centroid_x",  # voxel coordinates (fractional)
    "centroid_z_mm",
    "centroid_y_mm",
    "centroid_x_mm",  # mm from the first voxel's centre
    "diameter_px",
    "diameter_mm",  # longest axial diameter: max Feret diameter on the largest slice
    "equivalent_diameter_mm",  # diameter of the sphere of equal volume (circle of equal area for 2-D images)
    "area_mm2",  # area on the largest slice
    "volume_mm3",
    "voxels",
    "mean_hu",
    "mean_probability",
    "max_probability",
)


def measure_nodules(
    mask: np.ndarray,
    *,
    spacing: Sequence[float],
    probabilities: np.ndarray | None = None,
    hu: np.ndarray | None = None,
    connect_slices: bool = True,
    min_diameter_mm: float = 0.0,
    min_voxels: int = 1,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Connected components of a nodule mask, each measured.

    Parameters
    ----------
    mask : ndarray, shape (slices, rows, columns) or (rows, columns)
        Binary nodule mask.
    spacing : sequence of float
        Voxel size in mm ``(slice, row, column)`` (or ``(row, column)`` for a 2-D mask); NaN where
        unknown (sizes in mm are then NaN).
    probabilities : ndarray, optional
        Model probabilities, same shape, for the mean/max probability columns.
    hu : ndarray, optional
        Intensities in HU, same shape, for the ``mean_hu`` column.
    connect_slices : bool
        True: a volume — components are 3-D (26-connected) across slices. False: a stack of
        independent images — components are 2-D (8-connected) within each image, ``image`` is the
        image index and ``equivalent_diameter_mm`` is that of the circle of equal area.
    min_diameter_mm : float
        Drop nodules whose longest axial diameter is smaller (ignored when the pixel spacing is
        unknown), >= 0.
    min_voxels : int
        Drop components with fewer voxels, >= 1.

    Returns
    -------
    labels : ndarray of int32, shape like ``mask``
        0 background, ``k`` = the nodule with ``nodule_id`` k (1 = the largest by voxel count).
    table : pandas.DataFrame
        One row per nodule with :data:`NODULE_COLUMNS`. The longest axial diameter is the maximum
        Feret diameter (:func:`skimage.measure.regionprops`, with the pixel spacing) on the slice
        where the nodule's area is largest, edge to edge: a single pixel measures one pixel.

    Raises
    ------
    InvalidParameterError
        On mismatched shapes or a bad spacing.

    Examples
    --------
    >>> mask = np.zeros((3, 20, 20), np.uint8)
    >>> mask[1, 5:9, 5:15] = 1                     # 4 x 10 pixels on one slice
    >>> _, table = measure_nodules(mask, spacing=(2.5, 0.5, 0.5))
    >>> round(float(table.loc[0, "volume_mm3"]), 2), int(table.loc[0, "n_slices"])
    (25.0, 1)
    """
    from skimage.measure import regionprops

    mask = np.asarray(mask)
    mask = mask if mask.dtype == bool else mask > 0  # no copy of a whole scan's boolean mask
    two_d = mask.ndim == 2
    if two_d:
        mask = mask[None]
    if mask.ndim != 3:
        raise InvalidParameterError(f"mask must be 2-D or 3-D, got shape {mask.shape}")
    values = [float(s) for s in spacing]
    if len(values) == 2:
        values = [float("nan"), *values]
    if len(values) != 3 or any(np.isfinite(v) and v <= 0 for v in values):
        raise InvalidParameterError(f"spacing must be 2 or 3 positive mm values (NaN where unknown), got {spacing!r}")
    if float(min_diameter_mm) < 0 or int(min_voxels) < 1:
        raise InvalidParameterError(f"min_diameter_mm must be >= 0 and min_voxels >= 1, got {min_diameter_mm}, {min_voxels}")
    extras = {}
    for name, array in (("probabilities", probabilities), ("hu", hu)):
        if array is not None:
            array = np.asarray(array, dtype=np.float32)
            array = array[None] if array.ndim == 2 else array
            if array.shape != mask.shape:
                raise InvalidParameterError(f"{name} shape {array.shape} differs from mask shape {mask.shape}")
            extras[name] = array

    # 26-connected across slices, or 8-connected within each image of a stack; labelled inside the
    # mask's bounding box only (a whole scan's mask fills a small part of it), in the same raster order
    labels = np.zeros(mask.shape, np.int32)
    box = bounding_box(mask)
    found, count, offset = np.zeros((1, 1, 1), np.int32), 0, np.zeros(3, int)
    if box is not None:
        found, count = label_components(mask[box], connectivity=3, within_slices=not connect_slices)
        found, count = _drop_small(found, count, int(min_voxels))
        offset = np.array([b.start for b in box])
        labels[box] = found
    pixel_known = bool(np.isfinite(values[1]) and np.isfinite(values[2]))
    rows = []
    for region in regionprops(found):
        row = _measure_component(labels, region.label, region.coords + offset, values, connect_slices, extras)
        if pixel_known and row["diameter_mm"] < float(min_diameter_mm):
            continue
        rows.append(row)
    rows.sort(key=lambda r: (-r["voxels"], r["slice_first"], r["centroid_y"], r["centroid_x"]))
    lookup = np.zeros(count + 1, np.int32)
    for number, row in enumerate(rows, start=1):
        lookup[row.pop("label")] = number
        row["nodule_id"] = number
    if box is not None:
        inside = labels[box]
        for plane, found_plane in zip(inside, found):  # slice by slice: no whole-box temporary
            plane[...] = lookup[found_plane]
    table = pd.DataFrame(rows, columns=list(NODULE_COLUMNS))
    return (labels[0] if two_d else labels), table


def _drop_small(labels: np.ndarray, count: int, min_voxels: int) -> tuple[np.ndarray, int]:
    """Components of fewer than ``min_voxels`` voxels dropped, the others numbered 1.. in their order.

    The same labels as labelling the mask without the small components again
    (:func:`~nodulekit.postprocess.remove_small_objects` then :func:`~nodulekit.postprocess.label_components`):
    labels follow the raster order of each component's first voxel, which dropping others keeps.
    An int32 ``labels`` is relabelled in place, slice by slice, and returned.
    """
    if min_voxels <= 1 or count == 0:
        return labels, count
    big = component_sizes(labels, count) >= min_voxels
    lookup = np.zeros(count + 1, np.int32)
    lookup[1:][big] = np.arange(1, int(big.sum()) + 1, dtype=np.int32)
    if labels.dtype != np.int32 or labels.ndim not in (2, 3):
        return lookup[labels], int(big.sum())
    for plane in labels if labels.ndim == 3 else [labels]:  # in place, slice by slice: no whole-box temporary
        plane[...] = lookup[plane]
    return labels, int(big.sum())


def measure_labels(
    labels: np.ndarray,
    ids: Sequence[int],
    *,
    spacing: Sequence[float],
    probabilities: np.ndarray | None = None,
    hu: np.ndarray | None = None,
) -> pd.DataFrame:
    """Measure components that are already labelled (3-D), as :func:`measure_nodules` measures its own.

    Parameters
    ----------
    labels : ndarray of int, shape (slices, rows, columns)
        Component labels.
    ids : sequence of int
        The labels to measure, each with at least one voxel.
    spacing, probabilities, hu
        As in :func:`measure_nodules`.

    Returns
    -------
    pandas.DataFrame
        One row per id (same order) with :data:`NODULE_COLUMNS`, ``nodule_id`` = the label.

    Raises
    ------
    InvalidParameterError
        On a label volume that is not 3-D, arrays of other shapes, or an id without voxels.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InvalidParameterError(f"labels must be 3-D, got shape {labels.shape}")
    values = [float(s) for s in spacing]
    if len(values) != 3:
        raise InvalidParameterError(f"spacing must be 3 mm values (slice, row, column), got {spacing!r}")
    extras = {}
    for name, array in (("probabilities", probabilities), ("hu", hu)):
        if array is not None:
            if np.shape(array) != labels.shape:
                raise InvalidParameterError(f"{name} shape {np.shape(array)} differs from labels shape {labels.shape}")
            extras[name] = np.asarray(array)
    objects = ndimage.find_objects(labels)
    rows = []
    for label in (int(i) for i in ids):
        box = objects[label - 1] if 0 < label <= len(objects) else None
        if box is None:
            raise InvalidParameterError(f"label {label} has no voxel")
        coords = np.argwhere(labels[box] == label) + [s.start for s in box]
        row = _measure_component(labels, label, coords, values, True, extras)
        row.pop("label")
        rows.append({"nodule_id": label, **row})
    return pd.DataFrame(rows, columns=list(NODULE_COLUMNS))


def _measure_component(labels: np.ndarray, label: int, coords: np.ndarray, spacing: list, connect_slices: bool, extras: dict) -> dict:
    """One component's row of the nodule table (without ``nodule_id``; ``label`` = its label)."""
    from skimage.measure import regionprops

    slice_mm, row_mm, column_mm = spacing
    pixel_known = np.isfinite(row_mm) and np.isfinite(column_mm)
    pixel = (row_mm, column_mm) if pixel_known else (1.0, 1.0)
    z0, z1 = int(coords[:, 0].min()), int(coords[:, 0].max())
    per_slice = np.bincount(coords[:, 0] - z0)
    largest = z0 + int(np.argmax(per_slice))
    flat = (labels[largest] == label).astype(np.uint8)
    feret = regionprops(flat, spacing=pixel)[0].feret_diameter_max
    feret_px = regionprops(flat)[0].feret_diameter_max if pixel_known else feret
    diameter_mm = feret if pixel_known else float("nan")
    area_mm2 = per_slice.max() * row_mm * column_mm
    volume_mm3 = len(coords) * slice_mm * row_mm * column_mm
    if connect_slices:
        equivalent = (6.0 * volume_mm3 / np.pi) ** (1.0 / 3.0)
    else:
        equivalent = 2.0 * np.sqrt(area_mm2 / np.pi)
    centroid = coords.mean(axis=0)
    index = tuple(coords.T)
    return {
        "label": label,
        "image": 0 if connect_slices else z0,
        "slice_first": z0,
        "slice_last": z1,
        "n_slices": z1 - z0 + 1,
        "largest_slice": largest,
        "centroid_z": float(centroid[0]),
        "centroid_y": float(centroid[1]),
        "centroid_x": float(centroid[2]),
        "centroid_z_mm": float(centroid[0] * slice_mm),
        "centroid_y_mm": float(centroid[1] * row_mm),
        "centroid_x_mm": float(centroid[2] * column_mm),
        "diameter_px": float(feret_px),
        "diameter_mm": float(diameter_mm),
        "equivalent_diameter_mm": float(equivalent),
        "area_mm2": float(area_mm2),
        "volume_mm3": float(volume_mm3) if connect_slices else float("nan"),
        "voxels": int(len(coords)),
        "mean_hu": float(np.asarray(extras["hu"][index], np.float32).mean()) if "hu" in extras else float("nan"),
        "mean_probability": float(np.asarray(extras["probabilities"][index], np.float32).mean()) if "probabilities" in extras else float("nan"),
        "max_probability": float(np.asarray(extras["probabilities"][index], np.float32).max()) if "probabilities" in extras else float("nan"),
    }


def match_nodules(result: SegmentationResult, truth: np.ndarray) -> pd.DataFrame:
    """Compare found nodules with ground-truth nodules (e.g. the radiologists' 50 % consensus).

    Parameters
    ----------
    result : SegmentationResult
    truth : ndarray, shape like ``result.mask``
        Binary ground-truth mask.

    Returns
    -------
    pandas.DataFrame
        One row per ground-truth nodule (components found as in :func:`measure_nodules`):
        ``truth_id``, its ``diameter_mm``, ``volume_mm3``, ``centroid_z/y/x``; ``found`` (a
        predicted nodule overlaps it), ``matched_ids`` (the overlapping ``nodule_id``\\ s),
        ``dice`` (between the truth component and the union of the overlapping nodules), and of
        the largest overlapping nodule ``found_diameter_mm`` (longest axial diameter),
        ``found_equivalent_diameter_mm`` and ``found_volume_mm3``; the truth's own
        ``equivalent_diameter_mm`` beside them.
    """
    truth = np.asarray(truth) > 0
    if truth.ndim == 2:
        truth = truth[None]
    if truth.shape != result.labels.shape:
        raise InvalidParameterError(f"truth shape {truth.shape} differs from the result's {result.labels.shape}")
    connect = bool(result.info.get("connect_slices", True))
    truth_labels, table = measure_nodules(truth, spacing=result.spacing, connect_slices=connect)
    found = result.nodules.set_index("nodule_id")
    rows = []
    for record in table.itertuples(index=False):
        component = truth_labels == record.nodule_id
        ids = [int(i) for i in np.unique(result.labels[component]) if i > 0]
        predicted = np.isin(result.labels, ids) if ids else np.zeros_like(component)
        overlap = np.logical_and(component, predicted).sum()
        dice = 2.0 * overlap / (component.sum() + predicted.sum())
        biggest = max(ids, key=lambda i: found.loc[i, "voxels"]) if ids else None
        rows.append(
            {
                "truth_id": int(record.nodule_id),
                "image": int(record.image),
                "slice_first": int(record.slice_first),
                "slice_last": int(record.slice_last),
                "centroid_z": record.centroid_z,
                "centroid_y": record.centroid_y,
                "centroid_x": record.centroid_x,
                "diameter_mm": record.diameter_mm,
                "diameter_px": record.diameter_px,
                "volume_mm3": record.volume_mm3,
                "found": bool(ids),
                "matched_ids": " ".join(map(str, ids)),
                "dice": float(dice),
                "found_diameter_mm": float(found.loc[biggest, "diameter_mm"]) if biggest is not None else float("nan"),
                "found_diameter_px": float(found.loc[biggest, "diameter_px"]) if biggest is not None else float("nan"),
                "equivalent_diameter_mm": record.equivalent_diameter_mm,
                "found_equivalent_diameter_mm": float(found.loc[biggest, "equivalent_diameter_mm"]) if biggest is not None else float("nan"),
                "found_volume_mm3": float(found.loc[biggest, "volume_mm3"]) if biggest is not None else float("nan"),
            }
        )
    return pd.DataFrame(rows)
