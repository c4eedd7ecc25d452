"""Tests of nodulekit.postprocess: components with a stated connectivity, TTA, model outputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nodulekit.errors import InvalidParameterError
from nodulekit.postprocess import (
    component_sizes,
    dihedral,
    dihedral_tta,
    fill_holes,
    first_output,
    keep_central_component,
    keep_largest_components,
    label_components,
    postprocess,
    remove_small_objects,
)

# Two pixels that touch only at a corner, and a 3-D pair that touches only at an edge.
DIAGONAL = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], bool)


def test_connectivity_decides_whether_corners_join():
    assert label_components(DIAGONAL, connectivity=1)[1] == 2
    assert label_components(DIAGONAL, connectivity=2)[1] == 1
    edge = np.zeros((2, 2, 2), bool)
    edge[0, 0, 0] = edge[1, 1, 0] = True  # share an edge, not a face
    corner = np.zeros((2, 2, 2), bool)
    corner[0, 0, 0] = corner[1, 1, 1] = True  # share only a corner
    assert [label_components(edge, connectivity=c)[1] for c in (1, 2, 3)] == [2, 1, 1]
    assert [label_components(corner, connectivity=c)[1] for c in (1, 2, 3)] == [2, 2, 1]


def test_labels_match_scipy_with_the_same_structure():
    rng = np.random.default_rng(0)
    mask = rng.random((6, 20, 20)) > 0.6
    for connectivity in (1, 2, 3):
        labels, count = label_components(mask, connectivity=connectivity)
        expected, expected_count = ndimage.label(mask, ndimage.generate_binary_structure(3, connectivity))
        np.testing.assert_array_equal(labels, expected)
        assert count == expected_count


def test_within_slices_never_joins_two_slices():
    mask = np.zeros((2, 4, 4), bool)
    mask[0, 1, 1] = mask[1, 1, 1] = mask[1, 2, 2] = True
    labels, count = label_components(mask, connectivity=3, within_slices=True)
    assert count == 2 and labels[0, 1, 1] != labels[1, 1, 1] and labels[1, 1, 1] == labels[1, 2, 2]
    assert label_components(mask, connectivity=1, within_slices=True)[1] == 3


@pytest.mark.parametrize("connectivity", [0, 3, 1.5, None])
def test_bad_connectivity_is_refused(connectivity):
    with pytest.raises(InvalidParameterError, match="connectivity"):
        label_components(DIAGONAL, connectivity=connectivity)


def test_within_slices_needs_a_stack():
    with pytest.raises(InvalidParameterError, match="within_slices"):
        label_components(DIAGONAL, connectivity=1, within_slices=True)


def test_component_sizes_and_largest_components():
    mask = np.zeros((10, 10), bool)
    mask[0, 0:2] = True  # 2 pixels
    mask[3:6, 3:6] = True  # 9 pixels
    mask[8:10, 5:9] = True  # 8 pixels
    labels, count = label_components(mask, connectivity=1)
    assert sorted(component_sizes(labels, count).tolist()) == [2, 8, 9]
    assert keep_largest_components(mask, connectivity=1).sum() == 9
    assert keep_largest_components(mask, connectivity=1, keep=2).sum() == 17
    # 2 pixels are below half of the largest (9): dropped even though keep=3 allows them
    assert keep_largest_components(mask, connectivity=1, keep=3, min_fraction=0.5).sum() == 17
    assert not keep_largest_components(np.zeros((4, 4)), connectivity=1).any()
    with pytest.raises(InvalidParameterError, match="keep"):
        keep_largest_components(mask, connectivity=1, keep=0)


def test_largest_component_ties_go_to_the_first_in_raster_order():
    mask = np.zeros((6, 6), bool)
    mask[0, 0:2] = mask[4, 3:5] = True
    kept = keep_largest_components(mask, connectivity=1)
    assert kept[0, 0] and not kept[4, 3]


def test_remove_small_objects_keeps_exactly_the_big_ones():
    mask = np.zeros((8, 8), bool)
    mask[0, 0] = True
    mask[2:4, 2:4] = True
    mask[6, 6] = mask[7, 7] = True  # one component when 8-connected, two when 4-connected
    assert remove_small_objects(mask, min_size=2, connectivity=2).sum() == 6
    assert remove_small_objects(mask, min_size=2, connectivity=1).sum() == 4
    np.testing.assert_array_equal(remove_small_objects(mask, min_size=1, connectivity=1), mask)
    with pytest.raises(InvalidParameterError, match="min_size"):
        remove_small_objects(mask, min_size=0, connectivity=1)


def test_keep_central_component_prefers_the_centre_and_fills_holes():
    mask = np.zeros((11, 11), bool)
    mask[3:8, 3:8] = True
    mask[5, 5] = False  # a hole
    mask[0, 0:3] = True  # a bigger-than-nothing blob far from the centre
    out = keep_central_component(mask)
    assert out[5, 5] and out.sum() == 25 and not out[0, 0]
    assert keep_central_component(mask, fill=False).sum() == 24
    off_centre = np.zeros((11, 11), bool)
    off_centre[0:2, 0:2] = off_centre[9:11, 7:11] = True  # the nearer blob wins, not the bigger
    near = keep_central_component(off_centre)
    assert near.sum() == 8 and near[10, 10]
    assert not keep_central_component(np.zeros((4, 4), bool)).any()


def test_keep_central_component_connectivity_is_stated():
    mask = np.zeros((7, 7), bool)
    mask[3, 3] = mask[2, 2] = True  # diagonal neighbours
    assert keep_central_component(mask).sum() == 2  # 8-connected by default
    assert keep_central_component(mask, connectivity=1).sum() == 1


def test_postprocess_thresholds_then_keeps_the_centre():
    probabilities = np.zeros((2, 9, 9), np.float32)
    probabilities[0, 3:6, 3:6] = 0.9
    probabilities[0, 0, 0] = 0.95
    probabilities[1, 4, 4] = 0.4  # below the threshold
    out = postprocess(probabilities, threshold=0.5)
    assert out.dtype == np.uint8 and out.shape == (2, 9, 9)
    assert out[0].sum() == 9 and out[0, 0, 0] == 0 and out[1].sum() == 0
    assert postprocess(probabilities, threshold=0.3)[1].sum() == 1


def test_fill_holes_fills_an_enclosed_hole_only():
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[3, 3] = False
    open_ring = ring.copy()
    open_ring[3, 1:4] = False  # the hole now reaches the outside
    assert fill_holes(ring)[3, 3]
    assert not fill_holes(open_ring)[3, 3]


def test_the_eight_dihedral_views_are_distinct_and_invertible():
    image = np.arange(16).reshape(4, 4)
    views = {dihedral(image, k, f).tobytes() for k in range(4) for f in range(2)}
    assert len(views) == 8
    with_channel = np.arange(32).reshape(4, 4, 2)
    assert dihedral(with_channel, 1, 1).shape == (4, 4, 2)


def test_dihedral_tta_maps_every_view_back():
    images = np.random.default_rng(1).random((3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(dihedral_tta(lambda x: x**2, images), images**2, rtol=1e-6)
    # a predictor that marks a fixed corner of what it sees: the 8 views spread it over 4 corners
    def corner(x):
        out = np.zeros_like(x)
        out[:, 0, 0] = 1.0
        return out

    averaged = dihedral_tta(corner, images)
    assert averaged.dtype == np.float32
    np.testing.assert_allclose(averaged[:, [0, 0, 7, 7], [0, 7, 0, 7]], 0.25)
    assert averaged.sum() == pytest.approx(3.0)


def test_first_output_takes_the_mask_of_multi_output_models():
    mask, attention = np.ones(2), np.zeros(2)
    assert first_output(mask) is mask
    assert first_output([mask, attention]) is mask
    assert first_output((mask, attention)) is mask
    assert first_output({"mask": mask, "attention": attention}) is mask
