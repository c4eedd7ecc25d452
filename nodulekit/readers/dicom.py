"""DICOM CT series -> :class:`~nodulekit.dataset.Volume` in Hounsfield units (pydicom)."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..dataset import Volume
from ..errors import DataFormatError, InvalidParameterError, MissingDataError

__all__ = ["read_dicom_series", "find_dicom_files"]

logger = logging.getLogger(__name__)


def find_dicom_files(folder: str | os.PathLike) -> list[Path]:
    """DICOM files under ``folder`` (recursively): ``*.dcm`` files and extension-less files that
    start with the DICOM preamble ``DICM`` at byte 128."""
    folder = Path(folder)
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        if suffix in (".dcm", ".dicom", ".ima"):
            found.append(path)
        elif suffix == "" or suffix.lstrip(".").isdigit():
            try:
                with open(path, "rb") as handle:
                    handle.seek(128)
                    if handle.read(4) == b"DICM":
                        found.append(path)
            except OSError:
                continue
    return found


def _read(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError) as exc:
        raise DataFormatError(f"unreadable DICOM file ({exc})", path=path) from exc


def _slice_normal(dataset) -> np.ndarray:
    orientation = np.asarray(getattr(dataset, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float)
    return np.cross(orientation[:3], orientation[3:])


def read_dicom_series(
    folder: str | os.PathLike,
    *,
    series_uid: str | None = None,
    max_workers: int | None = None,
) -> Volume:
    """Read one CT series from a folder of DICOM files into Hounsfield units.

    Slices are ordered by their position along the slice normal (``ImagePositionPatient``
    projected on the normal of ``ImageOrientationPatient``), feet to head for axial CT; HU =
    stored value x ``RescaleSlope`` + ``RescaleIntercept`` (per slice).

    Parameters
    ----------
    folder : path
        Folder holding the series' files (searched recursively; other files such as the LIDC XML
        are ignored).
    series_uid : str, optional
        The ``SeriesInstanceUID`` to read when the folder holds several series. Default: the folder
        must hold exactly one.
    max_workers : int, optional
        Threads reading files.

    Returns
    -------
    Volume
        ``hu`` (slices, rows, columns) float32, ``spacing`` (slice spacing, row spacing, column
        spacing) in mm, ``meta`` with ``source``, ``patient_id``, ``series_uid``, ``study_uid``,
        ``sop_uids`` and ``z_positions`` (per slice, in volume order), ``files``, ``origin``
        (ImagePositionPatient of slice 0), ``orientation``, ``slice_thickness``.

    Raises
    ------
    MissingDataError
        The folder does not exist or holds no DICOM file.
    DataFormatError
        A file is not readable DICOM, has no pixel data, or the folder mixes several series
        (without ``series_uid``); slices differ in size, share a position, or lack
        ``ImagePositionPatient``.
    InvalidParameterError
        ``series_uid`` names no series in the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingDataError("DICOM folder not found", path=folder)
    files = find_dicom_files(folder)
    if not files:
        raise MissingDataError("no DICOM files (*.dcm) in the folder", path=folder)
    workers = max_workers or min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        datasets = list(pool.map(_read, files))

    by_series: dict[str, list[int]] = defaultdict(list)
    for index, dataset in enumerate(datasets):
        by_series[str(getattr(dataset, "SeriesInstanceUID", ""))].append(index)
    if series_uid is None:
        if len(by_series) > 1:
            summary = ", ".join(f"{uid or '<none>'} ({len(i)} files)" for uid, i in by_series.items())
            raise DataFormatError(
                f"the folder mixes {len(by_series)} DICOM series: {summary}; pass series_uid to choose one",
                path=folder,
            )
        series_uid = next(iter(by_series))
    elif series_uid not in by_series:
        raise InvalidParameterError(f"series_uid {series_uid!r} not in {folder}; found {sorted(by_series)}")
    chosen = by_series[series_uid]
    files = [files[i] for i in chosen]
    datasets = [datasets[i] for i in chosen]

    for path, dataset in zip(files, datasets):
        if "PixelData" not in dataset:
            raise DataFormatError("DICOM file has no pixel data (not an image slice)", path=path)
        if "ImagePositionPatient" not in dataset:
            raise DataFormatError("DICOM slice lacks ImagePositionPatient: cannot order the series", path=path)
    normal = _slice_normal(datasets[0])
    positions = np.array([float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))) for d in datasets])
    order = np.argsort(positions, kind="stable")
    files = [files[i] for i in order]
    datasets = [datasets[i] for i in order]
    positions = positions[order]
    duplicates = np.flatnonzero(np.diff(positions) == 0)
    if duplicates.size:
        first = duplicates[0]
        raise DataFormatError(
            f"two slices share position {positions[first]:.3f} mm ({files[first].name}, {files[first + 1].name})",
            path=folder,
        )

    shape = (int(datasets[0].Rows), int(datasets[0].Columns))
    hu = np.empty((len(datasets), *shape), np.float32)
    for index, (path, dataset) in enumerate(zip(files, datasets)):
        if (int(dataset.Rows), int(dataset.Columns)) != shape:
            raise DataFormatError(
                f"slice size {dataset.Rows}x{dataset.Columns} differs from the series' {shape}", path=path
            )
        try:
            pixels = dataset.pixel_array
        except Exception as exc:  # pydicom raises many types for truncated or compressed data
            raise DataFormatError(f"cannot decode pixel data ({exc})", path=path) from exc
        slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
        hu[index] = pixels.astype(np.float32) * slope + intercept

    row_spacing, column_spacing = (float(v) for v in getattr(datasets[0], "PixelSpacing", (1.0, 1.0)))
    if len(positions) > 1:
        gaps = np.diff(positions)
        slice_spacing = float(np.median(gaps))
        if np.ptp(gaps) > 0.01 * slice_spacing + 1e-3:
            logger.warning(
                "%s: uneven slice spacing (%.3f..%.3f mm); using the median %.3f mm",
                folder,
                gaps.min(),
                gaps.max(),
                slice_spacing,
            )
    else:
        slice_spacing = float(getattr(datasets[0], "SliceThickness", 1.0) or 1.0)
    first = datasets[0]
    meta = {
        "source": str(folder),
        "format": "dicom",
        "patient_id": str(getattr(first, "PatientID", "")) or folder.name,
        "series_uid": series_uid,
        "study_uid": str(getattr(first, "StudyInstanceUID", "")),
        "sop_uids": [str(d.SOPInstanceUID) for d in datasets],
        "z_positions": [float(d.ImagePositionPatient[2]) for d in datasets],
        "files": [str(p) for p in files],
        "origin": [float(v) for v in first.ImagePositionPatient],
        "orientation": [float(v) for v in getattr(first, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0])],
        "slice_thickness": float(getattr(first, "SliceThickness", np.nan) or np.nan),
        "manufacturer": str(getattr(first, "Manufacturer", "")),
    }
    logger.info("read %d DICOM slices of %s from %s", len(datasets), meta["patient_id"], folder)
    return Volume(hu=hu, spacing=(slice_spacing, row_spacing, column_spacing), meta=meta)
