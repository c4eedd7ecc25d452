"""DICOM CT series -> :class:`~nodulekit.dataset.Volume` in Hounsfield units (pydicom)."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from ..dataset import Volume
from ..errors import DataFormatError, InvalidParameterError, MissingDataError
from ..safety import check_image_pixels, check_volume_voxels
from ._common import check_inside

__all__ = ["read_dicom_series", "write_dicom_series", "find_dicom_files", "GAP_FACTOR", "SPACING_TOLERANCE_FRACTION", "SPACING_TOLERANCE_MM"]

logger = logging.getLogger(__name__)


#: SOP class of a DICOMDIR (a media index file, not an image): skipped when found in a series folder.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

#: A step between neighbouring slices is *regular* when it differs from the series' median step by
#: at most this fraction of the median or :data:`SPACING_TOLERANCE_MM`, whichever is larger.
SPACING_TOLERANCE_FRACTION = 0.01

#: Absolute floor of the spacing tolerance in mm (3D Slicer's DICOM reader uses the same 0.01 mm).
SPACING_TOLERANCE_MM = 0.01

#: A step longer than this many median steps is a *gap*: at least one slice is missing there.
GAP_FACTOR = 1.5

#: Slices whose ImageOrientationPatient differs from the first slice's by more than this (direction
#: cosines) are not part of one stack (a localizer or a reformat mixed into the series).
ORIENTATION_TOLERANCE = 1e-3


def find_dicom_files(folder: str | os.PathLike) -> list[Path]:
    """DICOM files under ``folder`` (recursively): ``*.dcm`` files and extension-less files that
    start with the DICOM preamble ``DICM`` at byte 128. Hidden files (``.name``, e.g. macOS
    ``._001.dcm`` resource forks) are skipped; symbolic links to folders are not followed."""
    folder = Path(folder)
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith("."):
            continue
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

    try:
        if path.stat().st_size == 0:
            raise DataFormatError("empty file (0 bytes), not DICOM", path=path)
        dataset = pydicom.dcmread(path)
    except DataFormatError:
        raise
    except FileNotFoundError as exc:
        raise MissingDataError("DICOM file not found", path=path) from exc
    except Exception as exc:  # noqa: BLE001 - InvalidDicomError, and struct.error, ... for damaged files
        raise DataFormatError(f"unreadable DICOM file ({type(exc).__name__}: {exc})", path=path) from exc
    try:  # pydicom decodes element values lazily: decode them all now, so damage shows up here
        for _ in dataset.iterall():
            pass
    except Exception as exc:  # noqa: BLE001 - damaged elements raise many types (NotImplementedError, ...)
        raise DataFormatError(f"damaged DICOM file ({type(exc).__name__}: {exc})", path=path) from exc
    return dataset


def _numbers(dataset, keyword: str, count: int, path: Path | None, default=None) -> np.ndarray | None:
    """A numeric attribute as ``count`` floats, checked for length and finiteness; ``default`` (or
    None) when the attribute is absent or empty."""
    value = dataset[keyword].value if keyword in dataset else None
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        return None if default is None else np.asarray(default, float)
    items = value if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else [value]
    try:
        values = np.asarray([float(v) for v in items], float)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DataFormatError(f"{keyword} is not numeric ({value!r})", path=path) from exc
    if values.size != count or not np.isfinite(values).all():
        raise DataFormatError(f"{keyword} must be {count} finite number(s), got {value!r}", path=path)
    return values


def _slice_normal(dataset, path: Path | None = None) -> np.ndarray:
    orientation = _numbers(dataset, "ImageOrientationPatient", 6, path, default=[1, 0, 0, 0, 1, 0])
    normal = np.cross(orientation[:3], orientation[3:])
    if not np.linalg.norm(normal) > 1e-6:
        raise DataFormatError(f"ImageOrientationPatient {list(orientation)} gives no slice direction", path=path)
    return normal


def _size(dataset, keyword: str, path: Path) -> int:
    value = _numbers(dataset, keyword, 1, path)
    if value is None or value[0] < 1 or value[0] != int(value[0]):
        raise DataFormatError(f"{keyword} must be a positive integer, got {dataset.get(keyword)!r}", path=path)
    return int(value[0])


def _rescale(dataset, path: Path) -> tuple[float, float, list[str]]:
    """(slope, intercept, names of the attributes that were missing)."""
    missing = []
    values = []
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        found = _numbers(dataset, keyword, 1, path)
        if found is None:
            missing.append(keyword)
            values.append(default)
        else:
            values.append(float(found[0]))
    if values[0] == 0:
        raise DataFormatError("RescaleSlope is 0: every voxel would have the same value", path=path)
    return values[0], values[1], missing


def _check_modality(files: list[Path], datasets: list, folder: Path) -> None:
    """Refuse a series that is not CT (``Modality`` MR, PT, CR, ...); log slices without the tag."""
    untagged = []
    for path, dataset in zip(files, datasets):
        modality = str(dataset.get("Modality", "") or "").strip().upper()
        if not modality:
            untagged.append(path.name)
        elif modality != "CT":
            raise DataFormatError(
                f"Modality is {modality!r}, not CT: nodulekit reads CT series in Hounsfield units only", path=path
            )
    if untagged:
        logger.warning("%s: %d of %d slices have no Modality (e.g. %s); read as CT", folder, len(untagged), len(files), untagged[0])


def _check_orientation(files: list[Path], datasets: list) -> None:
    """Refuse slices that are not parallel to the first one (a localizer or a reformat in the series)."""
    first = _numbers(datasets[0], "ImageOrientationPatient", 6, files[0], default=[1, 0, 0, 0, 1, 0])
    for path, dataset in zip(files[1:], datasets[1:]):
        orientation = _numbers(dataset, "ImageOrientationPatient", 6, path, default=[1, 0, 0, 0, 1, 0])
        if np.abs(orientation - first).max() > ORIENTATION_TOLERANCE:
            raise DataFormatError(
                f"ImageOrientationPatient {[round(float(v), 4) for v in orientation]} differs from "
                f"{files[0].name}'s {[round(float(v), 4) for v in first]}: the slices are not one stack "
                "(a localizer or a reformat in the series?)",
                path=path,
            )


def _slice_spacing(positions: np.ndarray, files: list[Path], folder: Path) -> tuple[float, list[dict]]:
    """The slice spacing (median step, mm) and the gaps; gaps and uneven steps are logged as warnings."""
    steps = np.diff(positions)
    spacing = float(np.median(steps))
    tolerance = max(SPACING_TOLERANCE_FRACTION * spacing, SPACING_TOLERANCE_MM)
    gap_index = np.flatnonzero(steps > GAP_FACTOR * spacing)
    gaps = [
        {
            "after_slice": int(i),
            "from_mm": round(float(positions[i]), 3),
            "to_mm": round(float(positions[i + 1]), 3),
            "missing_slices": max(1, int(round(steps[i] / spacing)) - 1),
            "files": [files[i].name, files[i + 1].name],
        }
        for i in gap_index
    ]
    if gaps:
        shown = "; ".join(
            f"{g['from_mm']:.3f} to {g['to_mm']:.3f} mm ({g['files'][0]} -> {g['files'][1]}, about {g['missing_slices']} missing)"
            for g in gaps[:3]
        )
        logger.warning(
            "%s: %d gap(s) along the slice direction, missing slices: %s%s; the volume stacks the %d slices "
            "%.3f mm apart (the median step), so distances and volumes across a gap are too short",
            folder,
            len(gaps),
            shown,
            "; ..." if len(gaps) > 3 else "",
            len(positions),
            spacing,
        )
    uneven = np.abs(steps - spacing) > tolerance
    uneven[gap_index] = False
    if uneven.any():
        logger.warning(
            "%s: uneven slice spacing: %d of %d steps differ from the median %.3f mm by more than %.3f mm "
            "(steps %.3f..%.3f mm, first between %s and %s); the volume uses %.3f mm",
            folder,
            int(uneven.sum()),
            len(steps),
            spacing,
            tolerance,
            float(steps[uneven].min()),
            float(steps[uneven].max()),
            files[int(np.argmax(uneven))].name,
            files[int(np.argmax(uneven)) + 1].name,
            spacing,
        )
    return spacing, gaps


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
        (ImagePositionPatient of slice 0), ``orientation``, ``slice_thickness``, ``slice_gaps``
        (one dict per gap: ``after_slice``, ``from_mm``, ``to_mm``, ``missing_slices``, ``files``;
        empty when none).

    Raises
    ------
    MissingDataError
        The folder does not exist or holds no DICOM file.
    DataFormatError
        A file is empty, not readable DICOM, has no or undecodable pixel data, or is not one
        grayscale slice; a slice's ``Modality`` is not ``CT`` (MR, PT, CR, ...: named with its
        file); the folder mixes several series (without ``series_uid``), or one series
        mixes studies or patients; slices differ in size or orientation (a localizer in the
        series), share a position, or lack or garble ``ImagePositionPatient``; ``RescaleSlope``
        is 0; a slice is larger than :data:`nodulekit.safety.MAX_IMAGE_PIXELS`; a file resolves
        outside ``folder``.
    InvalidParameterError
        ``series_uid`` names no series in the folder.

    Notes
    -----
    Slice spacing, gaps and uneven spacing (warnings, the series is still read): the slice spacing
    is the median step ``s`` between neighbouring slice positions. A step longer than
    :data:`GAP_FACTOR` x ``s`` (1.5) is a *gap*: slices are missing there; the warning names the
    positions, the files on both sides and about how many slices are missing, and the gap is
    recorded in ``meta["slice_gaps"]``. Any other step that differs from ``s`` by more than
    max(1 % of ``s``, 0.01 mm) (:data:`SPACING_TOLERANCE_FRACTION`, :data:`SPACING_TOLERANCE_MM`)
    makes the spacing *uneven*: the warning gives how many steps, their range and the first pair of
    files. Either way the volume stacks the slices ``s`` apart and is not resampled (no slice is
    invented), so in-plane sizes stay right but distances and volumes across a gap or an uneven
    step are off; ``meta["z_positions"]`` keeps each slice's true position.

    A single slice is read as a 1-slice volume (warning) whose slice spacing is its
    ``SliceThickness`` (1 mm when absent): :meth:`nodulekit.inference.Segmenter.segment` then finds
    and measures nodules in 2-D, without the 3-D second stage.

    Recoveries (logged): a slice without ``Modality`` is read as CT; a missing ``RescaleSlope`` is taken as 1 and a missing
    ``RescaleIntercept`` as 0 (the stored values are then read as HU: check the warning); a missing
    ``PixelSpacing`` as 1 mm; DICOMDIR index files and hidden files are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingDataError("DICOM folder not found", path=folder)
    files = find_dicom_files(folder)
    if not files:
        raise MissingDataError("no DICOM files (*.dcm) in the folder", path=folder)
    check_inside(folder, files)
    workers = max_workers or min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        datasets = list(pool.map(_read, files))
    index_files = [i for i, d in enumerate(datasets) if str(d.get("SOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY]
    if index_files:
        logger.info("%s: skipped %d DICOMDIR index file(s)", folder, len(index_files))
        files = [f for i, f in enumerate(files) if i not in index_files]
        datasets = [d for i, d in enumerate(datasets) if i not in index_files]
        if not files:
            raise MissingDataError("the folder holds only a DICOMDIR index, no image files", path=folder)

    by_series: dict[str, list[int]] = defaultdict(list)
    for index, dataset in enumerate(datasets):
        by_series[str(dataset.get("SeriesInstanceUID", ""))].append(index)
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
    for keyword, what in (("StudyInstanceUID", "studies"), ("PatientID", "patients")):
        found: dict[str, Path] = {}
        for path, dataset in zip(files, datasets):
            found.setdefault(str(dataset.get(keyword, "")), path)
        if len(found) > 1:
            shown = ", ".join(f"{uid or '<none>'} ({path.name})" for uid, path in list(found.items())[:3])
            raise DataFormatError(
                f"one series ({series_uid}) mixes {len(found)} {what} by {keyword}: {shown}; "
                "the files come from different scans", path=folder
            )

    _check_modality(files, datasets, folder)
    for path, dataset in zip(files, datasets):
        if "PixelData" not in dataset:
            raise DataFormatError("DICOM file has no pixel data (not an image slice)", path=path)
        if "ImagePositionPatient" not in dataset:
            raise DataFormatError("DICOM slice lacks ImagePositionPatient: cannot order the series", path=path)
    normal = _slice_normal(datasets[0], files[0])
    _check_orientation(files, datasets)
    origins = [_numbers(d, "ImagePositionPatient", 3, p) for p, d in zip(files, datasets)]
    positions = np.array([float(np.dot(normal, origin)) for origin in origins])
    order = np.argsort(positions, kind="stable")
    files = [files[i] for i in order]
    datasets = [datasets[i] for i in order]
    origins = [origins[i] for i in order]
    positions = positions[order]
    duplicates = np.flatnonzero(np.diff(positions) == 0)
    if duplicates.size:
        first = duplicates[0]
        raise DataFormatError(
            f"two slices share position {positions[first]:.3f} mm ({files[first].name}, {files[first + 1].name})",
            path=folder,
        )

    shapes = [(_size(d, "Rows", p), _size(d, "Columns", p)) for p, d in zip(files, datasets)]
    shape = shapes[0]
    check_image_pixels(shape, path=files[0])
    check_volume_voxels((len(files), *shape), path=folder)
    hu = np.empty((len(datasets), *shape), np.float32)
    defaulted: dict[str, list[str]] = defaultdict(list)
    for index, (path, dataset) in enumerate(zip(files, datasets)):
        if shapes[index] != shape:
            raise DataFormatError(
                f"slice size {shapes[index][0]}x{shapes[index][1]} differs from the series' {shape[0]}x{shape[1]}",
                path=path,
            )
        try:
            pixels = dataset.pixel_array
        except Exception as exc:  # pydicom raises many types for truncated or compressed data
            raise DataFormatError(f"cannot decode pixel data ({exc})", path=path) from exc
        if pixels.shape != shape:
            raise DataFormatError(
                f"pixel data of shape {pixels.shape} is not one {shape[0]}x{shape[1]} grayscale slice "
                "(colour or multi-frame images are not CT slices)",
                path=path,
            )
        slope, intercept, missing = _rescale(dataset, path)
        for keyword in missing:
            defaulted[keyword].append(path.name)
        hu[index] = pixels.astype(np.float32) * slope + intercept
    for keyword, names in defaulted.items():
        logger.warning(
            "%s: %d of %d slices lack %s (e.g. %s); assumed %s, i.e. the stored values are taken as Hounsfield units",
            folder,
            len(names),
            len(files),
            keyword,
            names[0],
            "1" if keyword == "RescaleSlope" else "0",
        )

    first = datasets[0]
    spacing_rc = _numbers(first, "PixelSpacing", 2, files[0])
    if spacing_rc is None:
        logger.warning("%s: no PixelSpacing; assumed 1 x 1 mm pixels", files[0])
        spacing_rc = np.ones(2)
    if not (spacing_rc > 0).all():
        raise DataFormatError(f"PixelSpacing must be positive, got {list(spacing_rc)}", path=files[0])
    row_spacing, column_spacing = (float(v) for v in spacing_rc)
    thickness = _numbers(first, "SliceThickness", 1, files[0])
    thickness = float("nan") if thickness is None else float(thickness[0])
    gaps: list[dict] = []
    if len(positions) > 1:
        slice_spacing, gaps = _slice_spacing(positions, files, folder)
    else:
        slice_spacing = thickness if thickness > 0 else 1.0
        logger.warning(
            "%s: a single slice (%s); read as a 1-slice volume with slice spacing %.3f mm (%s): nodules are "
            "found and measured in 2-D",
            folder,
            files[0].name,
            slice_spacing,
            "its SliceThickness" if thickness > 0 else "no SliceThickness, assumed",
        )
    orientation = _numbers(first, "ImageOrientationPatient", 6, files[0], default=[1, 0, 0, 0, 1, 0])
    meta = {
        "source": str(folder),
        "format": "dicom",
        "patient_id": str(first.get("PatientID", "")) or folder.name,
        "series_uid": series_uid,
        "study_uid": str(first.get("StudyInstanceUID", "")),
        "sop_uids": [str(d.get("SOPInstanceUID", "")) for d in datasets],
        "z_positions": [float(origin[2]) for origin in origins],
        "files": [str(p) for p in files],
        "origin": [float(v) for v in origins[0]],
        "orientation": [float(v) for v in orientation],
        "slice_thickness": thickness,
        "slice_gaps": gaps,
        "manufacturer": str(first.get("Manufacturer", "")),
    }
    logger.info("read %d DICOM slices of %s from %s", len(datasets), meta["patient_id"], folder)
    return Volume(hu=hu, spacing=(slice_spacing, row_spacing, column_spacing), meta=meta)


def write_dicom_series(volume: Volume, folder: str | os.PathLike, *, patient_id: str | None = None) -> Path:
    """Write a volume in Hounsfield units as a CT DICOM series, one file per slice.

    For synthetic scans (:func:`nodulekit.phantom.generate_volume`) that should go through the
    DICOM path: :func:`read_dicom_series`, ``nodulekit segment`` and its DICOM SEG. Stored values
    are int16 ``round(HU) + 1024`` with ``RescaleIntercept`` -1024; axial slices ``spacing[0]``
    apart from z = 0, feet to head; new Study, Series, Frame of Reference and SOP Instance UIDs.

    Parameters
    ----------
    volume : Volume
        ``hu`` (slices, rows, columns) and ``spacing`` (slice, row, column) in mm.
    folder : path
        Created if needed; gets ``0000.dcm``, ``0001.dcm``, ...
    patient_id : str, optional
        Default: ``volume.meta["patient_id"]``, else ``"NODULEKIT"``.

    Returns
    -------
    Path
        ``folder``.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    patient = patient_id or str(volume.meta.get("patient_id") or "NODULEKIT")
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    slice_mm, row_mm, column_mm = volume.spacing
    for index, plane in enumerate(volume.hu):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{index:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.Modality, ds.InstanceNumber = patient, f"{patient}^", "CT", index + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(index * slice_mm)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [float(row_mm), float(column_mm)], float(slice_mm)
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.clip(np.rint(plane) + 1024, -32768, 32767).astype(np.int16).tobytes()
        ds.save_as(path, enforce_file_format=True)
    return folder
