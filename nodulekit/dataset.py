"""The two in-memory forms every reader and the synthetic generator return.

* :class:`CropSet` — 2-D crops around nodules with ground-truth masks (the paper's 64x64 crops), one
  table row per crop. Everything downstream (preprocessing, training, evaluation) takes a CropSet
  and never needs to know which file format it came from.
* :class:`Volume` — a whole CT series in Hounsfield units with its voxel spacing, optionally with a
  nodule mask and a nodule table (for whole-scan inference and for cutting crops).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import DataFormatError, InvalidParameterError
from .utils import atomic_write

__all__ = ["CropSet", "Volume", "TABLE_COLUMNS", "UNITS"]

#: Columns every CropSet table has (readers may add more, e.g. ``malignancy`` or ``kind``).
TABLE_COLUMNS = (
    "patient_id",  # str: the grouping key for every split
    "nodule_id",  # str: unique across the set, e.g. "LIDC-IDRI-0001/nodule-1"
    "slice_index",  # int: axial slice number within the nodule / series
    "pixel_spacing_mm",  # float: in-plane pixel size (NaN when unknown)
    "slice_spacing_mm",  # float: distance between slices (NaN when unknown)
    "n_readers",  # int: readers who marked this nodule (1 for single-mask data)
    "source",  # str: file the crop came from, or "synthetic"
)

#: What the numbers in ``CropSet.images`` mean.
UNITS = ("HU", "uint8", "float", "zscore")


@dataclass
class CropSet:
    """Nodule crops with binary ground-truth masks.

    Attributes
    ----------
    images : ndarray of float32, shape (n, height, width)
        The crops, in ``units``.
    masks : ndarray of uint8, shape (n, height, width)
        Ground truth in {0, 1}: the consensus mask when several readers marked the nodule.
    table : pandas.DataFrame
        One row per crop with at least :data:`TABLE_COLUMNS`.
    reader_masks : ndarray of uint8, shape (n, readers, height, width), optional
        One mask per reader; a reader who did not mark the nodule has an all-zero mask.
    units : str
        ``"HU"`` (Hounsfield units), ``"uint8"`` (0..255 display scale, e.g. PNG crops),
        ``"float"`` (other raw intensities) or ``"zscore"`` (already normalised).
    """

    images: np.ndarray
    masks: np.ndarray
    table: pd.DataFrame
    reader_masks: np.ndarray | None = None
    units: str = "uint8"

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images, dtype=np.float32)
        masks = np.asarray(self.masks)
        if self.images.ndim != 3:
            raise DataFormatError(f"CropSet images must have shape (n, height, width), got {self.images.shape}")
        if self.images.size and not np.isfinite(self.images).all():
            raise DataFormatError(f"CropSet images hold {int((~np.isfinite(self.images)).sum())} NaN or infinite value(s)")
        if masks.shape != self.images.shape:
            raise DataFormatError(f"CropSet masks shape {masks.shape} differs from images shape {self.images.shape}")
        binary_dtype = masks.dtype.kind in "ub" and (masks.size == 0 or masks.max() <= 1)
        if masks.size and not binary_dtype and not np.isin(np.unique(masks), (0, 1)).all():
            raise DataFormatError("CropSet masks must be binary (0/1)")
        self.masks = masks.astype(np.uint8, copy=False)
        if self.reader_masks is not None:
            rm = np.asarray(self.reader_masks).astype(np.uint8, copy=False)
            if rm.ndim != 4 or rm.shape[0] != len(self.images) or rm.shape[2:] != self.images.shape[1:]:
                raise DataFormatError(f"CropSet reader_masks must have shape (n, readers, h, w), got {rm.shape}")
            self.reader_masks = rm
        if self.units not in UNITS:
            raise InvalidParameterError(f"units must be one of {UNITS}, got {self.units!r}")
        table = pd.DataFrame(self.table).reset_index(drop=True)
        missing = [c for c in TABLE_COLUMNS if c not in table.columns]
        if missing:
            raise DataFormatError(f"CropSet table lacks columns {missing}")
        if len(table) != len(self.images):
            raise DataFormatError(f"CropSet table has {len(table)} rows for {len(self.images)} images")
        self.table = table

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (
            f"CropSet({len(self)} crops of {self.images.shape[1]}x{self.images.shape[2]} {self.units}, "
            f"{self.table['patient_id'].nunique()} patients, {self.table['nodule_id'].nunique()} nodules)"
        )

    @property
    def groups(self) -> np.ndarray:
        """Patient id per crop: the grouping key for patient-level splits."""
        return self.table["patient_id"].to_numpy()

    def subset(self, index: Sequence[int] | np.ndarray) -> "CropSet":
        """The crops at ``index`` (integer positions or a boolean mask), as a new CropSet."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return CropSet(
            images=self.images[index],
            masks=self.masks[index],
            table=self.table.iloc[index].reset_index(drop=True),
            reader_masks=None if self.reader_masks is None else self.reader_masks[index],
            units=self.units,
        )

    @classmethod
    def concat(cls, parts: Iterable["CropSet"]) -> "CropSet":
        """Join CropSets of the same crop size and units (reader masks kept only if all have them)."""
        parts = list(parts)
        if not parts:
            raise InvalidParameterError("CropSet.concat needs at least one CropSet")
        units = {p.units for p in parts}
        if len(units) != 1:
            raise InvalidParameterError(f"cannot concatenate CropSets of different units {sorted(units)}")
        readers = None
        if all(p.reader_masks is not None for p in parts):
            width = max(p.reader_masks.shape[1] for p in parts)
            readers = np.concatenate(
                [np.pad(p.reader_masks, ((0, 0), (0, width - p.reader_masks.shape[1]), (0, 0), (0, 0))) for p in parts]
            )
        return cls(
            images=np.concatenate([p.images for p in parts]),
            masks=np.concatenate([p.masks for p in parts]),
            table=pd.concat([p.table for p in parts], ignore_index=True),
            reader_masks=readers,
            units=units.pop(),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Save to one ``.npz`` file (arrays plus the table as JSON; no pickle), atomically."""
        path = Path(path)
        arrays = {"images": self.images, "masks": self.masks}
        if self.reader_masks is not None:
            arrays["reader_masks"] = self.reader_masks
        meta = json.dumps({"units": self.units, "table": self.table.to_json(orient="split")})
        arrays["meta"] = np.frombuffer(meta.encode("utf-8"), dtype=np.uint8)
        with atomic_write(path, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CropSet":
        """Load a CropSet written by :meth:`save` (``allow_pickle=False``)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode("utf-8"))
                return cls(
                    images=data["images"],
                    masks=data["masks"],
                    table=pd.read_json(io.StringIO(meta["table"]), orient="split", dtype=False),
                    reader_masks=data["reader_masks"] if "reader_masks" in data.files else None,
                    units=meta["units"],
                )
        except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            if isinstance(exc, DataFormatError):
                raise
            raise DataFormatError(f"not a nodulekit CropSet file ({exc})", path=path) from exc


@dataclass
class Volume:
    """A CT series in Hounsfield units.

    Attributes
    ----------
    hu : ndarray of float32, shape (slices, rows, columns)
        Axial slices ordered from feet to head (increasing patient z).
    spacing : tuple of float
        Voxel size in mm as (slice spacing, row spacing, column spacing).
    mask : ndarray of uint8, shape like ``hu``, optional
        Ground-truth nodule mask (consensus when several readers).
    nodules : pandas.DataFrame, optional
        One row per annotated nodule; at least ``nodule_id``, ``z``, ``y``, ``x`` (voxel centre).
    meta : dict
        Source path, patient id, SOP instance UIDs per slice, z positions, ...
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    mask: np.ndarray | None = None
    nodules: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hu = np.asarray(self.hu, dtype=np.float32)
        if self.hu.ndim != 3:
            raise DataFormatError(f"Volume hu must have shape (slices, rows, columns), got {self.hu.shape}")
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise DataFormatError(f"Volume spacing must be three positive mm values, got {self.spacing!r}")
        self.spacing = spacing  # type: ignore[assignment]
        if self.mask is not None:
            mask = np.asarray(self.mask)
            if mask.shape != self.hu.shape:
                raise DataFormatError(f"Volume mask shape {mask.shape} differs from hu shape {self.hu.shape}")
            self.mask = (mask > 0).astype(np.uint8)

    def __repr__(self) -> str:
        z, y, x = self.hu.shape
        return f"Volume({z}x{y}x{x} HU, spacing {tuple(round(s, 3) for s in self.spacing)} mm)"
