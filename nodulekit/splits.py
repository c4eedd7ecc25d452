"""Patient-level splits: no patient (hence no nodule, no slice) is ever in two sets.

Slices of one nodule are strongly correlated, so a random split by slice leaks. Both splitters
group by patient with scikit-learn's :class:`~sklearn.model_selection.GroupShuffleSplit` and
:class:`~sklearn.model_selection.GroupKFold` and are seeded.

Two cross-validation strategies are built from them, one per way the package measures a model:

* :func:`development_folds` — the paper protocol (:mod:`nodulekit.training`): patients split
  60/20/20 into train / validation / test; k folds over the train + validation patients, each fold
  training on k-1 parts and keeping the weights of the lowest loss on the k-th; every fold's model
  is scored on the same held-out test patients.
* :func:`all_patient_folds` — the real-CT recipes (:mod:`nodulekit.evaluation`): k folds over all
  patients; each fold's model is scored on its held-out part, so every patient is tested once (the
  trainer carves its own validation patients from the fold's training part).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.model_selection import GroupKFold, GroupShuffleSplit

from .errors import InvalidParameterError

__all__ = ["patient_split", "patient_kfold", "check_no_leak", "Fold", "DevelopmentFolds", "development_folds", "all_patient_folds"]


def _groups(groups: Sequence | np.ndarray) -> np.ndarray:
    groups = np.asarray(groups)
    if groups.ndim != 1 or groups.size == 0:
        raise InvalidParameterError(
            f"groups must be a non-empty 1-D sequence (one patient id per sample), got shape {groups.shape}"
        )
    if groups.dtype.kind == "O" and any(g is None for g in groups):
        raise InvalidParameterError("groups must not contain None (every sample needs a patient id)")
    if groups.dtype.kind == "f" and np.isnan(groups).any():
        raise InvalidParameterError("groups must not contain NaN (every sample needs a patient id)")
    if groups.dtype.kind == "O":
        if any(isinstance(g, float) and np.isnan(g) for g in groups):
            raise InvalidParameterError("groups must not contain NaN (every sample needs a patient id)")
        kinds = {type(g).__name__ for g in groups}
        if len(kinds) > 1:  # e.g. 1 and "1": sorting would fail, and they may or may not be one patient
            raise InvalidParameterError(f"groups mix value types {sorted(kinds)}; give every patient id as a string")
    return groups


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InvalidParameterError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def patient_split(
    groups: Sequence | np.ndarray,
    *,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split samples into train/validation/test sets by patient (the paper's 60/20/20).

    The fractions apply to patients, not samples (scikit-learn's ``GroupShuffleSplit``): first the
    test patients are drawn, then the validation patients from the rest. With few patients each
    set still gets at least one patient when its fraction is positive.

    Parameters
    ----------
    groups : sequence, length n_samples
        Patient id of each sample (e.g. ``cropset.groups``).
    fractions : (float, float, float)
        Train, validation and test fractions of patients; non-negative, summing to 1. A zero
        validation or test fraction gives an empty set.
    seed : int
        Random seed: the same seed and groups give the same split.

    Returns
    -------
    dict
        ``{"train": idx, "val": idx, "test": idx}``, sorted integer positions into ``groups``.

    Raises
    ------
    InvalidParameterError
        Bad fractions or seed, or fewer patients than non-empty sets.

    Examples
    --------
    >>> split = patient_split(["a", "a", "b", "c", "d", "e"], seed=0)
    >>> sorted(len(v) for v in split.values())
    [1, 1, 4]
    """
    groups = _groups(groups)
    seed = _check_seed(seed)
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0) or fractions[0] <= 0:
        raise InvalidParameterError(
            f"fractions must be three non-negative numbers (train > 0) summing to 1, got {fractions}"
        )
    train_fraction, val_fraction, test_fraction = fractions
    patients = np.unique(groups)
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    if len(patients) < needed:
        raise InvalidParameterError(f"need at least {needed} patients for fractions {fractions}, got {len(patients)}")
    n_test = _count(test_fraction, len(patients), needed - 1)
    n_val = _count(val_fraction, len(patients), needed - 1)
    everything = np.arange(len(groups))

    def draw(index: np.ndarray, count: int, random_state: int) -> tuple[np.ndarray, np.ndarray]:
        if count == 0:
            return index, index[:0]
        splitter = GroupShuffleSplit(n_splits=1, test_size=count, random_state=random_state)
        keep, take = next(splitter.split(index, groups=groups[index]))
        return index[keep], index[take]

    rest, test = draw(everything, n_test, seed)
    train, val = draw(rest, n_val, seed + 1)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _count(fraction: float, n_patients: int, others: int) -> int:
    """Patients for a set: the rounded fraction, at least one when positive, leaving one for training."""
    if fraction == 0:
        return 0
    return int(min(max(round(fraction * n_patients), 1), n_patients - others))


def patient_kfold(
    groups: Sequence | np.ndarray, *, n_folds: int = 4, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold cross-validation folds grouped by patient (the paper's 4-fold CV).

    Uses scikit-learn's ``GroupKFold(shuffle=True)``: the patients are shuffled with ``seed`` and
    cut into ``n_folds`` folds of (nearly) equal patient counts; each patient is in exactly one
    validation fold.

    Parameters
    ----------
    groups : sequence, length n_samples
        Patient id of each sample.
    n_folds : int
        Number of folds, at least 2 and at most the number of patients.
    seed : int
        Random seed for the patient shuffle.

    Returns
    -------
    list of (ndarray, ndarray)
        ``n_folds`` pairs ``(train_idx, val_idx)`` of sorted integer positions.

    Raises
    ------
    InvalidParameterError
        ``n_folds`` < 2 or more folds than patients; bad seed.
    """
    groups = _groups(groups)
    seed = _check_seed(seed)
    n_patients = len(np.unique(groups))
    if not isinstance(n_folds, (int, np.integer)) or isinstance(n_folds, bool) or n_folds < 2:
        raise InvalidParameterError(f"n_folds must be an int >= 2, got {n_folds!r}")
    if n_folds > n_patients:
        raise InvalidParameterError(f"n_folds={n_folds} exceeds the number of patients ({n_patients})")
    splitter = GroupKFold(n_splits=int(n_folds), shuffle=True, random_state=seed)
    index = np.arange(len(groups))
    return [(np.sort(train), np.sort(val)) for train, val in splitter.split(index, groups=groups)]


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold as sorted positions into the samples.

    Attributes
    ----------
    train : ndarray
        What the fold's model trains on.
    validation : ndarray or None
        What picks its kept weights (lowest validation loss); ``None`` when the trainer carves its
        own validation patients from ``train`` (the real-CT recipes' ``validation_fraction``).
    test : ndarray
        What its model is scored on.
    """

    train: np.ndarray
    validation: np.ndarray | None
    test: np.ndarray


@dataclass(frozen=True)
class DevelopmentFolds:
    """The paper protocol's split (:func:`development_folds`): the 60/20/20 sets and the folds."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    folds: list[Fold]


def development_folds(
    groups: Sequence | np.ndarray,
    *,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    n_folds: int = 4,
    seed: int = 0,
) -> DevelopmentFolds:
    """The paper protocol's split: train / validation / test by patient, then k folds of train + validation.

    The grid search trains on ``train`` and selects on ``val``; fold ``k`` trains on the other
    folds' development patients, keeps the weights of the lowest loss on its own part
    (``Fold.validation``) and is scored on the common ``test`` patients.

    Parameters
    ----------
    groups : sequence, length n_samples
        Patient id of each sample.
    fractions : (float, float, float)
        As in :func:`patient_split`.
    n_folds, seed : int
        As in :func:`patient_kfold` (the folds of the development patients).

    Returns
    -------
    DevelopmentFolds
    """
    groups = _groups(groups)
    split = patient_split(groups, fractions=fractions, seed=seed)
    train, val, test = (np.sort(split[k]) for k in ("train", "val", "test"))
    development = np.sort(np.concatenate([train, val]))
    folds = [
        Fold(train=development[np.sort(fit)], validation=development[np.sort(hold)], test=test)
        for fit, hold in patient_kfold(groups[development], n_folds=n_folds, seed=seed)
    ]
    return DevelopmentFolds(train=train, val=val, test=test, folds=folds)


def all_patient_folds(groups: Sequence | np.ndarray, *, n_folds: int = 4, seed: int = 0) -> list[Fold]:
    """The real-CT recipes' split: k patient-grouped folds over all patients, each tested once.

    Fold ``k`` trains on the other folds' patients (its trainer holds out validation patients of
    its own) and is scored on fold ``k``'s patients.

    Parameters
    ----------
    groups : sequence, length n_samples
        Patient id of each sample.
    n_folds, seed : int
        As in :func:`patient_kfold`.

    Returns
    -------
    list of Fold
        ``n_folds`` folds with ``validation=None``.
    """
    return [Fold(train=train, validation=None, test=test) for train, test in patient_kfold(groups, n_folds=n_folds, seed=seed)]


def check_no_leak(groups: Sequence | np.ndarray, *index_sets: np.ndarray) -> None:
    """Raise when one patient appears in two of the given index sets.

    Raises
    ------
    InvalidParameterError
        Naming a patient found in two sets.
    """
    groups = np.asarray(groups)
    seen: dict = {}
    for number, index in enumerate(index_sets):
        for patient in np.unique(groups[np.asarray(index, dtype=int)]):
            if patient in seen and seen[patient] != number:
                raise InvalidParameterError(
                    f"patient {patient!r} is in sets {seen[patient]} and {number}: the split leaks"
                )
            seen[patient] = number
