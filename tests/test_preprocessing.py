"""The paper's preprocessing: every step against a hand-computed expectation, and the pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nodulekit.errors import InvalidParameterError, NodulekitError
from nodulekit.preprocessing import (
    Pipeline,
    center_crop,
    equalize_histogram,
    median_filter,
    paper_pipeline,
    to_grayscale,
    window_hu,
    zscore,
)


# --- to_grayscale ---------------------------------------------------------------------------------
def test_to_grayscale_uses_luminance_weights_and_keeps_scale():
    rgb = np.array([[[[255, 255, 255], [10, 20, 30]], [[255, 0, 0], [0, 0, 0]]]], np.uint8)  # (1, 2, 2, 3)
    gray = to_grayscale()(rgb)
    assert gray.shape == (1, 2, 2) and gray.dtype == np.float32
    # 0.2125 R + 0.7154 G + 0.0721 B
    np.testing.assert_allclose(gray[0], [[255.0, 2.125 + 14.308 + 2.163], [0.2125 * 255, 0.0]], rtol=1e-5)


def test_to_grayscale_passes_gray_and_squeezes_single_channel():
    gray = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    np.testing.assert_array_equal(to_grayscale()(gray), gray)
    np.testing.assert_array_equal(to_grayscale()(gray[..., None]), gray)


# --- window_hu -------------------------------------------------------------------------------------
def test_window_hu_clips_and_scales_lung_window():
    hu = np.array([[[-2000, -1350, -975, -600, 150, 1000]]], np.float32)
    out = window_hu(center=-600, width=1500)(hu)  # window -1350..150 HU
    np.testing.assert_allclose(out[0, 0], [0.0, 0.0, 0.25, 0.5, 1.0, 1.0])


def test_window_hu_rejects_non_positive_width():
    with pytest.raises(InvalidParameterError, match="width"):
        window_hu(-600, 0)


# --- zscore ----------------------------------------------------------------------------------------
def test_zscore_per_image_by_hand():
    images = np.array([[[1, 2], [3, 4]], [[10, 20], [30, 40]]], np.float32)
    out = zscore()(images)
    # mean 2.5, population sd sqrt(1.25): (x - 2.5) / 1.1180 = -1.342, -0.447, 0.447, 1.342
    expected = (np.array([[1, 2], [3, 4]]) - 2.5) / np.sqrt(1.25)
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
    np.testing.assert_allclose(out[1], expected, atol=1e-5)  # scale-invariant: each image on its own


def test_zscore_constant_image_becomes_zero():
    out = zscore()(np.full((1, 3, 3), 7.0))
    np.testing.assert_array_equal(out, np.zeros((1, 3, 3), np.float32))


def test_zscore_dataset_statistics_fit_then_apply():
    pipeline = Pipeline([zscore(per_image=False)])
    with pytest.raises(InvalidParameterError, match="not fitted"):
        pipeline.apply(np.zeros((1, 2, 2)))
    pipeline.fit(np.array([[[0.0, 2.0], [0.0, 2.0]]]))  # mean 1, sd 1
    np.testing.assert_allclose(pipeline.apply(np.full((1, 1, 2), 3.0)), [[[2.0, 2.0]]])
    explicit = zscore(per_image=False, mean=10.0, std=2.0)(np.array([[[14.0]]]))
    np.testing.assert_allclose(explicit, [[[2.0]]], rtol=1e-5)
    with pytest.raises(InvalidParameterError):
        zscore(per_image=True, mean=1.0)


# --- median_filter ---------------------------------------------------------------------------------
def test_median_filter_removes_impulse_keeps_edge_and_images_apart():
    images = np.zeros((2, 7, 7), np.float32)
    images[0, 3, 3] = 100.0  # salt noise: one bright pixel
    images[1, :, 4:] = 10.0  # an edge
    out = median_filter(3)(images)
    np.testing.assert_array_equal(out[0], np.zeros((7, 7)))
    np.testing.assert_array_equal(out[1], images[1])  # a straight edge survives a 3x3 median
    # the footprint is (1, 3, 3): a bright slab in image 0 does not bleed into image 1
    stack = np.zeros((2, 5, 5), np.float32)
    stack[0] = 50.0
    np.testing.assert_array_equal(median_filter(3)(stack)[1], np.zeros((5, 5)))


def test_median_filter_size_must_be_odd():
    with pytest.raises(InvalidParameterError, match="odd"):
        median_filter(4)


# --- equalize_histogram ----------------------------------------------------------------------------
def test_global_equalization_two_levels_and_flattens_histogram():
    two = np.zeros((1, 4, 4), np.float32)
    two[0, 2:] = 5.0  # half 0, half 5: each pixel becomes the fraction of pixels at or below it
    np.testing.assert_allclose(equalize_histogram("global")(two)[0], np.where(two[0] > 0, 1.0, 0.5))
    skewed = np.random.default_rng(0).exponential(size=(1, 64, 64)).astype(np.float32)
    out = equalize_histogram("global")(skewed)
    counts, _ = np.histogram(out, bins=4, range=(0, 1))
    np.testing.assert_allclose(counts / out.size, 0.25, atol=0.02)  # uniform after equalisation


def test_clahe_stretches_low_contrast_and_stays_in_unit_range():
    ramp = np.tile(np.linspace(100, 110, 32, dtype=np.float32), (32, 1))[None]
    out = equalize_histogram("clahe", clip_limit=0.02)(ramp)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.max() - out.min() > 0.9  # 10 grey levels spread over nearly the whole range
    assert out[0, :, :8].mean() < 0.3 < 0.7 < out[0, :, -8:].mean()  # dark left, bright right as before


# --- center_crop -----------------------------------------------------------------------------------
def test_center_crop_by_hand_and_pads_smaller():
    images = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    np.testing.assert_array_equal(center_crop(2)(images)[0], [[5, 6], [9, 10]])
    padded = center_crop(4)(np.ones((1, 2, 2), np.float32) * 3)
    assert padded.shape == (1, 4, 4) and padded[0, 1:3, 1:3].tolist() == [[3, 3], [3, 3]]
    rgb = np.zeros((2, 6, 6, 3))
    assert center_crop(4)(rgb).shape == (2, 4, 4, 3)


# --- Pipeline --------------------------------------------------------------------------------------
def test_paper_pipeline_gives_zscored_gray_crops():
    rgb = np.random.default_rng(1).integers(0, 256, size=(3, 128, 128, 3)).astype(np.uint8)
    pipeline = paper_pipeline(crop_size=64)
    assert [s.name for s in pipeline.steps] == ["center_crop", "to_grayscale", "median_filter", "zscore"]
    out = pipeline.apply(rgb)
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1.0, atol=1e-4)


def test_pipeline_order_matters_and_one_image_stays_one_image():
    image = np.zeros((5, 5), np.float32)
    image[2, 2] = 1.0
    median_then_z = Pipeline([median_filter(3), zscore()]).apply(image)
    assert median_then_z.shape == (5, 5)
    np.testing.assert_array_equal(median_then_z, np.zeros((5, 5)))  # impulse removed, then constant -> 0
    z_then_median = Pipeline([zscore(), median_filter(3)]).apply(image)
    # z-score first: background (0 - 1/25) / sqrt(1/25 - 1/625) = -1/sqrt(24), kept by the median
    np.testing.assert_allclose(z_then_median, np.full((5, 5), -1 / np.sqrt(24)), rtol=1e-5)


def test_pipeline_config_round_trip_through_json(tmp_path):
    pipeline = paper_pipeline(crop_size=64, window=(-600, 1500), equalize="clahe", per_image=False)
    pipeline.fit(np.random.default_rng(0).normal(-500, 300, size=(4, 80, 80)))
    path = pipeline.save(tmp_path / "preprocessing.json")
    json.loads(path.read_text())  # plain JSON
    again = Pipeline.load(path)
    assert again == pipeline
    batch = np.random.default_rng(2).normal(-500, 300, size=(2, 80, 80))
    np.testing.assert_array_equal(again.apply(batch), pipeline.apply(batch))
    assert Pipeline.from_config(pipeline.get_config()).get_config() == pipeline.get_config()


def test_pipeline_refuses_bad_configs_and_rgb_output():
    with pytest.raises(InvalidParameterError, match="unknown preprocessing step"):
        Pipeline.from_config({"steps": [{"name": "sharpen", "params": {}}]})
    with pytest.raises(InvalidParameterError, match="bad parameters"):
        Pipeline.from_config({"steps": [{"name": "zscore", "params": {"mode": 1}}]})
    with pytest.raises(InvalidParameterError, match="to_grayscale"):
        Pipeline([zscore()]).apply(np.zeros((1, 4, 4, 3)))
    with pytest.raises(NodulekitError):
        Pipeline([median_filter(3)]).apply(np.zeros((1, 4, 4, 3)))


def test_preprocessing_figure_has_image_and_histogram_per_step(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from nodulekit.plots import save_figure
    from nodulekit.plots.preprocessing import plot_preprocessing_steps

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[28:36, 28:36] = 1
    pipeline = paper_pipeline(crop_size=48, equalize=True)
    fig = plot_preprocessing_steps(image, pipeline, mask=mask)
    assert len(fig.axes) == 2 * (len(pipeline) + 1)
    titles = [ax.get_title() for ax in fig.axes[: len(pipeline) + 1]]
    assert titles == ["input", "center crop", "to grayscale", "median filter", "equalize histogram", "zscore"]
    assert fig.axes[-1].get_title().startswith("mean ")  # last histogram: z-scored, mean ~0
    path = save_figure(fig, "S1", "preprocessing", folder=tmp_path)
    assert path.stat().st_size > 1000
