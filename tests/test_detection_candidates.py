"""The model-free candidate source of whole-scan detection: blob filter, merge, source features (nodulekit/detection.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nodulekit.detection import (
    BLOB_COLUMNS,
    FEATURE_NAMES,
    SOURCE_FEATURE_NAMES,
    CandidateClassifier,
    blob_candidates,
    blob_peaks,
    faint_blob_candidates,
    merge_candidates,
    rank_candidates,
    source_features,
)
from nodulekit.errors import NodulekitError

SPACING = (1.0, 1.0, 1.0)


def _lung(shape=(32, 64, 64)):
    """Lung parenchyma (-850 HU, a little noise) filling the volume, and its mask."""
    rng = np.random.default_rng(0)
    hu = (-850.0 + rng.normal(0.0, 10.0, shape)).astype(np.float32)
    return hu, np.ones(shape, bool)


def _ball(shape, centre, radius_mm):
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in shape)]
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius_mm**2


def test_a_solid_and_a_ground_glass_ball_are_candidates():
    hu, lung = _lung()
    solid, glass = _ball(hu.shape, (16, 20, 20), 4.0), _ball(hu.shape, (16, 44, 44), 5.0)
    hu[solid], hu[glass] = 30.0, -600.0
    labels, table = blob_candidates(hu, lung, SPACING)
    assert list(table.columns) == list(BLOB_COLUMNS) and len(table) >= 2
    assert labels.shape == hu.shape and set(np.unique(labels)) == {0, *table["nodule_id"]}
    centres = table[["centroid_z", "centroid_y", "centroid_x"]].to_numpy()
    for centre in ((16, 20, 20), (16, 44, 44)):
        assert np.linalg.norm(centres - centre, axis=1).min() <= 2.0
    assert np.linalg.norm(centres[0] - (16, 20, 20)) <= 2.0  # the solid ball responds most
    assert (table["source"] == "blob").all() and (table["blob_strength"] > 0).all()


def test_blob_peaks_are_the_candidates_centres_and_without_a_cap_every_peak():
    hu, lung = _lung()
    hu[_ball(hu.shape, (16, 20, 20), 4.0)], hu[_ball(hu.shape, (16, 44, 44), 5.0)] = 30.0, -600.0
    _, table = blob_candidates(hu, lung, SPACING)
    kept = blob_peaks(hu, lung, SPACING)
    assert kept.shape == (len(table), 5)
    assert np.allclose(kept[:, :3], table[["centroid_z", "centroid_y", "centroid_x"]].to_numpy())
    assert np.allclose(kept[:, 3:], table[["blob_radius_mm", "blob_strength"]].to_numpy())
    every = blob_peaks(hu, lung, SPACING, max_candidates=None)  # no one-per-place suppression
    assert len(every) >= len(kept) and (np.diff(every[:, 4]) <= 0).all() and every[0, 4] == kept[0, 4]
    assert blob_peaks(hu, np.zeros_like(lung), SPACING).shape == (0, 5)
    with pytest.raises(NodulekitError, match="blob_peaks takes the options of blob_candidates"):
        blob_peaks(hu, lung, SPACING, radius_mm=3.0)


def test_the_faint_pass_adds_a_ground_glass_ball_the_capped_first_pass_left_out():
    hu, lung = _lung()
    hu[_ball(hu.shape, (16, 20, 20), 4.0)], hu[_ball(hu.shape, (16, 44, 44), 4.0)] = 30.0, -650.0
    first_labels, first = blob_candidates(hu, lung, SPACING, max_candidates=1)
    labels, table = faint_blob_candidates(hu, lung, SPACING, max_candidates=1, faint={"hu_ceiling": -300.0, "max_candidates": 1})
    assert list(table.columns) == [*BLOB_COLUMNS, "blob_pass"] and table["blob_pass"].tolist() == [1, 2]
    pd.testing.assert_frame_equal(table.iloc[:1, :-1], first)  # the first pass is blob_candidates unchanged
    assert np.array_equal(labels == 1, first_labels == 1)
    centres = table[["centroid_z", "centroid_y", "centroid_x"]].to_numpy()
    assert np.linalg.norm(centres[0] - (16, 20, 20)) <= 2.0 and np.linalg.norm(centres[1] - (16, 44, 44)) <= 2.0  # not the solid ball again
    assert set(np.unique(labels)) == {0, 1, 2}
    with pytest.raises(NodulekitError, match="faint_blob_candidates takes the options of blob_candidates"):
        faint_blob_candidates(hu, lung, SPACING, faint={"radius_mm": 3.0})


def test_a_long_vessel_is_not_a_candidate():
    hu, lung = _lung()
    zz, yy, xx = np.ogrid[:32, :64, :64]
    hu[np.broadcast_to((yy - 32) ** 2 + (xx - 32) ** 2 <= 2.0**2, hu.shape)] = 40.0  # a 4 mm tube through every slice
    _, table = blob_candidates(hu, lung, SPACING)
    on_tube = np.hypot(table["centroid_y"] - 32, table["centroid_x"] - 32) <= 3.0
    assert not on_tube.any()


def test_nothing_outside_the_lungs():
    hu, lung = _lung()
    hu[_ball(hu.shape, (16, 32, 32), 4.0)] = 30.0
    labels, table = blob_candidates(hu, np.zeros_like(lung), SPACING)
    assert len(table) == 0 and not labels.any()


def test_a_thin_stack_is_searched_without_error():
    hu, lung = _lung((2, 48, 48))
    hu[:, 20:26, 20:26] = 30.0
    labels, table = blob_candidates(hu, lung, (2.5, 0.7, 0.7))
    assert labels.shape == hu.shape and list(table.columns) == list(BLOB_COLUMNS)


def test_merge_keeps_each_nodule_once():
    hu, lung = _lung()
    found, missed = _ball(hu.shape, (16, 20, 20), 4.0), _ball(hu.shape, (16, 44, 44), 4.0)
    hu[found | missed] = 30.0
    blob_labels, blob_table = blob_candidates(hu, lung, SPACING)
    segmenter_labels = found.astype(np.int32)  # the segmenter found one of the two balls
    segmenter_table = pd.DataFrame({"nodule_id": [1], "centroid_z": [16.0], "centroid_y": [20.0], "centroid_x": [20.0]})
    labels, table = merge_candidates(segmenter_labels, segmenter_table, blob_labels, blob_table, spacing=SPACING)
    centres = table[["centroid_z", "centroid_y", "centroid_x"]].to_numpy()
    near_found = np.linalg.norm(centres - (16, 20, 20), axis=1) <= 4.0
    assert near_found.sum() == 1 and table.loc[near_found, "source"].tolist() == ["segmenter"]
    assert (table.loc[np.linalg.norm(centres - (16, 44, 44), axis=1) <= 4.0, "source"] == "blob").any()
    assert table["nodule_id"].tolist() == list(range(1, len(table) + 1))
    assert set(np.unique(labels)) == {0, *table["nodule_id"]}
    assert not (labels[found] > 1).any()  # no blob voxel on the segmenter's component
    overlapping = set(np.unique(blob_labels[found])) - {0}
    assert len(table) == 1 + len(blob_table) - len(overlapping)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_and_rank_label_voxels_as_the_whole_volume_formulas(seed):
    """The labelled-voxels-only writes of merge_candidates and rank_candidates give what the plain
    whole-volume formulas give: np.where(segmenter > 0, segmenter, lookup[blob]) and lookup[labels]."""
    rng = np.random.default_rng(seed)
    shape = (12, 40, 40)
    segmenter_labels, blob_labels = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    for labels, count in ((segmenter_labels, 5), (blob_labels, 7)):
        for i in range(1, count + 1):
            z, y, x = rng.integers(2, 10), rng.integers(4, 36), rng.integers(4, 36)
            labels[z - 2 : z + 2, y - 3 : y + 3, x - 3 : x + 3] = i  # boxes that overlap each other and the other source

    def table(labels, count, **extra):
        centres = np.array([np.argwhere(labels == i).mean(axis=0) if (labels == i).any() else (0.0, 0.0, 0.0) for i in range(1, count + 1)])
        return pd.DataFrame({"nodule_id": np.arange(1, count + 1), "centroid_z": centres[:, 0], "centroid_y": centres[:, 1], "centroid_x": centres[:, 2], **extra})
    segmenter_table = table(segmenter_labels, 5)
    blob_table = table(blob_labels, 7, blob_strength=rng.uniform(10, 50, 7), blob_radius_mm=rng.uniform(1, 6, 7))
    merged, merged_table = merge_candidates(segmenter_labels, segmenter_table, blob_labels, blob_table, spacing=(1.0, 1.0, 1.0))
    kept = merged_table[merged_table["source"] == "blob"]
    lookup = np.zeros(8, np.int32)
    original = kept.drop(columns="nodule_id").merge(blob_table, on=["centroid_z", "centroid_y", "centroid_x", "blob_strength"])  # each kept blob's id in blob_table
    assert len(original) == len(kept) > 0
    lookup[original["nodule_id"].to_numpy(int)] = kept["nodule_id"].to_numpy(int)
    np.testing.assert_array_equal(merged, np.where(segmenter_labels > 0, segmenter_labels, lookup[blob_labels]))
    scores = rng.uniform(0, 1, len(merged_table))
    relabelled, ranked = rank_candidates(merged, merged_table, scores, min_score=0.3)
    order = np.zeros(len(merged_table) + 1, np.int32)
    kept_ids = merged_table["nodule_id"].to_numpy(int)[np.argsort(-scores, kind="stable")][np.sort(scores)[::-1] >= 0.3]
    order[kept_ids] = np.arange(1, len(kept_ids) + 1)
    np.testing.assert_array_equal(relabelled, order[merged])
    assert len(ranked) == len(kept_ids)


def test_source_features_and_a_union_classifier():
    table = pd.DataFrame({"source": ["segmenter", "blob"], "blob_strength": [0.0, np.e - 1.0]})
    features = source_features(table)
    assert list(features.columns) == list(SOURCE_FEATURE_NAMES)
    assert features["from_blob"].tolist() == [0.0, 1.0] and features["log_blob_strength"].round(6).tolist() == [0.0, 1.0]
    assert source_features(pd.DataFrame({"nodule_id": [1]})).to_numpy().tolist() == [[0.0, 0.0]]
    names = list(FEATURE_NAMES) + list(SOURCE_FEATURE_NAMES)
    count = len(names)
    model = CandidateClassifier(names, mean=np.zeros(count), scale=np.ones(count), coefficients=np.zeros(count), intercept=0.0)
    assert CandidateClassifier.from_config(model.to_config()).feature_names == names


def _empty():
    return pd.DataFrame({"nodule_id": [], "centroid_z": [], "centroid_y": [], "centroid_x": []})


@pytest.mark.parametrize(
    "call",
    [
        lambda hu, lung: blob_candidates(hu[0], lung[0], SPACING),
        lambda hu, lung: blob_candidates(hu, lung[:-1], SPACING),
        lambda hu, lung: blob_candidates(hu, lung, (1.0, 1.0)),
        lambda hu, lung: blob_candidates(hu, lung, (float("nan"), 1.0, 1.0)),
        lambda hu, lung: blob_candidates(hu, lung, SPACING, radii_mm=()),
        lambda hu, lung: blob_candidates(hu, lung, SPACING, max_candidates=0),
        lambda hu, lung: merge_candidates(np.zeros((2, 4, 4), int), _empty(), np.zeros((2, 4, 5), int), _empty(), spacing=SPACING),
        lambda hu, lung: merge_candidates(np.zeros((2, 4, 4), int), _empty(), np.zeros((2, 4, 4), int), _empty(), spacing=(1.0, 1.0)),
    ],
)
def test_bad_input_is_a_named_error(call):
    hu, lung = _lung((8, 16, 16))
    with pytest.raises(NodulekitError):
        call(hu, lung)


# --------------------------------------------------------------------------------------------------
# The per-source second stage: classifier file and the union in Segmenter.segment
# --------------------------------------------------------------------------------------------------


def _constant(intercept: float, names=FEATURE_NAMES + SOURCE_FEATURE_NAMES) -> CandidateClassifier:
    count = len(names)
    return CandidateClassifier(names, mean=np.zeros(count), scale=np.ones(count), coefficients=np.zeros(count), intercept=intercept)


def _per_source(threshold: float = 0.0):
    from nodulekit.detection import PerSourceClassifier

    return PerSourceClassifier({"segmenter": _constant(-2.0), "blob": _constant(2.0)}, threshold=threshold)


def _bright_model(batch):
    """Stands in for a network: 'nodule' where the locally z-scored input is bright."""
    return (np.asarray(batch) > 1.0).astype(np.float32)


def test_per_source_classifier_round_trips_and_scores_by_source(tmp_path):
    from nodulekit.detection import PerSourceClassifier, load_classifier

    model = _per_source(threshold=0.4)
    model.save(tmp_path)
    loaded = load_classifier(tmp_path)
    assert isinstance(loaded, PerSourceClassifier) and loaded.threshold == 0.4
    frame = pd.DataFrame(np.zeros((3, len(FEATURE_NAMES) + 2)), columns=list(FEATURE_NAMES + SOURCE_FEATURE_NAMES)).assign(source=["segmenter", "blob", "segmenter"])
    assert loaded.predict_proba(frame).round(3).tolist() == [0.119, 0.881, 0.119]
    with pytest.raises(NodulekitError, match="unknown candidate source"):
        loaded.predict_proba(frame.assign(source="other"))


def test_per_source_blob_options_round_trip_and_choose_the_blob_filter(tmp_path):
    from nodulekit.detection import PerSourceClassifier, load_classifier

    assert "blob_options" not in _per_source().to_config()  # the shipped form is unchanged
    faint = {"faint": {"hu_ceiling": -300.0, "max_candidates": 1}, "max_candidates": 1}
    model = PerSourceClassifier(_per_source().classifiers, threshold=0.2, blob_options=faint)
    model.save(tmp_path)
    loaded = load_classifier(tmp_path)
    assert loaded.blob_options == faint
    hu, lung = _lung()
    hu[_ball(hu.shape, (16, 20, 20), 4.0)], hu[_ball(hu.shape, (16, 44, 44), 4.0)] = 30.0, -650.0
    _, table = loaded.blob_candidates(hu, lung, SPACING)
    _, expected = faint_blob_candidates(hu, lung, SPACING, **faint)
    pd.testing.assert_frame_equal(table, expected)
    _, default = _per_source().blob_candidates(hu, lung, SPACING)
    pd.testing.assert_frame_equal(default, blob_candidates(hu, lung, SPACING)[1])
    with pytest.raises(NodulekitError, match="takes the options of blob_candidates"):
        PerSourceClassifier(_per_source().classifiers, blob_options={"faint": {"radius_mm": 3.0}})


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c["classifiers"].pop("blob"),
        lambda c: c.update(version=99),
        lambda c: c["classifiers"]["blob"].pop("coefficients"),
        lambda c: c.update(classifiers=["segmenter", "blob"]),
        lambda c: c.update(threshold=3.0),
    ],
    ids=["no blob", "version", "no coefficients", "not a dict", "threshold"],
)
def test_a_malformed_per_source_file_is_a_named_error(tmp_path, edit):
    import json

    from nodulekit.detection import load_classifier
    from nodulekit.errors import ModelFileError

    config = _per_source().to_config()
    edit(config)
    (tmp_path / "classifier.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="classifier.json") as error:
        load_classifier(tmp_path)
    assert "not a valid candidate classifier" in str(error.value)


def test_measure_labels_measures_as_measure_nodules_does():
    from nodulekit.inference import measure_labels, measure_nodules

    hu, lung = _lung()
    balls = _ball(hu.shape, (16, 20, 20), 4.0) | _ball(hu.shape, (10, 44, 40), 3.0)
    hu[balls] = 30.0
    probabilities = balls * np.float32(0.8)
    labels, table = measure_nodules(balls, spacing=(2.0, 0.7, 0.7), probabilities=probabilities, hu=hu)
    measured = measure_labels(labels, table["nodule_id"][::-1], spacing=(2.0, 0.7, 0.7), probabilities=probabilities, hu=hu)
    pd.testing.assert_frame_equal(measured, table[::-1].reset_index(drop=True))
    with pytest.raises(NodulekitError, match="no voxel"):
        measure_labels(labels, [7], spacing=(2.0, 0.7, 0.7))


def _synthetic_scan():
    from nodulekit.phantom import generate_volume

    return generate_volume(n_slices=16, n_nodules=3, seed=5, readers=0)


def test_segment_with_a_per_source_stage_lists_blob_candidates_consistently(tmp_path):
    from nodulekit.inference import Segmenter, write_segmentation

    volume = _synthetic_scan()
    segmenter = Segmenter(_bright_model, None, window=32, classifier=_per_source())
    result = segmenter.segment(volume, lungs=True, progress=False)
    table, labels = result.nodules, result.labels
    assert result.info["second_stage"] and result.info["candidate_sources"] == ["segmenter", "blob"]
    assert result.info["blob_s"] >= 0 and result.info["blob_candidates"] >= 1 and result.info["candidates"] == len(table)
    assert "blob" in set(table["source"]) and set(table["source"]) <= {"segmenter", "blob"}
    assert table["score"].is_monotonic_decreasing and table["nodule_id"].tolist() == list(range(1, len(table) + 1))
    blob = table["source"].eq("blob").to_numpy()
    assert table.loc[blob, "score"].min() > table.loc[~blob, "score"].max()  # the blob classifier scores higher
    assert set(np.unique(labels)) == {0, *table["nodule_id"]} and np.array_equal(result.mask, (labels > 0).astype(np.uint8))
    voxels = np.bincount(labels.ravel(), minlength=len(table) + 1)[1:]
    assert voxels.tolist() == table["voxels"].tolist() and not table.drop(columns=["source"]).isna().any().any()
    assert (~result.lung[labels > 0]).mean() < 0.5  # blob balls lie in (or just beside) the lungs
    top = segmenter.segment(volume, lungs=True, progress=False, max_nodules=2, min_score=0.5)
    assert len(top.nodules) <= 2 and (top.nodules["source"] == "blob").all()
    write_segmentation(result, tmp_path, overlays="none", progress=False)
    written = pd.read_csv(tmp_path / "nodules.csv")
    assert written["source"].tolist() == table["source"].tolist()
    assert np.array_equal(np.load(tmp_path / "labels.npy"), labels)


def test_segment_with_one_classifier_keeps_the_segmenter_candidates_only():
    from nodulekit.detection import candidate_features, rank_candidates
    from nodulekit.inference import Segmenter

    volume = _synthetic_scan()
    result = Segmenter(_bright_model, None, window=32, classifier=_constant(0.0, FEATURE_NAMES)).segment(volume, lungs=True, progress=False)
    assert "source" not in result.nodules and "blob_s" not in result.info and result.info["candidate_sources"] == ["segmenter"]
    plain = Segmenter(_bright_model, None, window=32).segment(volume, lungs=True, progress=False)
    features = candidate_features(plain.labels, plain.nodules, probabilities=plain.probabilities, hu=plain.images, lung=plain.lung, spacing=plain.spacing)
    labels, table = rank_candidates(plain.labels, plain.nodules, np.full(len(features), 0.5), min_score=0.0)
    assert np.array_equal(labels, result.labels)
    pd.testing.assert_frame_equal(table, result.nodules)


def test_segment_with_a_per_source_stage_and_no_lung_mask_scores_the_segmenter_candidates():
    from nodulekit.inference import Segmenter

    volume = _synthetic_scan()
    result = Segmenter(_bright_model, None, window=32, classifier=_per_source()).segment(volume, lungs=False, progress=False)
    assert result.info["second_stage"] and "blob_s" not in result.info
    assert (result.nodules["source"] == "segmenter").all() and np.allclose(result.nodules["score"], 1 / (1 + np.exp(2.0)))


def test_a_blob_on_a_better_segmenter_candidate_is_not_listed_twice():
    from nodulekit.inference.candidates import _drop_shadowed_blobs

    labels = np.zeros((20, 40, 40), np.int32)
    z, y, x = np.ogrid[:20, :40, :40]
    labels[(z - 10) ** 2 + (y - 10) ** 2 + (x - 10) ** 2 <= 36] = 1  # a round nodule, radius 6 voxels
    labels[8:12, 30:32, 2:38] = 2  # a long vessel component, centred at x = 19.5
    merged = pd.DataFrame(
        {
            "nodule_id": [1, 2, 3, 4],
            "source": ["segmenter", "segmenter", "blob", "blob"],
            "centroid_z": [10.0, 9.5, 10.0, 10.0],
            "centroid_y": [10.0, 30.5, 14.0, 30.0],
            "centroid_x": [10.0, 19.5, 12.0, 4.0],  # blob 3 on the nodule's rim, blob 4 at the vessel's end
            "equivalent_diameter_mm": [12.0, 4.0, 2.0, 2.0],
        }
    )
    scores = _drop_shadowed_blobs(labels, merged, np.array([0.9, 0.95, 0.8, 0.7]), (1.0, 1.0, 1.0))
    assert scores.tolist() == [0.9, 0.95, -1.0, 0.7]  # the rim blob is the nodule again; the far end of a better vessel is not
    scores = _drop_shadowed_blobs(labels, merged, np.array([0.5, 0.2, 0.8, 0.7]), (1.0, 1.0, 1.0))
    assert scores.tolist() == [0.5, 0.2, 0.8, 0.7]  # a blob scoring higher than the component stays
