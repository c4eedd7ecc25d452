"""Metrics: hand-computed cases, the empty-mask policy, Keras-vs-NumPy agreement, invariants (hypothesis)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nodulekit import metrics as M
from nodulekit.errors import InvalidParameterError

# A 3x3 nodule (9 px) and a prediction shifted one column: TP 6, FP 3, FN 3, TN 52 of 64.
TRUTH = np.zeros((8, 8), np.uint8)
TRUTH[2:5, 2:5] = 1
PRED = np.zeros((8, 8), np.float32)
PRED[2:5, 3:6] = 0.9


def test_hand_computed_overlap_metrics():
    assert M.confusion_counts(TRUTH, PRED) == {"tp": 6, "fp": 3, "fn": 3, "tn": 52}
    assert M.dice(TRUTH, PRED) == pytest.approx(12 / 18)
    assert M.iou(TRUTH, PRED) == pytest.approx(6 / 12)
    assert M.precision(TRUTH, PRED) == pytest.approx(6 / 9)
    assert M.recall(TRUTH, PRED) == pytest.approx(6 / 9)
    assert M.specificity(TRUTH, PRED) == pytest.approx(52 / 55)
    assert M.accuracy(TRUTH, PRED) == pytest.approx(58 / 64)
    assert M.background_accuracy(TRUTH) == pytest.approx(55 / 64)


def test_threshold_is_strictly_greater_like_keras():
    assert M.dice(TRUTH, PRED, threshold=0.9) == 0.0  # 0.9 > 0.9 is false: empty prediction
    assert M.dice(TRUTH, TRUTH.astype(bool)) == 1.0  # booleans are taken as they are


def test_empty_policy_for_both_empty_and_one_sided_cases():
    empty = np.zeros((4, 4))
    assert M.dice(empty, empty) == 1.0
    assert M.dice(empty, empty, empty="zero") == 0.0
    assert math.isnan(M.dice(empty, empty, empty="exclude"))
    one = np.zeros((4, 4))
    one[0, 0] = 1
    # One-sided misses are failures, whatever the policy.
    for policy in M.EMPTY_POLICIES:
        assert M.dice(one, empty, empty=policy) == 0.0
        assert M.precision(one, empty, empty=policy) == 0.0  # empty prediction on a nodule
        assert M.recall(empty, one, empty=policy) == 0.0  # false positive on an empty mask
    with pytest.raises(InvalidParameterError, match="empty must be one of"):
        M.dice(one, one, empty="ignore")


def test_per_image_values():
    truth = np.stack([TRUTH, np.zeros_like(TRUTH)])
    pred = np.stack([PRED, np.zeros_like(PRED)])
    np.testing.assert_allclose(M.dice(truth, pred, per_image=True), [12 / 18, 1.0])
    np.testing.assert_allclose(M.dice(truth, pred, per_image=True, empty="exclude"), [12 / 18, np.nan])


def test_segmentation_report_counts_and_policies():
    # Four images: a good one (Dice 2/3), a both-empty one, a false positive on an empty mask,
    # and a missed nodule.
    truth = np.zeros((4, 8, 8), np.uint8)
    pred = np.zeros((4, 8, 8), np.float32)
    truth[0], pred[0] = TRUTH, PRED
    pred[2, 0, 0] = 1
    truth[3, 5:7, 5:7] = 1
    one = M.segmentation_report(truth, pred, empty="one")
    assert one["dice"] == pytest.approx((2 / 3 + 1 + 0 + 0) / 4)
    assert (one["n_images"], one["n_scored"], one["n_true_empty"], one["n_both_empty"]) == (4, 4, 2, 1)
    assert (one["n_false_positive_on_empty"], one["n_missed"]) == (1, 1)
    assert M.segmentation_report(truth, pred, empty="zero")["dice"] == pytest.approx((2 / 3) / 4)
    excluded = M.segmentation_report(truth, pred, empty="exclude")
    assert excluded["dice"] == pytest.approx((2 / 3 + 0 + 0) / 3) and excluded["n_scored"] == 3
    separate = M.segmentation_report(truth, pred, empty="separate")
    assert separate["dice"] == pytest.approx((2 / 3 + 0) / 2) and separate["n_scored"] == 2
    assert separate["empty_correct_fraction"] == 0.5 and separate["empty_false_positive_pixels"] == 1
    # Pooled Dice ignores the policy: 2*6 / (2*6 + 4 FP + 3 + 4 FN).
    assert one["global_dice"] == pytest.approx(12 / 23)
    # The all-background baseline is reported beside the model's pixel accuracy.
    assert one["background_accuracy"] == pytest.approx(1 - 13 / 256)
    with pytest.raises(InvalidParameterError):
        M.segmentation_report(truth, pred, empty="ignore")


def test_background_baseline_is_high_on_nodule_crops():
    # A 10 px-wide nodule in a 64x64 crop: predicting nothing is already ~98 % accurate.
    mask = np.zeros((64, 64))
    yy, xx = np.mgrid[:64, :64]
    mask[(yy - 32) ** 2 + (xx - 32) ** 2 <= 25] = 1
    assert 0.97 < M.background_accuracy(mask) < 0.99
    assert M.accuracy(mask, np.zeros_like(mask)) == pytest.approx(M.background_accuracy(mask))


def test_per_nodule_dice_pools_slices():
    truth = np.zeros((3, 8, 8), np.uint8)
    pred = np.zeros((3, 8, 8), np.float32)
    truth[0, :2, :2] = 1  # nodule A slice 1: perfect (4 TP)
    pred[0, :2, :2] = 1
    truth[1, :2, :2] = 1  # nodule A slice 2: missed (4 FN)
    truth[2, 4:6, 4:6] = 1  # nodule B: half found plus 2 FP -> TP 2, FN 2, FP 2
    pred[2, 4:6, 4] = 1
    pred[2, 0, :2] = 1
    frame = M.per_nodule_dice(truth, pred, ["A", "A", "B"])
    assert frame["nodule_id"].tolist() == ["A", "B"]
    np.testing.assert_allclose(frame["dice"], [8 / (8 + 4), 4 / (4 + 2 + 2)])
    assert frame["n_slices"].tolist() == [2, 1] and frame["true_voxels"].tolist() == [8, 4]
    with pytest.raises(InvalidParameterError, match="nodule_ids"):
        M.per_nodule_dice(truth, pred, ["A"])


def test_detection_by_connected_components():
    truth = np.zeros((2, 16, 16), np.uint8)
    pred = np.zeros((2, 16, 16), np.uint8)
    truth[0, 2:5, 2:5] = 1  # detected (overlap of one pixel is enough)
    pred[0, 4:7, 4:7] = 1
    truth[0, 10:12, 10:12] = 1  # missed
    pred[0, 0, 15] = 1  # false positive
    truth[1, 5:8, 5:8] = 1  # missed on slice 2
    pred[1, 12:14, 0:2] = 1  # false positive
    pred[1, 14:16, 14:16] = 1  # false positive
    result = M.detection_scores(truth, pred, nodule_ids=["n1", "n2"])
    assert (result["n_true_components"], result["n_detected"]) == (3, 1)
    assert result["sensitivity"] == pytest.approx(1 / 3)
    assert (result["n_pred_components"], result["n_false_positives"]) == (4, 3)
    assert result["false_positives_per_slice"] == pytest.approx(1.5)
    assert (result["n_nodules"], result["n_nodules_detected"], result["nodule_sensitivity"]) == (2, 1, 0.5)
    # Diagonal neighbours: one component with 8-connectivity, two with 4-connectivity.
    diagonal = np.zeros((1, 4, 4), np.uint8)
    diagonal[0, 0, 0] = diagonal[0, 1, 1] = 1
    assert M.detection_scores(diagonal, diagonal)["n_true_components"] == 1
    assert M.detection_scores(diagonal, diagonal, connectivity=1)["n_true_components"] == 2


def test_boundary_metrics_in_millimetres():
    a = np.zeros((20, 20), np.uint8)
    a[5:10, 5:10] = 1
    b = np.zeros((20, 20), np.uint8)
    b[5:10, 7:12] = 1  # shifted two columns
    assert M.hd95(a, a, spacing=0.7) == 0.0
    assert M.mean_surface_distance(a, a, spacing=0.7) == 0.0
    assert M.hd95(a, b, spacing=0.5) == pytest.approx(1.0)  # 2 px * 0.5 mm
    assert M.hd95(a, b, spacing=(1.0, 0.5)) == pytest.approx(1.0)  # the shift is along columns
    assert M.hd95(a, b, spacing=(0.5, 1.0)) == pytest.approx(2.0)
    # Mean surface distance by hand: a's 16 boundary pixels lie at distances top row 2,1,0,0,0,
    # bottom row 2,1,0,0,0, left column 2,2,2, right column 1,2,1 (sum 16) from b's boundary; the
    # same holds back by symmetry, so the mean is 32 / 32 = 1 px.
    forward, backward = M.surface_distances(a, b)
    assert forward.size == 16 and backward.size == 16
    assert forward.sum() == pytest.approx(16.0) and backward.sum() == pytest.approx(16.0)
    assert M.mean_surface_distance(a, b, spacing=0.5) == pytest.approx(0.5)
    assert math.isnan(M.hd95(a, np.zeros_like(a)))
    with pytest.raises(InvalidParameterError, match="spacing"):
        M.hd95(a, b, spacing=0)


def test_boundary_metrics_in_3d_use_slice_spacing():
    a = np.zeros((6, 10, 10), np.uint8)
    a[1:3, 3:6, 3:6] = 1
    b = np.zeros_like(a)
    b[2:4, 3:6, 3:6] = 1  # shifted one slice
    assert M.hd95(a, b, spacing=(2.5, 0.7, 0.7)) == pytest.approx(2.5)


# ---------------------------------------------------------------- Keras agrees with NumPy


def _random_batch(seed, n=6, size=16):
    rng = np.random.default_rng(seed)
    truth = np.zeros((n, size, size, 1), np.float32)
    for i in range(n - 2):  # the last two images have empty masks
        r, c = rng.integers(2, size - 6, 2)
        truth[i, r : r + rng.integers(2, 6), c : c + rng.integers(2, 6)] = 1
    prob = np.clip(truth * 0.7 + rng.normal(0.15, 0.25, truth.shape), 0, 1).astype(np.float32)
    prob[-1] = 0.0  # both empty
    return truth, prob


@pytest.mark.parametrize(
    "metric_class, function",
    [(M.DiceCoefficient, M.dice), (M.IoUMetric, M.iou), (M.PrecisionMetric, M.precision), (M.RecallMetric, M.recall)],
)
@pytest.mark.parametrize("empty", ["one", "zero", "exclude"])
def test_keras_metrics_agree_with_numpy(metric_class, function, empty):
    truth, prob = _random_batch(0)
    more_truth, more_prob = _random_batch(1)
    per_image = metric_class(empty=empty)
    pooled = metric_class(average="global", empty=empty)
    for t, p in ((truth, prob), (more_truth, more_prob)):  # two update steps, like two batches
        per_image.update_state(t, p)
        pooled.update_state(t, p)
    all_truth, all_prob = np.concatenate([truth, more_truth]), np.concatenate([prob, more_prob])
    expected_image = np.nanmean(function(all_truth, all_prob, empty=empty, per_image=True))
    assert float(per_image.result()) == pytest.approx(expected_image, abs=1e-6)
    assert float(pooled.result()) == pytest.approx(function(all_truth, all_prob, empty=empty), abs=1e-6)
    per_image.reset_state()
    assert float(per_image.result()) == 0.0


def test_keras_metric_names_and_config_round_trip():
    names = [cls().name for cls in (M.DiceCoefficient, M.IoUMetric, M.PrecisionMetric, M.RecallMetric)]
    assert names == ["dice", "iou", "precision", "recall"]
    metric = M.DiceCoefficient(threshold=0.3, average="global", empty="exclude")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert isinstance(clone, M.DiceCoefficient)
    assert (clone.threshold, clone.average, clone.empty) == (0.3, "global", "exclude")
    with pytest.raises(InvalidParameterError):
        M.DiceCoefficient(average="macro")


# ---------------------------------------------------------------- invariants (hypothesis)

masks = arrays(np.bool_, st.tuples(st.integers(1, 3), st.integers(1, 8), st.integers(1, 8)))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(masks, st.data())
def test_symmetric_bounded_and_identity(truth, data):
    pred = data.draw(arrays(np.bool_, truth.shape))
    for function in (M.dice, M.iou):
        value = function(truth, pred)
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(function(pred, truth))  # symmetric
        assert function(truth, truth) == 1.0  # identity
    # Precision and recall swap when the masks swap.
    assert M.precision(truth, pred) == pytest.approx(M.recall(pred, truth))
    # Dice >= IoU, with Dice = 2 IoU / (1 + IoU).
    d, j = M.dice(truth, pred), M.iou(truth, pred)
    assert d == pytest.approx(2 * j / (1 + j))
    # Accuracy of the empty prediction is the background baseline.
    assert M.accuracy(truth, np.zeros_like(truth)) == pytest.approx(M.background_accuracy(truth))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(arrays(np.bool_, st.tuples(st.integers(3, 12), st.integers(3, 12))), st.data())
def test_boundary_metrics_are_symmetric_and_zero_on_identity(truth, data):
    pred = data.draw(arrays(np.bool_, truth.shape))
    spacing = data.draw(st.floats(0.1, 3.0))
    if truth.any() and pred.any():
        assert M.hd95(truth, truth, spacing=spacing) == 0.0
        assert M.hd95(truth, pred, spacing=spacing) == pytest.approx(M.hd95(pred, truth, spacing=spacing))
        assert M.mean_surface_distance(truth, pred, spacing=spacing) == pytest.approx(
            M.mean_surface_distance(pred, truth, spacing=spacing)
        )
        assert M.hd95(truth, pred, spacing=spacing) >= 0.0
    else:
        assert math.isnan(M.hd95(truth, pred, spacing=spacing))
