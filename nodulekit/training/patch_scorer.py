"""Training of the whole-scan candidates' patch scorer (:class:`nodulekit.patch_scorer.PatchScorer`).

Candidates are mostly not nodules (about 14 negatives per positive on the synthetic training
scans), so every epoch sees each positive ``positive_repeats`` times and a fresh random
``negative_fraction`` of the negatives, each patch under a random one of its 16 symmetries
(:func:`~nodulekit.training.augment.augment_patches`). The network and its optimiser are
:func:`~nodulekit.patch_scorer.build_patch_network`'s; it trains through the one ``fit`` path
(:func:`~nodulekit.training.callbacks.fit_model`). The recipe's defaults are the ones measured in
``experiments/detection_patches.py`` (scan-grouped CV on the training scans).
"""

from __future__ import annotations

import keras
import numpy as np

from ..errors import InvalidParameterError, TrainingError
from ..patch_scorer import PatchScorer, build_patch_network
from .augment import augment_patches
from ..utils import set_seed
from .callbacks import fit_model

__all__ = ["PATCH_RECIPE", "CandidatePatches", "fit_patch_scorer"]

#: The recipe of the shipped patch scorer.
PATCH_RECIPE = {"epochs": 12, "batch_size": 64, "positive_repeats": 4, "negative_fraction": 0.5, "width": 16}


class CandidatePatches(keras.utils.PyDataset):
    """Batches of (augmented patch, label): the positives repeated, a new share of the negatives every epoch.

    Parameters
    ----------
    patches : ndarray, shape (n, *PATCH_SHAPE, 2)
    labels : ndarray of bool, shape (n,)
    batch_size, positive_repeats, negative_fraction
        As in :func:`fit_patch_scorer`.
    seed : int
        Seeds the draw of negatives, the order and the augmentation.
    """

    def __init__(self, patches: np.ndarray, labels: np.ndarray, *, batch_size: int, positive_repeats: int, negative_fraction: float, seed: int = 0):
        super().__init__()
        self.patches = np.asarray(patches, np.float32)
        labels = np.asarray(labels, bool)
        self.positives, self.negatives = np.flatnonzero(labels), np.flatnonzero(~labels)
        self.labels = labels.astype(np.float32)
        self.batch_size, self.repeats, self.fraction = int(batch_size), int(positive_repeats), float(negative_fraction)
        self.rng = np.random.default_rng(seed)
        self.on_epoch_end()

    def on_epoch_end(self) -> None:
        """Draw the next epoch's negatives and order."""
        drawn = self.rng.choice(self.negatives, int(len(self.negatives) * self.fraction), replace=False)
        self.order = np.concatenate([drawn, np.repeat(self.positives, self.repeats)])
        self.rng.shuffle(self.order)

    def __len__(self) -> int:
        return int(np.ceil((int(len(self.negatives) * self.fraction) + len(self.positives) * self.repeats) / self.batch_size))

    def __getitem__(self, index: int):
        take = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return augment_patches(self.patches[take], self.rng), self.labels[take]


def fit_patch_scorer(
    patches: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int = PATCH_RECIPE["epochs"],
    batch_size: int = PATCH_RECIPE["batch_size"],
    positive_repeats: int = PATCH_RECIPE["positive_repeats"],
    negative_fraction: float = PATCH_RECIPE["negative_fraction"],
    width: int = PATCH_RECIPE["width"],
    seed: int = 0,
    verbose: int = 0,
) -> PatchScorer:
    """Train a patch scorer on candidate patches and their labels (module docstring).

    Parameters
    ----------
    patches : ndarray, shape (n, *PATCH_SHAPE, 2)
        :func:`~nodulekit.patch_scorer.candidate_patches` of the training candidates.
    labels : ndarray of bool, shape (n,)
        True for a candidate on a nodule (the FROC hit rule).
    epochs, batch_size : int
    positive_repeats : int
        How often each positive is seen per epoch.
    negative_fraction : float
        Share of the negatives drawn (anew) for each epoch, in (0, 1].
    width : int
        Filters of the first block (:func:`~nodulekit.patch_scorer.build_patch_network`).
    seed : int
        Fixes the initial weights, the draws, the order and the augmentation.
    verbose : int
        Keras's progress output (1: a bar per epoch).

    Returns
    -------
    PatchScorer
    """
    labels = np.asarray(labels, bool)
    if len(patches) != len(labels) or not labels.any() or labels.all():
        raise InvalidParameterError(f"need one label per patch ({len(patches)} patches, {len(labels)} labels) and both classes")
    if not 0.0 < float(negative_fraction) <= 1.0 or int(positive_repeats) < 1:
        raise InvalidParameterError(f"negative_fraction must be in (0, 1] and positive_repeats >= 1, got {negative_fraction!r}, {positive_repeats!r}")
    set_seed(seed)
    model = build_patch_network(width=width, seed=seed)
    batches = CandidatePatches(patches, labels, batch_size=batch_size, positive_repeats=positive_repeats, negative_fraction=negative_fraction, seed=seed)
    _, out_of_memory = fit_model(model, batches, epochs=epochs, verbose=verbose)
    if out_of_memory is not None:
        raise TrainingError(f"the patch scorer ran out of memory ({out_of_memory}); lower batch_size")
    return PatchScorer(model)
