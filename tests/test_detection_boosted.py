"""Gradient-boosted trees as a second stage stored as JSON (nodulekit/detection.py BoostedClassifier)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from nodulekit.detection import (
    FEATURE_NAMES,
    SOURCE_FEATURE_NAMES,
    BoostedClassifier,
    CandidateClassifier,
    PerSourceClassifier,
    fit_platt,
    load_classifier,
)
from nodulekit.errors import InvalidParameterError, ModelFileError

NAMES = list(FEATURE_NAMES[:6]) + list(SOURCE_FEATURE_NAMES)


def _rows(count: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Candidate-like rows: a nodule when a few features say so, with label noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, len(NAMES)))
    logits = 1.5 * x[:, 0] - x[:, 1] * x[:, 2] + np.where(x[:, 3] > 0.5, 1.0, -1.0) - 1.0
    return pd.DataFrame(x, columns=NAMES), rng.random(count) < expit(logits)


def _sklearn(x, y, **settings):
    from sklearn.ensemble import HistGradientBoostingClassifier

    options = {"max_iter": 40, "max_leaf_nodes": 8, "learning_rate": 0.1, "early_stopping": False, "random_state": 0}
    return HistGradientBoostingClassifier(**{**options, **settings}).fit(x, y)


def test_the_exported_trees_give_scikit_learns_probabilities_on_held_out_rows():
    train, labels = _rows(600, seed=0)
    test, _ = _rows(300, seed=1)
    model = _sklearn(train.to_numpy(), labels)
    boosted = BoostedClassifier.from_sklearn(model, NAMES)
    np.testing.assert_allclose(boosted.predict_proba(test), model.predict_proba(test.to_numpy())[:, 1], rtol=0, atol=1e-9)
    fitted = BoostedClassifier.fit(train, labels, feature_names=NAMES, max_iter=40, max_leaf_nodes=8)  # nodulekit's own fit: the same model
    np.testing.assert_allclose(fitted.predict_proba(test), boosted.predict_proba(test), rtol=0, atol=1e-12)


def test_missing_values_go_where_scikit_learn_sends_them():
    train, labels = _rows(600, seed=2)
    x = train.to_numpy().copy()
    x[::5, 0] = np.nan  # trained with missing values: each split learns a side for them
    model = _sklearn(x, labels)
    boosted = BoostedClassifier.from_sklearn(model, NAMES)
    test = _rows(300, seed=3)[0].to_numpy().copy()
    test[::3, 0] = np.nan
    test[::4, 1] = np.nan  # never missing in training
    np.testing.assert_allclose(expit(boosted.raw_score_matrix(test)), model.predict_proba(test)[:, 1], rtol=0, atol=1e-9)
    with pytest.raises(InvalidParameterError, match="NaN"):  # candidate features are never NaN: a NaN table is an error
        boosted.predict_proba(pd.DataFrame(test, columns=NAMES))


def test_a_boosted_member_round_trips_through_classifier_json_with_its_platt_step(tmp_path):
    train, labels = _rows(400, seed=4)
    boosted = BoostedClassifier.fit(train, labels, feature_names=NAMES, max_iter=20, max_leaf_nodes=4)
    raw = boosted.raw_score(train)
    boosted.calibrate(raw, labels)
    a, b = boosted.calibration
    assert (a, b) == fit_platt(raw, labels) and a > 0
    np.testing.assert_allclose(boosted.predict_proba(train), expit(a * raw + b), rtol=0, atol=1e-12)
    logistic = CandidateClassifier.fit(train, labels, feature_names=NAMES)
    model = PerSourceClassifier({"segmenter": logistic, "blob": boosted}, threshold=0.3)
    path = model.save(tmp_path)
    assert len(path.read_text().splitlines()) == 1  # trees are written compactly
    loaded = load_classifier(tmp_path)
    assert isinstance(loaded.classifiers["blob"], BoostedClassifier) and isinstance(loaded.classifiers["segmenter"], CandidateClassifier)
    assert json.loads(path.read_text())["classifiers"]["blob"]["kind"] == "gradient_boosting"
    frame = train.assign(source=np.where(np.arange(len(train)) % 2, "blob", "segmenter"))
    np.testing.assert_array_equal(loaded.predict_proba(frame), model.predict_proba(frame))
    boosted.save(tmp_path / "one")  # a single boosted classifier is a classifier.json too
    np.testing.assert_array_equal(load_classifier(tmp_path / "one").predict_proba(train), boosted.predict_proba(train))


def test_a_logistic_per_source_file_is_still_written_and_read_as_before(tmp_path):
    train, labels = _rows(400, seed=5)
    logistic = CandidateClassifier.fit(train, labels, feature_names=NAMES)
    model = PerSourceClassifier({"segmenter": logistic, "blob": logistic}, threshold=0.3)
    path = model.save(tmp_path)
    assert len(path.read_text().splitlines()) > 10  # indented, as before
    loaded = load_classifier(tmp_path)
    assert all(isinstance(c, CandidateClassifier) for c in loaded.classifiers.values())
    np.testing.assert_array_equal(loaded.predict_proba(train), model.predict_proba(train))


def _tree_config(**edit):
    stump = {"feature": [0, 0, 0], "threshold": [0.0, 0.0, 0.0], "missing_left": [True, False, False], "left": [1, -1, -1], "right": [2, -1, -1], "value": [0.0, -1.0, 1.0]}
    return {"kind": "gradient_boosting", "feature_names": NAMES[:1], "baseline": 0.0, "calibration": [1.0, 0.0], "threshold": 0.5, "metadata": {}, "trees": [{**stump, **edit}]}


@pytest.mark.parametrize(
    "edit",
    [{"left": [0, -1, -1]}, {"feature": [3, 0, 0]}, {"value": [0.0, -1.0]}, {"right": [2, 1, -1]}, {"value": [0.0, float("nan"), 1.0]}],
    ids=["a loop", "an unknown feature", "arrays of two lengths", "a child at a leaf", "a NaN leaf"],
)
def test_a_malformed_tree_is_a_named_error(tmp_path, edit):
    (tmp_path / "classifier.json").write_text(json.dumps(_tree_config(**edit)))
    with pytest.raises(ModelFileError, match="not a valid candidate classifier"):
        load_classifier(tmp_path)


def test_an_unknown_member_kind_is_a_named_error(tmp_path):
    config = PerSourceClassifier({"segmenter": BoostedClassifier.from_config(_tree_config()), "blob": BoostedClassifier.from_config(_tree_config())}).to_config()
    config["classifiers"]["blob"]["kind"] = "random_forest"
    (tmp_path / "classifier.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="unknown classifier kind 'random_forest'"):
        load_classifier(tmp_path)


def test_boosting_settings_are_checked():
    train, labels = _rows(100, seed=6)
    with pytest.raises(InvalidParameterError, match="unknown boosting settings"):
        BoostedClassifier.fit(train, labels, feature_names=NAMES, max_depth=3)
    with pytest.raises(InvalidParameterError, match="both classes"):
        BoostedClassifier.fit(train, np.zeros(len(train), bool), feature_names=NAMES)
