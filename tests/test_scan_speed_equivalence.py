"""The whole-scan shortcuts give the same results as the whole-volume computations they replace (issue 18, item 6).

Each shortcut works on a box instead of the whole scan (or encodes or sorts differently); each test
compares it with the plain whole-volume computation, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from nodulekit.detection import _ScanContext, merge_candidates, rank_candidates
from nodulekit.dicom_seg import _segments
from nodulekit.errors import DataFormatError
from nodulekit.inference import Segmenter, load_segmenter, measure_nodules
from nodulekit.inference import threads
from nodulekit.inference.io import _png
from nodulekit.inference.lung import lung_mask
from nodulekit.inference.measure import _drop_small
from nodulekit.inference.windows import local_zscore, predict_full
from nodulekit.postprocess import bounding_box, keep_largest_components, label_components, remove_small_objects
from nodulekit.preprocessing import Pipeline, equalize_histogram, median_filter, to_grayscale, zscore

SPACING = (2.0, 0.7, 0.7)


def _blobs(shape, count, seed, *, radius=4):
    """Random boxes of labels 1..count (later ones overwrite earlier ones), int32."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for label in range(1, count + 1):
        centre = [rng.integers(0, n) for n in shape]
        half = rng.integers(0, radius)
        labels[tuple(slice(max(c - half, 0), c + half + 1) for c in centre)] = label
    return labels


def _ct(seed=0, shape=(6, 96, 112)):
    """Integer HU (as DICOM stores them): body, two lungs, noise; and the lung mask."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000.0, np.float32)
    hu[:, 8:88, 6:106] = 40.0
    hu[:, 20:76, 14:52] = hu[:, 20:76, 60:98] = -850.0
    hu += np.round(rng.normal(0, 30, shape)).astype(np.float32)
    hu[2:4, 40:46, 30:36] = 20.0  # a nodule
    return hu, lung_mask(hu, spacing=SPACING)


@pytest.mark.parametrize(
    "steps, reach",
    [
        (None, 32),  # a plain per-image z-score becomes the local one: window // 2
        ([to_grayscale(), median_filter(3), zscore()], 33),  # the shipped model's pipeline
        ([median_filter(5), zscore(per_image=False, mean=0.0, std=1.0)], 2),
        ([equalize_histogram(), zscore()], None),  # reads the whole slice: no shortcut
    ],
)
def test_slice_reach_of_a_pipeline(steps, reach):
    segmenter = Segmenter(lambda batch: batch, None if steps is None else Pipeline(steps), window=64)
    assert segmenter._slice_reach == reach


@pytest.mark.parametrize("offset", [0.0, 0.37])  # integer HU, and values whose float64 sums round
def test_full_mode_preprocesses_only_the_box_and_its_reach_with_the_same_values(offset):
    # The model is the identity: the "probabilities" are the preprocessed slices, compared exactly.
    hu, lung = _ct()
    segmenter = Segmenter(lambda batch: batch, Pipeline([to_grayscale(), median_filter(3), zscore()]), window=32, mode="full")
    boxed = segmenter.predict(hu + np.float32(offset), region=lung, progress=False)
    box = segmenter._last_counts["box"]
    assert box[1] - box[0] < hu.shape[1] or box[3] - box[2] < hu.shape[2]  # the shortcut is taken
    segmenter._steps_reach = None  # whole slices, as before
    whole = segmenter.predict(hu + np.float32(offset), region=lung, progress=False)
    assert np.array_equal(boxed, whole)


def test_median_filter_3_is_scikit_images_median():
    from skimage.filters import median

    rng = np.random.default_rng(1)
    step = median_filter(3)
    for shape in [(1, 1, 1), (2, 1, 7), (3, 2, 2), (2, 31, 17), (1, 300, 300)]:
        for images in (rng.normal(size=shape), rng.integers(-1000, 400, shape), np.round(rng.normal(size=shape), 1)):
            images = images.astype(np.float32)
            expected = median(images, footprint=np.ones((1, 3, 3), bool), mode="nearest").astype(np.float32)
            assert np.array_equal(step(images), expected)


@pytest.mark.parametrize("seed", range(6))
def test_drop_small_is_removing_small_objects_then_labelling_again(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((5, 30, 40)) < 0.25
    within = bool(seed % 2)
    labels, count = label_components(mask, connectivity=3, within_slices=within)
    dropped, kept = _drop_small(labels, count, 3)
    expected, expected_count = label_components(remove_small_objects(mask, min_size=3, connectivity=3, within_slices=within), connectivity=3, within_slices=within)
    assert kept == expected_count and np.array_equal(dropped, expected)


def test_measuring_inside_the_mask_box_is_measuring_the_whole_volume():
    rng = np.random.default_rng(2)
    small = rng.random((4, 20, 24)) < 0.08
    small[0, 0, 0] = small[-1, -1, -1] = True  # the box's corners (single voxels, dropped as too small)
    probabilities, hu = rng.random(small.shape).astype(np.float32), rng.normal(-500, 200, small.shape).astype(np.float32)
    place = (slice(3, 7), slice(40, 60), slice(5, 29))
    big, big_p, big_hu = np.zeros((9, 70, 60), bool), np.zeros((9, 70, 60), np.float32), np.zeros((9, 70, 60), np.float32)
    big[place], big_p[place], big_hu[place] = small, probabilities, hu
    assert bounding_box(big) == place and bounding_box(np.zeros((3, 4, 5), bool)) is None
    labels, table = measure_nodules(big, spacing=SPACING, probabilities=big_p, hu=big_hu, min_voxels=3)
    small_labels, small_table = measure_nodules(small, spacing=SPACING, probabilities=probabilities, hu=hu, min_voxels=3)
    outside = np.ones(big.shape, bool)
    outside[place] = False
    assert len(table) > 3 and np.array_equal(labels[place], small_labels) and not labels[outside].any()
    centres = [c for c in table if c.startswith("centroid")]
    for column in ("slice_first", "slice_last", "largest_slice"):
        small_table[column] += 3
    assert table.drop(columns=centres).equals(small_table.drop(columns=centres))
    offsets = np.array([3, 40, 5] * 2) * np.array([1, 1, 1, *SPACING])
    assert np.allclose(table[centres].to_numpy(), small_table[centres].to_numpy() + offsets)


@pytest.mark.parametrize("seed", range(8))
def test_merge_and_rank_equal_their_whole_volume_formulas(seed):
    shape = (6, 40, 50)
    segmenter = _blobs(shape, 5, seed)
    blobs = _blobs(shape, 7 if seed % 4 else 0, seed + 100, radius=3)
    rng = np.random.default_rng(seed)
    centres = lambda ids: {c: rng.uniform(0, n, len(ids)) for c, n in zip(("centroid_z", "centroid_y", "centroid_x"), shape)}
    seg_ids, blob_ids = np.unique(segmenter[segmenter > 0]), np.unique(blobs[blobs > 0])
    seg_table = pd.DataFrame({"nodule_id": seg_ids, **centres(seg_ids)})
    blob_table = pd.DataFrame({"nodule_id": blob_ids, **centres(blob_ids), "blob_strength": rng.uniform(10, 90, len(blob_ids)), "blob_radius_mm": rng.uniform(1, 5, len(blob_ids))})
    merged, table = merge_candidates(segmenter, seg_table, blobs, blob_table, spacing=SPACING)
    kept = table[table["source"] == "blob"]
    original = blob_table.set_index("blob_strength")["nodule_id"]  # the strengths are distinct
    lookup = np.zeros(int(blobs.max()) + 1, np.int32)
    lookup[original.loc[kept["blob_strength"]].to_numpy(int)] = kept["nodule_id"].to_numpy(int)
    assert merged.dtype == np.int32 and np.array_equal(merged, np.where(segmenter > 0, segmenter, lookup[blobs]))
    scores = rng.random(len(table))
    ranked, ranked_table = rank_candidates(merged, table, scores, min_score=0.3)
    best_first = table.assign(score=scores).sort_values("score", ascending=False, kind="stable")
    best_first = best_first[best_first["score"] >= 0.3]["nodule_id"].to_numpy(int)
    order = np.zeros(int(max(merged.max(), table["nodule_id"].max())) + 1, np.int32)
    order[best_first] = np.arange(1, len(best_first) + 1)
    assert ranked.dtype == np.int32 and np.array_equal(ranked, order[merged]) and len(ranked_table) == len(best_first)


def test_lung_depth_of_a_crop_is_the_whole_slices_depth():
    hu, lung = _ct(seed=3)
    lung[1, 30:40, 20:30] = False
    sampling = np.array(SPACING)
    expected = np.stack([ndimage.distance_transform_edt(s, sampling=sampling[1:]) for s in lung]).astype(np.float32)
    context = _ScanContext(lung, sampling)
    crop = (slice(1, 3), slice(25, 60), slice(15, 80))
    assert np.array_equal(context.depth(crop), expected[crop])
    assert context._filled.tolist() == [False, True, True, False, False, False]  # only the slices asked for
    assert np.array_equal(context.depth(), expected)


def test_an_empty_slice_png_is_the_one_pil_writes(tmp_path):
    from PIL import Image

    empty = np.zeros((37, 41), np.uint8)
    Image.fromarray(empty).save(tmp_path / "direct.png")
    assert _png(empty) == (tmp_path / "direct.png").read_bytes()


def test_the_shipped_segmenter_gives_the_same_scan_result_with_the_box_shortcut():
    from nodulekit.phantom import generate_volume

    volume = generate_volume(n_slices=10, n_nodules=2, seed=5, thickness=2.0)
    segmenter = load_segmenter("pretrained")
    fast = segmenter.segment(volume, min_score=0.0, progress=False)
    segmenter._steps_reach = None
    whole = segmenter.segment(volume, min_score=0.0, progress=False)
    assert np.array_equal(fast.probabilities, whole.probabilities) and np.array_equal(fast.labels, whole.labels)
    assert fast.nodules.equals(whole.nodules) and len(fast.nodules) > 0


@pytest.mark.parametrize("keep", [1, 2, 3, 6])
def test_keeping_a_few_components_by_comparisons_is_np_isin(keep):
    mask = np.random.default_rng(keep).random((5, 30, 40)) < 0.3
    labels, count = label_components(mask, connectivity=1)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")[:keep]
    chosen = [k + 1 for k in order if sizes[k] >= 0.05 * sizes[order[0]]]
    assert np.array_equal(keep_largest_components(mask, connectivity=1, keep=keep, min_fraction=0.05), np.isin(labels, chosen))


def _local_zscore_formula(images, size, epsilon=1e-6):
    images = np.asarray(images, dtype=np.float64)
    box = (1, int(size), int(size))
    mean = ndimage.uniform_filter(images, size=box, mode="reflect")
    square = ndimage.uniform_filter(images * images, size=box, mode="reflect")
    std = np.sqrt(np.maximum(square - mean * mean, 0.0))
    return ((images - mean) / (std + float(epsilon))).astype(np.float32)


@pytest.mark.parametrize("size", [1, 3, 32])
def test_local_zscore_in_place_is_the_formula(size):
    rng = np.random.default_rng(size)
    for images in (rng.normal(size=(3, 50, 70)), np.round(rng.normal(-400, 300, (2, 40, 36))), np.zeros((2, 20, 20))):
        assert np.array_equal(local_zscore(images.astype(np.float32), size).view(np.uint32), _local_zscore_formula(images.astype(np.float32), size).view(np.uint32))


def test_full_mode_zeroing_outside_the_region_batch_by_batch_is_the_whole_volume_pass():
    hu, lung = _ct(seed=4)
    lung[0] = False  # a skipped slice
    model = lambda batch: 1.0 / (1.0 + np.exp(-batch))  # noqa: E731 - any predictor
    kept, _ = predict_full(hu, model, window=32, region=lung, preprocess=lambda x: x / 100.0, outside_region=None, context=0)
    kept[~lung] = 0.0
    zeroed, counts = predict_full(hu, model, window=32, region=lung, preprocess=lambda x: x / 100.0, outside_region=0.0, context=0, batch_size=2)
    assert counts["slices"] == 5 and np.array_equal(zeroed, kept)
    segmenter = Segmenter(model, Pipeline([to_grayscale(), median_filter(3), zscore()]), window=32, mode="full")
    whole = predict_full(hu, model, window=32, region=lung, preprocess=segmenter.preprocess_slices, context=segmenter._slice_reach)[0]
    whole[~lung] = 0.0
    assert np.array_equal(segmenter.predict(hu, region=lung, progress=False), whole)


def test_a_nan_in_the_last_slices_is_found_by_the_check_in_chunks():
    hu = np.zeros((300, 128, 128), np.float32)  # 2**22 values per check: 256 slices of 128x128
    hu[-1, 5, 5] = np.nan
    with pytest.raises(DataFormatError, match="hold 1 NaN"):
        Segmenter(lambda batch: batch).predict(hu, progress=False)


def test_one_rebuild_is_the_two_rebuilds():
    import keras

    from nodulekit.inference.forward import _rebuilt, _with_policy, without_fixed_size
    from nodulekit.models import build_unet

    model = build_unet((32, 32, 1), filters=(4, 8, 16))
    once = _rebuilt(model, "mixed_bfloat16")
    twice = _with_policy(without_fixed_size(model), "mixed_bfloat16")
    assert once is not None and once.get_config() == twice.get_config()
    assert all(np.array_equal(a, b) for a, b in zip(once.get_weights(), twice.get_weights()))
    batch = np.random.default_rng(0).normal(size=(2, 48, 64, 1)).astype(np.float32)
    assert np.array_equal(keras.ops.convert_to_numpy(once(batch)), keras.ops.convert_to_numpy(twice(batch)))
    assert _rebuilt(model, "float32") is None and _rebuilt(once, "mixed_bfloat16") is None  # nothing to rebuild


def test_one_trace_for_any_batch_size_gives_the_per_shape_values():
    import tensorflow as tf

    from nodulekit.inference.forward import make_forward, without_fixed_size
    from nodulekit.models import build_unet

    model = without_fixed_size(build_unet((32, 32, 1), filters=(4, 8, 16)))
    forward = make_forward(model, fully_convolutional=True, precision="float32")
    batch = np.random.default_rng(1).normal(size=(5, 48, 64, 1)).astype(np.float32)
    for size in (5, 2, 1):
        traced = tf.function(lambda x: model(x, training=False))  # the former way: one trace per batch shape
        assert np.array_equal(forward(batch[:size]), traced(tf.constant(batch[:size])).numpy())


def test_lung_mask_and_written_files_do_not_depend_on_the_thread_count(tmp_path, monkeypatch):
    from nodulekit.inference import write_segmentation

    hu, _ = _ct(seed=6, shape=(12, 96, 112))
    hu[3:6, 40:46, 30:36] = 30.0
    segmenter = Segmenter(lambda batch: 1.0 / (1.0 + np.exp(-batch)), None, window=32)
    written = {}
    for count in (1, 3):
        monkeypatch.setattr(threads, "available_cores", lambda: count)
        result = segmenter.segment(hu, spacing=SPACING, lungs=True, progress=False)
        write_segmentation(result, tmp_path / str(count), progress=False, nifti=False)
        written[count] = result, {p.relative_to(tmp_path / str(count)): p.read_bytes() for p in sorted((tmp_path / str(count)).rglob("*.png"))}
    (one, files_one), (three, files_three) = written[1], written[3]
    assert np.array_equal(one.lung, three.lung) and one.lung.any() and files_one == files_three
    assert len(files_one) > 12  # a mask per slice and overlays
    assert threads.map_in_threads(lambda x: x * x, range(7), threads=3) == [x * x for x in range(7)]


def test_the_seg_label_map_of_the_marked_slices_is_the_whole_volume_lookup():
    labels = _blobs((8, 30, 40), 6, seed=7)
    labels[0] = labels[-1] = 0
    table = pd.DataFrame({"nodule_id": [3, 1, 5], "score": [0.9, 0.8, 0.4]})
    labelmap, descriptions = _segments(labels, table, "model")
    lookup = np.zeros(int(labels.max()) + 1, np.uint8)
    lookup[[3, 1, 5]] = [1, 2, 3]
    assert np.array_equal(labelmap, lookup[labels]) and [d[1] for d in descriptions] == ["Nodule 1 (score 0.90)", "Nodule 2 (score 0.80)", "Nodule 3 (score 0.40)"]
    labels[4, 0, 0] = -1
    with pytest.raises(Exception, match="negative"):
        _segments(labels, table, "model")


def test_the_scan_masks_written_inside_their_boxes_are_the_whole_volume_comparisons():
    from nodulekit.inference.segmenter import _above, _marked

    rng = np.random.default_rng(8)
    probabilities = np.zeros((4, 30, 40), np.float32)
    probabilities[1:3, 5:20, 8:33] = rng.random((2, 15, 25))
    for box in ([5, 20, 8, 33], [0, 30, 0, 40], None):
        assert np.array_equal(_above(probabilities, 0.5, box), probabilities >= 0.5)
    labels = _blobs((5, 30, 40), 4, seed=9)
    for array in (labels, np.zeros_like(labels)):
        assert _marked(array).dtype == np.uint8 and np.array_equal(_marked(array), (array > 0).astype(np.uint8))


def _close_fill_dilate_padded(mask2d, pixel, closing_mm):
    """The lung closing as before: each lung closed in its box grown by the disk's radius + 2 pixels."""
    from nodulekit.inference.lung import _close_fill

    labels, count = label_components(mask2d, connectivity=1)
    out = np.zeros_like(mask2d)
    for found, number in zip(ndimage.find_objects(labels), range(1, count + 1)):
        pad = int(np.ceil(closing_mm / min(pixel))) + 2
        rows = slice(max(found[0].start - pad, 0), min(found[0].stop + pad, mask2d.shape[0]))
        columns = slice(max(found[1].start - pad, 0), min(found[1].stop + pad, mask2d.shape[1]))
        out[rows, columns] |= _close_fill(labels[rows, columns] == number, pixel, closing_mm)
    return out


@pytest.mark.parametrize("pixel", [(0.5, 0.5), (0.625, 0.625), (0.7, 0.9), (0.829, 0.829), (1.0, 1.0)])
def test_closing_each_lung_in_its_own_box_is_closing_it_in_a_padded_box(pixel):
    from nodulekit.inference.lung import _close_fill_dilate

    rng = np.random.default_rng(int(pixel[1] * 1000))
    for trial in range(30):
        shape = tuple(rng.integers(20, 80, 2))
        mask = ndimage.binary_opening(rng.random(shape) < rng.uniform(0.3, 0.7))
        mask[:2], mask[-2:], mask[:, :2], mask[:, -2:] = False, False, False, False  # lungs never touch the border
        closing = [2.0, 2.5, 3.0, 5.0][trial % 4]
        assert np.array_equal(_close_fill_dilate(mask, pixel, closing, 0.0), _close_fill_dilate_padded(mask, pixel, closing))
