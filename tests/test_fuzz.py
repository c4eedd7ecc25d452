"""Property-based fuzzing of the readers and the preprocessing (hypothesis).

Whatever bytes a file holds and whatever array a caller passes, nodulekit either returns a
well-formed result or raises a :class:`~nodulekit.errors.NodulekitError`; no other exception
escapes. Inputs are random bytes, valid files with random damage (truncation, flipped bytes), and
random arrays (any shape, dtype, NaN/Inf).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from nodulekit import CropSet, Volume
from nodulekit.errors import NodulekitError

#: Examples per property; NODULEKIT_FUZZ_EXAMPLES=2000 for a long hunt (the suite keeps it short).
#: The suite draws the same examples every run (a test run must not pass or fail by chance);
#: NODULEKIT_FUZZ_RANDOM=1 draws new ones, for the hunt. What a hunt finds becomes an @example.
FUZZ = settings(
    max_examples=int(os.environ.get("NODULEKIT_FUZZ_EXAMPLES", "40")),
    derandomize=os.environ.get("NODULEKIT_FUZZ_RANDOM", "") != "1",
    deadline=None,
    database=None,  # no .hypothesis folder in the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _returns_or_refuses(call):
    """Run ``call``; a NodulekitError is an accepted refusal, anything else fails the test."""
    try:
        return call()
    except NodulekitError as error:
        assert str(error), "an error without a message"
        return None


def _damage(data: bytes, cut: float, flips: list[tuple[float, int]]) -> bytes:
    """Truncate ``data`` to a fraction ``cut`` of its length and overwrite some bytes."""
    damaged = bytearray(data[: max(0, int(len(data) * cut))])
    for where, value in flips:
        if damaged:
            damaged[int(where * (len(damaged) - 1))] = value
    return bytes(damaged)


damage = st.tuples(
    st.floats(0.0, 1.0),
    st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6),
)


def _encoded(format: str, array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format)
    return buffer.getvalue()


_RNG = np.random.default_rng(0)
_VALID_IMAGES = {
    ".png": _encoded("PNG", _RNG.integers(0, 256, (24, 20), dtype=np.uint8)),
    ".jpg": _encoded("JPEG", _RNG.integers(0, 256, (24, 20, 3), dtype=np.uint8)),
    ".tif": _encoded("TIFF", _RNG.integers(0, 65535, (24, 20), dtype=np.uint16)),
    ".bmp": _encoded("BMP", _RNG.integers(0, 256, (24, 20), dtype=np.uint8)),
}


def _check_image(array) -> None:
    if array is not None:
        assert array.ndim in (2, 3) and min(array.shape[:2]) > 0
        assert array.ndim == 2 or array.shape[-1] == 3
        assert array.dtype.kind in "uif"


# --- image files -----------------------------------------------------------------------------------
@FUZZ
@given(data=st.binary(max_size=600), suffix=st.sampled_from(sorted(_VALID_IMAGES)))
def test_read_image_on_random_bytes(tmp_path, data, suffix):
    from nodulekit.readers import read_image

    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    _check_image(_returns_or_refuses(lambda: read_image(path)))


@FUZZ
@given(suffix=st.sampled_from(sorted(_VALID_IMAGES)), damaged=damage)
def test_read_image_on_damaged_files(tmp_path, suffix, damaged):
    from nodulekit.readers import read_image

    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(_damage(_VALID_IMAGES[suffix], *damaged))
    _check_image(_returns_or_refuses(lambda: read_image(path)))


@FUZZ
@given(
    image=hnp.arrays(
        st.sampled_from([np.uint8, np.uint16]),
        st.tuples(st.integers(1, 12), st.integers(1, 12)),
        elements=st.integers(0, 255),
    ),
    mask=hnp.arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.sampled_from([0, 1, 7, 255])),
)
def test_read_image_folder_on_random_pairs(tmp_path, image, mask):
    from nodulekit.readers import read_image_folder

    for folder, array in (("images", image), ("masks", mask)):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.fromarray(array).save(tmp_path / folder / "a.png")
    crops = _returns_or_refuses(lambda: read_image_folder(tmp_path, progress=False))
    if crops is not None:
        assert crops.images.shape == (1, *image.shape) and set(np.unique(crops.masks)) <= {0, 1}
        np.testing.assert_array_equal(crops.masks[0], mask > 0)


# --- DICOM -----------------------------------------------------------------------------------------
def _dicom_bytes() -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.PatientID, ds.Modality = "1.2.3", "1.2.4", "P", "CT"
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 1.5], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness, ds.RescaleSlope, ds.RescaleIntercept = [0.7, 0.7], 2.5, 1, -1024
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 6, 5, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.arange(30, dtype=np.int16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


_DICOM = _dicom_bytes()


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about every damaged element
@FUZZ
@given(damaged=damage)
def test_read_dicom_series_on_damaged_slice(tmp_path, damaged):
    from nodulekit.readers import read_dicom_series

    (tmp_path / "slice.dcm").write_bytes(_damage(_DICOM, *damaged))
    volume = _returns_or_refuses(lambda: read_dicom_series(tmp_path, max_workers=1))
    if volume is not None:
        assert isinstance(volume, Volume) and volume.hu.ndim == 3 and np.isfinite(volume.hu).all()


# --- MetaImage -------------------------------------------------------------------------------------
_HEADER_LINES = [
    "ObjectType = Image",
    "NDims = 3",
    "BinaryData = True",
    "BinaryDataByteOrderMSB = False",
    "ElementSpacing = 0.8 0.8 2",
    "DimSize = 4 3 2",
    "ElementType = MET_SHORT",
]


@FUZZ
@given(
    lines=st.lists(
        st.one_of(st.sampled_from(_HEADER_LINES), st.text(max_size=30)), min_size=0, max_size=9
    ),
    data_file=st.sampled_from(["scan.raw", "LOCAL", "../scan.raw", "/etc/hostname", "missing.raw", "LIST", "s%03d.raw"]),
    raw_size=st.integers(0, 64),
)
def test_read_luna16_on_random_headers(tmp_path, lines, data_file, raw_size):
    from nodulekit.readers import read_luna16

    (tmp_path / "scan.mhd").write_text("\n".join([*lines, f"ElementDataFile = {data_file}"]) + "\n")
    (tmp_path / "scan.raw").write_bytes(b"\x18\xfc" * (raw_size // 2))
    volume = _returns_or_refuses(lambda: read_luna16(tmp_path / "scan.mhd"))
    if volume is not None:
        assert volume.hu.ndim == 3 and np.isfinite(volume.hu).all()


# --- LIDC XML --------------------------------------------------------------------------------------
_XML = (
    '<?xml version="1.0" encoding="UTF-8"?><LidcReadMessage xmlns="http://www.nih.gov"><ResponseHeader>'
    "<SeriesInstanceUid>1.2.3</SeriesInstanceUid></ResponseHeader><readingSession><servicingRadiologistID>R"
    "</servicingRadiologistID><unblindedReadNodule><noduleID>N</noduleID><characteristics><malignancy>4"
    "</malignancy></characteristics><roi><imageZposition>-7.5</imageZposition><imageSOP_UID>uid-1"
    "</imageSOP_UID><inclusion>TRUE</inclusion>"
    + "".join(
        f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>"
        for x, y in [(2, 2), (3, 2), (4, 2), (4, 3), (4, 4), (3, 4), (2, 4), (2, 3)]
    )
    + "</roi></unblindedReadNodule></readingSession></LidcReadMessage>"
)


def _xml_volume() -> Volume:
    return Volume(
        hu=np.full((3, 16, 16), -800.0, np.float32),
        spacing=(2.5, 0.7, 0.7),
        meta={"series_uid": "1.2.3", "sop_uids": ["uid-0", "uid-1", "uid-2"], "z_positions": [-10.0, -7.5, -5.0]},
    )


@FUZZ
@given(damaged=damage)
def test_read_lidc_xml_on_damaged_xml(tmp_path, damaged):
    from nodulekit.readers import read_lidc_xml

    path = tmp_path / "read.xml"
    path.write_bytes(_damage(_XML.encode(), *damaged))
    volume = _returns_or_refuses(lambda: read_lidc_xml(path, _xml_volume()))
    if volume is not None:
        assert volume.mask.shape == (3, 16, 16)


@FUZZ
@given(
    coordinates=st.lists(
        st.tuples(
            st.one_of(st.integers(-40, 40), st.sampled_from(["nan", "inf", "-1e300", "", "x", "3.7"])),
            st.one_of(st.integers(-40, 40), st.sampled_from(["nan", "inf", "1e20", ""])),
        ),
        max_size=12,
    ),
    z=st.sampled_from(["-7.5", "-5.0", "nan", "", "abc", "1e400"]),
    uid=st.sampled_from(["uid-1", "uid-9", ""]),
)
def test_read_lidc_xml_on_random_contours(tmp_path, coordinates, z, uid):
    from nodulekit.readers import read_lidc_xml

    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in coordinates)
    text = _XML.split("<roi>")[0] + (
        f"<roi><imageZposition>{z}</imageZposition><imageSOP_UID>{uid}</imageSOP_UID><inclusion>TRUE</inclusion>"
        f"{edges}</roi></unblindedReadNodule></readingSession></LidcReadMessage>"
    )
    path = tmp_path / "read.xml"
    path.write_text(text)
    volume = _returns_or_refuses(lambda: read_lidc_xml(path, _xml_volume()))
    if volume is not None:
        assert set(np.unique(volume.mask)) <= {0, 1}


# --- risk CSV and CropSet files ----------------------------------------------------------------------
def _risk_text() -> str:
    from nodulekit.risk import synthetic_risk_table

    return synthetic_risk_table(6, seed=1).to_csv(index=False)


_RISK = _risk_text()


@FUZZ
@given(damaged=damage)
def test_load_risk_table_on_damaged_csv(tmp_path, damaged):
    from nodulekit.risk import load_risk_table

    path = tmp_path / "risk.csv"
    path.write_bytes(_damage(_RISK.encode(), *damaged))
    _returns_or_refuses(lambda: load_risk_table(path))


@FUZZ
@given(data=st.binary(max_size=400))
def test_read_any_on_random_npz(tmp_path, data):
    from nodulekit.readers import read_any

    path = tmp_path / "crops.npz"
    path.write_bytes(data)
    result = _returns_or_refuses(lambda: read_any(path))
    assert result is None or isinstance(result, CropSet)


# --- preprocessing and crops on arrays ------------------------------------------------------------
_shapes = st.one_of(
    st.tuples(st.integers(0, 3), st.integers(0, 12), st.integers(0, 12)),
    st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12), st.sampled_from([1, 2, 3, 4])),
    st.tuples(st.integers(1, 12), st.integers(1, 12)),
    st.tuples(st.integers(1, 5)),
)


@st.composite
def _images(draw):
    """Random arrays of any shape and dtype; floating ones may hold NaN and infinities."""
    dtype = np.dtype(draw(st.sampled_from(["uint8", "uint16", "int16", "int32", "float32", "float64", "bool"])))
    if dtype.kind == "f":
        elements = st.floats(-5000, 5000, allow_nan=False, width=dtype.itemsize * 8) | st.sampled_from(
            [np.nan, np.inf, -np.inf]
        )
    elif dtype.kind == "b":
        elements = st.booleans()
    else:
        info = np.iinfo(dtype)
        elements = st.integers(max(int(info.min), -5000), min(int(info.max), 5000))
    return draw(hnp.arrays(dtype, draw(_shapes), elements=elements))


_steps = st.lists(
    st.one_of(
        st.just({"name": "to_grayscale"}),
        st.builds(
            lambda c, w: {"name": "window_hu", "params": {"center": c, "width": w}},
            st.floats(-2000, 2000),
            st.floats(-10, 3000),
        ),
        st.builds(lambda p: {"name": "zscore", "params": {"per_image": p}}, st.booleans()),
        st.builds(lambda s: {"name": "median_filter", "params": {"size": s}}, st.integers(-1, 6)),
        st.builds(
            lambda m, k: {"name": "equalize_histogram", "params": {"method": m, "kernel_size": k}},
            st.sampled_from(["global", "clahe", "local"]),
            st.one_of(st.none(), st.integers(0, 8)),
        ),
        st.builds(lambda s: {"name": "center_crop", "params": {"size": s}}, st.integers(-2, 16)),
        st.just({"name": "sharpen"}),
    ),
    max_size=5,
)


@FUZZ
@given(images=_images(), steps=_steps)
# Found by CI: a width that float32 rounds to 0 made 0/0.
@example(images=np.zeros((1, 1), np.uint8), steps=[{"name": "window_hu", "params": {"center": 0.0, "width": 7.271390084624545e-277}}])
def test_pipeline_on_random_arrays(images, steps):
    from nodulekit.preprocessing import Pipeline

    pipeline = _returns_or_refuses(lambda: Pipeline(steps))
    if pipeline is None:
        return
    out = _returns_or_refuses(lambda: pipeline.apply(images))
    if out is not None:
        assert out.dtype == np.float32 and np.isfinite(out).all()
        assert out.ndim == (2 if images.ndim == 2 else 3)
        if images.ndim >= 3:
            assert len(out) == len(images)
    config = _returns_or_refuses(lambda: json.loads(json.dumps(pipeline.get_config())))
    assert Pipeline.from_config(config) == pipeline


@FUZZ
@given(images=_images())
def test_paper_pipeline_on_random_arrays(images):
    from nodulekit.preprocessing import paper_pipeline

    out = _returns_or_refuses(lambda: paper_pipeline(equalize="clahe").apply(images))
    if out is not None:
        assert out.dtype == np.float32 and np.isfinite(out).all()


@FUZZ
@given(
    images=hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 20), st.integers(1, 20)), elements=st.floats(-1000, 1000, width=32)),
    size=st.one_of(st.integers(-3, 30), st.tuples(st.integers(0, 30), st.integers(1, 30)), st.just((4, 4, 4)), st.just(2.5)),
    top_left=st.tuples(st.integers(-40, 40), st.integers(-40, 40)),
)
def test_crops_on_random_sizes_and_positions(images, size, top_left):
    from nodulekit.crops import center_crop, crop_at

    for call in (lambda: center_crop(images, size), lambda: crop_at(images, top_left, size)):
        out = _returns_or_refuses(call)
        if out is not None:
            expected = (size, size) if np.isscalar(size) else tuple(size)
            assert out.shape == (len(images), *expected) and out.dtype == images.dtype


@FUZZ
@given(
    masks=hnp.arrays(st.sampled_from([np.uint8, np.int64, np.float32, np.bool_]), hnp.array_shapes(min_dims=1, max_dims=5, max_side=4)),
    level=st.one_of(st.floats(-1, 2), st.sampled_from([float("nan"), "union", "majority"])),
)
def test_consensus_mask_on_random_arrays(masks, level):
    from nodulekit.readers import consensus_mask

    out = _returns_or_refuses(lambda: consensus_mask(masks, level=level))
    if out is not None:
        assert out.shape == masks.shape[:-3] + masks.shape[-2:] and set(np.unique(out)) <= {0, 1}


@FUZZ
@given(
    groups=st.lists(st.one_of(st.sampled_from(["a", "b", "c", "d", "e"]), st.integers(0, 4), st.none(), st.just(float("nan"))), max_size=12),
    fractions=st.one_of(st.just((0.6, 0.2, 0.2)), st.tuples(st.floats(-1, 2), st.floats(-1, 2), st.floats(-1, 2))),
    n_folds=st.integers(-1, 6),
)
def test_splits_on_random_groups(groups, fractions, n_folds):
    from nodulekit.splits import patient_kfold, patient_split

    split = _returns_or_refuses(lambda: patient_split(groups, fractions=fractions, seed=0))
    if split is not None:
        together = np.concatenate([split["train"], split["val"], split["test"]])
        assert sorted(together.tolist()) == list(range(len(groups)))
    folds = _returns_or_refuses(lambda: patient_kfold(groups, n_folds=n_folds, seed=0))
    if folds is not None:
        assert len(folds) == n_folds


@pytest.mark.parametrize("seed", range(3))
def test_crops_from_random_volumes(seed):
    from nodulekit.crops import crops_from_volume

    rng = np.random.default_rng(seed)
    hu = rng.normal(-500, 300, (4, 20, 24)).astype(np.float32)
    mask = (rng.random(hu.shape) > 0.97).astype(np.uint8)
    volume = Volume(hu, (2.0, 0.7, 0.7), mask=mask, meta={"patient_id": "P"})
    crops = crops_from_volume(volume, size=16, jitter=3, negatives=2, rng=seed)
    assert crops.images.shape[1:] == (16, 16) and np.isfinite(crops.images).all()
    assert len(crops) >= int(mask.any(axis=(1, 2)).sum())
