"""Whole-scan inference: lung mask, sliding windows vs whole slices, nodules measured in mm."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nodulekit.dataset import CropSet, Volume
from nodulekit.errors import InvalidParameterError, MissingDataError, ModelFileError
from nodulekit.inference import (
    NODULE_COLUMNS,
    Segmenter,
    gaussian_weights,
    load_segmenter,
    local_zscore,
    lung_mask,
    match_nodules,
    measure_nodules,
    window_starts,
    write_segmentation,
)


# --------------------------------------------------------------------------------------------------
# Hand-made CT: air around a body, two lungs, nodules of known size


def _chest(n_slices: int = 6, size: int = 128, pixel: float = 1.0):
    """HU volume: air -1000, body 40 HU, two lungs -850 with a juxtapleural and an inner nodule."""
    z, y, x = np.mgrid[0:n_slices, 0:size, 0:size].astype(np.float32)
    hu = np.full((n_slices, size, size), -1000.0, np.float32)
    body = ((y - 64) / 56) ** 2 + ((x - 64) / 60) ** 2 <= 1
    hu[body] = 40.0
    left = ((y - 64) / 40) ** 2 + ((x - 36) / 16) ** 2 <= 1  # x 20..52
    right = ((y - 64) / 40) ** 2 + ((x - 92) / 16) ** 2 <= 1  # x 76..108
    hu[left | right] = -850.0
    inner = (y - 64) ** 2 + (x - 36) ** 2 <= 5**2  # inside the left lung
    juxta = (y - 64) ** 2 + (x - 108) ** 2 <= 5**2  # on the right lung's outer wall (x = 108)
    middle = slice(1, n_slices - 1)
    hu[middle][inner[middle]] = 40.0
    hu[middle][juxta[middle]] = 40.0
    return hu, (2.0, pixel, pixel)


def test_lung_mask_keeps_lungs_and_nodules_drops_outside_air_and_body():
    hu, spacing = _chest()
    mask = lung_mask(hu, spacing=spacing, margin_mm=0.0)
    assert mask.shape == hu.shape and mask.dtype == bool
    assert mask[3, 64, 36] and mask[3, 64, 92]  # both lungs
    assert mask[3, 64, 36] and hu[3, 64, 36] == 40.0  # the inner nodule is filled in
    assert mask[3, 64, 104] and mask[3, 60, 104], "juxtapleural nodule must stay inside the closed lung mask"
    assert not mask[3, 2, 2]  # air outside the body
    assert not mask[3, 12, 64]  # body wall above the lungs
    assert not mask[3, 64, 64]  # mediastinum between the lungs (each lung is closed on its own)


def test_lung_mask_2d_margin_and_no_lungs():
    hu, spacing = _chest(n_slices=1)
    tight = lung_mask(hu[0], spacing=spacing[1:], margin_mm=0.0)
    loose = lung_mask(hu[0], spacing=spacing[1:], margin_mm=3.0)
    assert tight.ndim == 2 and (loose & ~tight).any() and not (tight & ~loose).any()
    assert not lung_mask(np.full((32, 32), 40.0)).any()  # soft tissue only: no lung
    with pytest.raises(InvalidParameterError):
        lung_mask(np.zeros(10))
    with pytest.raises(InvalidParameterError):
        lung_mask(hu, keep=0)


# --------------------------------------------------------------------------------------------------
# Sliding-window helpers


def test_window_starts_cover_and_end_flush():
    starts = window_starts(512, 64, 48)
    assert starts[0] == 0 and starts[-1] == 448 and np.all(np.diff(starts) <= 48)
    assert list(window_starts(64, 64, 32)) == [0]
    assert list(window_starts(40, 64, 32)) == [0]


def test_gaussian_weights_centre_one_symmetric_floor():
    weights = gaussian_weights(64)
    assert weights.shape == (64, 64) and weights.dtype == np.float32
    assert weights.max() == pytest.approx(1.0, abs=2e-3) and weights.min() == pytest.approx(1e-3)
    np.testing.assert_allclose(weights, weights.T)
    np.testing.assert_allclose(weights, weights[::-1, ::-1])


def test_local_zscore_equals_zscore_of_the_centred_window():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 20, 20)) * 7 + 3
    out = local_zscore(image, 5)
    for row, column in [(5, 5), (10, 12), (14, 7)]:
        window = image[0, row - 2 : row + 3, column - 2 : column + 3]
        expected = (image[0, row, column] - window.mean()) / window.std()
        assert out[0, row, column] == pytest.approx(expected, rel=1e-4)


# --------------------------------------------------------------------------------------------------
# Models with known outputs


def _pixel_model(weight: float, bias: float, size=(64, 64)):
    """A 1x1-convolution + sigmoid Keras model: probability = sigmoid(weight * x + bias) per pixel."""
    import keras

    inputs = keras.Input((*size, 1))
    layer = keras.layers.Conv2D(1, 1, activation="sigmoid", name="pixel")
    model = keras.Model(inputs, layer(inputs))
    layer.set_weights([np.full((1, 1, 1, 1), weight, np.float32), np.full((1,), bias, np.float32)])
    return model


def _hu_pipeline():
    from nodulekit.preprocessing import Pipeline, window_hu

    return Pipeline([window_hu(-600.0, 1500.0)])  # pixel-wise: HU -300 -> 0.7


def _bright_segmenter(**options):
    """Nodule where HU > -300 (sigmoid(50 * (w - 0.7)) on the lung window): exact, no training."""
    return Segmenter(_pixel_model(50.0, -35.0), _hu_pipeline(), **{"precision": "float32", **options})  # exact arithmetic


def test_sliding_and_full_agree_exactly_for_a_pixelwise_model():
    rng = np.random.default_rng(1)
    slices = rng.uniform(-1000, 200, size=(2, 100, 90)).astype(np.float32)
    segmenter = _bright_segmenter()
    expected = 1 / (1 + np.exp(-(50 * np.clip((slices + 1350) / 1500, 0, 1) - 35)))
    sliding = segmenter.predict(slices, mode="sliding", overlap=0.5, progress=False)
    full = segmenter.predict(slices, mode="full", progress=False)
    np.testing.assert_allclose(sliding, expected, atol=1e-5)  # Gaussian blending is normalised
    np.testing.assert_allclose(full, expected, atol=1e-5)  # padding to 16 and cropping back
    region = np.zeros(slices.shape, bool)
    region[:, 30:50, 20:40] = True
    restricted = segmenter.predict(slices, mode="sliding", region=region, progress=False)
    assert (restricted[~region] == 0).all()
    np.testing.assert_allclose(restricted[region], expected[region], atol=1e-5)
    assert segmenter._last_counts["windows"] < 2 * 9  # only windows touching the region ran


def test_window_functions_are_pure_and_take_any_predictor():
    """``predict_sliding`` / ``predict_full`` need no Segmenter: images, a predictor, the settings."""
    from nodulekit.inference.windows import predict_full, predict_sliding

    slices = np.random.default_rng(2).uniform(0, 1, size=(3, 70, 50)).astype(np.float32)
    calls = []

    def square(batch):  # a pixel-wise "model"
        calls.append(batch.shape)
        return batch**2

    sliding, counts = predict_sliding(slices, square, window=32, overlap=0.5, batch_size=7)
    np.testing.assert_allclose(sliding, slices**2, rtol=1e-5)
    assert counts["windows"] == sum(shape[0] for shape in calls) == 3 * 4 * 3  # 4 x 3 windows a slice
    assert max(shape[0] for shape in calls) <= 7
    region = np.zeros(slices.shape, bool)
    region[1, 20:30, 10:20] = True
    calls.clear()
    full, counts = predict_full(slices, square, window=32, region=region, preprocess=lambda x: x + 1)
    assert counts["slices"] == 1 and [shape[1:] for shape in calls] == [(32, 32)]  # one slice, the box padded to 16s
    row0, row1, column0, column1 = counts["box"]
    np.testing.assert_allclose(full[1, row0:row1, column0:column1], (slices[1, row0:row1, column0:column1] + 1) ** 2, rtol=1e-5)
    assert not full[[0, 2]].any()


def test_bfloat16_inference_keeps_float32_weights_and_output():
    from nodulekit.models import build_unet

    model = build_unet((64, 64, 1), filters=(4, 8, 16, 32, 64), batch_norm=True)
    images = np.random.default_rng(3).normal(size=(4, 64, 64)).astype(np.float32)
    exact = Segmenter(model, None, precision="float32").predict(images, mode="sliding", progress=False)
    half = Segmenter(model, None, precision="mixed_bfloat16")
    fast = half.predict(images, mode="sliding", progress=False)
    assert fast.dtype == np.float32 and np.abs(fast - exact).mean() < 0.01  # bfloat16 has 8 mantissa bits
    assert model.dtype_policy.name == "float32"  # the caller's model is not changed
    with pytest.raises(InvalidParameterError, match="precision"):
        Segmenter(model, None, precision="float8")


def test_full_mode_uses_local_normalisation_like_the_training_crop():
    from nodulekit.preprocessing import paper_pipeline

    segmenter = Segmenter(_pixel_model(1.0, 0.0), paper_pipeline(median=False), window=16, precision="float32")
    image = np.random.default_rng(2).normal(size=(1, 48, 48)).astype(np.float32) * 100 + 500
    image[0, :, 24:] += 1000  # very different halves: a global z-score would shift each half
    logits = np.log(segmenter.predict(image, mode="full", progress=False)) - np.log1p(-segmenter.predict(image, mode="full", progress=False))
    window = image[0, 8:24, 0:16].astype(np.float64)  # the 16x16 crop centred (even size) at (16, 8)
    assert logits[0, 16, 8] == pytest.approx((image[0, 16, 8] - window.mean()) / window.std(), rel=1e-3)


def test_unet_fixed_size_runs_in_both_modes_on_odd_sized_slices():
    from nodulekit.models import build_unet

    model = build_unet((64, 64, 1), filters=(4, 8, 16, 32, 64))
    segmenter = Segmenter(model, None)
    slices = np.random.default_rng(3).normal(size=(2, 70, 90)).astype(np.float32)
    for mode in ("sliding", "full"):
        out = segmenter.predict(slices, mode=mode, progress=False)
        assert out.shape == slices.shape and np.isfinite(out).all() and (0 <= out).all() and (out <= 1).all()
    small = segmenter.predict(np.zeros((1, 40, 30), np.float32), mode="sliding", progress=False)
    assert small.shape == (1, 40, 30)


# --------------------------------------------------------------------------------------------------
# Nodules as objects


def _ball(shape, centre, radius_mm, spacing):
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c * s) ** 2 for g, c, s in zip(grids, centre, spacing)) <= radius_mm**2


def test_measure_nodules_sizes_in_mm():
    spacing = (2.5, 0.7, 0.7)
    shape = (20, 80, 80)
    big = _ball(shape, (10, 30, 30), 6.0, spacing)  # 12 mm sphere
    small = _ball(shape, (5, 60, 60), 2.5, spacing)  # 5 mm sphere
    labels, table = measure_nodules(big | small, spacing=spacing, hu=np.where(big | small, 40.0, -850.0))
    assert list(table.columns) == list(NODULE_COLUMNS)
    assert list(table["nodule_id"]) == [1, 2]
    first = table.iloc[0]
    assert first["voxels"] == big.sum() and (labels == 1).sum() == big.sum()
    assert first["volume_mm3"] == pytest.approx(4 / 3 * np.pi * 6.0**3, rel=0.12)
    assert first["diameter_mm"] == pytest.approx(12.0, abs=1.0)  # longest axial diameter, edge to edge
    assert first["equivalent_diameter_mm"] == pytest.approx(12.0, rel=0.05)
    assert (first["slice_first"], first["slice_last"], first["n_slices"], first["largest_slice"]) == (8, 12, 5, 10)
    assert (first["centroid_z"], first["centroid_y"], first["centroid_x"]) == pytest.approx((10, 30, 30))
    assert first["centroid_z_mm"] == pytest.approx(25.0) and first["centroid_x_mm"] == pytest.approx(21.0)
    assert first["mean_hu"] == pytest.approx(40.0)
    assert np.isnan(first["mean_probability"])
    assert table.iloc[1]["diameter_mm"] == pytest.approx(5.0, abs=1.0)
    _, filtered = measure_nodules(big | small, spacing=spacing, min_diameter_mm=8.0)
    assert len(filtered) == 1 and filtered.iloc[0]["voxels"] == big.sum()


def test_measure_nodules_connectivity_and_anisotropic_pixels():
    mask = np.zeros((3, 10, 10), np.uint8)
    mask[0, 2, 2] = mask[1, 3, 3] = 1  # touch diagonally across slices
    mask[2, 5:7, 0:10] = 1  # 10 pixels long, 2 wide
    _, volume_table = measure_nodules(mask, spacing=(1.0, 2.0, 0.5))
    assert len(volume_table) == 2 and sorted(volume_table["n_slices"]) == [1, 2]
    _, images_table = measure_nodules(mask, spacing=(1.0, 2.0, 0.5), connect_slices=False)
    assert len(images_table) == 3 and set(images_table["image"]) == {0, 1, 2}
    bar = images_table.loc[images_table["voxels"] == 20].iloc[0]
    assert bar["diameter_mm"] == pytest.approx(np.hypot(10 * 0.5, 2 * 2.0), abs=0.5)
    assert bar["diameter_px"] == pytest.approx(np.hypot(10, 2), abs=0.5)
    assert bar["equivalent_diameter_mm"] == pytest.approx(2 * np.sqrt(20 * 1.0 / np.pi))
    _, unknown = measure_nodules(mask, spacing=(np.nan, np.nan, np.nan), connect_slices=False)
    assert unknown["diameter_mm"].isna().all() and unknown["diameter_px"].notna().all()
    empty_labels, empty = measure_nodules(np.zeros((2, 5, 5)), spacing=(1, 1, 1))
    assert len(empty) == 0 and list(empty.columns) == list(NODULE_COLUMNS) and not empty_labels.any()


# --------------------------------------------------------------------------------------------------
# The whole job


def test_segment_volume_finds_the_nodules_in_the_lungs_only():
    hu, spacing = _chest(n_slices=6)
    hu[2:4, 120:126, 60:66] = -300  # not a lung: a bright spot would be found if the search were not restricted
    volume = Volume(hu, spacing)
    segmenter = _bright_segmenter()
    # margin 0: this "model" marks every bright pixel, so a margin would add a rim of chest wall
    options = {"margin_mm": 0.0}
    result = segmenter.segment(volume, lungs=True, lung_options=options, min_diameter_mm=3.0, progress=False)
    table = result.nodules
    assert len(table) == 2, table
    inner = table.loc[(table["centroid_x"] - 36).abs() < 1].iloc[0]  # the whole 11-pixel disc on 4 slices
    assert (inner["n_slices"], inner["slice_first"]) == (4, 1) and inner["diameter_mm"] == pytest.approx(11.0, abs=0.5)
    assert inner["centroid_y"] == pytest.approx(64) and inner["mean_hu"] == pytest.approx(40.0)
    assert inner["max_probability"] > 0.99 and inner["volume_mm3"] == 4 * 81 * 2.0  # 81 pixels in a radius-5 disc
    juxta = table.loc[(table["centroid_x"] - 105).abs() < 3].iloc[0]  # the part inside the lung (x < 108)
    assert juxta["n_slices"] == 4 and 8.0 <= juxta["diameter_mm"] <= 11.5
    assert result.lung is not None and result.info["mode"] == "full" and result.info["lung_mask"]
    assert not result.mask[:, 110:, :].any()  # the bright spot outside the body is not searched
    assert set(np.unique(result.labels)) == {0, 1, 2} and result.mask.sum() == (result.labels > 0).sum()
    sliding = segmenter.segment(volume, mode="sliding", lungs=True, lung_options=options, progress=False)
    np.testing.assert_array_equal(sliding.labels > 0, result.labels > 0)
    everywhere = segmenter.segment(volume, lungs=False, progress=False)  # the body is bright too
    assert everywhere.mask.sum() > 10 * result.mask.sum()


def test_segment_crops_keep_images_apart_and_match_truth(tmp_path):
    images = np.full((3, 64, 64), -850.0, np.float32)
    truth = np.zeros((3, 64, 64), np.uint8)
    truth[0, 20:30, 20:30] = truth[1, 20:30, 20:30] = 1  # same place in two images: two nodules
    images[truth == 1] = 40.0
    table = pd.DataFrame(
        {
            "patient_id": ["p1"] * 3,
            "nodule_id": ["p1/n1", "p1/n1", "p1/n2"],
            "slice_index": [0, 1, 0],
            "pixel_spacing_mm": [0.5] * 3,
            "slice_spacing_mm": [np.nan] * 3,
            "n_readers": [1] * 3,
            "source": ["synthetic"] * 3,
        }
    )
    crops = CropSet(images, truth, table, units="HU")
    result = _bright_segmenter().segment(crops, progress=False)
    assert result.info["connect_slices"] is False and result.lung is None  # crops: no lung mask
    assert len(result.nodules) == 2 and sorted(result.nodules["image"]) == [0, 1]
    # a 10x10-pixel square: its diagonal is 9*sqrt(2) px centre to centre, 10*sqrt(2) edge to edge
    assert 9 * np.sqrt(2) * 0.5 <= result.nodules["diameter_mm"].iloc[0] <= 10 * np.sqrt(2) * 0.5
    matched = match_nodules(result, truth)
    assert matched["found"].all() and matched["dice"].min() == pytest.approx(1.0)
    summary = write_segmentation(result, tmp_path / "out", names=["a", "b", "c"], truth=truth, progress=False)
    assert summary["n_nodules"] == 2 and summary["n_overlays"] == 2
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["a.png", "b.png", "c.png"]
    assert not (tmp_path / "out" / "mask.nii.gz").exists()  # independent images are no volume
    written = pd.read_csv(tmp_path / "out" / "nodules.csv")
    assert list(written["slice_name"]) == ["a", "b"] or list(written["slice_name"]) == ["b", "a"]


def test_write_segmentation_volume_files(tmp_path):
    import SimpleITK as sitk
    from PIL import Image

    hu, spacing = _chest(n_slices=4)
    result = _bright_segmenter().segment(Volume(hu, spacing), lungs=True, lung_options={"margin_mm": 0}, progress=False)
    summary = write_segmentation(result, tmp_path, probabilities=True, progress=False)
    assert summary["n_nodules"] == len(result.nodules) == 2
    mask = np.load(tmp_path / "mask.npy")
    np.testing.assert_array_equal(mask, result.mask)
    nifti = sitk.ReadImage(str(tmp_path / "mask.nii.gz"))
    assert nifti.GetSpacing() == pytest.approx((1.0, 1.0, 2.0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(nifti), result.mask)
    png = np.asarray(Image.open(tmp_path / "masks" / "slice-0001.png"))
    np.testing.assert_array_equal(png > 0, result.mask[1] > 0)
    overlay = np.asarray(Image.open(tmp_path / "overlays" / "slice-0001.png"))
    assert overlay.shape == (128, 128, 3) and ((overlay == (0, 220, 0)).all(axis=-1)).any()
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["slice-0001.png", "slice-0002.png"]
    assert np.load(tmp_path / "probabilities.npy").dtype == np.float16


def test_save_and_load_segmenter_round_trip(tmp_path):
    segmenter = _bright_segmenter(threshold=0.4, mode="sliding")
    segmenter.save(tmp_path / "seg")
    loaded = load_segmenter(tmp_path / "seg")
    assert (loaded.window, loaded.threshold, loaded.mode) == (64, 0.4, "sliding")
    assert loaded.pipeline.get_config() == segmenter.pipeline.get_config()
    slices = np.random.default_rng(4).uniform(-1000, 100, (1, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(slices, progress=False), segmenter.predict(slices, progress=False), atol=1e-6)
    assert load_segmenter(tmp_path / "seg", threshold=0.7).threshold == 0.7
    # a bare .keras file loads too (per-image z-score when no preprocessing.json is beside it)
    segmenter.model.save(tmp_path / "bare.keras")
    assert load_segmenter(tmp_path / "bare.keras").pipeline is None


def test_load_segmenter_errors(tmp_path):
    with pytest.raises(MissingDataError):
        load_segmenter(tmp_path / "absent")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(MissingDataError, match="nodulekit train"):
        load_segmenter(tmp_path / "empty_run")
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelFileError):
        load_segmenter(tmp_path / "broken.keras")


def test_segmenter_rejects_bad_options():
    model = _pixel_model(1.0, 0.0)
    for options in ({"window": 60}, {"threshold": 1.0}, {"mode": "tiles"}, {"overlap": 1.0}):
        with pytest.raises(InvalidParameterError):
            Segmenter(model, None, **options)
    with pytest.raises(InvalidParameterError):
        Segmenter(model, None).predict(np.zeros((1, 64, 64)), mode="tiles")


@pytest.mark.realdata
def test_lung_mask_of_the_real_scan_holds_the_radiologists_nodule(lidc_scan_dir):
    from nodulekit.readers import read_any

    volume = read_any(lidc_scan_dir)  # LIDC-IDRI-0001: DICOM + XML, 50 % consensus mask
    lung = lung_mask(volume.hu, spacing=volume.spacing)
    assert lung[volume.mask > 0].all()  # the whole consensus nodule is searched
    assert 0.05 < lung.mean() < 0.2  # lungs, not the body or the air around it
    assert not lung[:, :20, :].any() and not lung[:, :, :20].any()  # outside the body
    assert not lung[:10].any()  # the lowest slices are abdomen
    _, table = measure_nodules(volume.mask, spacing=volume.spacing)
    assert len(table) == 1 and (table.loc[0, "slice_first"], table.loc[0, "slice_last"]) == (86, 93)
    assert 30.0 < table.loc[0, "diameter_mm"] < 33.0 and table.loc[0, "volume_mm3"] == pytest.approx(5428 * 2.5 * 0.703125**2)


def test_overlay_and_figure_grid():
    import matplotlib

    matplotlib.use("Agg")
    from nodulekit.plots.inference import display_scale, overlay_rgb, plot_segmentation_grid

    hu = np.full((40, 40), -850.0)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:16, 20:26] = 1
    truth = np.zeros_like(mask)
    truth[30:34, 5:9] = 1
    rgb = overlay_rgb(hu, mask, truth=truth, box_margin=2)
    assert tuple(rgb[8, 22]) == (0, 220, 0) and tuple(rgb[17, 22]) == (0, 220, 0)  # box 2 px outside the nodule
    assert tuple(rgb[10, 22]) == (255, 40, 40) and tuple(rgb[12, 22]) != (255, 40, 40)  # contour, not the inside
    assert tuple(rgb[30, 6]) == (255, 220, 0)  # ground truth in yellow
    assert display_scale(np.array([[-1350.0, 150.0]])).tolist() == [[0, 255]]  # lung window for HU
    fig = plot_segmentation_grid([hu, hu, hu], [mask, mask, np.zeros_like(mask)], truths=[truth] * 3, titles=["a", "b", "c"], columns=2)
    assert len(fig.axes) == 4 and fig.axes[0].get_title() == "a" and not fig.axes[3].axison
    with pytest.raises(InvalidParameterError):
        plot_segmentation_grid([hu], [mask, mask])
    with pytest.raises(InvalidParameterError):
        overlay_rgb(hu, mask[:5])


def test_save_overlay_writes_the_overlay_as_png(tmp_path):
    from PIL import Image

    from nodulekit.plots.inference import overlay_rgb, save_overlay

    hu = np.full((40, 40), -850.0)
    hu[10:16, 20:26] = 40.0
    mask = (hu > -500).astype(np.uint8)
    path = save_overlay(tmp_path / "slice.png", hu, mask, box_margin=2)
    assert path == tmp_path / "slice.png"
    written = np.asarray(Image.open(path))
    np.testing.assert_array_equal(written, overlay_rgb(hu, mask, box_margin=2))  # PNG is lossless
    assert tuple(written[8, 22]) == (0, 220, 0)  # the box, 2 px above the nodule
    assert [p.name for p in tmp_path.iterdir()] == ["slice.png"]  # no temporary file left
    plain = np.asarray(Image.open(save_overlay(tmp_path / "plain.png", hu)))
    assert plain.shape == (40, 40, 3) and not (plain == (0, 220, 0)).all(axis=-1).any()  # no mask: no box
    with pytest.raises(InvalidParameterError):
        save_overlay(tmp_path / "bad.png", hu, mask[:5])
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.realdata
def test_the_shipped_models_rank_lidc_0001s_nodule_first(lidc_scan_dir):
    """The whole-scan path on real CT: the shipped segmenter and per-source second stage, defaults.

    32 slices of LIDC-IDRI-0001 around its one consensus nodule (the full scan takes ~30 s); the
    second stage never saw this scan's annotations.
    """
    from nodulekit.inference import load_segmenter, match_nodules
    from nodulekit.readers import read_any

    scan = read_any(lidc_scan_dir)
    part = slice(74, 106)  # the nodule is on slices 86-93
    volume = Volume(hu=scan.hu[part], spacing=scan.spacing, mask=scan.mask[part])
    result = load_segmenter().segment(volume, progress=False)
    table = result.nodules
    assert result.info["second_stage"] and {"score", "source"} <= set(table.columns)
    assert (np.diff(table["score"].to_numpy()) <= 0).all() and (table["score"] >= result.info["min_score"]).all()
    truth = match_nodules(result, volume.mask)
    assert len(truth) == 1 and truth.loc[0, "found"] and truth.loc[0, "dice"] > 0.8
    first = int(table.iloc[0]["nodule_id"])
    assert str(first) in truth.loc[0, "matched_ids"].split() and table.iloc[0]["score"] > 0.9  # ranked first, confidently
    assert len(table) <= 10  # at the default operating point, not every candidate
    centre = table.loc[0, ["centroid_z_mm", "centroid_y_mm", "centroid_x_mm"]].to_numpy(float)
    others = table.loc[1:, ["centroid_z_mm", "centroid_y_mm", "centroid_x_mm"]].to_numpy(float)
    assert (np.linalg.norm(others - centre, axis=1) > table.loc[0, "equivalent_diameter_mm"] / 2).all()  # listed once
