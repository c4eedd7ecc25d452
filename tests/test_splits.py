"""Patient-level splits: the paper's 60/20/20 and 4-fold CV, seeded, never leaking a patient."""

from __future__ import annotations

import numpy as np
import pytest

from nodulekit.errors import InvalidParameterError, NodulekitError
from nodulekit.splits import check_no_leak, patient_kfold, patient_split


def _groups(n_patients=20, seed=0):
    """Patients with 1..9 slices each (uneven, like real nodules)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 10, n_patients)
    return np.repeat([f"P{i:03d}" for i in range(n_patients)], counts)


def test_patient_split_60_20_20_by_patient_and_complete():
    groups = _groups(20)
    split = patient_split(groups, seed=0)
    patients = {name: set(groups[idx]) for name, idx in split.items()}
    # 20 patients -> 12 / 4 / 4 patients.
    assert [len(patients[k]) for k in ("train", "val", "test")] == [12, 4, 4]
    # Disjoint patients, every sample used exactly once.
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert np.array_equal(np.sort(np.concatenate(list(split.values()))), np.arange(len(groups)))
    check_no_leak(groups, split["train"], split["val"], split["test"])


def test_patient_split_is_seeded():
    groups = _groups(30)
    first, again = patient_split(groups, seed=3), patient_split(groups, seed=3)
    other = patient_split(groups, seed=4)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not all(np.array_equal(first[k], other[k]) for k in first)


def test_patient_split_small_and_custom_fractions():
    split = patient_split(["a", "a", "b", "c"], seed=0)
    assert sorted(len(set(np.array(["a", "a", "b", "c"])[v])) for v in split.values()) == [1, 1, 1]
    two_way = patient_split(_groups(10), fractions=(0.8, 0.0, 0.2))
    assert len(two_way["val"]) == 0 and len(two_way["test"]) > 0


@pytest.mark.parametrize(
    "kwargs",
    [{"fractions": (0.5, 0.5, 0.5)}, {"fractions": (0.6, 0.4)}, {"fractions": (0.0, 0.5, 0.5)}, {"seed": -1}],
)
def test_patient_split_rejects_bad_arguments(kwargs):
    with pytest.raises(InvalidParameterError):
        patient_split(_groups(10), **kwargs)


def test_patient_split_needs_enough_patients():
    with pytest.raises(InvalidParameterError, match="at least 3 patients"):
        patient_split(["a", "a", "b"])


def test_patient_kfold_each_patient_validated_once():
    groups = _groups(21)
    folds = patient_kfold(groups, n_folds=4, seed=0)
    assert len(folds) == 4
    validated = np.concatenate([val for _, val in folds])
    assert np.array_equal(np.sort(validated), np.arange(len(groups)))  # every sample validated exactly once
    for train, val in folds:
        assert not set(groups[train]) & set(groups[val])
        assert len(train) + len(val) == len(groups)
    # Patients, not samples, are dealt out: the 21 patients make folds of 6, 5, 5 and 5.
    assert sorted(len(set(groups[val])) for _, val in folds) == [5, 5, 5, 6]
    assert [np.array_equal(a[1], b[1]) for a, b in zip(folds, patient_kfold(groups, n_folds=4, seed=0))] == [True] * 4


def test_patient_kfold_rejects_more_folds_than_patients():
    with pytest.raises(InvalidParameterError, match="exceeds"):
        patient_kfold(["a", "b", "c"], n_folds=4)
    with pytest.raises(InvalidParameterError):
        patient_kfold(["a", "b", "c"], n_folds=1)


def test_check_no_leak_names_the_patient():
    groups = np.array(["a", "a", "b"])
    with pytest.raises(NodulekitError, match="'a'"):
        check_no_leak(groups, [0], [1, 2])


@pytest.mark.realdata
def test_real_release_splits_never_leak(lidc_slices_dir):
    from nodulekit.readers import read_lidc_release

    crops = read_lidc_release(lidc_slices_dir, patients=12, progress=False)
    split = patient_split(crops.groups, seed=0)
    nodules = {k: set(crops.table["nodule_id"].to_numpy()[v]) for k, v in split.items()}
    assert not nodules["train"] & nodules["test"] and not nodules["train"] & nodules["val"]
    for train, val in patient_kfold(crops.groups, n_folds=4, seed=0):
        check_no_leak(crops.groups, train, val)


def test_the_two_cross_validation_strategies():
    from nodulekit.splits import all_patient_folds, development_folds

    groups = np.repeat([f"p{i:02d}" for i in range(20)], 3)
    plan = development_folds(groups, fractions=(0.6, 0.2, 0.2), n_folds=4, seed=0)
    split = patient_split(groups, fractions=(0.6, 0.2, 0.2), seed=0)
    np.testing.assert_array_equal(plan.test, split["test"])
    development = np.sort(np.concatenate([plan.train, plan.val]))
    for fold, (fit, hold) in zip(plan.folds, patient_kfold(groups[development], n_folds=4, seed=0)):
        np.testing.assert_array_equal(fold.train, development[fit])  # as the protocol always built them
        np.testing.assert_array_equal(fold.validation, development[hold])
        np.testing.assert_array_equal(fold.test, plan.test)  # every fold scored on the same test patients
        check_no_leak(groups, fold.train, fold.validation, fold.test)
    tested = np.concatenate([fold.test for fold in all_patient_folds(groups, n_folds=4, seed=0)])
    assert sorted(tested) == list(range(len(groups)))  # every patient tested once
    assert all(fold.validation is None for fold in all_patient_folds(groups, n_folds=4, seed=0))
