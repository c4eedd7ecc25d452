"""Readers of real data: the LIDC PNG release, image/mask folders, DICOM series, LUNA16 MHD."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nodulekit import CropSet
from nodulekit.errors import DataFormatError, InvalidParameterError, MissingDataError, NodulekitError
from nodulekit.readers import consensus_mask, read_lidc_release


# --- helpers --------------------------------------------------------------------------------------
def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _write_release(root: Path, *, size: int = 16) -> dict:
    """A two-patient release: P1 nodule-0 has 2 slices marked by readers 0-2 (reader 3 never);
    P2 nodule-0 has 1 slice marked by reader 1 only."""
    rng = np.random.default_rng(0)
    masks = {}
    square = np.zeros((size, size), np.uint8)
    square[4:8, 4:8] = 255
    # Reader 0 and 1 draw rows 4..7; reader 2 draws rows 6..9: rows 6..7 have 3 votes, 4..5 and 8..9 fewer.
    shifted = np.zeros((size, size), np.uint8)
    shifted[6:10, 4:8] = 255
    empty = np.zeros((size, size), np.uint8)
    for k in range(2):
        image = rng.integers(0, 256, (size, size), dtype=np.uint8)
        _png(root / "LIDC-IDRI-0001/nodule-0/images" / f"slice-{k}.png", image)
        for reader, mask in enumerate([square, square, shifted, empty]):
            _png(root / f"LIDC-IDRI-0001/nodule-0/mask-{reader}/slice-{k}.png", mask)
    _png(root / "LIDC-IDRI-0002/nodule-0/images/slice-0.png", rng.integers(0, 256, (size, size), dtype=np.uint8))
    for reader in range(4):
        _png(root / f"LIDC-IDRI-0002/nodule-0/mask-{reader}/slice-0.png", shifted if reader == 1 else empty)
    masks["square"], masks["shifted"] = square > 0, shifted > 0
    return masks


# --- consensus ------------------------------------------------------------------------------------
def test_consensus_mask_counts_only_readers_who_marked():
    a = np.zeros((4, 1, 4), np.uint8)
    a[0, 0, :3] = 1  # reader 0: pixels 0..2
    a[1, 0, :2] = 1  # reader 1: pixels 0..1
    a[2, 0, :1] = 1  # reader 2: pixel 0; reader 3 marked nothing -> 3 marking readers
    np.testing.assert_array_equal(consensus_mask(a)[0], [1, 1, 0, 0])  # >= 2 of 3 votes
    np.testing.assert_array_equal(consensus_mask(a, level=1.0)[0], [1, 0, 0, 0])
    np.testing.assert_array_equal(consensus_mask(a, level="union")[0], [1, 1, 1, 0])
    # nodule-wide count given: 4 readers marked the nodule (on another slice), so 2 of 4 needed
    np.testing.assert_array_equal(consensus_mask(a, level=0.75, n_readers=4)[0], [1, 0, 0, 0])
    for bad in (0, 1.5, "majority"):
        with pytest.raises(InvalidParameterError):
            consensus_mask(a, level=bad)


# --- LIDC PNG release -----------------------------------------------------------------------------
def test_release_reader_on_tiny_release(tmp_path):
    shapes = _write_release(tmp_path)
    crops = read_lidc_release(tmp_path, progress=False)
    assert isinstance(crops, CropSet) and len(crops) == 3 and crops.units == "uint8"
    assert crops.reader_masks.shape == (3, 4, 16, 16)
    table = crops.table
    assert table["patient_id"].tolist() == ["LIDC-IDRI-0001", "LIDC-IDRI-0001", "LIDC-IDRI-0002"]
    assert table["nodule_id"].tolist()[0] == "LIDC-IDRI-0001/nodule-0"
    assert table["slice_index"].tolist() == [0, 1, 0]
    assert table["n_readers"].tolist() == [3, 3, 1]
    assert table["readers_on_slice"].tolist() == [3, 3, 1]
    assert table["source"][0].endswith("LIDC-IDRI-0001/nodule-0/images/slice-0.png")
    # 3 marking readers, level 0.5: >= 2 votes -> rows 4..7 (readers 0, 1) ; rows 8..9 have 1 vote.
    expected = np.zeros((16, 16), np.uint8)
    expected[4:8, 4:8] = 1
    np.testing.assert_array_equal(crops.masks[0], expected)
    # P2's single reader is the consensus.
    np.testing.assert_array_equal(crops.masks[2], shapes["shifted"])
    stored = np.asarray(Image.open(tmp_path / "LIDC-IDRI-0001/nodule-0/images/slice-1.png"))
    np.testing.assert_array_equal(crops.images[1], stored)
    # Intersection and union.
    strict = read_lidc_release(tmp_path, consensus=1.0, progress=False)
    assert strict.masks[0].sum() == 8 and strict.masks[0][6:8, 4:8].all()
    union = read_lidc_release(tmp_path, consensus="union", progress=False)
    assert union.masks[0].sum() == 24


def test_release_reader_accepts_a_relative_root_with_dotdot(tmp_path, monkeypatch):
    _write_release(tmp_path / "data")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    crops = read_lidc_release("../data", progress=False)
    assert len(crops) == 3 and crops.table["patient_id"].nunique() == 2


def test_release_reader_patients_and_crop_size(tmp_path):
    _write_release(tmp_path)
    one = read_lidc_release(tmp_path, patients=["LIDC-IDRI-0002"], crop_size=8, progress=False)
    assert len(one) == 1 and one.images.shape == (1, 8, 8) and one.reader_masks.shape == (1, 4, 8, 8)
    full = read_lidc_release(tmp_path, patients=["LIDC-IDRI-0002"], progress=False)
    np.testing.assert_array_equal(one.images[0], full.images[0, 4:12, 4:12])
    assert len(read_lidc_release(tmp_path, patients=1, progress=False)) == 2
    assert len(read_lidc_release(tmp_path / "LIDC-IDRI-0002", progress=False)) == 1  # one patient folder
    with pytest.raises(MissingDataError, match="LIDC-IDRI-0099"):
        read_lidc_release(tmp_path, patients=["LIDC-IDRI-0099"], progress=False)


def test_release_reader_refuses_bad_input(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(MissingDataError, match="no LIDC-IDRI"):
        read_lidc_release(root, progress=False)
    with pytest.raises(MissingDataError, match="not found"):
        read_lidc_release(tmp_path / "absent", progress=False)

    def fresh(name):
        base = tmp_path / name
        _write_release(base)
        return base

    base = fresh("truncated")
    target = base / "LIDC-IDRI-0001/nodule-0/images/slice-1.png"
    target.write_bytes(target.read_bytes()[:40])
    with pytest.raises(DataFormatError, match="slice-1.png") as info:
        read_lidc_release(base, progress=False)
    assert "truncated" in str(info.value) and info.value.path == str(target)

    base = fresh("missing")
    (base / "LIDC-IDRI-0001/nodule-0/mask-2/slice-1.png").unlink()
    with pytest.raises(MissingDataError, match="mask-2"):
        read_lidc_release(base, progress=False)

    base = fresh("size")
    _png(base / "LIDC-IDRI-0002/nodule-0/mask-3/slice-0.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataFormatError, match="mask size"):
        read_lidc_release(base, progress=False)

    base = fresh("nonbinary")
    _png(base / "LIDC-IDRI-0002/nodule-0/mask-0/slice-0.png", np.arange(256, dtype=np.uint8).reshape(16, 16))
    with pytest.raises(DataFormatError, match="not binary"):
        read_lidc_release(base, progress=False)

    base = fresh("noreaders")
    for reader in range(4):
        for file in (base / f"LIDC-IDRI-0002/nodule-0/mask-{reader}").iterdir():
            file.unlink()
        (base / f"LIDC-IDRI-0002/nodule-0/mask-{reader}").rmdir()
    with pytest.raises(MissingDataError, match="mask-J"):
        read_lidc_release(base, progress=False)


@pytest.mark.realdata
def test_release_first_patient_consensus_by_hand(lidc_slices_dir):
    crops = read_lidc_release(lidc_slices_dir, patients=["LIDC-IDRI-0001"], progress=False)
    assert len(crops) == 9 and crops.table["nodule_id"].unique().tolist() == ["LIDC-IDRI-0001/nodule-0"]
    folder = lidc_slices_dir / "LIDC-IDRI-0001/nodule-0"
    stored = np.stack(
        [[np.asarray(Image.open(folder / f"mask-{j}/slice-{k}.png")) > 0 for j in range(4)] for k in range(9)]
    )
    np.testing.assert_array_equal(crops.reader_masks, stored)
    # All four readers marked this nodule: consensus is ">= 2 of 4 votes" on every slice.
    assert crops.table["n_readers"].eq(4).all()
    np.testing.assert_array_equal(crops.masks, stored.sum(axis=1) >= 2)
    # Slice 8 was drawn by one reader only (92 pixels): in the union, not in the 50 % consensus.
    assert crops.table["readers_on_slice"].tolist()[8] == 1
    assert crops.masks[8].sum() == 0 and stored[8].any(axis=0).sum() == 92


@pytest.mark.realdata
def test_release_full_load_counts(lidc_slices_dir):
    """Counts of the whole release (its reading speed is checked in benchmarks/speed_checks.py)."""
    crops = read_lidc_release(lidc_slices_dir, progress=False)
    table = crops.table
    assert (len(crops), table["nodule_id"].nunique(), table["patient_id"].nunique()) == (3163, 602, 191)
    assert crops.images.shape == (3163, 128, 128) and crops.reader_masks.shape == (3163, 4, 128, 128)
    assert crops.images.min() == 0 and crops.images.max() == 255
    # Readers who marked each nodule (mask non-empty on any slice), counted once per nodule.
    per_nodule = table.groupby("nodule_id")["n_readers"].first().value_counts().to_dict()
    assert per_nodule == {4: 238, 3: 115, 2: 107, 1: 142}


# --- image/mask folders (the paper's format) ------------------------------------------------------
def _pairs(root: Path, n=3, size=12, rgb=False, depth=8, image_ext=".png", mask_ext=".png"):
    rng = np.random.default_rng(1)
    for i in range(n):
        shape = (size, size, 3) if rgb else (size, size)
        top = 255 if depth == 8 else 65535
        image = rng.integers(0, top + 1, shape).astype(np.uint8 if depth == 8 else np.uint16)
        mask = np.zeros((size, size), np.uint8)
        mask[2 : 4 + i, 3:6] = 255
        _png(root / "images" / f"crop_{i}{image_ext}", image)
        _png(root / "masks" / f"crop_{i}{mask_ext}", mask)
    return root


def test_image_folder_rgb_8bit(tmp_path):
    from nodulekit.readers import read_image_folder

    root = _pairs(tmp_path, rgb=True)
    crops = read_image_folder(root, progress=False)
    assert crops.images.shape == (3, 12, 12) and crops.units == "uint8"
    rgb = np.asarray(Image.open(root / "images/crop_1.png")).astype(np.float64)
    np.testing.assert_allclose(crops.images[1], rgb @ [0.2125, 0.7154, 0.0721], rtol=1e-5)
    assert crops.masks[2].sum() == 4 * 3 and crops.masks.max() == 1
    assert crops.table["source"][0].endswith("images/crop_0.png")


def test_image_folder_16bit_tiff_and_mixed_extensions(tmp_path):
    from nodulekit.readers import read_image_folder

    root = _pairs(tmp_path, depth=16, image_ext=".tif", mask_ext=".png")
    crops = read_image_folder(root, progress=False)
    assert crops.units == "float"
    stored = np.asarray(Image.open(root / "images/crop_0.tif"))
    assert stored.dtype == np.uint16 and crops.images[0].max() > 255
    np.testing.assert_array_equal(crops.images[0], stored)


def test_image_folder_jpeg_images_table_csv_and_patient_pattern(tmp_path):
    from nodulekit.readers import read_image_folder

    root = _pairs(tmp_path / "a", image_ext=".jpg")
    pd_table = "name,patient_id,slice_index\ncrop_0,P1,0\ncrop_1,P1,1\ncrop_2,P2,0\n"
    (root / "table.csv").write_text(pd_table)
    crops = read_image_folder(root, progress=False)
    assert crops.table["patient_id"].tolist() == ["P1", "P1", "P2"]
    assert crops.table["slice_index"].tolist() == [0, 1, 0]
    other = _pairs(tmp_path / "b")
    by_pattern = read_image_folder(other, patient_pattern=r"crop_(\d)", progress=False)
    assert by_pattern.table["patient_id"].tolist() == ["0", "1", "2"]
    cropped = read_image_folder(other, crop_size=8, progress=False)
    assert cropped.images.shape == (3, 8, 8)


def test_image_folder_refuses_bad_input(tmp_path):
    from nodulekit.readers import read_image_folder

    (tmp_path / "empty/images").mkdir(parents=True)
    (tmp_path / "empty/masks").mkdir(parents=True)
    with pytest.raises(MissingDataError, match="no image files"):
        read_image_folder(tmp_path / "empty", progress=False)
    with pytest.raises(MissingDataError, match="not found"):
        read_image_folder(tmp_path / "nothing", progress=False)

    root = _pairs(tmp_path / "missing")
    (root / "masks/crop_1.png").unlink()
    with pytest.raises(MissingDataError, match="crop_1") as info:
        read_image_folder(root, progress=False)
    assert "masks" in str(info.value.path)

    root = _pairs(tmp_path / "size")
    _png(root / "masks/crop_2.png", np.zeros((10, 12), np.uint8))
    with pytest.raises(DataFormatError, match="mask size") as info:
        read_image_folder(root, progress=False)
    assert info.value.path.endswith("crop_2.png")

    root = _pairs(tmp_path / "gray")
    _png(root / "masks/crop_0.png", np.arange(144, dtype=np.uint8).reshape(12, 12))
    with pytest.raises(DataFormatError, match="not binary"):
        read_image_folder(root, progress=False)
    assert read_image_folder(root, mask_threshold=127, progress=False).masks[0].sum() == 144 - 128

    root = _pairs(tmp_path / "truncated")
    (root / "images/crop_0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(DataFormatError, match="crop_0.png"):
        read_image_folder(root, progress=False)

    root = _pairs(tmp_path / "notimage")
    (root / "images/crop_0.png").write_text("hello")
    with pytest.raises(DataFormatError, match="not a readable image|unreadable"):
        read_image_folder(root, progress=False)

    root = _pairs(tmp_path / "depth")
    _png(root / "images/crop_0.png", np.zeros((12, 12), np.uint16))
    with pytest.raises(DataFormatError, match="mixes 8-bit"):
        read_image_folder(root, progress=False)

    root = _pairs(tmp_path / "sizes")
    _png(root / "images/crop_1.png", np.zeros((14, 14), np.uint8))
    _png(root / "masks/crop_1.png", np.zeros((14, 14), np.uint8))
    with pytest.raises(DataFormatError, match="crop_size"):
        read_image_folder(root, progress=False)


# --- DICOM series ---------------------------------------------------------------------------------
def _write_dicom(
    path: Path, *, z: float, stored: np.ndarray, series="1.2.840.1", slope=2.0, intercept=-1024.0, pixels=True
):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series
    ds.StudyInstanceUID = "1.2.840.9"
    ds.PatientID = "TEST-01"
    ds.Modality = "CT"
    ds.ImagePositionPatient = [-10.0, -20.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.6]
    ds.SliceThickness = 1.25
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if pixels:
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = stored.astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _series(folder: Path, n=3):
    # written out of order: file names do not follow z
    for index, z in enumerate([-5.0, -2.5, -7.5][:n]):
        _write_dicom(folder / f"{index:03d}.dcm", z=z, stored=np.full((4, 5), int(z * 10), np.int16))
    return folder


def test_dicom_series_orders_by_position_and_rescales(tmp_path):
    from nodulekit.readers import read_dicom_series

    volume = read_dicom_series(_series(tmp_path / "s"))
    assert volume.hu.shape == (3, 4, 5)
    assert volume.meta["z_positions"] == [-7.5, -5.0, -2.5]  # feet to head
    # HU = stored * 2 - 1024 with stored = 10 * z
    np.testing.assert_array_equal(volume.hu[:, 0, 0], [-75 * 2 - 1024, -50 * 2 - 1024, -25 * 2 - 1024])
    assert volume.spacing == (2.5, 0.5, 0.6) and volume.meta["patient_id"] == "TEST-01"
    assert len(volume.meta["sop_uids"]) == 3


def test_dicom_series_refuses_bad_input(tmp_path):
    from nodulekit.readers import read_dicom_series

    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingDataError, match="no DICOM"):
        read_dicom_series(tmp_path / "empty")
    mixed = _series(tmp_path / "mixed")
    _write_dicom(mixed / "other.dcm", z=0.0, stored=np.zeros((4, 5)), series="1.2.840.2")
    with pytest.raises(DataFormatError, match="mixes 2 DICOM series"):
        read_dicom_series(mixed)
    assert read_dicom_series(mixed, series_uid="1.2.840.2").hu.shape == (1, 4, 5)
    nopixels = _series(tmp_path / "nopixels")
    target = _write_dicom(nopixels / "003.dcm", z=0.0, stored=np.zeros((4, 5)), pixels=False)
    with pytest.raises(DataFormatError, match="no pixel data") as info:
        read_dicom_series(nopixels)
    assert info.value.path == str(target)
    broken = _series(tmp_path / "broken")
    (broken / "001.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(DataFormatError, match="001.dcm"):
        read_dicom_series(broken)


@pytest.mark.realdata
def test_real_dicom_series(lidc_scan_dir):
    import pydicom

    from nodulekit.readers import read_dicom_series

    volume = read_dicom_series(lidc_scan_dir)
    assert volume.hu.shape == (133, 512, 512)
    assert volume.spacing == (2.5, 0.703125, 0.703125)
    assert volume.hu.min() == -2048  # padding outside the field of view
    z = np.asarray(volume.meta["z_positions"])
    assert (np.diff(z) == 2.5).all()
    raw = pydicom.dcmread(volume.meta["files"][50])
    np.testing.assert_array_equal(
        volume.hu[50], raw.pixel_array * float(raw.RescaleSlope) + float(raw.RescaleIntercept)
    )
    assert float(raw.ImagePositionPatient[2]) == z[50]


# --- LUNA16 ---------------------------------------------------------------------------------------
def _luna(folder: Path, uid="1.3.6.1.99"):
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.full((10, 40, 50), -1000, np.int16))  # (z, y, x)
    image.SetSpacing((0.8, 0.8, 2.0))  # (x, y, z) mm
    image.SetOrigin((-20.0, -30.0, -100.0))
    sitk.WriteImage(image, str(folder / f"{uid}.mhd"))
    (folder / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
        f"{uid},0.0,-10.0,-90.0,6.0\n"  # voxel x = 20/0.8 = 25, y = 20/0.8 = 25, z = 10/2 = 5
        "9.9.9,0,0,0,3\n"
    )
    return folder / f"{uid}.mhd"


def test_luna16_world_to_voxel_and_sphere(tmp_path):
    from nodulekit.readers import read_luna16

    mhd = _luna(tmp_path)
    volume = read_luna16(mhd, tmp_path / "annotations.csv")
    assert volume.spacing == (2.0, 0.8, 0.8) and volume.hu.shape == (10, 40, 50)
    assert volume.meta["patient_id"] == "1.3.6.1.99"
    nodule = volume.nodules.iloc[0]
    assert len(volume.nodules) == 1 and (nodule["z"], nodule["y"], nodule["x"]) == (5.0, 25.0, 25.0)
    # radius 3 mm: 3 slices (z 4..6, 2 mm apart), 7 columns across the centre (0.8 mm: |dx| <= 3)
    assert volume.mask[5, 25, 22:29].all() and not volume.mask[5, 25, 21] and not volume.mask[5, 25, 29]
    assert volume.mask[:, 25, 25].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    expected = 4 / 3 * np.pi * 3**3 / (0.8 * 0.8 * 2.0)  # sphere volume / voxel volume ~ 88
    assert abs(volume.mask.sum() - expected) < 0.1 * expected
    crops = __import__("nodulekit.crops", fromlist=["crops_from_volume"]).crops_from_volume(volume, size=16)
    assert crops.table["slice_index"].tolist() == [4, 5, 6]
    assert read_luna16(mhd).mask is None


def test_luna16_refuses_bad_input(tmp_path):
    from nodulekit.readers import read_luna16

    mhd = _luna(tmp_path / "noraw")
    raw = mhd.with_suffix(".raw")
    raw.unlink()
    with pytest.raises(MissingDataError, match="missing") as info:
        read_luna16(mhd)
    assert info.value.path == str(raw)
    mhd = _luna(tmp_path / "short")
    raw = mhd.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(DataFormatError, match="truncated"):
        read_luna16(mhd)
    mhd = _luna(tmp_path / "csv")
    (tmp_path / "csv/bad.csv").write_text("seriesuid,x,y\n")
    with pytest.raises(DataFormatError, match="coordX"):
        read_luna16(mhd, tmp_path / "csv/bad.csv")
    with pytest.raises(MissingDataError):
        read_luna16(tmp_path / "absent.mhd")


# --- read_any -------------------------------------------------------------------------------------
def test_read_any_dispatches_on_layout(tmp_path):
    from nodulekit import Volume
    from nodulekit.readers import read_any

    _write_release(tmp_path / "release")
    assert len(read_any(tmp_path / "release", progress=False)) == 3
    folder = _pairs(tmp_path / "pairs")
    assert isinstance(read_any(folder, progress=False), CropSet)
    assert isinstance(read_any(_luna(tmp_path / "luna"), progress=False), Volume)  # option for others: ignored
    with pytest.raises(InvalidParameterError, match="colour"):
        read_any(tmp_path / "luna", colour="red")
    assert read_any(tmp_path / "luna").nodules is not None  # annotations.csv beside it is used
    assert isinstance(read_any(_series(tmp_path / "dicom")), Volume)
    saved = read_lidc_release(tmp_path / "release", progress=False).save(tmp_path / "crops.npz")
    assert len(read_any(saved)) == 3
    (tmp_path / "nothing").mkdir()
    with pytest.raises(NodulekitError, match="cannot tell the format"):
        read_any(tmp_path / "nothing")
    with pytest.raises(MissingDataError):
        read_any(tmp_path / "absent")


def test_read_any_reads_nifti_files_and_folders_with_their_spacing(tmp_path):
    import SimpleITK as sitk

    from nodulekit.readers import read_any

    hu = np.random.default_rng(0).normal(-600, 200, (4, 6, 5)).astype(np.float32)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.7, 0.8, 2.5))  # x, y, z
    (tmp_path / "scan").mkdir()
    sitk.WriteImage(image, str(tmp_path / "scan" / "ct.nii.gz"))
    for path in (tmp_path / "scan" / "ct.nii.gz", tmp_path / "scan"):
        volume = read_any(path)
        np.testing.assert_array_equal(volume.hu, hu)
        assert volume.spacing == pytest.approx((2.5, 0.8, 0.7))
    (tmp_path / "flat.nii").write_bytes(b"not a nifti file")
    with pytest.raises(DataFormatError, match="NIfTI"):
        read_any(tmp_path / "flat.nii")
