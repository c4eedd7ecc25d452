"""Readers for real data.

Every reader returns one of the two common forms, so everything downstream is format-blind:

* :class:`~nodulekit.dataset.CropSet` (2-D crops with masks): :func:`read_lidc_release` (the
  LIDC-IDRI PNG release), :func:`read_image_folder` (the paper's image/mask folders);
* :class:`~nodulekit.dataset.Volume` (a CT series in HU): :func:`read_dicom_series`,
  :func:`read_lidc_xml` (radiologist reads on a DICOM series), :func:`read_luna16` (MHD/RAW),
  :func:`read_nifti`.

:func:`read_any` picks the reader from what a path holds; :func:`nodulekit.crops.crops_from_volume`
turns a Volume into crops.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path

from ..dataset import CropSet, Volume
from ..errors import DataFormatError, InvalidParameterError, MissingDataError
from ..crops import consensus_mask
from ._common import IMAGE_EXTENSIONS, check_inside, read_image
from .dicom import find_dicom_files, read_dicom_series, write_dicom_series
from .lidc_xml import parse_lidc_xml, polygon_mask, read_lidc_xml
from .luna import read_luna16, sphere_mask
from .nifti import is_nifti, read_nifti
from .png import find_lidc_patients, read_image_folder, read_lidc_release

__all__ = [
    "read_any",
    "read_lidc_release",
    "read_image_folder",
    "read_dicom_series",
    "write_dicom_series",
    "read_lidc_xml",
    "read_luna16",
    "read_nifti",
    "parse_lidc_xml",
    "find_lidc_patients",
    "find_dicom_files",
    "find_lidc_xml",
    "consensus_mask",
    "polygon_mask",
    "sphere_mask",
    "read_image",
]

logger = logging.getLogger(__name__)


def find_lidc_xml(folder: str | os.PathLike) -> list[Path]:
    """``LidcReadMessage`` XML files under ``folder`` (recursively), in name order."""
    found = []
    for path in sorted(Path(folder).rglob("*.xml")):
        try:
            with open(path, "r", errors="replace") as handle:
                head = handle.read(2048)
        except OSError:
            continue
        if "LidcReadMessage" in head:
            found.append(path)
    return found


_READERS = (read_lidc_release, read_image_folder, read_dicom_series, read_lidc_xml, read_luna16)


def _call(reader, *args, **options):
    """Call ``reader`` with the options it takes (``read_any`` options may be meant for another
    reader, e.g. ``progress``); an option no reader takes is refused."""
    unknown = [k for k in options if not any(k in inspect.signature(r).parameters for r in _READERS)]
    if unknown:
        raise InvalidParameterError(f"read_any: no reader takes the option(s) {unknown}")
    accepted = inspect.signature(reader).parameters
    return reader(*args, **{k: v for k, v in options.items() if k in accepted})


def _dicom_with_reads(folder: Path, **options) -> Volume:
    volume = _call(read_dicom_series, folder, **options)
    reads = find_lidc_xml(folder)
    check_inside(folder, reads)
    if len(reads) == 1:
        return _call(read_lidc_xml, reads[0], volume, **options)
    if len(reads) > 1:
        logger.warning("%s: %d LIDC XML files; pass one to read_lidc_xml yourself", folder, len(reads))
    return volume


def _load_cropset(path: Path) -> CropSet:
    """:meth:`CropSet.load`, with the errors NumPy raises for empty or truncated archives
    (``EOFError``, ``zipfile.BadZipFile``) turned into a :class:`DataFormatError`."""
    import zipfile

    try:
        return CropSet.load(path)
    except (EOFError, zipfile.BadZipFile) as exc:
        raise DataFormatError(f"not a nodulekit CropSet file (empty, truncated or not a .npz archive: {exc})", path=path) from exc


def read_any(path: str | os.PathLike, **options) -> CropSet | Volume:
    """Read whatever ``path`` holds, choosing the reader from its layout.

    ========================================================  ==========================================
    ``path``                                                  reader
    ========================================================  ==========================================
    ``*.npz`` written by :meth:`CropSet.save`                 :meth:`CropSet.load`
    folder with ``images/`` and ``masks/``                    :func:`read_image_folder`
    folder of ``LIDC-IDRI-XXXX/nodule-N`` (or one patient)    :func:`read_lidc_release`
    ``*.mhd`` (or a folder with exactly one)                  :func:`read_luna16` (with an
                                                              ``annotations.csv`` beside it, if any)
    ``*.nii`` / ``*.nii.gz`` (or a folder with exactly one    :func:`read_nifti`
    and no ``*.mhd``)
    folder of DICOM files, a ``*.dcm`` or an LIDC ``*.xml``   :func:`read_dicom_series` (+
                                                              :func:`read_lidc_xml` when exactly one
                                                              LIDC XML lies in the folder)
    ========================================================  ==========================================

    Parameters
    ----------
    path : path
    **options
        Passed on to the chosen reader when it takes them (e.g. ``consensus=0.5``,
        ``crop_size=64``, ``progress=False``).

    Returns
    -------
    CropSet or Volume

    Raises
    ------
    MissingDataError
        ``path`` does not exist or holds nothing nodulekit can read.
    InvalidParameterError
        An option that no reader takes.
    """
    path = Path(path)
    if not path.exists():
        raise MissingDataError("no such file or folder", path=path)
    if path.is_file():
        suffix = path.suffix.lower()
        if is_nifti(path):
            return read_nifti(path)
        if suffix == ".npz":
            return _load_cropset(path)
        if suffix == ".mhd":
            csv = path.parent / "annotations.csv"
            return _call(read_luna16, path, csv if csv.is_file() else None, **options)
        if suffix == ".xml":
            volume = _call(read_dicom_series, path.parent, **options)
            return _call(read_lidc_xml, path, volume, **options)
        if suffix in (".dcm", ".dicom"):
            return _dicom_with_reads(path.parent, **options)
        if suffix in IMAGE_EXTENSIONS:
            raise MissingDataError(
                "a single image is not a data set: give the folder holding images/ and masks/", path=path
            )
        raise MissingDataError(f"unknown file type {suffix!r} (expected .npz, .mhd, .nii, .nii.gz, .dcm or .xml)", path=path)
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return _call(read_image_folder, path, **options)
    children = [p for p in path.iterdir()]
    if any(p.is_dir() and p.name.startswith("nodule-") for p in children) or any(
        p.is_dir() and p.name.startswith("LIDC-IDRI-") and any(q.name.startswith("nodule-") for q in p.iterdir())
        for p in children
    ):
        return _call(read_lidc_release, path, **options)
    headers = sorted(path.glob("*.mhd"))
    volumes = [p for p in children if p.is_file() and is_nifti(p)]
    if len(volumes) == 1 and not headers:
        return read_nifti(volumes[0])
    if len(headers) == 1:
        csv = path / "annotations.csv"
        check_inside(path, [headers[0], csv])
        return _call(read_luna16, headers[0], csv if csv.is_file() else None, **options)
    if find_dicom_files(path):
        return _dicom_with_reads(path, **options)
    if len(headers) > 1:
        raise MissingDataError(f"{len(headers)} .mhd volumes in the folder; give one file", path=path)
    raise MissingDataError(
        "cannot tell the format: expected images/+masks/, LIDC-IDRI-XXXX/nodule-N, DICOM files, an .mhd or an .npz",
        path=path,
    )
