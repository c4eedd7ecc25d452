"""Second stage of whole-scan detection: candidate features, the JSON classifier, ranking (nodulekit/detection.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from nodulekit.detection import (
    BALL_FEATURE_NAMES,
    CLASSIFIER_FILE,
    FEATURE_NAMES,
    INTENSITY_FREE_FEATURES,
    OUTCOMES,
    SOURCE_FEATURE_NAMES,
    BoostedClassifier,
    CandidateClassifier,
    PerSourceClassifier,
    ball_features,
    candidate_features,
    candidate_outcomes,
    load_classifier,
    rank_candidates,
)
from nodulekit.errors import InvalidParameterError, MissingDataError, ModelFileError
from nodulekit.inference import Segmenter, load_segmenter, measure_nodules
from nodulekit.patch_scorer import PatchScorer

SPACING = (1.0, 0.7, 0.7)


def _phantom():
    """A lung (-850 HU) with a 8 mm ball, a 3 mm vessel running through every slice, and a ball on the lung wall."""
    zz, yy, xx = np.mgrid[:40, :96, :96].astype(float)
    hu = np.full(zz.shape, -850.0, np.float32)
    lung = np.zeros(zz.shape, bool)
    lung[:, 8:88, 8:88] = True
    hu[~lung] = 40.0
    ball = ((zz - 20) * SPACING[0]) ** 2 + ((yy - 30) * SPACING[1]) ** 2 + ((xx - 30) * SPACING[2]) ** 2 <= 4.0**2
    vessel = ((yy - 60) * SPACING[1]) ** 2 + ((xx - 60) * SPACING[2]) ** 2 <= 1.5**2
    wall = ((zz - 20) * SPACING[0]) ** 2 + ((yy - 50) * SPACING[1]) ** 2 + ((xx - 10) * SPACING[2]) ** 2 <= 3.0**2
    mask = (ball | vessel | wall) & lung
    hu[mask] = 30.0
    probabilities = mask.astype(np.float32) * 0.95
    return hu, lung, mask, probabilities


def _candidates():
    hu, lung, mask, probabilities = _phantom()
    labels, table = measure_nodules(mask, spacing=SPACING, probabilities=probabilities, hu=hu)
    features = candidate_features(labels, table, probabilities=probabilities, hu=hu, lung=lung, spacing=SPACING)
    which = {}
    for row in table.itertuples(index=False):
        if row.n_slices == 40:
            which["vessel"] = row.nodule_id - 1
        elif row.centroid_x < 15:
            which["wall"] = row.nodule_id - 1
        else:
            which["ball"] = row.nodule_id - 1
    return labels, table, features, which


def test_features_tell_a_ball_from_a_vessel_and_the_pleura():
    _, table, features, which = _candidates()
    assert list(features.columns) == list(FEATURE_NAMES) + list(BALL_FEATURE_NAMES) and len(features) == len(table) == 3
    assert np.isfinite(features.to_numpy()).all()
    ball, vessel, wall = (features.iloc[which[k]] for k in ("ball", "vessel", "wall"))
    assert ball["hessian_blob"] > 0.5 > vessel["hessian_blob"]  # three strong curvatures against one weak
    assert vessel["z_extent_ratio"] > 5 * ball["z_extent_ratio"]
    assert vessel["log_elongation"] > ball["log_elongation"] + 1.0
    assert ball["sphericity"] > vessel["sphericity"]
    assert wall["pleura_contact"] > 0.2 and ball["pleura_contact"] == 0.0
    assert ball["lung_depth_mm"] > wall["lung_depth_mm"]
    assert ball["hu_contrast"] == pytest.approx(880.0, abs=50)


def test_ball_features_tell_a_nodule_in_air_from_a_vessel_the_pleura_calcium_and_ground_glass():
    hu, lung, _, _ = _phantom()
    _, table, features, which = _candidates()
    ball, vessel, wall = (features.iloc[which[k]] for k in ("ball", "vessel", "wall"))
    assert ball["shell_dense_fraction"] == 0.0 < vessel["shell_dense_fraction"]  # the vessel leaves its ball on both ends
    assert ball["shell_lung_fraction"] == 1.0 and wall["shell_lung_fraction"] < 0.9
    assert ball["ball_hu_max"] == 30.0 and ball["ball_ggo_fraction"] == 0.0
    centre = table.iloc[[which["ball"]]]
    hu[20, 30, 30] = 600.0  # a calcified core
    hu[hu == 30.0] = -550.0  # the rest ground glass
    again = ball_features(centre, hu=hu, lung=lung, spacing=SPACING).iloc[0]
    assert again["ball_hu_max"] == 600.0 and again["ball_ggo_fraction"] > 0.8
    blob = centre.assign(blob_radius_mm=8.0)  # a blob candidate's ball has the filter's radius: twice the nodule's, mostly air
    assert ball_features(blob, hu=hu, lung=None, spacing=SPACING).iloc[0]["ball_ggo_fraction"] < 0.2
    with pytest.raises(InvalidParameterError):
        ball_features(centre, hu=hu[0], lung=None, spacing=SPACING)
    before = _blob_classifier()  # a classifier stored before the ball features never reads them
    assert before.predict_proba(features).tolist() == before.predict_proba(features[list(FEATURE_NAMES)]).tolist()


def test_features_refuse_2d_and_unknown_spacing():
    labels, table, _, _ = _candidates()
    hu, lung, _, probabilities = _phantom()
    with pytest.raises(InvalidParameterError):
        candidate_features(labels[0], table, probabilities=probabilities[0], hu=hu[0], lung=lung[0], spacing=SPACING)
    with pytest.raises(InvalidParameterError):
        candidate_features(labels, table, probabilities=probabilities, hu=hu, lung=lung, spacing=(float("nan"), 0.7, 0.7))


def _separable(n=200, seed=0):
    rng = np.random.default_rng(seed)
    features = pd.DataFrame(rng.normal(size=(n, len(FEATURE_NAMES))), columns=list(FEATURE_NAMES))
    labels = features["hessian_blob"] - features["z_extent_ratio"] + 0.3 * rng.normal(size=n) > 0
    return features, labels.to_numpy()


def test_lung_depth_is_filled_in_float32_slice_by_slice():
    from scipy import ndimage

    from nodulekit.detection import _ScanContext

    _, lung, _, _ = _phantom()
    lung[5:9, 40:60, 40:60] = False
    depth = _ScanContext(lung, np.array(SPACING)).depth()
    expected = np.stack([ndimage.distance_transform_edt(s, sampling=SPACING[1:]) for s in lung])
    assert depth.dtype == np.float32 and np.array_equal(depth, expected.astype(np.float32))


def test_classifier_fits_predicts_and_round_trips_through_json(tmp_path):
    features, labels = _separable()
    model = CandidateClassifier.fit(features, labels, regularization=1.0, seed=0)
    scores = model.predict_proba(features)
    assert ((scores > 0.5) == labels).mean() > 0.9
    weights = dict(zip(model.feature_names, model.coefficients))
    assert weights["hessian_blob"] > 1 and weights["z_extent_ratio"] < -1
    model.threshold = 0.3
    model.save(tmp_path)
    text = (tmp_path / CLASSIFIER_FILE).read_text()
    assert json.loads(text)["kind"] == "logistic_regression"
    loaded = load_classifier(tmp_path)
    np.testing.assert_allclose(loaded.predict_proba(features), scores, rtol=1e-12)
    assert loaded.threshold == 0.3


def test_classifier_bad_files_and_inputs(tmp_path):
    with pytest.raises(MissingDataError, match="no second-stage classifier"):
        load_classifier(tmp_path)
    (tmp_path / CLASSIFIER_FILE).write_text('{"kind": "logistic_regression", "feature_names": ["log_volume_mm3"], "mean": [0], "scale": [0], "coefficients": [1], "intercept": 0}')
    with pytest.raises(ModelFileError, match=CLASSIFIER_FILE):
        load_classifier(tmp_path)
    (tmp_path / CLASSIFIER_FILE).write_text("[1, 2")
    with pytest.raises(ModelFileError):
        load_classifier(tmp_path)
    features, labels = _separable()
    with pytest.raises(InvalidParameterError, match="both classes"):
        CandidateClassifier.fit(features, np.zeros(len(features), bool))
    model = CandidateClassifier.fit(features, labels)
    with pytest.raises(InvalidParameterError, match="lack"):
        model.predict_proba(features.drop(columns="hu_mean"))


def test_rank_candidates_sorts_filters_and_relabels():
    labels, table, _, _ = _candidates()
    scores = np.array([0.2, 0.9, 0.6])
    new, ranked = rank_candidates(labels, table, scores)
    assert ranked["score"].tolist() == [0.9, 0.6, 0.2] and ranked["nodule_id"].tolist() == [1, 2, 3]
    for row in ranked.itertuples(index=False):  # the voxels follow their candidate
        assert int((new == row.nodule_id).sum()) == int(row.voxels)
    new, ranked = rank_candidates(labels, table, scores, min_score=0.5, max_nodules=1)
    assert len(ranked) == 1 and set(np.unique(new)) == {0, 1} and int((new == 1).sum()) == int(table.loc[1, "voxels"])
    with pytest.raises(InvalidParameterError):
        rank_candidates(labels, table, scores[:2])
    with pytest.raises(InvalidParameterError):
        rank_candidates(labels, table, scores, min_score=1.5)


def _threshold_model(batch):
    """Stands in for a network: 'nodule' where the locally z-scored input is bright."""
    return (np.asarray(batch) > 1.0).astype(np.float32)


def _blob_classifier(threshold=0.0):
    """Scores by Hessian blobness only: a ball high, a vessel low."""
    count = len(FEATURE_NAMES)
    coefficients = np.zeros(count)
    coefficients[FEATURE_NAMES.index("hessian_blob")] = 8.0
    return CandidateClassifier(FEATURE_NAMES, mean=np.zeros(count), scale=np.ones(count), coefficients=coefficients, intercept=-4.0, threshold=threshold)


def test_segment_ranks_with_the_second_stage_and_filters_at_its_operating_point():
    hu, _, _, _ = _phantom()
    segmenter = Segmenter(_threshold_model, None, window=32, classifier=_blob_classifier())
    result = segmenter.segment(hu, spacing=SPACING, units="HU", lungs=False, progress=False)
    table = result.nodules
    assert "score" in table and list(table["score"]) == sorted(table["score"], reverse=True) and len(table) >= 2
    assert table.iloc[0]["n_slices"] < 40 <= table["n_slices"].max()  # a ball first, the vessel below it
    assert result.info["second_stage"] and result.info["candidates"] == len(table)
    strict = Segmenter(_threshold_model, None, window=32, classifier=_blob_classifier(threshold=0.5))
    kept = strict.segment(hu, spacing=SPACING, units="HU", lungs=False, progress=False)
    assert (kept.nodules["score"] >= 0.5).all() and len(kept.nodules) < len(table)
    assert set(np.unique(kept.labels)) == {0, *kept.nodules["nodule_id"]}
    everything = strict.segment(hu, spacing=SPACING, units="HU", lungs=False, progress=False, min_score=0.0, max_nodules=2)
    assert len(everything.nodules) == 2


def test_segment_without_second_stage_warns_and_refuses_min_score(caplog):
    hu, _, _, _ = _phantom()
    segmenter = Segmenter(_threshold_model, None, window=32)
    with caplog.at_level("WARNING", logger="nodulekit.inference"):
        result = segmenter.segment(hu, spacing=SPACING, units="HU", lungs=False, progress=False, max_nodules=1)
    assert "no second-stage classifier" in caplog.text
    assert "score" not in result.nodules and len(result.nodules) == 1 and set(np.unique(result.labels)) == {0, 1}
    with pytest.raises(InvalidParameterError, match="second-stage"):
        segmenter.segment(hu, spacing=SPACING, units="HU", lungs=False, progress=False, min_score=0.5)


def test_segmenter_folder_saves_and_loads_its_second_stage(tmp_path):
    from nodulekit.models import build_unet

    segmenter = Segmenter(build_unet((32, 32, 1), filters=(4, 8, 16, 32, 64)), None, window=32, classifier=_blob_classifier(0.25))
    segmenter.save(tmp_path / "with")
    loaded = load_segmenter(tmp_path / "with")
    assert loaded.classifier is not None and loaded.classifier.threshold == 0.25
    segmenter.classifier = None
    segmenter.save(tmp_path / "with")  # saved again without: the stale classifier.json goes
    assert not (tmp_path / "with" / CLASSIFIER_FILE).exists() and load_segmenter(tmp_path / "with").classifier is None


def test_the_shipped_stage_was_trained_on_the_candidates_blob_candidates_makes_now():
    """The shipped numbers (README "Whole scans", candidates at ten radii, ball features, 240 training scans) and the blob settings they hold for."""
    from nodulekit.detection import BLOB_RADII_MM
    from nodulekit.pretrained import PRETRAINED_DIR

    metadata = load_classifier(PRETRAINED_DIR / "lidc_attention_unet").metadata
    assert f"radii {list(BLOB_RADII_MM)} mm" in metadata["candidates"]  # retrain and ship again after changing the blob defaults
    assert BLOB_RADII_MM == (1.5, 2.0, 2.5, 3.2, 4.0, 5.0, 6.5, 8.0, 10.0, 15.0)
    assert metadata["held_out"]["cpm"] == pytest.approx(0.8579, abs=1e-4) and metadata["held_out"]["scans"].startswith("50 synthetic scans")
    assert metadata["held_out"]["trees_alone_cpm"] == pytest.approx(0.8345, abs=1e-4)
    assert metadata["validation_cpm"] == pytest.approx(0.8126, abs=1e-4) and metadata["n_scans"] == 240
    assert metadata["patch_scorer"]["cv_cpm"] == pytest.approx(0.8666, abs=1e-4) and metadata["patch_scorer"]["cv_cpm_trees_alone"] == pytest.approx(0.8126, abs=1e-4)
    assert metadata["operating_point"]["threshold"] == pytest.approx(0.1389, abs=1e-4) and "calibration scans" in metadata["operating_point"]["chosen_on"]
    assert metadata["settings"] == {"learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": 16, "min_samples_leaf": 20}
    assert set(BALL_FEATURE_NAMES) <= set(metadata["features"])  # retrain and ship again after changing ball_features


def test_shipped_segmenter_carries_its_second_stage_and_ranks_a_synthetic_scan():
    from nodulekit.phantom import generate_volume
    from nodulekit.pretrained import PRETRAINED_DIR

    folder = PRETRAINED_DIR / "lidc_attention_unet"
    classifier = load_classifier(folder)
    assert isinstance(classifier, PerSourceClassifier) and 0 < classifier.threshold < 1
    for source in classifier.classifiers.values():
        assert set(source.feature_names) <= set(FEATURE_NAMES) | set(BALL_FEATURE_NAMES) | set(SOURCE_FEATURE_NAMES)
        assert isinstance(source, BoostedClassifier) and source.calibration != (1.0, 0.0)  # boosted trees with their Platt step
    assert classifier.metadata["operating_point"]["target_fp_per_scan"] > 0
    assert "scans" in classifier.metadata["operating_point"]["chosen_on"] and "held-out" not in classifier.metadata["operating_point"]["chosen_on"].replace("not the held-out", "")
    assert classifier.metadata["platt"]["used"] and "training scans" in classifier.metadata["settings_chosen_by"]
    assert classifier.patch_fusion["weight"] == 0.5 and classifier.patch_scorer is None  # the JSON alone; load_segmenter reads the CNN
    segmenter = load_segmenter(folder)
    assert segmenter.classifier is not None and isinstance(segmenter.classifier.patch_scorer, PatchScorer)
    volume = generate_volume(n_slices=8, n_nodules=2, seed=1, readers=0)
    result = segmenter.segment(volume, min_score=0.0, progress=False)
    table = result.nodules
    assert result.info["second_stage"] and len(table) == result.info["candidates"] >= 1 and "blob_s" in result.info
    assert set(table["source"]) <= {"segmenter", "blob"}
    assert table["score"].between(0, 1).all() and table["score"].is_monotonic_decreasing
    default = segmenter.segment(volume, progress=False)  # the operating point keeps the top of the same list
    assert default.nodules["score"].tolist() == [s for s in table["score"] if s >= classifier.threshold]


def test_cli_segment_lists_ranked_nodules_with_min_score_and_max_nodules(tmp_path):
    import SimpleITK as sitk

    from nodulekit.cli import EXIT_OK, main
    from nodulekit.phantom import generate_volume

    volume = generate_volume(n_slices=8, n_nodules=3, seed=3, readers=0)
    image = sitk.GetImageFromArray(volume.hu.astype(np.int16))
    image.SetSpacing(tuple(float(s) for s in volume.spacing[::-1]))
    scan = tmp_path / "scan.nii.gz"
    sitk.WriteImage(image, str(scan))
    out = tmp_path / "out"
    argv = ["segment", str(scan), "--model", "pretrained", "--out", str(out), "--min-score", "0", "--max-nodules", "2", "--no-progress"]
    assert main(argv) == EXIT_OK
    table = pd.read_csv(out / "nodules.csv")
    assert 1 <= len(table) <= 2 and table["score"].is_monotonic_decreasing and table["nodule_id"].tolist() == list(range(1, len(table) + 1))
    assert main(["segment", str(scan), "--model", "pretrained", "--out", str(tmp_path / "bad"), "--min-score", "2", "--no-progress"]) != EXIT_OK


# --------------------------------------------------------------------------------------------------
# Display-scaled crop stacks (experiments/detection_stacks.py)
# --------------------------------------------------------------------------------------------------


def test_intensity_free_features_ignore_an_intensity_scale_and_hu_features_do_not():
    """The LIDC PNGs are min-max scaled per crop: the features kept for them must not see the scale.

    A multiplicative scale leaves them unchanged; an offset moves the Hessian ratios a little (the
    Hessian's Gaussian filter pads the crop with zeros), by under 0.05 here.
    """
    hu, _, mask, probabilities = _phantom()
    labels, table = measure_nodules(mask, spacing=SPACING, probabilities=probabilities)
    display = (hu + 850.0) / 890.0 * 200.0  # lung 0, tissue ~198: an 8-bit-like range
    first, scaled, shifted = (
        candidate_features(labels, table, probabilities=probabilities, hu=image, lung=None, spacing=SPACING)
        for image in (display, 0.5 * display, display + 20.0)
    )
    free = list(INTENSITY_FREE_FEATURES)
    assert set(free) < set(FEATURE_NAMES) and not {"hu_mean", "hessian_strength", "pleura_contact"} & set(free)
    np.testing.assert_allclose(first[free], scaled[free], rtol=1e-4, atol=1e-6)
    hessian = ["hessian_blob", "hessian_plate"]
    np.testing.assert_allclose(first[free].drop(columns=hessian), shifted[free].drop(columns=hessian), rtol=1e-6)
    np.testing.assert_allclose(first[hessian], shifted[hessian], atol=0.05)
    assert not np.allclose(first["hu_mean"], scaled["hu_mean"]) and not np.allclose(first["hessian_strength"], scaled["hessian_strength"])
    assert (first[["lung_depth_mm", "pleura_contact", "medial_position"]] == 0).all().all()  # no lung mask: no position


def test_candidate_outcomes_on_mark_clear_of_marks_and_partly_on_one():
    """A hand-made stack: a ball on the readers' mark, a vessel clear of it, a vessel running into it."""
    zz, yy, xx = np.mgrid[:6, :40, :40]
    ball = (zz - 3) ** 2 + (yy - 10) ** 2 + (xx - 10) ** 2 <= 9
    clear = (np.abs(yy - 30) <= 1) & (np.abs(xx - 30) <= 1)  # runs through every slice
    into = (np.abs(yy - 10) <= 1) & (xx >= 22) & (xx <= 36) & (zz == 3)  # touches the mark at its left end
    marks = ball | ((np.abs(yy - 10) <= 1) & (xx >= 22) & (xx <= 23) & (zz == 3))
    labels, table = measure_nodules(ball | clear | into, spacing=(2.5, 0.7, 0.7))
    outcomes = candidate_outcomes(labels, table, marks)
    by_place = {(round(r.centroid_y), round(r.centroid_x)): o for r, o in zip(table.itertuples(), outcomes)}
    assert by_place == {(10, 10): "positive", (30, 30): "negative", (10, 29): "partial"}
    assert set(outcomes) <= set(OUTCOMES)
    assert candidate_outcomes(labels, table.iloc[:0], marks).tolist() == []
    with pytest.raises(InvalidParameterError, match="one shape"):
        candidate_outcomes(labels, table, marks[:, :20])
    with pytest.raises(InvalidParameterError, match="no voxel"):
        candidate_outcomes(labels, table.assign(nodule_id=table["nodule_id"] + 10), marks)


@pytest.mark.realdata
def test_shipped_segmenter_on_the_first_real_crop_stack_finds_one_candidate_on_the_nodule(lidc_slices_dir):
    """LIDC-IDRI-0001's nine crops as a stack, as experiments/detection_stacks.py runs them."""
    from nodulekit.readers import read_lidc_release

    crops = read_lidc_release(lidc_slices_dir, patients=["LIDC-IDRI-0001"], consensus="union", progress=False)
    order = np.argsort(crops.table["slice_index"].to_numpy())
    images, marks = crops.images[order], crops.reader_masks[order].any(axis=1)
    segmenter = load_segmenter("pretrained")
    result = segmenter.segment(images, spacing=(2.5, 0.7, 0.7), units="uint8", connect_slices=True, lungs=False, progress=False)
    outcomes = candidate_outcomes(result.labels, result.nodules, marks)
    assert (outcomes == "positive").sum() == 1 and len(outcomes) >= 2  # the nodule, and vessels around it
    nodule = result.nodules.iloc[int(np.flatnonzero(outcomes == "positive")[0])]
    assert nodule["max_probability"] > 0.9 and nodule["diameter_mm"] > 10
    features = candidate_features(result.labels, result.nodules, probabilities=result.probabilities, hu=images, lung=None, spacing=(2.5, 0.7, 0.7))
    assert np.isfinite(features[list(INTENSITY_FREE_FEATURES)].to_numpy()).all()
