"""Crops: centre crops with padding, nodule-centred crops from volumes, jitter, negatives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nodulekit import CropSet, Volume
from nodulekit.crops import center_crop, consensus_mask, crop_at, crops_from_volume, reader_fraction
from nodulekit.errors import DataFormatError, InvalidParameterError


def _volume(nodules=None, mask_boxes=((4, 6, 18, 23, 28, 33),), shape=(10, 48, 64)):
    """A volume whose HU encodes the pixel position (hu = 100 * row + column - 3000), with box masks."""
    z, y, x = np.indices(shape)
    hu = (100 * y + x).astype(np.float32) - 3000
    mask = np.zeros(shape, np.uint8)
    for z0, z1, y0, y1, x0, x1 in mask_boxes:
        mask[z0:z1, y0:y1, x0:x1] = 1
    return Volume(
        hu=hu, spacing=(2.0, 0.5, 0.5), mask=mask, nodules=nodules, meta={"patient_id": "P7", "source": "test"}
    )


def test_center_crop_even_odd_and_padding():
    image = np.arange(36, dtype=np.float32).reshape(6, 6)
    np.testing.assert_array_equal(center_crop(image, 2), [[14, 15], [20, 21]])  # rows/columns 2..3
    np.testing.assert_array_equal(center_crop(image, 3), image[1:4, 1:4])  # odd: extra pixel bottom/right
    batch = np.stack([image, image + 100])
    assert center_crop(batch, (4, 2)).shape == (2, 4, 2)
    padded = center_crop(np.ones((2, 2)), 4, pad_value=-1)
    np.testing.assert_array_equal(padded, [[-1] * 4, [-1, 1, 1, -1], [-1, 1, 1, -1], [-1] * 4])
    assert center_crop(np.zeros((3, 4, 5, 5)), 3).shape == (3, 4, 3, 3)  # per-reader masks too
    with pytest.raises(InvalidParameterError):
        center_crop(image, 0)


def test_crop_at_pads_outside_the_image():
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    out = crop_at(image, (-1, 2), 3, pad_value=-5)
    np.testing.assert_array_equal(out, [[-5, -5, -5], [2, 3, -5], [6, 7, -5]])
    assert (crop_at(image, (10, 10), 2, pad_value=9) == 9).all()  # fully outside: all padding


def test_crops_centred_on_mask_components_with_hand_checked_window():
    crops = crops_from_volume(_volume(), size=16)
    assert isinstance(crops, CropSet) and crops.units == "HU"
    # mask voxel rows 18..22, columns 28..32, slices 4..5 -> centre (4.5, 20, 30): one crop per slice.
    assert crops.table["slice_index"].tolist() == [4, 5]
    assert crops.table["nodule_id"].tolist() == ["P7/nodule-0"] * 2
    assert (crops.table["center_y"].iloc[0], crops.table["center_x"].iloc[0]) == (20, 30)
    # window rows 12..27, columns 22..37: the top-left pixel is hu(12, 22) = 1200 + 22 - 3000
    assert crops.images[0, 0, 0] == 1200 + 22 - 3000
    expected = np.zeros((16, 16), np.uint8)
    expected[6:11, 6:11] = 1
    np.testing.assert_array_equal(crops.masks[0], expected)
    assert crops.table["pixel_spacing_mm"].iloc[0] == 0.5 and crops.table["slice_spacing_mm"].iloc[0] == 2.0
    centre_only = crops_from_volume(_volume(), size=16, slices="centre")
    assert centre_only.table["slice_index"].tolist() == [5]  # round(4.5) half up


def test_crops_near_the_border_are_padded_not_lost():
    volume = _volume(mask_boxes=((2, 3, 0, 3, 0, 2),))  # rows 0..2, columns 0..1: centre (1, 0.5)
    crops = crops_from_volume(volume, size=8)
    assert len(crops) == 1
    # window rows -3..4, columns -4..3 -> 3 rows and 4 columns of padding with the volume minimum
    assert (crops.images[0, :3] == volume.hu.min()).all() and (crops.images[0, :, :4] == volume.hu.min()).all()
    assert crops.images[0, 3, 4] == volume.hu[2, 0, 0]
    assert crops.masks[0].sum() == 6 and crops.masks[0, 3:6, 4:6].all()


def test_crops_from_nodule_table_with_extent_and_extra_columns():
    nodules = pd.DataFrame(
        {
            "nodule_id": ["a"],
            "z": [4.5],
            "y": [20.7],
            "x": [30.2],
            "z_min": [3],
            "z_max": [6],
            "malignancy": [4.0],
            "n_readers": [3],
        }
    )
    crops = crops_from_volume(_volume(nodules=nodules), size=16)
    assert crops.table["slice_index"].tolist() == [3, 4, 5, 6]  # the table's extent, not the mask's
    assert crops.table["malignancy"].eq(4.0).all() and crops.table["n_readers"].eq(3).all()
    assert crops.table["center_y"].iloc[0] == 20 and crops.table["center_x"].iloc[0] == 30  # floored
    with pytest.raises(DataFormatError, match="voxel-centre"):
        crops_from_volume(_volume(nodules=pd.DataFrame({"nodule_id": ["a"], "z": [1]})))


def test_jitter_is_bounded_and_seeded():
    volume = _volume()
    first = crops_from_volume(volume, size=16, jitter=3, rng=5)
    again = crops_from_volume(volume, size=16, jitter=3, rng=5)
    pd.testing.assert_frame_equal(first.table, again.table)
    np.testing.assert_array_equal(first.images, again.images)
    tables = [crops_from_volume(volume, size=16, jitter=3, rng=seed).table for seed in range(30)]
    centres = np.array([table[["center_y", "center_x"]].to_numpy() for table in tables])
    assert np.abs(centres - [20, 30]).max() <= 3 and np.abs(centres - [20, 30]).max() >= 2
    # the image moves with the window: hu = 100*row + column - 3000 at the window's corner
    row = first.table.iloc[0]
    assert first.images[0, 0, 0] == 100 * (row["center_y"] - 8) + (row["center_x"] - 8) - 3000


def test_negative_crops_hold_no_nodule():
    crops = crops_from_volume(_volume(), size=16, negatives=5, rng=0)
    negatives = crops.table["kind"] == "negative"
    assert negatives.sum() == 5 and (~negatives).sum() == 2
    assert crops.masks[negatives.to_numpy()].sum() == 0
    assert crops.table.loc[negatives, "nodule_id"].str.startswith("P7/negative-").all()
    volume = _volume()
    for row in crops.table[negatives].itertuples():
        window = volume.mask[row.slice_index, row.center_y - 8 : row.center_y + 8, row.center_x - 8 : row.center_x + 8]
        assert window.shape == (16, 16) and not window.any()


def test_volume_without_nodules_gives_empty_cropset_and_bad_arguments_raise():
    empty = crops_from_volume(_volume(mask_boxes=()), size=8)
    assert len(empty) == 0 and empty.images.shape == (0, 8, 8)
    for kwargs in ({"size": -1}, {"jitter": -1}, {"negatives": 1.5}, {"slices": "all"}):
        with pytest.raises(InvalidParameterError):
            crops_from_volume(_volume(), **kwargs)


def test_reader_fraction_counts_the_nodule_wide_marking_readers():
    masks = np.zeros((2, 4, 1, 3), np.uint8)  # 2 slices of one nodule, 4 reader slots, 1x3 pixels
    masks[0, :3, 0, 0] = 1  # slice 0: readers 0-2 draw pixel 0, reader 0 also pixel 1
    masks[0, 0, 0, 1] = 1
    masks[1, :2, 0, 0] = 1  # slice 1: reader 2 marked the nodule but drew nothing here
    masks[1, 0, 0, 2] = 1
    soft = reader_fraction(masks, n_readers=[3, 3])  # reader 3 never marked it
    assert soft.dtype == np.float32 and soft.shape == (2, 1, 3)
    np.testing.assert_allclose(soft, [[[1, 1 / 3, 0]], [[2 / 3, 0, 1 / 3]]], rtol=1e-6)
    np.testing.assert_allclose(reader_fraction(masks[1]), [[1, 0, 0.5]])  # slice-wise count: 2 readers
    np.testing.assert_array_equal(reader_fraction(np.zeros((2, 1, 1), np.uint8)), [[0]])  # nobody marked it
    with pytest.raises(InvalidParameterError, match="more votes"):
        reader_fraction(masks, n_readers=1)
    with pytest.raises(InvalidParameterError, match="does not match"):
        reader_fraction(masks, n_readers=[3, 3, 3])
    with pytest.raises(InvalidParameterError, match="shape"):
        reader_fraction(np.zeros((3, 3), np.uint8))


def test_reader_fraction_at_one_half_is_the_consensus():
    rng = np.random.default_rng(0)
    masks = (rng.random((50, 4, 6, 6)) < 0.3).astype(np.uint8)
    masks[rng.random((50, 4)) < 0.3] = 0  # readers who did not mark the nodule
    n_readers = np.maximum(masks.any(axis=(2, 3)).sum(axis=1), rng.integers(1, 5, 50))  # some marked it on other slices
    for n in (None, n_readers):
        np.testing.assert_array_equal(reader_fraction(masks, n_readers=n) >= 0.5, consensus_mask(masks, n_readers=n).astype(bool))
