"""The bad-input corpus: malformed files and arrays at every public entry point that takes user data.

Every case is generated inside the test (nothing binary is committed). Each malformed input must give
a :class:`~nodulekit.errors.NodulekitError` subclass whose message names the file (or the array
argument) and says what is wrong, or a documented, logged recovery; entry points that write must
leave nothing half-written behind.
"""

from __future__ import annotations

import logging
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nodulekit import CropSet, Volume
from nodulekit.errors import (
    DataFormatError,
    InvalidParameterError,
    MissingDataError,
    ModelFileError,
    NodulekitError,
    RunFolderError,
)

# --------------------------------------------------------------------------------------------------
# Writers of valid inputs (the corpus then breaks them)
# --------------------------------------------------------------------------------------------------


def _save_image(path: Path, array: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def _square_mask(shape=(12, 12), value=255) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[shape[0] // 3 : 2 * shape[0] // 3, shape[1] // 3 : 2 * shape[1] // 3] = value
    return mask


def _image_folder(root: Path, n: int = 3, shape=(12, 12), image_ext=".png", mask_ext=".png") -> Path:
    rng = np.random.default_rng(0)
    for index in range(n):
        _save_image(root / "images" / f"crop_{index}{image_ext}", rng.integers(0, 256, shape, dtype=np.uint8))
        _save_image(root / "masks" / f"crop_{index}{mask_ext}", _square_mask(shape))
    return root


def _release(root: Path, size: int = 16) -> Path:
    """A tiny LIDC PNG release: 3 patients, one nodule, two slices, four readers."""
    rng = np.random.default_rng(1)
    for patient in range(1, 4):
        nodule = root / f"LIDC-IDRI-{patient:04d}" / "nodule-0"
        for k in (0, 1):
            _save_image(nodule / "images" / f"slice-{k}.png", rng.integers(0, 256, (size, size), dtype=np.uint8))
            for reader in range(4):
                _save_image(nodule / f"mask-{reader}" / f"slice-{k}.png", _square_mask((size, size)))
    return root


def _write_dicom(
    path: Path,
    *,
    z: float,
    stored: np.ndarray | None = None,
    series: str = "1.2.840.1",
    study: str = "1.2.840.9",
    patient: str = "TEST-01",
    slope: Any = 2.0,
    intercept: Any = -1024.0,
    position: Any = None,
    modality: str | None = "CT",
    orientation: Any = (1, 0, 0, 0, 1, 0),
) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    stored = np.full((4, 5), int(z * 10), np.int16) if stored is None else stored
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series
    ds.StudyInstanceUID = study
    ds.PatientID = patient
    if modality is not None:
        ds.Modality = modality
    ds.ImagePositionPatient = [-10.0, -20.0, z] if position is None else position
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = [0.5, 0.6]
    ds.SliceThickness = 1.25
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    ds.Rows, ds.Columns = stored.shape[:2]
    ds.SamplesPerPixel = 1 if stored.ndim == 2 else stored.shape[2]
    ds.PhotometricInterpretation = "MONOCHROME2" if stored.ndim == 2 else "RGB"
    if stored.ndim == 3:
        ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = stored.astype(np.uint8).tobytes()
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = stored.astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _series(folder: Path, n: int = 3, **options) -> Path:
    for index, z in enumerate([-5.0, -2.5, -7.5, 0.0][:n]):
        _write_dicom(folder / f"{index:03d}.dcm", z=z, **options)
    return folder


def _mhd(folder: Path, uid: str = "1.3.6.1.99", shape=(4, 6, 8)) -> Path:
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.full(shape, -1000, np.int16))
    image.SetSpacing((0.8, 0.8, 2.0))
    sitk.WriteImage(image, str(folder / f"{uid}.mhd"))
    return folder / f"{uid}.mhd"


def _set_header(mhd: Path, key: str, value: str) -> None:
    """Replace (or add, before ElementDataFile) one ``key = value`` line of a MetaImage header."""
    lines = mhd.read_text().splitlines()
    found = [i for i, line in enumerate(lines) if line.split("=")[0].strip() == key]
    if found:
        lines[found[0]] = f"{key} = {value}"
    else:
        lines.insert(next(i for i, line in enumerate(lines) if line.startswith("ElementDataFile")), f"{key} = {value}")
    mhd.write_text("\n".join(lines) + "\n")


def _ring(top, left, bottom, right):
    points = [(x, top) for x in range(left, right + 1)]
    points += [(right, y) for y in range(top + 1, bottom + 1)]
    points += [(x, bottom) for x in range(right - 1, left - 1, -1)]
    points += [(left, y) for y in range(bottom - 1, top, -1)]
    return points


def _lidc_xml(points, *, series="1.2.3", uid="uid-1") -> str:
    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points)
    roi = f"<roi><imageZposition>-7.5</imageZposition><imageSOP_UID>{uid}</imageSOP_UID><inclusion>TRUE</inclusion>{edges}</roi>"
    return (
        '<?xml version="1.0" encoding="UTF-8"?><LidcReadMessage xmlns="http://www.nih.gov">'
        f"<ResponseHeader><SeriesInstanceUid>{series}</SeriesInstanceUid></ResponseHeader>"
        f"<readingSession><servicingRadiologistID>R0</servicingRadiologistID><unblindedReadNodule>"
        f"<noduleID>N1</noduleID>{roi}</unblindedReadNodule></readingSession></LidcReadMessage>"
    )


def _xml_volume(n_slices: int = 4, size: int = 32) -> Volume:
    return Volume(
        hu=np.full((n_slices, size, size), -800.0, np.float32),
        spacing=(2.5, 0.7, 0.7),
        meta={
            "patient_id": "P1",
            "series_uid": "1.2.3",
            "sop_uids": [f"uid-{k}" for k in range(n_slices)],
            "z_positions": [-10.0 + 2.5 * k for k in range(n_slices)],
            "source": "synthetic",
        },
    )


def _png_with_size(path: Path, width: int, height: int) -> Path:
    """A valid 8x8 PNG whose header is rewritten to declare ``width`` x ``height`` (a bomb's header)."""
    _save_image(path, np.zeros((8, 8), np.uint8))
    data = bytearray(path.read_bytes())
    start = 8 + 4 + 4  # signature, IHDR length, "IHDR"
    data[start : start + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : start + 13])) & 0xFFFFFFFF
    data[start + 13 : start + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def _risk_csv(path: Path, rename: dict | None = None) -> Path:
    from nodulekit.risk import synthetic_risk_table

    table = synthetic_risk_table(20, seed=0)
    table.rename(columns=rename or {}).to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------------------------------
# The error corpus: (name, builder, error class, what-is-wrong pattern)
# A builder writes the bad input under tmp_path and returns (call, text naming the culprit).
# --------------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    build: Callable[[Path], tuple[Callable[[], Any], str]]
    error: type[NodulekitError]
    reason: str


CASES: list[Case] = []


def case(error: type[NodulekitError], reason: str):
    def register(build):
        CASES.append(Case(build.__name__.removeprefix("bad_"), build, error, reason))
        return build

    return register


def _read_folder(root: Path) -> Callable[[], Any]:
    from nodulekit.readers import read_image_folder

    return lambda: read_image_folder(root, progress=False)


# --- images -----------------------------------------------------------------------------------------
@case(DataFormatError, r"empty file \(0 bytes\)")
def bad_zero_byte_png(tmp_path):
    root = _image_folder(tmp_path / "set")
    (root / "images/crop_1.png").write_bytes(b"")
    return _read_folder(root), "crop_1.png"


@case(DataFormatError, r"truncated")
def bad_truncated_png(tmp_path):
    root = _image_folder(tmp_path / "set", shape=(64, 64))
    target = root / "images/crop_2.png"
    target.write_bytes(target.read_bytes()[:70])
    return _read_folder(root), "crop_2.png"


@case(DataFormatError, r"empty file \(0 bytes\)")
def bad_zero_byte_jpeg(tmp_path):
    root = _image_folder(tmp_path / "set", image_ext=".jpg")
    (root / "images/crop_0.jpg").write_bytes(b"")
    return _read_folder(root), "crop_0.jpg"


@case(DataFormatError, r"truncated")
def bad_truncated_jpeg(tmp_path):
    root = _image_folder(tmp_path / "set", shape=(64, 64), image_ext=".jpg")
    target = root / "images/crop_1.jpg"
    target.write_bytes(target.read_bytes()[:300])
    return _read_folder(root), "crop_1.jpg"


@case(DataFormatError, r"empty file \(0 bytes\)")
def bad_zero_byte_tiff(tmp_path):
    root = _image_folder(tmp_path / "set", image_ext=".tif")
    (root / "images/crop_2.tif").write_bytes(b"")
    return _read_folder(root), "crop_2.tif"


@case(DataFormatError, r"truncated")
def bad_truncated_tiff(tmp_path):
    root = _image_folder(tmp_path / "set", shape=(64, 64), image_ext=".tif")
    target = root / "images/crop_0.tif"
    target.write_bytes(target.read_bytes()[:200])
    return _read_folder(root), "crop_0.tif"


@case(DataFormatError, r"not a readable image")
def bad_text_file_named_png(tmp_path):
    root = _image_folder(tmp_path / "set")
    (root / "images/crop_1.png").write_text("this is not a picture\n")
    return _read_folder(root), "crop_1.png"


@case(DataFormatError, r"NaN or infinite")
def bad_float_tiff_with_nan(tmp_path):
    root = _image_folder(tmp_path / "set")
    for index in range(3):
        image = np.full((12, 12), 0.5, np.float32)
        image[3, 4] = np.nan if index == 1 else 0.25
        (root / f"images/crop_{index}.png").unlink()
        Image.fromarray(image).save(root / f"images/crop_{index}.tif")
    return _read_folder(root), "crop_1.tif"


@case(DataFormatError, r"mask size \(10, 12\) differs")
def bad_image_mask_size_mismatch(tmp_path):
    root = _image_folder(tmp_path / "set")
    _save_image(root / "masks/crop_2.png", _square_mask((10, 12)))
    return _read_folder(root), "crop_2.png"


@case(DataFormatError, r"not binary: 3 distinct values \(0, 128, 255\)")
def bad_mask_with_three_values(tmp_path):
    root = _image_folder(tmp_path / "set")
    mask = _square_mask()
    mask[0, :4] = 128
    _save_image(root / "masks/crop_1.png", mask)
    return _read_folder(root), "crop_1.png"


@case(MissingDataError, r"image\(s\) without a mask")
def bad_image_without_mask(tmp_path):
    root = _image_folder(tmp_path / "set")
    (root / "masks/crop_1.png").unlink()
    return _read_folder(root), "crop_1"


@case(DataFormatError, r"image size \(14, 9\) differs .* crop_size")
def bad_non_square_images_of_two_sizes(tmp_path):
    root = _image_folder(tmp_path / "set")
    _save_image(root / "images/crop_2.png", np.zeros((14, 9), np.uint8))
    _save_image(root / "masks/crop_2.png", _square_mask((14, 9)))
    return _read_folder(root), "crop_2.png"


@case(MissingDataError, r"no image files")
def bad_empty_image_folder(tmp_path):
    (tmp_path / "set/images").mkdir(parents=True)
    (tmp_path / "set/masks").mkdir(parents=True)
    return _read_folder(tmp_path / "set"), "images"


@case(MissingDataError, r"cannot tell the format")
def bad_folder_of_stray_files(tmp_path):
    from nodulekit.readers import read_any

    root = tmp_path / "stray"
    root.mkdir()
    (root / "notes.txt").write_text("scan notes")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    return lambda: read_any(root), "stray"


@case(DataFormatError, r"decompression bomb")
def bad_png_bomb_over_nodulekit_limit(tmp_path):
    root = _image_folder(tmp_path / "set")
    _png_with_size(root / "images/crop_0.png", 9000, 9000)  # 81 Mpx: over 8192^2, under Pillow's warning
    return _read_folder(root), "crop_0.png"


@case(DataFormatError, r"decompression bomb")
def bad_png_bomb_over_pillow_limit(tmp_path):
    root = _image_folder(tmp_path / "set")
    _png_with_size(root / "masks/crop_1.png", 60000, 60000)  # 3.6 Gpx: Pillow itself refuses
    return _read_folder(root), "crop_1.png"


@case(DataFormatError, r"outside the data-set folder")
def bad_symlink_escaping_image_folder(tmp_path):
    root = _image_folder(tmp_path / "set")
    secret = _save_image(tmp_path / "elsewhere/secret.png", np.zeros((12, 12), np.uint8))
    (root / "images/crop_1.png").unlink()
    (root / "images/crop_1.png").symlink_to(secret)
    return _read_folder(root), "crop_1.png"


# --- LIDC PNG release ---------------------------------------------------------------------------
@case(DataFormatError, r"empty file \(0 bytes\)")
def bad_release_zero_byte_mask(tmp_path):
    from nodulekit.readers import read_lidc_release

    root = _release(tmp_path / "release")
    (root / "LIDC-IDRI-0002/nodule-0/mask-2/slice-1.png").write_bytes(b"")
    return lambda: read_lidc_release(root, progress=False), "LIDC-IDRI-0002/nodule-0/mask-2/slice-1.png"


@case(MissingDataError, r"no LIDC-IDRI-XXXX/nodule-N folders")
def bad_release_empty_folder(tmp_path):
    from nodulekit.readers import read_lidc_release

    (tmp_path / "release").mkdir()
    return lambda: read_lidc_release(tmp_path / "release", progress=False), "release"


@case(DataFormatError, r"outside the data-set folder")
def bad_release_patient_symlinked_outside(tmp_path):
    from nodulekit.readers import read_lidc_release

    root = _release(tmp_path / "release")
    other = _release(tmp_path / "other")
    (root / "LIDC-IDRI-0004").symlink_to(other / "LIDC-IDRI-0001", target_is_directory=True)
    return lambda: read_lidc_release(root, progress=False), "LIDC-IDRI-0004"


# --- DICOM --------------------------------------------------------------------------------------
def _read_dicom(folder: Path) -> Callable[[], Any]:
    from nodulekit.readers import read_dicom_series

    return lambda: read_dicom_series(folder)


@case(DataFormatError, r"empty file \(0 bytes\)")
def bad_zero_byte_dicom(tmp_path):
    folder = _series(tmp_path / "series")
    (folder / "001.dcm").write_bytes(b"")
    return _read_dicom(folder), "001.dcm"


@case(DataFormatError, r"pixel data")
def bad_truncated_dicom(tmp_path):
    folder = _series(tmp_path / "series", stored=np.zeros((64, 64), np.int16))
    target = folder / "002.dcm"
    target.write_bytes(target.read_bytes()[:-3000])
    return _read_dicom(folder), "002.dcm"


@case(DataFormatError, r"mixes 2 studies")
def bad_dicom_series_mixing_two_studies(tmp_path):
    folder = _series(tmp_path / "series")
    _write_dicom(folder / "003.dcm", z=2.5, study="1.2.840.77")
    return _read_dicom(folder), "series"


@case(DataFormatError, r"mixes 2 DICOM series")
def bad_dicom_folder_mixing_two_series(tmp_path):
    folder = _series(tmp_path / "series")
    _write_dicom(folder / "003.dcm", z=2.5, series="1.2.840.2", study="1.2.840.77")
    return _read_dicom(folder), "series"


@case(DataFormatError, r"RescaleSlope is 0")
def bad_dicom_zero_rescale_slope(tmp_path):
    folder = _series(tmp_path / "series")
    _write_dicom(folder / "001.dcm", z=-2.5, slope=0)
    return _read_dicom(folder), "001.dcm"


@case(DataFormatError, r"ImagePositionPatient must be 3 finite number")
def bad_dicom_garbled_position(tmp_path):
    folder = _series(tmp_path / "series")
    _write_dicom(folder / "002.dcm", z=-7.5, position=[-10.0, -20.0])
    return _read_dicom(folder), "002.dcm"


@case(DataFormatError, r"not one 4x5 grayscale slice")
def bad_dicom_colour_slice(tmp_path):
    folder = _series(tmp_path / "series")
    _write_dicom(folder / "001.dcm", z=-2.5, stored=np.zeros((4, 5, 3), np.uint8))
    return _read_dicom(folder), "001.dcm"


@case(MissingDataError, r"no DICOM files")
def bad_empty_dicom_folder(tmp_path):
    (tmp_path / "series").mkdir()
    (tmp_path / "series/readme.txt").write_text("nothing here")
    return _read_dicom(tmp_path / "series"), "series"


@case(DataFormatError, r"outside the data-set folder")
def bad_dicom_symlink_escaping(tmp_path):
    folder = _series(tmp_path / "series")
    outside = _write_dicom(tmp_path / "elsewhere/x.dcm", z=2.5)
    (folder / "003.dcm").symlink_to(outside)
    return _read_dicom(folder), "003.dcm"


@case(DataFormatError, r"Modality is 'MR', not CT")
def bad_dicom_mr_series(tmp_path):
    folder = _series(tmp_path / "series", modality="MR")
    return _read_dicom(folder), "000.dcm"


@case(DataFormatError, r"Modality is 'PT', not CT")
def bad_dicom_pet_slice_in_a_ct_series(tmp_path):
    folder = _series(tmp_path / "series")
    _write_dicom(folder / "003.dcm", z=2.5, modality="PT")
    return _read_dicom(folder), "003.dcm"


@case(DataFormatError, r"Modality is 'CR', not CT")
def bad_dicom_radiograph(tmp_path):
    folder = _series(tmp_path / "series", n=1, modality="CR")
    return _read_dicom(folder), "000.dcm"


@case(DataFormatError, r"ImageOrientationPatient .* differs from 000\.dcm's .*not one stack")
def bad_dicom_localizer_in_the_series(tmp_path):
    folder = _series(tmp_path / "series")
    _write_dicom(folder / "003.dcm", z=2.5, orientation=(0, 1, 0, 0, 0, -1))  # a sagittal scout
    return _read_dicom(folder), "003.dcm"


# --- LIDC XML -----------------------------------------------------------------------------------
def _read_xml(path: Path) -> Callable[[], Any]:
    from nodulekit.readers import read_lidc_xml

    return lambda: read_lidc_xml(path, _xml_volume())


@case(DataFormatError, r"not well-formed XML")
def bad_xml_malformed(tmp_path):
    path = tmp_path / "069.xml"
    path.write_text(_lidc_xml(_ring(2, 2, 8, 8))[:-40])
    return _read_xml(path), "069.xml"


@case(DataFormatError, r"not well-formed XML")
def bad_xml_zero_byte(tmp_path):
    path = tmp_path / "069.xml"
    path.write_bytes(b"")
    return _read_xml(path), "069.xml"


@case(DataFormatError, r"points outside the 32x32 image")
def bad_xml_contour_outside_image(tmp_path):
    path = tmp_path / "069.xml"
    path.write_text(_lidc_xml(_ring(20, 20, 40, 40)))
    return _read_xml(path), "069.xml"


@case(DataFormatError, r"malformed roi of nodule 'N1'")
def bad_xml_infinite_coordinate(tmp_path):
    path = tmp_path / "069.xml"
    path.write_text(_lidc_xml([(2, 2), ("inf", 3), (4, 4)]))
    return _read_xml(path), "069.xml"


@case(DataFormatError, r"reads series 9\.9\.9, but the volume is series 1\.2\.3")
def bad_xml_of_another_series(tmp_path):
    path = tmp_path / "069.xml"
    path.write_text(_lidc_xml(_ring(2, 2, 8, 8), series="9.9.9"))
    return _read_xml(path), "069.xml"


@case(DataFormatError, r"not an LIDC CT read")
def bad_xml_wrong_root(tmp_path):
    path = tmp_path / "069.xml"
    path.write_text('<?xml version="1.0"?><IdriReadMessage><x/></IdriReadMessage>')
    return _read_xml(path), "069.xml"


@case(DataFormatError, r"not well-formed XML")
def bad_xml_entity_expansion_bomb(tmp_path):
    entities = '<!ENTITY a0 "xxxxxxxxxx">' + "".join(
        f'<!ENTITY a{i} "{("&a" + str(i - 1) + ";") * 10}">' for i in range(1, 10)
    )
    path = tmp_path / "069.xml"
    path.write_text(f'<?xml version="1.0"?><!DOCTYPE LidcReadMessage [{entities}]><LidcReadMessage>&a9;</LidcReadMessage>')
    return _read_xml(path), "069.xml"


# --- MetaImage (LUNA16) -------------------------------------------------------------------------
def _read_mhd(mhd: Path, csv: Path | None = None) -> Callable[[], Any]:
    from nodulekit.readers import read_luna16

    return lambda: read_luna16(mhd, csv)


@case(MissingDataError, r"data file '1\.3\.6\.1\.99\.raw' is missing")
def bad_mhd_without_raw(tmp_path):
    mhd = _mhd(tmp_path / "luna")
    mhd.with_suffix(".raw").unlink()
    return _read_mhd(mhd), "1.3.6.1.99.raw"


@case(DataFormatError, r"RAW data is truncated: 100 bytes, the header .* needs 384")
def bad_mhd_raw_too_short(tmp_path):
    mhd = _mhd(tmp_path / "luna")
    raw = mhd.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:100])
    return _read_mhd(mhd), "1.3.6.1.99.raw"


@case(DataFormatError, r"RAW data has 384 bytes but the header \(DimSize 8 6 2, MET_SHORT\) describes 192")
def bad_mhd_dimsize_smaller_than_raw(tmp_path):
    mhd = _mhd(tmp_path / "luna")
    _set_header(mhd, "DimSize", "8 6 2")
    return _read_mhd(mhd), "1.3.6.1.99.raw"


@case(DataFormatError, r"bad MetaImage header value")
def bad_mhd_garbage_dimsize(tmp_path):
    mhd = _mhd(tmp_path / "luna")
    _set_header(mhd, "DimSize", "eight six four")
    return _read_mhd(mhd), "1.3.6.1.99.mhd"


@case(DataFormatError, r"more than the limit")
def bad_mhd_declaring_huge_volume(tmp_path):
    mhd = _mhd(tmp_path / "luna")
    _set_header(mhd, "DimSize", "100000 100000 100000")
    return _read_mhd(mhd), "1.3.6.1.99.mhd"


@case(DataFormatError, r"outside the data-set folder")
def bad_mhd_data_file_escaping(tmp_path):
    mhd = _mhd(tmp_path / "luna/subset0")
    mhd.with_suffix(".raw").rename(tmp_path / "luna/stolen.raw")
    _set_header(mhd, "ElementDataFile", "../stolen.raw")
    return _read_mhd(mhd), "stolen.raw"


@case(DataFormatError, r"not a MetaImage header")
def bad_mhd_zero_byte(tmp_path):
    path = tmp_path / "scan.mhd"
    path.write_bytes(b"")
    return _read_mhd(path), "scan.mhd"


@case(DataFormatError, r"row 0 of series 1\.3\.6\.1\.99 has coordinates")
def bad_luna_annotation_without_coordinate(tmp_path):
    mhd = _mhd(tmp_path / "luna")
    csv = tmp_path / "luna/annotations.csv"
    csv.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.3.6.1.99,,1.0,2.0,5.0\n")
    return _read_mhd(mhd, csv), "annotations.csv"


# --- CropSet files ------------------------------------------------------------------------------
@case(DataFormatError, r"Object arrays cannot be loaded when allow_pickle=False")
def bad_npz_with_pickled_objects(tmp_path):
    from nodulekit.readers import read_any

    path = tmp_path / "crops.npz"
    np.savez(path, images=np.zeros((1, 4, 4)), masks=np.zeros((1, 4, 4)), meta=np.array([{"x": 1}], dtype=object))
    return lambda: read_any(path), "crops.npz"


@case(DataFormatError, r"not a nodulekit CropSet file")
def bad_npz_zero_byte(tmp_path):
    from nodulekit.readers import read_any

    path = tmp_path / "crops.npz"
    path.write_bytes(b"")
    return lambda: read_any(path), "crops.npz"


# --- arrays -------------------------------------------------------------------------------------
@case(DataFormatError, r"images: 1 NaN or infinite value\(s\) in 1 of 3 image\(s\) \(index 1\)")
def bad_nan_in_preprocessing_input(tmp_path):
    from nodulekit.preprocessing import paper_pipeline

    images = np.zeros((3, 16, 16), np.float32)
    images[1, 4, 4] = np.nan
    return lambda: paper_pipeline().apply(images), "images"


@case(DataFormatError, r"2 NaN or infinite value\(s\) in 1 of 2 image\(s\) \(index 0\)")
def bad_inf_in_preprocessing_input(tmp_path):
    from nodulekit.preprocessing import Pipeline, window_hu, zscore

    images = np.zeros((2, 16, 16), np.float32)
    images[0, 0, :2] = [np.inf, -np.inf]
    return lambda: Pipeline([window_hu(), zscore()]).apply(images), "images"


@case(DataFormatError, r"NaN or infinite voxel")
def bad_nan_volume_into_crops(tmp_path):
    from nodulekit.crops import crops_from_volume

    hu = np.full((3, 32, 32), -800.0, np.float32)
    hu[1, 0, 0] = np.nan
    mask = np.zeros(hu.shape, np.uint8)
    mask[1, 10:14, 10:14] = 1
    volume = Volume(hu, (2.0, 0.7, 0.7), mask=mask, meta={"source": "scan-17.mhd"})
    return lambda: crops_from_volume(volume, size=16), "scan-17.mhd"


@case(InvalidParameterError, r"groups mix value types")
def bad_split_groups_of_mixed_types(tmp_path):
    from nodulekit.splits import patient_split

    groups = np.array(["LIDC-IDRI-0001", 2, 3.5, "LIDC-IDRI-0004"], dtype=object)
    return lambda: patient_split(groups), "groups"


# --- risk table ---------------------------------------------------------------------------------
@case(DataFormatError, r"missing columns 'Smoking'.*unexpected columns 'Smokng'")
def bad_risk_csv_misspelled_column(tmp_path):
    from nodulekit.risk import load_risk_table

    path = _risk_csv(tmp_path / "risk.csv", {"Smoking": "Smokng"})
    return lambda: load_risk_table(path), "risk.csv"


@case(DataFormatError, r"not a readable CSV table")
def bad_risk_csv_zero_byte(tmp_path):
    from nodulekit.risk import load_risk_table

    path = tmp_path / "risk.csv"
    path.write_bytes(b"")
    return lambda: load_risk_table(path), "risk.csv"


@case(DataFormatError, r"not a readable CSV table")
def bad_risk_csv_binary_junk(tmp_path):
    from nodulekit.risk import load_risk_table

    path = tmp_path / "risk.csv"
    path.write_bytes(bytes(np.random.default_rng(3).integers(128, 256, 400, dtype=np.uint8)))
    return lambda: load_risk_table(path), "risk.csv"


# --- model files --------------------------------------------------------------------------------
def _load(path: Path) -> Callable[[], Any]:
    from nodulekit.safety import load_model

    return lambda: load_model(path)


@case(ModelFileError, r"a \.keras file is a zip archive and this one is not")
def bad_model_text_file(tmp_path):
    path = tmp_path / "model.keras"
    path.write_text("definitely not weights")
    return _load(path), "model.keras"


@case(ModelFileError, r"empty file \(0 bytes\)")
def bad_model_zero_byte(tmp_path):
    path = tmp_path / "best.keras"
    path.write_bytes(b"")
    return _load(path), "best.keras"


@case(ModelFileError, r"not a loadable Keras model")
def bad_model_zip_without_model(tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "a zip, but no config.json")
    return _load(path), "model.keras"


@case(ModelFileError, r"not a Keras model: a \.h5 model is an HDF5 file")
def bad_model_h5_that_is_a_png(tmp_path):
    path = _save_image(tmp_path / "weights.h5", np.zeros((4, 4), np.uint8), format="PNG")
    return _load(path), "weights.h5"


@case(ModelFileError, r"unsupported model file type '\.pt'")
def bad_model_foreign_format(tmp_path):
    path = tmp_path / "unet.pt"
    path.write_bytes(b"PK\x03\x04 torch")
    return _load(path), "unet.pt"


# --------------------------------------------------------------------------------------------------


def test_corpus_is_large_and_distinct():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)) and len(names) >= 30, len(names)


@pytest.mark.parametrize("bad", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_a_clear_nodulekit_error(bad: Case, tmp_path):
    call, culprit = bad.build(tmp_path)
    with pytest.raises(bad.error) as info:
        call()
    error = info.value
    assert isinstance(error, NodulekitError)
    message = str(error)
    assert culprit in message, f"the message does not name {culprit!r}: {message}"
    assert re.search(bad.reason, message, re.IGNORECASE | re.DOTALL), f"unexpected reason: {message}"


# --------------------------------------------------------------------------------------------------
# Documented recoveries: read correctly (values checked) and logged where something was assumed
# --------------------------------------------------------------------------------------------------


def test_rgba_palette_and_gray_alpha_images_are_read_as_gray(tmp_path):
    from nodulekit.readers import read_image_folder

    root = _image_folder(tmp_path / "set", n=3)
    rgba = np.zeros((12, 12, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 7  # alpha must not matter
    _save_image(root / "images/crop_0.png", rgba)
    palette = Image.new("P", (12, 12), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.save(root / "images/crop_1.png")
    Image.fromarray(np.stack([np.full((12, 12), 90, np.uint8), np.zeros((12, 12), np.uint8)], -1), "LA").save(
        root / "images/crop_2.png"
    )
    crops = read_image_folder(root, progress=False)
    np.testing.assert_allclose(crops.images[0], 0.2125 * 200 + 0.7154 * 100 + 0.0721 * 50, rtol=1e-5)
    np.testing.assert_allclose(crops.images[1], 0.2125 * 10 + 0.7154 * 20 + 0.0721 * 30, rtol=1e-5)
    np.testing.assert_array_equal(crops.images[2], 90)
    assert crops.units == "uint8"


def test_16bit_images_keep_their_values(tmp_path):
    from nodulekit.readers import read_image_folder

    root = _image_folder(tmp_path / "set", n=2)
    for index, value in enumerate((4000, 65535)):
        _save_image(root / f"images/crop_{index}.png", np.full((12, 12), value, np.uint16))
    crops = read_image_folder(root, progress=False)
    assert crops.units == "float"
    assert crops.images[:, 0, 0].tolist() == [4000.0, 65535.0]


def test_non_square_images_and_01_or_16bit_masks_are_read(tmp_path):
    from nodulekit.readers import read_image_folder

    root = _image_folder(tmp_path / "set", n=3, shape=(10, 24))
    _save_image(root / "masks/crop_0.png", _square_mask((10, 24), value=1))  # {0, 1}
    _save_image(root / "masks/crop_1.png", _square_mask((10, 24)).astype(np.uint16) * 257)  # {0, 65535}
    crops = read_image_folder(root, progress=False)
    assert crops.images.shape == (3, 10, 24)
    expected = (_square_mask((10, 24)) > 0).astype(np.uint8)
    for index in range(3):
        np.testing.assert_array_equal(crops.masks[index], expected)


def test_stray_and_hidden_files_are_ignored_with_a_log(tmp_path, caplog):
    from nodulekit.readers import read_any, read_image_folder, read_lidc_release

    root = _image_folder(tmp_path / "set")
    (root / "images/._crop_0.png").write_bytes(b"\0\5\26\7 macOS resource fork")
    (root / "images/.DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "images/notes.txt").write_text("reader notes")
    (root / "images/thumbnails").mkdir()
    _save_image(root / "masks/orphan.png", _square_mask())
    with caplog.at_level(logging.INFO, logger="nodulekit"):
        crops = read_image_folder(root, progress=False)
    assert len(crops) == 3 and crops.table["name"].tolist() == ["crop_0", "crop_1", "crop_2"]
    assert "hidden file" in caplog.text and "orphan.png" in caplog.text

    release = _release(tmp_path / "release")
    (release / "README.txt").write_text("LIDC subset")
    (release / ".DS_Store").write_bytes(b"junk")
    (release / "LIDC-IDRI-0001/.DS_Store").write_bytes(b"junk")
    (release / "LIDC-IDRI-0001/nodule-0/images/Thumbs.db").write_bytes(b"junk")
    (release / "LIDC-IDRI-0001/nodule-0/mask-0/._slice-0.png").write_bytes(b"junk")
    assert len(read_lidc_release(release, progress=False)) == 6
    assert len(read_any(release, progress=False)) == 6


def test_dicom_missing_rescale_slope_is_assumed_one_and_logged(tmp_path, caplog):
    from nodulekit.readers import read_dicom_series

    folder = _series(tmp_path / "series", slope=None, intercept=None)
    with caplog.at_level(logging.WARNING, logger="nodulekit"):
        volume = read_dicom_series(folder)
    np.testing.assert_array_equal(volume.hu[:, 0, 0], [-75, -50, -25])  # stored values as they are
    assert "3 of 3 slices lack RescaleSlope" in caplog.text and "lack RescaleIntercept" in caplog.text
    assert str(folder) in caplog.text


def test_dicom_stray_files_and_dicomdir_are_skipped(tmp_path, caplog):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from nodulekit.readers import read_dicom_series

    folder = _series(tmp_path / "series")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    index = FileDataset(str(folder / "DICOMDIR"), {}, file_meta=meta, preamble=b"\0" * 128)
    index.SOPClassUID = meta.MediaStorageSOPClassUID
    index.save_as(folder / "DICOMDIR", enforce_file_format=True)
    (folder / "._000.dcm").write_bytes(b"\0\5\26\7 resource fork")
    (folder / "069.xml").write_text("<LidcReadMessage/>")
    (folder / "notes.txt").write_text("notes")
    with caplog.at_level(logging.INFO, logger="nodulekit"):
        volume = read_dicom_series(folder)
    assert volume.hu.shape == (3, 4, 5) and "DICOMDIR" in caplog.text


def test_lidc_xml_with_unmatched_rois_keeps_the_rest_and_logs(tmp_path, caplog):
    from nodulekit.readers import read_lidc_xml

    good = _lidc_xml(_ring(2, 2, 8, 8))
    roi = re.search(r"<roi>.*</roi>", good).group(0)
    lost = good.replace(roi, roi + roi.replace("uid-1", "uid-from-another-scan"))
    path = tmp_path / "069.xml"
    path.write_text(lost)
    with caplog.at_level(logging.WARNING, logger="nodulekit"):
        volume = read_lidc_xml(path, _xml_volume())
    assert volume.mask[1].sum() == 25 and len(volume.nodules) == 1  # 7x7 outline, interior 5x5
    assert "1 of 2 ROIs match no slice" in caplog.text


def test_input_sizes_not_divisible_by_16_are_read_and_cropped(tmp_path):
    from nodulekit.crops import center_crop
    from nodulekit.preprocessing import paper_pipeline
    from nodulekit.readers import read_image_folder

    crops = read_image_folder(_image_folder(tmp_path / "set", shape=(50, 70)), crop_size=64, progress=False)
    assert crops.images.shape == (3, 64, 64)
    out = paper_pipeline(crop_size=48).apply(crops.images)
    assert out.shape == (3, 48, 48) and np.isfinite(out).all()
    assert center_crop(np.ones((2, 50, 70)), 64).shape == (2, 64, 64)


# --------------------------------------------------------------------------------------------------
# Entry points of the other modules (training, inference, CLI, CropSet): their public API as it is
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory) -> Path:
    from nodulekit.models import build_unet

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    build_unet((16, 16, 1), filters=(2, 4, 4, 4, 4)).save(path)
    return path


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _phantom_crops(size: int = 32) -> CropSet:
    """24 synthetic crops spread over 6 patients (enough for a 60/20/20 split and 2 folds)."""
    from nodulekit.phantom import generate_crops

    crops = generate_crops(24, size=size, seed=0)
    table = crops.table.copy()
    table["patient_id"] = [f"P{index % 6}" for index in range(len(table))]
    return CropSet(crops.images.copy(), crops.masks, table, units=crops.units)


def _quick_config():
    from nodulekit.training import TrainConfig

    return TrainConfig.quick(architectures=("unet",), learning_rates=(1e-3,), batch_sizes=(8,), max_crops=None)


def test_training_on_nan_crops_fails_before_writing_anything(tmp_path):
    from nodulekit.training import run_protocol

    crops = _phantom_crops()
    crops.images[5, 3, 3] = np.nan
    run_dir = tmp_path / "run"
    with pytest.raises(DataFormatError, match=r"images: 1 NaN or infinite value\(s\) in 1 of 24 image\(s\) \(index 5\)"):
        run_protocol(crops, run_dir=run_dir, config=_quick_config(), progress=False)
    assert _files(run_dir) == []


def test_training_on_crops_not_divisible_by_16_fails_before_writing_anything(tmp_path):
    from nodulekit.training import run_protocol

    crops = _phantom_crops(size=48)
    crops = CropSet(crops.images[:, :40, :50], crops.masks[:, :40, :50], crops.table, units=crops.units)
    run_dir = tmp_path / "run"
    with pytest.raises(InvalidParameterError, match=r"multiples? of 16"):
        run_protocol(crops, run_dir=run_dir, config=_quick_config(), progress=False)
    assert _files(run_dir) == []


def test_model_builder_refuses_input_not_divisible_by_16():
    from nodulekit.models import build_unet

    with pytest.raises(InvalidParameterError, match=r"height 50 must be a positive multiple of 16"):
        build_unet((50, 64, 1), filters=(2, 4, 4, 4, 4))


@pytest.mark.parametrize("mode", ["sliding", "full"])
def test_inference_on_sizes_not_divisible_by_16(tiny_model_file, mode):
    from nodulekit.inference import load_segmenter

    segmenter = load_segmenter(tiny_model_file)
    slices = np.random.default_rng(0).normal(-600, 200, (2, 50, 70)).astype(np.float32)
    probabilities = segmenter.predict(slices, mode=mode, progress=False)
    assert probabilities.shape == (2, 50, 70) and np.isfinite(probabilities).all()
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


def test_inference_refuses_nan_slices(tiny_model_file):
    from nodulekit.inference import load_segmenter

    segmenter = load_segmenter(tiny_model_file)
    slices = np.zeros((1, 32, 32), np.float32)
    slices[0, 5, 5] = np.nan
    with pytest.raises(DataFormatError, match=r"NaN"):
        segmenter.segment(slices, spacing=(1.0, 1.0, 1.0), progress=False)


def test_load_segmenter_refuses_non_model(tmp_path):
    from nodulekit.inference import load_segmenter

    path = tmp_path / "model.keras"
    path.write_text("not a model")
    with pytest.raises(ModelFileError) as info:
        load_segmenter(path)
    assert "model.keras" in str(info.value) and info.value.path == str(path)


def _cli(arguments: list[str], capsys) -> tuple[int, str]:
    from nodulekit.cli import main

    code = main([str(a) for a in arguments])
    return code, capsys.readouterr().err


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.")]


def test_cli_segment_with_a_file_that_is_not_a_model(tmp_path, capsys):
    image = _save_image(tmp_path / "ct.png", np.zeros((32, 32), np.uint8))
    fake = tmp_path / "best.keras"
    fake.write_text("not a model")
    code, err = _cli(["segment", image, "--model", fake, "--out", tmp_path / "out", "--no-progress"], capsys)
    assert code == 1 and "best.keras" in err and "error" in err
    assert _leftovers(tmp_path, "out") == []


def test_cli_segment_with_a_missing_model(tmp_path, capsys):
    image = _save_image(tmp_path / "ct.png", np.zeros((32, 32), np.uint8))
    code, err = _cli(["segment", image, "--model", tmp_path / "absent.keras", "--out", tmp_path / "out"], capsys)
    assert code == 1 and "absent.keras" in err
    assert _leftovers(tmp_path, "out") == []


def test_cli_segment_on_a_zero_byte_image_leaves_no_output(tmp_path, capsys, tiny_model_file):
    image = tmp_path / "ct.png"
    image.write_bytes(b"")
    out = tmp_path / "out"
    code, err = _cli(["segment", image, "--model", tiny_model_file, "--out", out, "--no-progress"], capsys)
    assert code == 1 and "ct.png" in err and "empty file" in err
    assert _leftovers(tmp_path, "out") == []


def test_cli_export_of_a_non_model_leaves_no_output(tmp_path, capsys):
    fake = tmp_path / "model.keras"
    fake.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip archive
    code, err = _cli(["export", fake, "--out", tmp_path / "exported", "--formats", "keras"], capsys)
    assert code == 1 and "model.keras" in err
    assert _leftovers(tmp_path, "exported") == []


def test_cropset_refuses_nan_images():
    table = pd.DataFrame(
        {
            "patient_id": ["p"],
            "nodule_id": ["p/n"],
            "slice_index": [0],
            "pixel_spacing_mm": [np.nan],
            "slice_spacing_mm": [np.nan],
            "n_readers": [1],
            "source": ["x"],
        }
    )
    images = np.zeros((1, 8, 8), np.float32)
    images[0, 1, 1] = np.inf
    with pytest.raises(DataFormatError, match=r"NaN or infinite"):
        CropSet(images, np.zeros((1, 8, 8), np.uint8), table)


def test_cropset_load_refuses_truncated_file(tmp_path):
    crops = _phantom_crops(size=16)
    path = crops.save(tmp_path / "crops.npz")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataFormatError, match="crops.npz"):
        CropSet.load(path)


def test_risk_loader_error_names_file_and_offending_values(tmp_path):
    from nodulekit.risk import load_risk_table

    path = _risk_csv(tmp_path / "risk.csv")
    table = pd.read_csv(path)
    table.loc[3, "Smoking"] = 12
    table.to_csv(path, index=False)
    with pytest.raises(DataFormatError) as info:
        load_risk_table(path)
    assert str(path) in str(info.value) and "'Smoking'" in str(info.value) and "12" in str(info.value)



# --------------------------------------------------------------------------------------------------
# Whole-scan detection (issue 18, item 7): non-CT series, missing slices and uneven spacing, a single
# slice, no lungs in view, a model folder without its second stage
# --------------------------------------------------------------------------------------------------


def _stack(folder: Path, positions, *, images=None, **options) -> Path:
    """One DICOM file per position (mm along z), named 000.dcm, 001.dcm, ... in that order."""
    for index, z in enumerate(positions):
        stored = None if images is None else images[index]
        _write_dicom(folder / f"{index:03d}.dcm", z=z, stored=stored, **options)
    return folder


def test_dicom_missing_slices_are_read_with_a_warning_naming_the_gap(tmp_path, caplog):
    from nodulekit.readers import read_dicom_series

    folder = _stack(tmp_path / "series", [0.0, 2.5, 5.0, 12.5, 15.0, 17.5])  # 7.5 and 10.0 are missing
    with caplog.at_level(logging.WARNING, logger="nodulekit"):
        volume = read_dicom_series(folder)
    assert volume.hu.shape == (6, 4, 5) and volume.spacing == (2.5, 0.5, 0.6)
    np.testing.assert_array_equal(volume.hu[:, 0, 0], [-1024, -974, -924, -774, -724, -674])  # 2 x 10 z - 1024
    assert volume.meta["z_positions"] == [0.0, 2.5, 5.0, 12.5, 15.0, 17.5]
    assert volume.meta["slice_gaps"] == [
        {"after_slice": 2, "from_mm": 5.0, "to_mm": 12.5, "missing_slices": 2, "files": ["002.dcm", "003.dcm"]}
    ]
    assert "1 gap(s)" in caplog.text and "5.000 to 12.500 mm (002.dcm -> 003.dcm, about 2 missing)" in caplog.text
    assert "6 slices 2.500 mm apart" in caplog.text and str(folder) in caplog.text
    assert "uneven" not in caplog.text


def test_dicom_uneven_spacing_beyond_the_tolerance_is_a_warning(tmp_path, caplog):
    from nodulekit.readers import read_dicom_series

    folder = _stack(tmp_path / "series", [0.0, 2.5, 5.0, 7.6, 10.0, 12.5])  # one slice 0.1 mm off
    with caplog.at_level(logging.WARNING, logger="nodulekit"):
        volume = read_dicom_series(folder)
    assert volume.spacing[0] == 2.5 and volume.meta["slice_gaps"] == []
    assert "uneven slice spacing: 2 of 5 steps differ from the median 2.500 mm by more than 0.025 mm" in caplog.text
    assert "steps 2.400..2.600 mm, first between 002.dcm and 003.dcm" in caplog.text
    assert "gap" not in caplog.text


@pytest.mark.parametrize(
    "positions, spacing",
    [([0.0, 2.5, 5.004, 7.5], 2.5), ([0.0, 0.625, 1.256, 1.875, 2.5], 0.625)],  # under 1 % / under 0.01 mm
    ids=["2.5mm", "0.625mm"],
)
def test_dicom_spacing_within_the_tolerance_is_read_quietly(tmp_path, caplog, positions, spacing):
    from nodulekit.readers import read_dicom_series

    folder = _stack(tmp_path / "series", positions)
    with caplog.at_level(logging.WARNING, logger="nodulekit"):
        volume = read_dicom_series(folder)
    assert volume.spacing[0] == pytest.approx(spacing, abs=1e-6) and volume.meta["slice_gaps"] == []
    assert caplog.text == ""


def test_dicom_single_slice_is_a_one_slice_volume_with_a_warning(tmp_path, caplog):
    from nodulekit.readers import read_dicom_series

    folder = _stack(tmp_path / "one", [-7.5])
    with caplog.at_level(logging.WARNING, logger="nodulekit"):
        volume = read_dicom_series(folder)
    assert volume.hu.shape == (1, 4, 5) and volume.spacing == (1.25, 0.5, 0.6)  # SliceThickness 1.25 mm
    assert "a single slice (000.dcm)" in caplog.text and "1.250 mm (its SliceThickness)" in caplog.text


def test_dicom_without_modality_is_read_as_ct_with_a_warning(tmp_path, caplog):
    from nodulekit.readers import read_dicom_series

    folder = _series(tmp_path / "series", modality=None)
    with caplog.at_level(logging.WARNING, logger="nodulekit"):
        volume = read_dicom_series(folder)
    assert volume.hu.shape == (3, 4, 5) and "3 of 3 slices have no Modality" in caplog.text


# --- segmenting such input ---------------------------------------------------------------------------
def _disc_slices(n_slices: int, on: tuple[int, ...], size: int = 64) -> np.ndarray:
    """Stored values (HU = 2 x stored - 1024) of lung-like -850 HU slices with a 40 HU disc of radius 5 on slices ``on``."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 30) ** 2 + (xx - 34) ** 2 <= 25
    hu = np.full((n_slices, size, size), -850.0)
    hu[list(on)] = np.where(disc, 40.0, -850.0)
    return ((hu + 1024) / 2).astype(np.int16)


@pytest.fixture(scope="module")
def segmenter_folders(tmp_path_factory, bright_disc_model) -> dict[str, Path]:
    """Saved segmenters, with and without a second stage, whose output is known in advance.

    The model is the paper's preprocessing (median, per-image z-score) and conftest's
    ``bright_disc_model``: the nodule is the bright disc in flat lung. The second stage scores
    every candidate 0.5 (all weights 0), operating point 0.
    """
    from nodulekit.detection import FEATURE_NAMES, CandidateClassifier
    from nodulekit.inference import Segmenter
    from nodulekit.preprocessing import paper_pipeline

    root = tmp_path_factory.mktemp("segmenters")
    Segmenter(bright_disc_model, paper_pipeline()).save(root / "one_stage")
    count = len(FEATURE_NAMES)
    second = CandidateClassifier(FEATURE_NAMES, mean=np.zeros(count), scale=np.ones(count), coefficients=np.zeros(count), intercept=0.0, threshold=0.0)
    Segmenter(bright_disc_model, paper_pipeline(), classifier=second).save(root / "two_stage")
    return {"one_stage": root / "one_stage", "two_stage": root / "two_stage"}


def _segment_cli(source: Path, out: Path, model: Path, *extra) -> int:
    from nodulekit.cli import main

    return main([str(a) for a in ("segment", source, "--model", model, "--out", out, "--no-progress", *extra)])


def test_cli_segment_of_a_non_ct_series_names_the_file_and_leaves_no_output(tmp_path, capsys, segmenter_folders):
    folder = _stack(tmp_path / "mr", [0.0, 2.0, 4.0], images=_disc_slices(3, (1,)), modality="MR")
    code = _segment_cli(folder, tmp_path / "out", segmenter_folders["two_stage"])
    err = capsys.readouterr().err
    assert code == 1 and "000.dcm: Modality is 'MR', not CT" in err and "error" in err
    assert _leftovers(tmp_path, "out") == []


def test_cli_segment_of_a_series_with_a_gap_warns_and_records_it(tmp_path, caplog, segmenter_folders):
    import json

    positions = [0.0, 2.0, 4.0, 10.0, 12.0]  # 6.0 and 8.0 are missing
    folder = _stack(tmp_path / "gap", positions, images=_disc_slices(5, (3, 4)))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="nodulekit"):
        code = _segment_cli(folder, out, segmenter_folders["two_stage"])
    assert code == 0 and "4.000 to 10.000 mm (002.dcm -> 003.dcm, about 2 missing)" in caplog.text
    # these bare headers lack the Frame of Reference UID a DICOM SEG needs: a warning, not a failure
    assert "no DICOM SEG written" in caplog.text and "Frame Of Reference" in caplog.text
    assert not (out / "nodules.seg.dcm").exists() and (out / "mask.nii.gz").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stacks"][0]["slice_gaps"][0]["missing_slices"] == 2 and summary["stacks"][0]["info"]["second_stage"]
    table = pd.read_csv(out / "nodules.csv")
    assert len(table) == 1 and table.loc[0, "score"] == pytest.approx(0.5)
    assert (table.loc[0, "slice_first"], table.loc[0, "slice_last"]) == (3, 4)
    assert _leftovers(tmp_path, "out") == ["out"]  # no staging folder left


def test_single_slice_is_segmented_in_2d_without_the_second_stage(tmp_path, caplog, segmenter_folders):
    from nodulekit.inference import load_segmenter
    from nodulekit.readers import read_dicom_series

    folder = _stack(tmp_path / "one", [5.0], images=_disc_slices(1, (0,)))
    volume = read_dicom_series(folder)
    segmenter = load_segmenter(segmenter_folders["two_stage"])
    with caplog.at_level(logging.WARNING, logger="nodulekit"):
        result = segmenter.segment(volume, progress=False)
    assert "second stage scores 3-D candidates of 2+ slices" in caplog.text and "1x64x64" in caplog.text
    assert not result.info["second_stage"] and "score" not in result.nodules
    row = result.nodules.iloc[0]
    assert len(result.nodules) == 1 and row["n_slices"] == 1
    assert row["diameter_mm"] == pytest.approx(11 * 0.6, abs=0.6)  # in-plane, in mm

    out = tmp_path / "out"
    assert _segment_cli(folder, out, segmenter_folders["two_stage"]) == 0
    assert len(pd.read_csv(out / "nodules.csv")) == 1 and np.load(out / "mask.npy").shape == (1, 64, 64)


def test_a_slab_without_lungs_is_not_searched_unless_asked(caplog):
    from nodulekit.inference import Segmenter

    yy, xx = np.mgrid[:256, :256]
    hu = np.full((3, 256, 256), -1000.0, np.float32)  # air around the body
    hu[:, ((yy - 128) / 110) ** 2 + ((xx - 128) / 120) ** 2 <= 1] = 40.0  # an abdomen: soft tissue, no air inside
    hu[1, (yy - 215) ** 2 + (xx - 128) ** 2 <= 36] = 300.0  # one bright lesion
    segmenter = Segmenter(lambda batch: (np.asarray(batch) > 2.0).astype(np.float32), None, window=32)
    with caplog.at_level(logging.WARNING, logger="nodulekit"):
        result = segmenter.segment(Volume(hu, (2.0, 0.7, 0.7)), progress=False)
    assert "no lung found in 3x256x256 (no chest in view" in caplog.text and "nothing searched" in caplog.text
    assert len(result.nodules) == 0 and not result.lung.any() and not result.mask.any()
    whole = segmenter.segment(Volume(hu, (2.0, 0.7, 0.7)), lungs=False, progress=False)  # asked: the whole image
    assert len(whole.nodules) == 1 and whole.nodules.iloc[0][["centroid_y", "centroid_x"]].tolist() == pytest.approx([215, 128], abs=1)
    hu[:, 70:190, 50:120] = hu[:, 70:190, 136:206] = -850.0  # two lungs: they bound the search
    hu[1, (yy - 120) ** 2 + (xx - 85) ** 2 <= 36] = 300.0  # a lesion inside one lung
    chest = segmenter.segment(Volume(hu, (2.0, 0.7, 0.7)), progress=False)
    assert chest.lung[1, 100, 80] and not chest.lung[1, 215, 128]
    assert len(chest.nodules) == 1 and chest.nodules.iloc[0][["centroid_y", "centroid_x"]].tolist() == pytest.approx([120, 85], abs=1)


def test_cli_segment_with_a_model_folder_without_second_stage(tmp_path, caplog, capsys, segmenter_folders):
    import json

    folder = _stack(tmp_path / "scan", [0.0, 2.0, 4.0, 6.0], images=_disc_slices(4, (1, 2)))
    assert not (segmenter_folders["one_stage"] / "classifier.json").exists()
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="nodulekit"):
        code = _segment_cli(folder, out, segmenter_folders["one_stage"])
    assert code == 0 and "no second-stage classifier (classifier.json): nodules are listed by volume" in caplog.text
    table = pd.read_csv(out / "nodules.csv")
    assert "score" not in table and len(table) == 1
    assert json.loads((out / "summary.json").read_text())["stacks"][0]["info"]["second_stage"] is False
    capsys.readouterr()
    code = _segment_cli(folder, tmp_path / "scored", segmenter_folders["one_stage"], "--min-score", "0.5")
    err = capsys.readouterr().err
    assert code == 1 and "--min-score needs a second-stage classifier" in err and "no classifier.json" in err
    assert _leftovers(tmp_path, "scored") == []


def _abdomen_slab(lidc_scan_dir):
    """The 12 lowest slices of LIDC-IDRI-0001 (upper abdomen: no lung in the whole scan's lung mask)."""
    from nodulekit.readers import read_dicom_series

    scan = read_dicom_series(lidc_scan_dir)
    return Volume(scan.hu[:12], scan.spacing)


def test_the_abdomen_below_lidc_0001s_lungs_warns_that_the_lung_mask_is_tiny(lidc_scan_dir, caplog):
    """On that slab alone the lung mask takes stomach and bowel gas for lung (about 20 ml): the search
    says so, naming the volume, because the second stage was trained on whole chests."""
    from nodulekit.inference import load_segmenter

    with caplog.at_level(logging.WARNING, logger="nodulekit"):
        result = load_segmenter("pretrained").segment(_abdomen_slab(lidc_scan_dir), progress=False)
    assert result.info["second_stage"] and result.lung.sum() < 20_000  # a few gas pockets, not lungs
    assert any("holds only 2" in r.getMessage() and "ml" in r.getMessage() for r in caplog.records), caplog.text


@pytest.mark.xfail(
    strict=True,
    reason="known limit (README, bad input): the shipped stage (trees fused with the patch CNN, 240 training scans) lists 6 candidates "
    "of that slab at 0.15-0.83 (on 120 scans: 8 at 0.34-0.91; the boosted trees alone: 7 at 0.48-0.92; the boosted stage on 60 "
    "training scans: two gas pockets at 0.87-0.97)",
)
def test_the_abdomen_below_lidc_0001s_lungs_lists_no_confident_nodule(lidc_scan_dir):
    """Searched whole (lungs=False) the shipped two-stage model lists 36 candidates on that slab, all
    at scores >= 0.99 (README, Reliability). With the lung mask no candidate there should be
    confident; the shipped stage fails this (strict xfail: a stage that passes it shows up)."""
    from nodulekit.inference import load_segmenter

    result = load_segmenter("pretrained").segment(_abdomen_slab(lidc_scan_dir), progress=False)
    assert len(result.nodules) <= 3 and (result.nodules["score"] < 0.7).all()
