"""The whole-scan candidates' 3-D patch scorer and its fusion with the trees (nodulekit/patch_scorer.py, issue 18)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from nodulekit.detection import CLASSIFIER_FILE, FEATURE_NAMES, BoostedClassifier, CandidateClassifier, PerSourceClassifier, load_classifier
from nodulekit.errors import DataFormatError, InvalidParameterError, MissingDataError, ModelFileError
from nodulekit.patch_scorer import PATCH_SCORER_FILE, PATCH_SHAPE, PatchScorer, build_patch_network, candidate_patches
from nodulekit.training.augment import augment_patches
from nodulekit.training.patch_scorer import fit_patch_scorer

NAMES = list(FEATURE_NAMES[:2])


def _ball_scan(spacing, centre_mm=(20.0, 20.0, 20.0), radius_mm=4.0, shape_mm=(40.0, 40.0, 40.0)):
    """A 40 mm cube of air with a soft-tissue ball (40 HU), sampled at ``spacing``; the ball's centre in voxels."""
    shape = tuple(int(round(s / d)) for s, d in zip(shape_mm, spacing))
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * d for n, d in zip(shape, spacing)], indexing="ij")
    inside = sum((g - c) ** 2 for g, c in zip(grids, centre_mm)) <= radius_mm**2
    hu = np.where(inside, 40.0, -1000.0).astype(np.float32)
    centre = np.array([c / d - 0.5 for c, d in zip(centre_mm, spacing)])
    return hu, inside.astype(np.float32), centre


def test_a_patch_is_sampled_in_millimetres_so_voxel_size_does_not_change_it():
    thick, thin = (2.5, 0.7, 0.7), (1.0, 0.5, 0.5)
    patches = [candidate_patches(hu, p, centre[None], spacing)[0] for hu, p, centre, spacing in (_ball_scan(s) + (s,) for s in (thick, thin))]
    assert patches[0].shape == (*PATCH_SHAPE, 2) and patches[0].dtype == np.float32
    middle = tuple(n // 2 for n in PATCH_SHAPE)
    for patch in patches:  # the ball (40 HU -> 1040 / 1400) at the centre, air (0) in the corners
        assert patch[middle][0] == pytest.approx(1040 / 1400, abs=1e-3) and patch[middle][1] == pytest.approx(1.0, abs=1e-3)
        assert patch[0, 0, 0, 0] == 0.0
    # the 8 mm ball (268 mm3, 1.2 % of the patch) covers about the same share at both voxel sizes (2.5 mm slices sample it coarsely)
    shares = [float((p[..., 1] > 0.5).mean()) for p in patches]
    assert shares[0] == pytest.approx(shares[1], rel=0.25) and shares[1] == pytest.approx(268 / 21600, rel=0.1)


def test_a_centre_near_or_beyond_the_edge_sees_air_outside_the_scan():
    hu, probabilities, _ = _ball_scan((1.0, 1.0, 1.0))
    patch = candidate_patches(hu, probabilities, np.array([[0.0, 0.0, 0.0], [-500.0, 0.0, 0.0]]), (1.0, 1.0, 1.0))
    assert patch[0, 0, 0, 0, 0] == 0.0 and patch[0, -1, -1, -1, 0] == 0.0
    assert np.all(patch[1] == 0.0)


@pytest.mark.parametrize("probability_shape, spacing", [((4, 8, 9), (1.0, 1.0, 1.0)), ((4, 8, 8), (1.0, 0.0, 1.0)), ((4, 8, 8), (1.0, 1.0))])
def test_bad_scans_are_named_errors(probability_shape, spacing):
    with pytest.raises(DataFormatError):
        candidate_patches(np.zeros((4, 8, 8)), np.zeros(probability_shape), np.zeros((1, 3)), spacing)


def test_augmentation_moves_voxels_without_changing_them():
    rng = np.random.default_rng(0)
    patches = rng.random((32, *PATCH_SHAPE, 2)).astype(np.float32)
    moved = augment_patches(patches, np.random.default_rng(1))
    assert moved.shape == patches.shape and not np.array_equal(moved, patches)
    np.testing.assert_array_equal(np.sort(moved.reshape(32, -1), axis=1), np.sort(patches.reshape(32, -1), axis=1))
    np.testing.assert_array_equal(moved, augment_patches(patches, np.random.default_rng(1)))  # seeded


def _toy_patches(count: int, seed: int):
    """Balls (nodules) against tubes along z (vessels) of the same radius and density, at random offsets."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in PATCH_SHAPE], indexing="ij")
    labels = np.arange(count) % 2 == 0
    patches = np.zeros((count, *PATCH_SHAPE, 2), np.float32)
    for i, ball in enumerate(labels):
        dy, dx = rng.uniform(-2, 2, 2)
        radius = rng.uniform(2.5, 4.0)
        inside = ((y - dy) ** 2 + (x - dx) ** 2 + (0 if not ball else (z * 1.6) ** 2)) <= radius**2
        patches[i, ..., 0] = np.where(inside, 0.74, 0.05) + rng.normal(0, 0.05, inside.shape)
        patches[i, ..., 1] = inside
    return patches, labels


def test_the_patch_scorer_learns_to_tell_a_ball_from_a_tube(tmp_path):
    """A regression guard: if training stopped learning, the held-out AUC of this easy task would fall to ~0.5.

    The just-trained scorer's file holds the network only (no optimizer state) and scores the same.
    """
    import zipfile

    train, labels = _toy_patches(96, seed=0)
    test, test_labels = _toy_patches(64, seed=1)
    scorer = fit_patch_scorer(train, labels, epochs=6, batch_size=16, positive_repeats=1, negative_fraction=1.0, width=4, seed=0)
    assert roc_auc_score(test_labels, scorer.patch_logits(test)) > 0.9
    path = scorer.save(tmp_path)
    assert scorer.model.optimizer is not None  # saving leaves the trained model as it was
    with zipfile.ZipFile(path) as archive:
        assert b"optimizer" not in archive.read("model.weights.h5")
    np.testing.assert_allclose(PatchScorer.load(tmp_path).patch_logits(test), scorer.patch_logits(test), rtol=0, atol=1e-5)


def test_training_checks_its_inputs():
    patches = np.zeros((4, *PATCH_SHAPE, 2), np.float32)
    with pytest.raises(InvalidParameterError, match="both classes"):
        fit_patch_scorer(patches, np.zeros(4, bool))
    with pytest.raises(InvalidParameterError, match="negative_fraction"):
        fit_patch_scorer(patches, np.array([1, 0, 0, 0], bool), negative_fraction=0.0)


@pytest.fixture(scope="module")
def tiny_scorer():
    return PatchScorer(build_patch_network(width=2, seed=0))


def test_a_patch_scorer_round_trips_through_its_file(tmp_path, tiny_scorer):
    patches = np.random.default_rng(0).random((5, *PATCH_SHAPE, 2)).astype(np.float32)
    path = tiny_scorer.save(tmp_path)
    assert path.name == PATCH_SCORER_FILE
    np.testing.assert_allclose(PatchScorer.load(tmp_path).patch_logits(patches), tiny_scorer.patch_logits(patches), rtol=0, atol=1e-6)


def test_a_missing_or_damaged_patch_scorer_is_a_named_error(tmp_path):
    with pytest.raises(MissingDataError, match=PATCH_SCORER_FILE):
        PatchScorer.load(tmp_path)
    (tmp_path / PATCH_SCORER_FILE).write_bytes(b"not a keras file")
    with pytest.raises(ModelFileError, match=PATCH_SCORER_FILE):
        PatchScorer.load(tmp_path)


def _trees(seed: int) -> BoostedClassifier:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.normal(size=(200, 2)), columns=NAMES)
    return BoostedClassifier.fit(x, (x[NAMES[0]] + rng.normal(0, 0.5, 200)) > 0.5, feature_names=NAMES, max_iter=10, max_leaf_nodes=4)


def test_the_fused_probability_is_the_documented_sum_of_log_odds(tmp_path, tiny_scorer):
    trees = _trees(0)
    fused = PerSourceClassifier({"segmenter": trees, "blob": trees}, threshold=0.4, patch_fusion={"weight": 0.25, "calibration": [1.2, -0.3]}, patch_scorer=tiny_scorer)
    rows = pd.DataFrame({NAMES[0]: [-1.0, 0.0, 2.0], NAMES[1]: [0.0, 1.0, 0.0], "source": ["segmenter", "blob", "blob"]})
    logits = np.array([3.0, -2.0, 0.5])
    expected = expit(1.2 * (0.75 * trees.raw_score(rows) + 0.25 * logits) - 0.3)
    np.testing.assert_allclose(fused.predict_proba(rows, logits), expected, rtol=0, atol=1e-12)
    with pytest.raises(InvalidParameterError, match="patch logit"):
        fused.predict_proba(rows)
    fused.save(tmp_path)  # classifier.json (version 2) and the scorer beside it
    config = json.loads((tmp_path / CLASSIFIER_FILE).read_text())
    assert config["version"] == 2 and config["patch_fusion"] == {"weight": 0.25, "calibration": [1.2, -0.3]}
    assert (tmp_path / PATCH_SCORER_FILE).is_file()
    again = load_classifier(tmp_path)
    assert again.patch_scorer is None  # detection reads the JSON; load_segmenter attaches the scorer
    np.testing.assert_allclose(again.predict_proba(rows, logits), expected, rtol=0, atol=1e-12)
    with pytest.raises(MissingDataError, match="patch scorer"):
        again.patch_logits(rows.assign(centroid_z=0.0, centroid_y=0.0, centroid_x=0.0), hu=np.zeros((2, 2, 2)), probabilities=np.zeros((2, 2, 2)), spacing=(1, 1, 1))
    without = PerSourceClassifier({"segmenter": trees, "blob": trees})
    assert without.patch_logits(rows, hu=None, probabilities=None, spacing=None) is None
    assert json.loads(json.dumps(without.to_config()))["version"] == 1 and "patch_fusion" not in without.to_config()


@pytest.mark.parametrize("fusion", [{"weight": 1.5, "calibration": [1, 0]}, {"weight": 0.5}, {"weight": 0.5, "calibration": [1, float("nan")]}])
def test_a_bad_fusion_entry_is_a_named_error(fusion):
    trees = _trees(1)
    with pytest.raises(InvalidParameterError, match="patch_fusion"):
        PerSourceClassifier({"segmenter": trees, "blob": trees}, patch_fusion=fusion)


def test_fusion_needs_boosted_members():
    logistic = CandidateClassifier(["a"], mean=[0], scale=[1], coefficients=[1.0], intercept=0.0)
    with pytest.raises(InvalidParameterError, match="boosted"):
        PerSourceClassifier({"segmenter": logistic, "blob": logistic}, patch_fusion={"weight": 0.5, "calibration": [1, 0]})


def test_load_segmenter_attaches_the_patch_scorer_of_its_folder(tmp_path, tiny_scorer):
    from nodulekit.inference import load_segmenter
    from nodulekit.pretrained import PRETRAINED_DIR

    shipped = PRETRAINED_DIR / "lidc_attention_unet"
    for name in ("model.keras", "preprocessing.json", "segmenter.json"):
        shutil.copy(shipped / name, tmp_path / name)
    trees = _trees(2)
    PerSourceClassifier({"segmenter": trees, "blob": trees}, patch_fusion={"weight": 0.5, "calibration": [1, 0]}, patch_scorer=tiny_scorer).save(tmp_path)
    loaded = load_segmenter(tmp_path).classifier
    assert isinstance(loaded.patch_scorer, PatchScorer)
    (tmp_path / PATCH_SCORER_FILE).unlink()
    with pytest.raises(MissingDataError, match=PATCH_SCORER_FILE):
        load_segmenter(tmp_path)
