"""Cutting fixed-size crops: centre crops of arrays and nodule-centred crops of CT volumes.

The paper cut its 64x64 crops by hand in Photoshop; nodulekit cuts them from the annotations:
each crop is centred on a nodule (optionally with random jitter), crops near the image border are
padded rather than dropped, and nodule-free negative crops can be added. A crop's mask is the
consensus of the readers who marked the nodule (:func:`consensus_mask`, also used by the readers).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy import ndimage

from .dataset import TABLE_COLUMNS, CropSet, Volume
from .errors import DataFormatError, InvalidParameterError
from .postprocess import label_components
from .utils import as_rng

__all__ = ["center_crop", "crop_at", "consensus_mask", "reader_fraction", "crops_from_volume"]

logger = logging.getLogger(__name__)


def _size_pair(size: int | tuple[int, int], name: str = "size") -> tuple[int, int]:
    pair = (size, size) if np.isscalar(size) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in pair):
        raise InvalidParameterError(f"{name} must be a positive int or a pair of positive ints, got {size!r}")
    return int(pair[0]), int(pair[1])


def consensus_mask(
    reader_masks: np.ndarray,
    *,
    level: float | str = 0.5,
    n_readers: int | np.ndarray | None = None,
) -> np.ndarray:
    """Consensus of several readers' masks: a pixel is foreground when enough readers drew it.

    A pixel is foreground when (readers who drew it) / ``n_readers`` >= ``level``, the rule of
    pylidc's ``consensus(clevel=level)``, where ``n_readers`` counts the readers who marked the
    nodule at all. With the default 0.5, two of four, two of three, one of two and one of one
    reader suffice.

    Parameters
    ----------
    reader_masks : ndarray, shape (..., readers, rows, columns)
        Binary masks, one per reader (a reader who did not mark the nodule has an empty mask).
    level : float in (0, 1] or "union"
        Fraction of the marking readers that must agree. ``"union"`` marks a pixel any reader drew;
        ``1.0`` is the intersection of the marking readers.
    n_readers : int or ndarray of shape (...), optional
        Readers who marked the nodule. Default: the readers whose mask in ``reader_masks`` is not
        empty (pass the nodule-wide count when ``reader_masks`` holds one slice of a nodule).

    Returns
    -------
    ndarray of uint8, shape (..., rows, columns)

    Raises
    ------
    InvalidParameterError
        ``level`` is outside (0, 1] and not "union", or ``reader_masks`` has fewer than 3 axes.

    References
    ----------
    Hancock & Magnan, pylidc (``Annotation`` clustering and ``consensus``), 2016.
    """
    masks, votes = _votes(reader_masks)
    if isinstance(level, str):
        if level != "union":
            raise InvalidParameterError(f"consensus level must be a number in (0, 1] or 'union', got {level!r}")
        return (votes >= 1).astype(np.uint8)
    level = float(level)
    if not 0.0 < level <= 1.0:
        raise InvalidParameterError(f"consensus level must be in (0, 1] or 'union', got {level}")
    n_readers = _marking_readers(masks, n_readers)
    # Fewest votes v with v / n >= level, computed with the same float division as pylidc's
    # ``mean >= clevel``; no reader -> no foreground.
    needed = np.full(n_readers.shape, np.iinfo(np.int64).max, np.int64)
    for count in np.unique(n_readers):
        if count > 0:
            needed[n_readers == count] = next(v for v in range(1, count + 1) if v / count >= level)
    return (votes >= needed[..., None, None]).astype(np.uint8)


def reader_fraction(reader_masks: np.ndarray, *, n_readers: int | np.ndarray | None = None) -> np.ndarray:
    """Soft mask: per pixel, the fraction of the readers who marked the nodule that drew the pixel.

    The soft counterpart of :func:`consensus_mask`, with the same reader count: with the same
    ``n_readers``, ``reader_fraction(m, n_readers=n) >= level`` is ``consensus_mask(m, level=level,
    n_readers=n)`` for the default level 0.5 (votes / n >= 1/2 exactly when 2 votes >= n).

    Parameters
    ----------
    reader_masks : ndarray, shape (..., readers, rows, columns)
        Binary masks, one per reader (a reader who did not mark the nodule has an empty mask).
    n_readers : int or ndarray of shape (...), optional
        Readers who marked the nodule. Default: the readers whose mask in ``reader_masks`` is not
        empty (pass the nodule-wide count, e.g. the ``n_readers`` column of
        :func:`nodulekit.readers.read_lidc_release`, when ``reader_masks`` holds one slice of a
        nodule: a marking reader who drew nothing on that slice then counts as a 0 vote).

    Returns
    -------
    ndarray of float32, shape (..., rows, columns)
        Values in [0, 1]: (readers who drew the pixel) / ``n_readers``; 0 where no reader marked
        the nodule.

    Raises
    ------
    InvalidParameterError
        ``reader_masks`` has fewer than 3 axes, ``n_readers`` does not broadcast to its leading
        axes, or a pixel has more votes than ``n_readers``.

    Examples
    --------
    >>> masks = np.zeros((4, 1, 3), np.uint8)
    >>> masks[:3, 0, 0] = 1; masks[:1, 0, 1] = 1
    >>> reader_fraction(masks, n_readers=4)
    array([[0.75, 0.25, 0.  ]], dtype=float32)
    """
    masks, votes = _votes(reader_masks)
    n_readers = _marking_readers(masks, n_readers)
    try:
        count = np.broadcast_to(n_readers, votes.shape[:-2])[..., None, None]
    except ValueError as exc:
        raise InvalidParameterError(f"n_readers of shape {n_readers.shape} does not match reader_masks of shape {masks.shape}") from exc
    if np.any(votes > count):
        raise InvalidParameterError("a pixel has more votes than n_readers: n_readers must count every reader who marked the nodule")
    fraction = np.zeros(votes.shape, np.float32)
    np.divide(votes, count, out=fraction, where=count > 0, casting="unsafe")
    return fraction


def _votes(reader_masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The masks as 0/1 uint8 and the readers' votes per pixel (summed over the readers axis, -3)."""
    masks = np.asarray(reader_masks)
    if masks.ndim < 3:
        raise InvalidParameterError(f"reader_masks must have shape (..., readers, rows, columns), got {masks.shape}")
    if masks.dtype != np.uint8 or (masks.size and masks.max() > 1):
        masks = (masks > 0).astype(np.uint8)
    return masks, masks.sum(axis=-3, dtype=np.uint8 if masks.shape[-3] < 256 else np.int64)


def _marking_readers(masks: np.ndarray, n_readers: int | np.ndarray | None) -> np.ndarray:
    """``n_readers`` as int64, by default the readers with a non-empty mask in ``masks``."""
    if n_readers is None:
        n_readers = masks.any(axis=(-2, -1)).sum(axis=-1)
    return np.asarray(n_readers, dtype=np.int64)


def crop_at(
    images: np.ndarray,
    top_left: tuple[int, int],
    size: int | tuple[int, int],
    *,
    pad_value: float | None = None,
) -> np.ndarray:
    """Cut ``images[..., top:top+h, left:left+w]``, padding wherever the window leaves the array.

    Parameters
    ----------
    images : ndarray, shape (..., rows, columns)
    top_left : (int, int)
        Row and column of the window's first pixel; may be negative or beyond the array.
    size : int or (int, int)
        Window height and width.
    pad_value : float, optional
        Value of padded pixels. Default: the minimum of ``images`` (air in CT, 0 in masks).

    Returns
    -------
    ndarray, shape (..., h, w), the dtype of ``images``.
    """
    images = np.asarray(images)
    if images.ndim < 2:
        raise InvalidParameterError(f"images must have at least 2 dimensions (rows, columns), got {images.shape}")
    height, width = _size_pair(size)
    top, left = (int(v) for v in top_left)
    rows, columns = images.shape[-2:]
    if pad_value is None:
        pad_value = images.min() if images.size else 0
    out = np.full(images.shape[:-2] + (height, width), pad_value, dtype=images.dtype)
    source_top, source_left = max(top, 0), max(left, 0)
    source_bottom, source_right = min(top + height, rows), min(left + width, columns)
    if source_bottom > source_top and source_right > source_left:
        out[..., source_top - top : source_bottom - top, source_left - left : source_right - left] = images[
            ..., source_top:source_bottom, source_left:source_right
        ]
    return out


def center_crop(images: np.ndarray, size: int | tuple[int, int], *, pad_value: float | None = None) -> np.ndarray:
    """Central ``size`` window of the last two axes; pads (evenly) when the images are smaller.

    For an odd difference the extra pixel goes to the bottom/right, so a 128x128 image cropped to
    64x64 keeps rows and columns 32..95.

    Parameters
    ----------
    images : ndarray, shape (..., rows, columns)
        One image, a batch, or a batch of per-reader masks.
    size : int or (int, int)
        Output height and width.
    pad_value : float, optional
        Value of padded pixels (default: the minimum of ``images``).

    Returns
    -------
    ndarray, shape (..., height, width)

    Examples
    --------
    >>> center_crop(np.arange(16).reshape(4, 4), 2)
    array([[ 5,  6],
           [ 9, 10]])
    """
    images = np.asarray(images)
    height, width = _size_pair(size)
    if images.ndim < 2:
        raise InvalidParameterError(f"images must have at least 2 dimensions (rows, columns), got {images.shape}")
    rows, columns = images.shape[-2:]
    if (rows, columns) == (height, width):
        return images
    return crop_at(images, ((rows - height) // 2, (columns - width) // 2), (height, width), pad_value=pad_value)


def _nodule_table(volume: Volume, labels: np.ndarray | None) -> pd.DataFrame:
    """Nodules with voxel centres: ``volume.nodules``, else the mask's connected components."""
    if volume.nodules is not None and len(volume.nodules):
        table = volume.nodules.reset_index(drop=True).copy()
        missing = [c for c in ("z", "y", "x") if c not in table.columns]
        if missing:
            raise DataFormatError(
                f"Volume.nodules lacks the voxel-centre columns {missing}", path=volume.meta.get("source")
            )
        centres = pd.DataFrame({c: pd.to_numeric(table[c], errors="coerce") for c in ("z", "y", "x")})
        bad = ~np.isfinite(centres.to_numpy(float)).all(axis=1)
        if bad.any():
            raise DataFormatError(
                f"Volume.nodules row(s) {np.flatnonzero(bad)[:5].tolist()} have no finite voxel centre (z, y, x)",
                path=volume.meta.get("source"),
            )
        table[["z", "y", "x"]] = centres
        if "nodule_id" not in table.columns:
            table["nodule_id"] = [f"nodule-{i}" for i in range(len(table))]
        return table
    if labels is None:
        return pd.DataFrame(columns=["nodule_id", "z", "y", "x"])
    count = int(labels.max())
    centres = ndimage.center_of_mass(labels > 0, labels, range(1, count + 1))
    return pd.DataFrame(
        {
            "nodule_id": [f"nodule-{i}" for i in range(count)],
            "z": [c[0] for c in centres],
            "y": [c[1] for c in centres],
            "x": [c[2] for c in centres],
        }
    )


def _nodule_slices(info: dict, labels: np.ndarray | None, n_slices: int, slices: str) -> list[int]:
    """Slices to crop for one nodule: its marked extent, or the centre slice."""
    centre = int(np.clip(np.floor(info["z"] + 0.5), 0, n_slices - 1))
    if slices == "centre":
        return [centre]
    if "z_min" in info and "z_max" in info and pd.notna(info["z_min"]) and pd.notna(info["z_max"]):
        return list(range(max(int(info["z_min"]), 0), min(int(info["z_max"]), n_slices - 1) + 1))
    if labels is not None:
        zc, yc, xc = (int(np.clip(np.floor(info[a] + 0.5), 0, labels.shape[i] - 1)) for i, a in enumerate("zyx"))
        label = labels[zc, yc, xc]
        if label == 0:  # centre outside its mask (e.g. a crescent): nearest labelled voxel of that slice
            candidates = np.argwhere(labels[zc] > 0)
            if len(candidates):
                nearest = candidates[np.argmin(((candidates - (info["y"], info["x"])) ** 2).sum(axis=1))]
                label = labels[zc, nearest[0], nearest[1]]
        if label:
            return np.flatnonzero((labels == label).any(axis=(1, 2))).tolist()
    return [centre]


def crops_from_volume(
    volume: Volume,
    *,
    size: int | tuple[int, int] = 64,
    jitter: int = 0,
    negatives: int = 0,
    slices: str = "nodule",
    rng: int | np.random.Generator | None = None,
    pad_value: float | None = None,
) -> CropSet:
    """Axial crops centred on each nodule of a volume, with optional jitter and negative crops.

    The crop of a nodule with centre (y, x) covers rows ``floor(y) - h//2 ... floor(y) + h - h//2 - 1``
    (and likewise columns), the convention of the LIDC PNG release (128x128 crops around the
    floored centre of mass of the 50 % consensus). Parts outside the image are padded, so crops
    near the border are kept.

    Parameters
    ----------
    volume : Volume
        CT in HU with ``nodules`` (voxel centres ``z, y, x``; optional ``nodule_id``, ``z_min``/``z_max``
        slice extent, ``n_readers`` and ratings) and/or a ``mask``. Without a nodule table, the
        mask's connected components are the nodules. Volumes from
        :func:`~nodulekit.readers.read_lidc_xml` also carry per-reader masks.
    size : int or (int, int)
        Crop height and width (default 64, the paper's).
    jitter : int
        Maximum random shift of each crop's centre in pixels, uniform in [-jitter, jitter] per axis
        (0: exactly centred).
    negatives : int
        Number of extra crops without any nodule voxel, at random slices and positions fully inside
        the image (``kind`` "negative", empty masks).
    slices : "nodule" or "centre"
        ``"nodule"`` (default): every slice of the nodule (``z_min..z_max`` when the table has them,
        else the slices of its mask component); ``"centre"``: only the slice through its centre.
    rng : int or numpy.random.Generator, optional
        Seed or generator for jitter and negatives.
    pad_value : float, optional
        Value of the parts of a crop outside the image (default: the volume's minimum, i.e. air or
        the scanner's padding value).

    Returns
    -------
    CropSet
        ``units="HU"``. Masks: the nodule's own consensus (and ``reader_masks`` (n, readers, h, w))
        when the volume carries per-reader masks (``meta["nodule_masks"]``), else the volume mask
        in the window. The table has the standard columns (``nodule_id`` "<patient>/<nodule>")
        plus ``kind`` ("nodule"/"negative"), ``center_y``/``center_x`` (window centre in slice
        pixels) and the nodule table's other columns.

    Raises
    ------
    InvalidParameterError
        Bad ``size``, ``jitter``, ``negatives`` or ``slices``.
    DataFormatError
        The nodule table lacks finite voxel centres, or the volume holds NaN/infinite values.
    """
    height, width = _size_pair(size)
    if not isinstance(jitter, (int, np.integer)) or isinstance(jitter, bool) or jitter < 0:
        raise InvalidParameterError(f"jitter must be a non-negative int (pixels), got {jitter!r}")
    if not isinstance(negatives, (int, np.integer)) or isinstance(negatives, bool) or negatives < 0:
        raise InvalidParameterError(f"negatives must be a non-negative int, got {negatives!r}")
    if slices not in ("nodule", "centre"):
        raise InvalidParameterError(f"slices must be 'nodule' or 'centre', got {slices!r}")
    rng = as_rng(rng)
    hu = volume.hu
    if not np.isfinite(hu).all():
        raise DataFormatError(
            f"the volume holds {int((~np.isfinite(hu)).sum())} NaN or infinite voxel(s)", path=volume.meta.get("source")
        )
    if pad_value is not None and not np.isfinite(pad_value):
        raise InvalidParameterError(f"pad_value must be finite, got {pad_value!r}")
    n_slices, rows, columns = hu.shape
    mask = volume.mask if volume.mask is not None else np.zeros(hu.shape, np.uint8)
    pad_value = float(hu.min()) if pad_value is None else float(pad_value)
    patient = str(volume.meta.get("patient_id") or "unknown")
    source = str(volume.meta.get("source", "volume"))
    labels = label_components(mask, connectivity=1)[0] if mask.any() else None  # 6-connected nodules
    nodules = _nodule_table(volume, labels)
    per_reader = volume.meta.get("nodule_masks") or {}
    n_sessions = max((int(v["reader_masks"].shape[0]) for v in per_reader.values()), default=0)
    level = volume.meta.get("consensus_level", 0.5)
    extra_columns = [c for c in nodules.columns if c not in ("nodule_id", "z", "y", "x", "n_readers")]

    images, masks, readers, records = [], [], [], []

    def window(z: int, top: int, left: int, nodule_id: str | None) -> None:
        images.append(crop_at(hu[z], (top, left), (height, width), pad_value=pad_value))
        if nodule_id in per_reader:
            entry = per_reader[nodule_id]
            z0, r0, c0 = entry["offset"]
            block = entry["reader_masks"]
            canvas = np.zeros((block.shape[0], height, width), np.uint8)
            if z0 <= z < z0 + block.shape[1]:
                # reader masks of this slice, placed into the window (bbox -> window coordinates)
                canvas = crop_at(block[:, z - z0], (top - r0, left - c0), (height, width), pad_value=0)
            readers.append(np.pad(canvas, ((0, n_sessions - canvas.shape[0]), (0, 0), (0, 0))))
            marked = int(block.reshape(block.shape[0], -1).any(axis=1).sum())
            masks.append(consensus_mask(canvas, level=level, n_readers=marked))
        else:
            masks.append(crop_at(mask[z], (top, left), (height, width), pad_value=0))
            readers.append(np.zeros((n_sessions, height, width), np.uint8))

    for info in nodules.to_dict("records"):
        for z in _nodule_slices(info, labels, n_slices, slices):
            shift = rng.integers(-jitter, jitter + 1, size=2) if jitter else np.zeros(2, int)
            cy, cx = int(np.floor(info["y"])) + int(shift[0]), int(np.floor(info["x"])) + int(shift[1])
            window(z, cy - height // 2, cx - width // 2, str(info["nodule_id"]))
            n_readers = info.get("n_readers", 1)
            records.append(
                {
                    "patient_id": patient,
                    "nodule_id": f"{patient}/{info['nodule_id']}",
                    "slice_index": int(z),
                    "pixel_spacing_mm": float(volume.spacing[1]),
                    "slice_spacing_mm": float(volume.spacing[0]),
                    "n_readers": int(n_readers) if pd.notna(n_readers) else 1,
                    "source": source,
                    "kind": "nodule",
                    "center_y": cy,
                    "center_x": cx,
                    **{c: info[c] for c in extra_columns},
                }
            )

    placed = attempts = 0
    while placed < negatives and attempts < 1000 * negatives:
        attempts += 1
        z = int(rng.integers(0, n_slices))
        top = int(rng.integers(0, max(rows - height, 0) + 1))
        left = int(rng.integers(0, max(columns - width, 0) + 1))
        if mask[z, top : top + height, left : left + width].any():
            continue
        window(z, top, left, None)
        records.append(
            {
                "patient_id": patient,
                "nodule_id": f"{patient}/negative-{placed}",
                "slice_index": z,
                "pixel_spacing_mm": float(volume.spacing[1]),
                "slice_spacing_mm": float(volume.spacing[0]),
                "n_readers": 0,
                "source": source,
                "kind": "negative",
                "center_y": top + height // 2,
                "center_x": left + width // 2,
            }
        )
        placed += 1
    if placed < negatives:
        logger.warning("%s: only %d of %d nodule-free negative crops found", source, placed, negatives)

    if not images:
        empty = np.zeros((0, height, width), np.float32)
        table = pd.DataFrame({c: [] for c in TABLE_COLUMNS})
        return CropSet(empty, empty.astype(np.uint8), table, units="HU")
    return CropSet(
        images=np.stack(images),
        masks=np.stack(masks),
        table=pd.DataFrame.from_records(records),
        reader_masks=np.stack(readers) if n_sessions else None,
        units="HU",
    )
