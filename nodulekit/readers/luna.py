"""LUNA16 volumes (MetaImage ``.mhd`` + ``.raw``, SimpleITK) with ``annotations.csv`` nodules."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..dataset import Volume
from ..errors import DataFormatError, MissingDataError
from ..safety import check_volume_voxels, contained

__all__ = ["read_luna16", "sphere_mask", "ANNOTATION_COLUMNS"]

logger = logging.getLogger(__name__)

#: Columns of LUNA16's ``annotations.csv`` (world coordinates in mm).
ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")

_ELEMENT_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 8, "MET_ULONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}  # fmt: skip


def _mhd_header(path: Path) -> dict[str, str]:
    header = {}
    try:
        with open(path, "r", errors="replace") as handle:
            for line in handle:
                if "=" in line:
                    key, value = line.split("=", 1)
                    header[key.strip()] = value.strip()
                if line.strip().startswith("ElementDataFile"):
                    break
    except OSError as exc:
        raise DataFormatError(f"unreadable MetaImage header ({exc})", path=path) from exc
    if "ElementDataFile" not in header or "DimSize" not in header:
        raise DataFormatError("not a MetaImage header (no DimSize/ElementDataFile)", path=path)
    return header


def _check_raw(path: Path, header: dict[str, str]) -> None:
    """The header's sizes are sane and its data file lies beside it, inside the folder, with the
    right number of bytes (uncompressed data)."""
    try:
        dims = [int(v) for v in header["DimSize"].split()]
        n_dims = int(header.get("NDims", len(dims)))
        header_size = int(header.get("HeaderSize", "0") or 0)
        channels = int(header.get("ElementNumberOfChannels", "1") or 1)
    except ValueError as exc:
        raise DataFormatError(f"bad MetaImage header value ({exc})", path=path) from exc
    if not dims or len(dims) != n_dims or min(dims) < 1 or channels < 1:
        raise DataFormatError(f"bad DimSize {header['DimSize']!r} for NDims {n_dims}", path=path)
    check_volume_voxels(dims, path=path)
    data_file = header["ElementDataFile"]
    if data_file.upper() == "LOCAL":
        return
    if data_file.upper().startswith("LIST") or "%" in data_file:
        raise DataFormatError(
            f"ElementDataFile {data_file!r}: file lists and name patterns are not supported (one data file "
            "beside the header, as in LUNA16)",
            path=path,
        )
    raw = contained(path.parent, data_file)  # refuses "../elsewhere.raw", absolute paths and links out
    if not raw.is_file():
        raise MissingDataError(f"the MetaImage's data file {data_file!r} is missing", path=path.parent / data_file)
    if header.get("CompressedData", "False").lower() == "true":
        return
    element = _ELEMENT_BYTES.get(header.get("ElementType", ""), 0)
    if not element:
        raise DataFormatError(f"unknown ElementType {header.get('ElementType')!r}", path=path)
    expected = int(np.prod(dims)) * channels * element
    size = raw.stat().st_size
    if size < expected + max(header_size, 0):
        raise DataFormatError(
            f"RAW data is truncated: {size} bytes, the header (DimSize {header['DimSize']}, "
            f"{header.get('ElementType')}) needs {expected}",
            path=path.parent / data_file,
        )
    if header_size >= 0 and size != expected + header_size:
        raise DataFormatError(
            f"RAW data has {size} bytes but the header (DimSize {header['DimSize']}, "
            f"{header.get('ElementType')}) describes {expected + header_size}: the header does not match its data",
            path=path.parent / data_file,
        )


def sphere_mask(shape: tuple[int, int, int], centre_zyx, diameter_mm: float, spacing_zyx) -> np.ndarray:
    """Voxels whose centre lies within ``diameter_mm / 2`` of ``centre_zyx`` (voxel coordinates).

    Parameters
    ----------
    shape : (int, int, int)
        Volume shape (slices, rows, columns).
    centre_zyx : sequence of 3 floats
        Sphere centre in (continuous) voxel indices.
    diameter_mm : float
        Sphere diameter in mm.
    spacing_zyx : sequence of 3 floats
        Voxel size in mm.

    Returns
    -------
    ndarray of uint8, shape ``shape``
    """
    centre = np.asarray(centre_zyx, float)
    spacing = np.asarray(spacing_zyx, float)
    radius = diameter_mm / 2.0
    mask = np.zeros(shape, np.uint8)
    low = np.maximum(np.floor(centre - radius / spacing).astype(int), 0)
    high = np.minimum(np.ceil(centre + radius / spacing).astype(int), np.asarray(shape) - 1)
    if (high < low).any():
        return mask
    grids = np.ogrid[low[0] : high[0] + 1, low[1] : high[1] + 1, low[2] : high[2] + 1]
    distance = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing))
    mask[low[0] : high[0] + 1, low[1] : high[1] + 1, low[2] : high[2] + 1] = distance <= radius**2
    return mask


def read_luna16(
    mhd_path: str | os.PathLike,
    annotations_csv: str | os.PathLike | None = None,
    *,
    seriesuid: str | None = None,
) -> Volume:
    """Read a LUNA16 CT volume and, optionally, its nodules from ``annotations.csv``.

    The ``.raw`` values of LUNA16 are already Hounsfield units. Each annotation row
    (``seriesuid, coordX, coordY, coordZ, diameter_mm``, world mm) becomes a nodule: its centre is
    mapped to voxel indices with the image's origin, spacing and direction (SimpleITK's
    ``TransformPhysicalPointToContinuousIndex``) and its mask is a sphere of the given diameter.

    Parameters
    ----------
    mhd_path : path
        The ``.mhd`` header; its ``.raw`` data file must be beside it.
    annotations_csv : path, optional
        LUNA16 ``annotations.csv``; the rows of this series (``seriesuid`` = the file name without
        ``.mhd``, or ``seriesuid``) are used.
    seriesuid : str, optional
        Series UID to select in the CSV (default: the ``.mhd`` file name without extension).

    Returns
    -------
    Volume
        ``hu`` (z, y, x), ``spacing`` (z, y, x) mm; with a CSV also ``mask`` (union of spheres) and
        ``nodules`` (``nodule_id``, voxel ``z, y, x``, world ``coordX/Y/Z``, ``diameter_mm``,
        ``n_readers`` = 1); ``meta`` has ``source``, ``patient_id`` (= series UID), ``origin``,
        ``direction``, ``format`` "luna16".

    Raises
    ------
    MissingDataError
        The ``.mhd``, its ``.raw`` or the CSV is missing.
    DataFormatError
        A bad header (sizes, element type, a data file outside the header's folder, more than
        :data:`nodulekit.safety.MAX_VOLUME_VOXELS` voxels), RAW data shorter or longer than the
        header says, NaN/infinite voxels, a non-3-D image, or a CSV without the LUNA16 columns or
        with non-numeric/non-finite values.
    """
    import SimpleITK as sitk

    mhd_path = Path(mhd_path)
    if not mhd_path.is_file():
        raise MissingDataError("MetaImage header (.mhd) not found", path=mhd_path)
    header = _mhd_header(mhd_path)
    _check_raw(mhd_path, header)
    try:
        image = sitk.ReadImage(str(mhd_path))
    except RuntimeError as exc:
        raise DataFormatError(
            f"SimpleITK cannot read the volume ({str(exc).strip().splitlines()[-1]})", path=mhd_path
        ) from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DataFormatError(
            f"expected a 3-D single-channel CT volume, got {image.GetDimension()}-D with "
            f"{image.GetNumberOfComponentsPerPixel()} channel(s)",
            path=mhd_path,
        )
    hu = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x)
    if not np.isfinite(hu).all():
        raise DataFormatError(f"{int((~np.isfinite(hu)).sum())} voxel(s) are NaN or infinite", path=mhd_path)
    spacing_xyz = image.GetSpacing()
    spacing = (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise DataFormatError(f"ElementSpacing must be three positive numbers, got {spacing_xyz}", path=mhd_path)
    uid = seriesuid or mhd_path.stem
    meta = {
        "source": str(mhd_path),
        "format": "luna16",
        "patient_id": uid,
        "series_uid": uid,
        "origin": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
    }
    volume = Volume(hu=hu, spacing=spacing, meta=meta)
    if annotations_csv is None:
        return volume

    annotations_csv = Path(annotations_csv)
    if not annotations_csv.is_file():
        raise MissingDataError("annotations CSV not found", path=annotations_csv)
    try:
        table = pd.read_csv(annotations_csv, dtype={"seriesuid": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataFormatError(f"unreadable CSV ({exc})", path=annotations_csv) from exc
    missing = [c for c in ANNOTATION_COLUMNS if c not in table.columns]
    if missing:
        raise DataFormatError(f"not a LUNA16 annotations file: lacks columns {missing}", path=annotations_csv)
    rows = table[table["seriesuid"] == uid].reset_index(drop=True)
    if rows.empty:
        logger.info("%s: no annotation rows for series %s", annotations_csv, uid)
    mask = np.zeros(hu.shape, np.uint8)
    nodules = []
    for number, row in enumerate(rows.itertuples(index=False)):
        try:
            world = tuple(float(v) for v in (row.coordX, row.coordY, row.coordZ))
            diameter = float(row.diameter_mm)
        except (TypeError, ValueError) as exc:
            raise DataFormatError(f"row {number} of series {uid} is not numeric ({exc})", path=annotations_csv) from exc
        if not all(np.isfinite(world)):
            raise DataFormatError(f"row {number} of series {uid} has coordinates {world}", path=annotations_csv)
        if not np.isfinite(diameter) or diameter <= 0:
            raise DataFormatError(
                f"row {number} of series {uid} has diameter_mm {row.diameter_mm!r}", path=annotations_csv
            )
        x, y, z = image.TransformPhysicalPointToContinuousIndex(world)
        inside = all(-0.5 <= c <= n - 0.5 for c, n in zip((z, y, x), hu.shape))
        if not inside:
            logger.warning(
                "%s: nodule %d of %s lies outside the volume (voxel %.1f, %.1f, %.1f)",
                annotations_csv,
                number,
                uid,
                z,
                y,
                x,
            )
        mask |= sphere_mask(hu.shape, (z, y, x), diameter, spacing)
        nodules.append(
            {
                "nodule_id": f"nodule-{number}",
                "z": z,
                "y": y,
                "x": x,
                "coordX": float(row.coordX),
                "coordY": float(row.coordY),
                "coordZ": float(row.coordZ),
                "diameter_mm": diameter,
                "n_readers": 1,
            }
        )
    nodule_table = pd.DataFrame(
        nodules, columns=["nodule_id", "z", "y", "x", "coordX", "coordY", "coordZ", "diameter_mm", "n_readers"]
    )
    meta["annotations_csv"] = str(annotations_csv)
    return Volume(hu=hu, spacing=spacing, mask=mask, nodules=nodule_table, meta=meta)
