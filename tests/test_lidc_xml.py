"""LIDC XML reads: polygon filling (outline excluded, holes), grouping, consensus, ratings, and the
pixel-for-pixel match with the LIDC PNG release on LIDC-IDRI-0001."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nodulekit import Volume
from nodulekit.crops import crops_from_volume
from nodulekit.errors import DataFormatError, InvalidParameterError, MissingDataError
from nodulekit.readers import (
    find_lidc_xml,
    parse_lidc_xml,
    polygon_mask,
    read_dicom_series,
    read_lidc_release,
    read_lidc_xml,
)


# --- a tiny hand-made read ----------------------------------------------------------------------
def _ring(top, left, bottom, right):
    """The 8-connected outline of a rectangle as (x, y) points, clockwise (how LIDC draws)."""
    points = [(x, top) for x in range(left, right + 1)]
    points += [(right, y) for y in range(top + 1, bottom + 1)]
    points += [(x, bottom) for x in range(right - 1, left - 1, -1)]
    points += [(left, y) for y in range(bottom - 1, top, -1)]
    return points


def _roi(uid, z, points, inclusion=True):
    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points)
    return (
        f"<roi><imageZposition>{z}</imageZposition><imageSOP_UID>{uid}</imageSOP_UID>"
        f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>{edges}</roi>"
    )


def _nodule(name, rois, malignancy=None):
    ratings = ""
    if malignancy is not None:
        ratings = f"<characteristics><subtlety>4</subtlety><malignancy>{malignancy}</malignancy></characteristics>"
    return f"<unblindedReadNodule><noduleID>{name}</noduleID>{ratings}{''.join(rois)}</unblindedReadNodule>"


def _xml(sessions, series="1.2.3"):
    body = "".join(
        f"<readingSession><servicingRadiologistID>R{i}</servicingRadiologistID>{''.join(nodules)}</readingSession>"
        for i, nodules in enumerate(sessions)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><LidcReadMessage xmlns="http://www.nih.gov">'
        f"<ResponseHeader><SeriesInstanceUid>{series}</SeriesInstanceUid></ResponseHeader>{body}</LidcReadMessage>"
    )


def _volume(n_slices=4, size=32):
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


@pytest.fixture
def tiny_read(tmp_path):
    """Reader 0: a 7x7 outline (rows/columns 2..8) with a 3x3 hole outline (4..6) on slice 1 and a
    second slice 2; reader 1: the same nodule shifted one column on slice 1; reader 2: a far nodule
    and a small (< 3 mm) single-point mark."""
    reader0 = _nodule(
        "N1",
        [
            _roi("uid-1", -7.5, _ring(2, 2, 8, 8)),
            _roi("uid-1", -7.5, _ring(4, 4, 6, 6), inclusion=False),
            _roi("uid-2", -5.0, _ring(2, 2, 8, 8)),
        ],
        malignancy=4,
    )
    reader1 = _nodule("N1b", [_roi("uid-1", -7.5, _ring(2, 3, 8, 9))], malignancy=2)
    reader2 = [
        _nodule("far", [_roi("uid-1", -7.5, _ring(20, 20, 26, 26))], malignancy=5),
        _nodule("tiny", [_roi("uid-3", -2.5, [(10, 25)])]),
    ]
    path = tmp_path / "read.xml"
    path.write_text(_xml([[reader0], [reader1], reader2]))
    return path


def test_polygon_mask_fills_interior_and_excludes_outline():
    outline = np.array([(y, x) for x, y in _ring(2, 2, 8, 8)])
    mask = polygon_mask(outline, (12, 12))
    expected = np.zeros((12, 12), bool)
    expected[3:8, 3:8] = True  # strictly inside the drawn outline
    np.testing.assert_array_equal(mask, expected)
    assert not polygon_mask(np.array([(5, 5)]), (12, 12)).any()  # a < 3 mm point marks no pixel


def test_read_lidc_xml_holes_grouping_consensus_and_ratings(tiny_read):
    volume = read_lidc_xml(tiny_read, _volume())
    nodules = volume.nodules
    assert len(nodules) == 2  # reader 0 + reader 1 overlap -> one nodule; reader 2's far nodule; tiny one dropped
    near = nodules.loc[nodules["n_readers"] == 2].iloc[0]
    far = nodules.loc[nodules["n_readers"] == 1].iloc[0]
    assert near["readers"] == [0, 1] and far["readers"] == [2]
    assert near["malignancy_ratings"] == [4, 2] and near["malignancy"] == 3.0 and far["malignancy"] == 5.0
    assert (near["z_min"], near["z_max"]) == (1, 2)

    entry = volume.meta["nodule_masks"][near["nodule_id"]]
    z0, r0, c0 = entry["offset"]
    readers = np.zeros((3, 4, 32, 32), np.uint8)
    block = entry["reader_masks"]
    readers[:, z0 : z0 + block.shape[1], r0 : r0 + block.shape[2], c0 : c0 + block.shape[3]] = block
    # Reader 0, slice 1: interior rows/cols 3..7 (25 px) minus the hole outline + interior 4..6 (9 px).
    expected = np.zeros((32, 32), np.uint8)
    expected[3:8, 3:8] = 1
    expected[4:7, 4:7] = 0
    np.testing.assert_array_equal(readers[0, 1], expected)
    assert readers[0, 2].sum() == 25 and readers[1, 1].sum() == 25 and readers[1, 2].sum() == 0
    assert not readers[2].any()  # reader 2 did not mark this nodule
    # Two readers marked it: 50 % consensus = either reader (1 of 2 votes); level 1.0 = both.
    np.testing.assert_array_equal(volume.mask[1], ((readers[0, 1] | readers[1, 1]) | _far_mask()).astype(np.uint8))
    strict = read_lidc_xml(tiny_read, _volume(), consensus=1.0)
    # both: rows 3..7 x columns 4..7 (20 px) minus the hole 4..6 x 4..6 (9 px) = 11 px
    assert strict.mask[1, :16].sum() == (readers[0, 1] & readers[1, 1]).sum() == 11
    assert strict.mask[2].sum() == 0  # only reader 0 drew slice 2

    annotations = volume.meta["annotations"]
    assert sorted(annotations["xml_nodule_id"]) == ["N1", "N1b", "far"]
    with_small = read_lidc_xml(tiny_read, _volume(), include_small=True)
    assert len(with_small.nodules) == 3 and with_small.nodules["small"].sum() == 1


def _far_mask():
    far = np.zeros((32, 32), bool)
    far[21:26, 21:26] = True
    return far


def test_crops_from_xml_volume_carry_reader_masks(tiny_read):
    volume = read_lidc_xml(tiny_read, _volume())
    crops = crops_from_volume(volume, size=16)
    near = crops.table["n_readers"] == 2
    assert crops.reader_masks.shape == (len(crops), 3, 16, 16)
    assert crops.table.loc[near, "slice_index"].tolist() == [1, 2]
    first = np.flatnonzero(near)[0]
    # 50 % of 2 readers: the union of the two readers' masks in this window.
    np.testing.assert_array_equal(crops.masks[first], crops.reader_masks[first, :2].max(axis=0))


def test_parse_lidc_xml_header(tiny_read):
    header, annotations = parse_lidc_xml(tiny_read)
    assert header["series_uid"] == "1.2.3" and header["n_readers"] == 3
    assert header["radiologist_ids"] == ["R0", "R1", "R2"]
    assert [a.reader for a in annotations] == [0, 1, 2, 2]
    assert annotations[0].rois[1].inclusion is False


def test_read_lidc_xml_refuses_bad_input(tmp_path, tiny_read):
    with pytest.raises(MissingDataError):
        read_lidc_xml(tmp_path / "absent.xml", _volume())
    broken = tmp_path / "broken.xml"
    broken.write_text("<LidcReadMessage><readingSession>")
    with pytest.raises(DataFormatError, match="well-formed") as info:
        read_lidc_xml(broken, _volume())
    assert info.value.path == str(broken)
    other = tmp_path / "cxr.xml"
    other.write_text("<IdriReadMessage></IdriReadMessage>")
    with pytest.raises(DataFormatError, match="LidcReadMessage"):
        read_lidc_xml(other, _volume())
    wrong_uids = tmp_path / "wrong.xml"
    wrong_uids.write_text(tiny_read.read_text().replace("uid-", "other-"))
    with pytest.raises(DataFormatError, match="matches a slice") as info:
        read_lidc_xml(wrong_uids, _volume())
    assert info.value.path == str(wrong_uids)
    wrong_series = tmp_path / "series.xml"
    wrong_series.write_text(tiny_read.read_text().replace(">1.2.3<", ">9.9.9<"))
    with pytest.raises(DataFormatError, match="9.9.9"):
        read_lidc_xml(wrong_series, _volume())
    outside = tmp_path / "outside.xml"
    outside.write_text(_xml([[_nodule("N", [_roi("uid-1", -7.5, _ring(28, 28, 40, 40))])]]))
    with pytest.raises(DataFormatError, match="outside"):
        read_lidc_xml(outside, _volume())
    with pytest.raises(InvalidParameterError):
        read_lidc_xml(tiny_read, _volume(), consensus=0)


# --- the real scan: DICOM + XML == PNG release ------------------------------------------------------
@pytest.fixture(scope="module")
def scan_0001(lidc_scan_dir):
    volume = read_dicom_series(lidc_scan_dir)
    (xml,) = find_lidc_xml(lidc_scan_dir)
    return read_lidc_xml(xml, volume)


@pytest.mark.realdata
def test_real_xml_nodule_and_ratings(scan_0001):
    nodules = scan_0001.nodules
    assert len(nodules) == 1  # the < 3 mm marks (single points) are not nodules here
    nodule = nodules.iloc[0]
    assert nodule["n_readers"] == 4 and nodule["readers"] == [0, 1, 2, 3]
    assert nodule["malignancy_ratings"] == [5, 5, 5, 4] and nodule["subtlety_ratings"] == [5, 5, 5, 5]
    assert (nodule["z_min"], nodule["z_max"]) == (86, 94)  # the 9 slices of the release
    annotations = scan_0001.meta["annotations"]
    assert annotations["n_rois"].tolist() == [8, 7, 8, 9]


@pytest.mark.realdata
def test_dicom_xml_reproduce_png_release_pixel_for_pixel(scan_0001, lidc_slices_dir):
    """The release cut 128x128 crops at rows/columns floor(c) - 64 .. floor(c) + 63 around the
    centre of mass c of the 50 % consensus, over the slices any reader marked, and min-max scaled
    each crop to 0..255 (rounding half up). crops_from_volume does the same cut."""
    release = read_lidc_release(lidc_slices_dir, patients=["LIDC-IDRI-0001"], progress=False)
    crops = crops_from_volume(scan_0001, size=128)
    assert len(crops) == len(release) == 9
    assert crops.table["nodule_id"].tolist() == release.table["nodule_id"].tolist()
    assert (crops.table["center_y"].iloc[0], crops.table["center_x"].iloc[0]) == (366, 316)

    # mask-J is not the same radiologist as XML reading session J: match readers by permutation.
    matches = [
        permutation
        for permutation in itertools.permutations(range(4))
        if np.array_equal(crops.reader_masks[:, list(permutation)], release.reader_masks)
    ]
    assert matches, "no reader order makes the XML masks equal to the PNG release masks"
    assert crops.reader_masks.sum() == release.reader_masks.sum() == 5905 + 4613 + 4955 + 5498
    np.testing.assert_array_equal(crops.masks, release.masks)  # the 50 % consensus too

    hu = crops.images.astype(np.float64)
    low, high = hu.min(axis=(1, 2), keepdims=True), hu.max(axis=(1, 2), keepdims=True)
    scale = 255.0 / (high - low)
    np.testing.assert_array_equal(np.floor(hu * scale - low * scale + 0.5), release.images)
