"""Honest accuracy on radiologist-annotated crops: recipes, patient-grouped CV, per-nodule Dice.

A :class:`~nodulekit.training.recipe.Recipe` (defined in the engine's :mod:`nodulekit.training.recipe`,
re-exported here) is everything that decides a model's accuracy — architecture and options, loss,
optimiser settings, training length, augmentation, preprocessing, test-time augmentation (TTA) and
post-processing — as one serialisable object. :func:`cross_validate_all_patients` trains it on k-1
patient folds and scores the held-out patients, per slice and per nodule (3-D Dice pooled over a nodule's slices,
the figure published LIDC-IDRI results report), with the empty-mask policy stated in the result.

Everything here uses Keras 3 and NumPy only (no ``tf.data``), so the same code runs on the
TensorFlow backend on a laptop and on the JAX backend on a GPU machine. The paper's full protocol
(grid search, resumable run folders) is :mod:`nodulekit.training`.

Empty-mask policy. A slice where fewer than half of the nodule's readers drew anything has an
empty 50 % consensus mask. Per-slice Dice is reported over slices with a non-empty consensus
(``empty="exclude"``; the number of empty slices and how many of them the model left empty are
reported beside it). Per-nodule Dice pools all slices of a nodule, so empty slices count through
their false positives.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import keras
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import losses as losses_module
from . import metrics
from .crops import reader_fraction
from .dataset import CropSet
from .errors import InvalidParameterError, RunFolderError, TrainingError
from .models import build_model, predict_probabilities
from .phantom import generate_crops
from .postprocess import dihedral_tta, postprocess
from .postprocess import keep_central_component  # noqa: F401  (evaluation.keep_central_component, as before)
from .preprocessing import zscore_windows
from .readers import consensus_mask
from .splits import all_patient_folds, patient_split
from .training.augment import RECIPE_AUGMENTATION, Augmentation, augment_batch
from .training.callbacks import KeepBestWeights, fit_model
from .training.recipe import PAPER_RECIPE, REAL_CT_RECIPES, Recipe, real_ct_recipe
from .utils import as_rng, read_json, set_seed, write_json

__all__ = [
    "Recipe",
    "PAPER_RECIPE",
    "AugmentedSequence",
    "centre_windows",
    "model_predictor",
    "training_targets",
    "train_recipe",
    "predict_recipe",
    "score_predictions",
    "VARIANTS",
    "REAL_CT_RECIPES",
    "real_ct_recipe",
    "train_and_score_fold",
    "cross_validate_all_patients",
    "cross_validate",
    "synthetic_to_real",
    "summarise_cv",
    "reader_agreement",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Data feeding (backend-agnostic)


class AugmentedSequence(keras.utils.PyDataset):
    """Shuffled batches of (image, mask) with optional dihedral and intensity augmentation.

    Parameters
    ----------
    images, masks : ndarray, shape (n, height, width)
        Preprocessed images and their targets: binary masks or soft masks in [0, 1] (kept as they
        are: flips and 90-degree turns move them exactly, nothing re-binarises them).
    batch_size : int
    augment : bool or Augmentation
        Augment every batch with :func:`nodulekit.training.augment.augment_batch`; ``True`` is
        :data:`~nodulekit.training.augment.RECIPE_AUGMENTATION` (random flips / 90-degree
        rotations, the 8 symmetries of the square, per image, and an intensity jitter
        ``x * (1 + 0.1 u) + 0.1 v`` with u, v standard normal per image).
    seed : int
        Seeds the shuffle, the windows and the augmentation.
    window : int, optional
        Cut a ``window x window`` window from every image, its centre shifted from the image
        centre by up to ``jitter`` pixels per axis (a new draw every time), and z-score it.
    jitter : int
        Largest shift of the window centre (only with ``window``).
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        *,
        batch_size: int,
        augment: bool | Augmentation,
        seed: int = 0,
        window: int | None = None,
        jitter: int = 0,
    ):
        super().__init__()
        self.images = np.asarray(images, dtype=np.float32)[..., np.newaxis]
        self.masks = np.asarray(masks, dtype=np.float32)[..., np.newaxis]
        self.batch_size = int(batch_size)
        self.augmentation = augment if isinstance(augment, Augmentation) else (RECIPE_AUGMENTATION if augment else None)
        self.window, self.jitter = _check_window(window, jitter, self.images.shape[1:3])
        self.rng = as_rng(seed)
        self.order = self.rng.permutation(len(self.images))

    def __len__(self) -> int:
        return int(np.ceil(len(self.images) / self.batch_size))

    def __getitem__(self, index: int):
        take = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        x, y = self.images[take], self.masks[take]
        if self.window is not None:
            x, y = _random_windows(x, y, self.window, self.jitter, self.rng)
        if self.augmentation is not None:
            x, y = augment_batch(x, y, self.augmentation, self.rng)
        return x, y

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.images))


def _check_window(window: int | None, jitter: int, shape: tuple[int, int]) -> tuple[int | None, int]:
    if window is None:
        if jitter:
            raise InvalidParameterError(f"jitter={jitter!r} needs a window size")
        return None, 0
    window, jitter = int(window), int(jitter)
    if window < 16 or window % 16:
        raise InvalidParameterError(f"window must be a multiple of 16 (>= 16), got {window!r}")
    if jitter < 0:
        raise InvalidParameterError(f"jitter must be >= 0, got {jitter!r}")
    room = min(shape) - window
    if room < 0 or 2 * jitter > room:
        raise InvalidParameterError(
            f"a {window}-pixel window shifted by up to {jitter} pixels does not fit in {shape[0]}x{shape[1]} images"
        )
    return window, jitter


def centre_windows(images: np.ndarray, window: int) -> np.ndarray:
    """The centred ``window x window`` window of every image ``(n, h, w[, c])`` (the same cut as training's)."""
    top, left = (images.shape[1] - window) // 2, (images.shape[2] - window) // 2
    return images[:, top : top + window, left : left + window]


def _random_windows(x: np.ndarray, y: np.ndarray, window: int, jitter: int, rng: np.random.Generator):
    """One randomly shifted window per image, z-scored (as a whole-slice local z-score sees it)."""
    top, left = (x.shape[1] - window) // 2, (x.shape[2] - window) // 2
    shifts = rng.integers(-jitter, jitter + 1, size=(len(x), 2))
    xs = np.empty((len(x), window, window, x.shape[3]), np.float32)
    ys = np.empty((len(y), window, window, y.shape[3]), np.float32)
    for i, (dr, dc) in enumerate(shifts):
        r, c = top + dr, left + dc
        xs[i], ys[i] = x[i, r : r + window, c : c + window], y[i, r : r + window, c : c + window]
    return zscore_windows(xs), ys


def model_predictor(model: keras.Model, *, batch_size: int = 128) -> Callable[[np.ndarray], np.ndarray]:
    """A function ``(n, h, w) -> (n, h, w)`` probabilities from a one-channel segmentation model."""

    return functools.partial(predict_probabilities, model, batch_size=batch_size)


# --------------------------------------------------------------------------------------------------
# Train, predict, score


def training_targets(crops: CropSet, recipe: Recipe) -> np.ndarray:
    """What ``recipe`` trains towards on ``crops``: the consensus masks or the readers' fractions.

    Parameters
    ----------
    crops : CropSet
        Crops with ground-truth masks; with ``recipe.targets == "soft"`` also ``reader_masks``.
    recipe : Recipe

    Returns
    -------
    ndarray, shape (n, h, w)
        ``crops.masks`` for ``targets="consensus"``; for ``targets="soft"`` the float32
        :func:`nodulekit.crops.reader_fraction` of ``crops.reader_masks`` with the table's
        nodule-wide ``n_readers`` (so ``soft >= 0.5`` is the 50 % consensus of the LIDC readers).

    Raises
    ------
    InvalidParameterError
        ``targets="soft"`` and the crops have no per-reader masks.
    """
    if recipe.targets == "consensus":
        return crops.masks
    if crops.reader_masks is None:
        raise InvalidParameterError(
            f"recipe {recipe.name!r} trains on soft targets (targets='soft'), which need crops with per-reader masks (CropSet.reader_masks)"
        )
    n_readers = crops.table["n_readers"].to_numpy() if "n_readers" in crops.table else None
    return reader_fraction(crops.reader_masks, n_readers=n_readers)


def _prior_bias(masks: np.ndarray, targets: str) -> float:
    """``output_bias="prior"``: the logit of the training targets' mean foreground (soft: the mean value)."""
    if targets == "soft":
        return losses_module.initial_output_bias(min(max(float(np.mean(masks, dtype=np.float64)), 1e-4), 0.5))
    return losses_module.initial_output_bias(masks)


def train_recipe(
    images: np.ndarray,
    masks: np.ndarray,
    groups: Sequence,
    recipe: Recipe,
    *,
    seed: int = 0,
    verbose: int = 0,
) -> tuple[keras.Model, pd.DataFrame]:
    """Train ``recipe`` on preprocessed crops; keeps the weights of the lowest validation loss.

    Parameters
    ----------
    images, masks : ndarray, shape (n, h, w)
        Preprocessed images (``recipe.pipeline()`` already applied) and their targets
        (:func:`training_targets`: binary masks, or soft ones in [0, 1] with ``targets="soft"``,
        used for the training and the validation loss alike).
    groups : sequence of length n
        Patient ids: ``recipe.validation_fraction`` of the patients is held out for validation.
    recipe : Recipe
    seed : int
        Seeds the validation split, initialisation, shuffling and augmentation.

    Returns
    -------
    (keras.Model, pandas.DataFrame)
        The trained model and its per-epoch history.
    """
    set_seed(seed)
    groups = np.asarray(groups)
    if recipe.validation_fraction > 0 and len(np.unique(groups)) >= 5:
        split = patient_split(groups, fractions=(1.0 - recipe.validation_fraction, recipe.validation_fraction, 0.0), seed=seed)
        train_idx, val_idx = split["train"], split["val"]
    else:
        train_idx, val_idx = np.arange(len(images)), np.array([], dtype=int)
    options = dict(recipe.model_options)
    if options.get("output_bias") == "prior":
        prior_masks = masks[train_idx] if recipe.window is None else centre_windows(masks[train_idx], recipe.window)
        options["output_bias"] = _prior_bias(prior_masks, recipe.targets)
    side = images.shape[1:3] if recipe.window is None else (recipe.window, recipe.window)
    model = build_model(recipe.architecture, (*side, 1), **options)
    model.compile(
        optimizer=keras.optimizers.Adam(recipe.learning_rate),
        loss=losses_module.get_loss(recipe.loss, **recipe.loss_options),
        metrics=[metrics.DiceCoefficient()],
    )
    train = AugmentedSequence(
        images[train_idx], masks[train_idx], batch_size=recipe.batch_size, augment=recipe.augmentation or False, seed=seed, window=recipe.window, jitter=recipe.jitter
    )
    callbacks, validation = [], None
    if len(val_idx):
        val_images, val_masks = images[val_idx][..., np.newaxis], masks[val_idx][..., np.newaxis].astype(np.float32)
        if recipe.window is not None:
            val_images, val_masks = zscore_windows(centre_windows(val_images, recipe.window)), centre_windows(val_masks, recipe.window)
        validation = (val_images, val_masks)
        callbacks.append(KeepBestWeights())
        if recipe.early_stopping_patience is not None:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(recipe.early_stopping_patience)))
    # shuffle=True: Keras also shuffles the PyDataset's batch order (seeded by set_seed), as it always did here
    history, out_of_memory = fit_model(model, train, epochs=recipe.epochs, validation_data=validation, callbacks=callbacks, shuffle=True, verbose=verbose)
    if out_of_memory is not None:
        raise TrainingError(f"recipe {recipe.name!r} ran out of memory ({out_of_memory}); lower batch_size")
    return model, pd.DataFrame(history.history).rename_axis("epoch").reset_index()


def predict_recipe(model: keras.Model, images: np.ndarray, recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and final binary masks of preprocessed crops under ``recipe``'s TTA and post-processing."""
    predict = model_predictor(model)
    probabilities = dihedral_tta(predict, images) if recipe.tta else predict(images)
    if recipe.postprocess:
        binary = postprocess(probabilities, threshold=recipe.threshold)
    else:
        binary = (probabilities >= recipe.threshold).astype(np.uint8)
    return probabilities, binary


def score_predictions(crops: CropSet, binary: np.ndarray, *, per_nodule: bool = False) -> dict[str, Any]:
    """Per-slice and per-nodule scores of binary predictions against ``crops.masks``.

    One call of :func:`nodulekit.metrics.score_crops` with the ``"separate"`` empty policy
    (slice scores over slices with a non-empty consensus; nodule Dice pools all slices).

    Parameters
    ----------
    crops : CropSet
        Crops with ground-truth masks and a ``nodule_id`` column.
    binary : ndarray, shape (n, h, w)
        Predicted binary masks (nonzero = nodule).
    per_nodule : bool
        Also return ``per_nodule``: the ``nodule_id`` and ``dice`` lists of every nodule.

    Returns
    -------
    dict
        ``slice_dice`` (mean over slices with a non-empty consensus), ``slice_iou``,
        ``slice_precision``, ``slice_recall``, ``nodule_dice`` (mean 3-D Dice over nodules),
        ``nodule_dice_median``, ``accuracy`` and ``background_accuracy`` (pixel accuracy of the model
        and of predicting nothing), ``n_slices``, ``n_nodules``, ``n_empty_slices`` and
        ``n_empty_slices_kept_empty``, and ``empty_policy``.
    """
    scores = metrics.score_crops(
        crops.masks.astype(bool), np.asarray(binary).astype(bool), empty="separate", nodule_ids=crops.table["nodule_id"].to_numpy()
    )
    report, nodules = scores.report, scores.per_nodule
    result = {
        "slice_dice": report["dice"],
        "slice_iou": report["iou"],
        "slice_precision": report["precision"],
        "slice_recall": report["recall"],
        "nodule_dice": float(nodules["dice"].mean()),
        "nodule_dice_median": float(nodules["dice"].median()),
        "accuracy": scores.pooled_accuracy,
        "background_accuracy": report["background_accuracy"],
        "n_slices": report["n_images"],
        "n_nodules": int(nodules["dice"].notna().sum()),
        "n_empty_slices": report["n_true_empty"],
        "n_empty_slices_kept_empty": report["n_both_empty"],
        "empty_policy": "slice Dice over non-empty consensus slices; nodule Dice pools all slices",
    }
    if per_nodule:
        result["per_nodule"] = nodules[["nodule_id", "dice"]].to_dict(orient="list")
    return result


#: How every cross-validation fold model is scored: as trained, and with test-time augmentation
#: plus central-component post-processing (the same trained weights both times).
VARIANTS: dict[str, dict[str, bool]] = {"plain": {"tta": False, "postprocess": False}, "tta_pp": {"tta": True, "postprocess": True}}

def train_and_score_fold(
    crops: CropSet,
    recipe: Recipe,
    fold: int,
    *,
    n_folds: int = 4,
    seed: int = 0,
    variants: dict[str, dict[str, bool]] | None = None,
    images: np.ndarray | None = None,
) -> dict[str, Any]:
    """Train ``recipe`` on the other folds' patients and score fold ``fold``'s patients.

    Parameters
    ----------
    crops : CropSet
        Crops with ground-truth masks.
    recipe : Recipe
    fold : int
        Held-out fold, in ``[0, n_folds)``.
    n_folds, seed : int
        Patient-grouped folds over all patients (:func:`nodulekit.splits.all_patient_folds`); the training seed is
        ``seed + fold``.
    variants : dict, optional
        Name -> ``{"tta": bool, "postprocess": bool}``: each scores the same trained model
        (default :data:`VARIANTS`).
    images : ndarray, optional
        ``recipe.pipeline().apply(crops.images)``, when already computed.

    Returns
    -------
    dict
        Scores against ``crops.masks`` (the consensus) whatever ``recipe.targets`` trained on:
        ``recipe``, ``fold``, ``precision`` (Keras dtype policy), ``train_seconds``,
        ``recipe_fields``, ``history`` (per epoch), and per variant the
        :func:`score_predictions` dict plus ``per_nodule`` (``nodule_id`` and ``dice`` lists).
    """
    variants = VARIANTS if variants is None else variants
    if not 0 <= int(fold) < int(n_folds):
        raise InvalidParameterError(f"fold must be in [0, {n_folds}), got {fold!r}")
    images = recipe.pipeline().apply(crops.images) if images is None else images
    split = all_patient_folds(crops.groups, n_folds=n_folds, seed=seed)[int(fold)]
    train_idx, test_idx = split.train, split.test
    start = time.perf_counter()
    targets = training_targets(crops, recipe)[train_idx]
    model, history = train_recipe(images[train_idx], targets, crops.groups[train_idx], recipe, seed=seed + int(fold))
    seconds = time.perf_counter() - start
    test = crops.subset(test_idx)
    test_images = images[test_idx] if recipe.window is None else centre_windows(images[test_idx], recipe.window)
    if recipe.window is not None:
        test = CropSet(centre_windows(test.images, recipe.window), centre_windows(test.masks, recipe.window), test.table, units=test.units)
    result: dict[str, Any] = {
        "recipe": recipe.name,
        "fold": int(fold),
        "precision": keras.mixed_precision.global_policy().name,
        "train_seconds": seconds,
        "recipe_fields": recipe.to_dict(),
        "history": history.to_dict(orient="list"),
    }
    for variant, change in variants.items():
        _, binary = predict_recipe(model, test_images, recipe.replace(**change))
        result[variant] = score_predictions(test, binary, per_nodule=True)
    keras.backend.clear_session()
    return result


def cross_validate_all_patients(
    crops: CropSet,
    recipe: Recipe,
    *,
    n_folds: int = 4,
    folds: Sequence[int] | None = None,
    seed: int = 0,
    variants: dict[str, dict[str, bool]] | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Patient-grouped k-fold cross-validation of ``recipe`` over all patients of ``crops``, resumable fold by fold.

    The real-CT split (:func:`nodulekit.splits.all_patient_folds`): every patient is tested once.
    The paper protocol's cross-validation (k folds of the train + validation patients of a
    60/20/20 split, all scored on the same test patients) is
    :func:`nodulekit.training.run_development_folds`. Also available as ``cross_validate``.

    Parameters
    ----------
    crops : CropSet
        Crops with ground-truth masks (e.g. the LIDC PNG release at 64x64, 50 % consensus).
    recipe : Recipe
    n_folds : int
        Number of patient-grouped folds (the paper: 4).
    folds : sequence of int, optional
        Run only these folds (e.g. ``[0]`` for a quick look); all by default.
    seed : int
        Seeds the folds and every training run.
    variants : dict, optional
        How each fold model is scored (default :data:`VARIANTS`: as trained, and with TTA +
        post-processing).
    cache_dir : path, optional
        Each fold's :func:`train_and_score_fold` result is written to ``cache_dir/cv_<recipe>_fold<k>.json``
        and read back instead of retrained when present (a record made with other recipe fields,
        folds or seed is an error, not silently reused).

    Returns
    -------
    pandas.DataFrame
        One row per fold and variant: ``recipe``, ``fold``, ``variant``, the
        :func:`score_predictions` scores, ``train_seconds`` and ``precision``.
        ``df.attrs["per_nodule"]`` holds the per-nodule Dice of every held-out nodule as records
        (``pd.DataFrame(df.attrs["per_nodule"])``; plain lists, so tables concatenate).

    Raises
    ------
    RunFolderError
        A cached fold was made with another recipe, number of folds or seed.
    """
    variants = VARIANTS if variants is None else variants
    chosen = range(n_folds) if folds is None else [int(f) for f in folds]
    images = None
    rows, nodule_rows = [], []
    for fold in tqdm(chosen, desc=f"CV {recipe.name}", unit="fold", disable=not progress):
        path = None if cache_dir is None else Path(cache_dir) / f"cv_{recipe.name}_fold{fold}.json"
        if path is not None and path.is_file():
            result = read_json(path)
            _check_cached(result, result["recipe_fields"], recipe, variants=variants, path=path, n_folds=int(n_folds), seed=int(seed))
        else:
            images = recipe.pipeline().apply(crops.images) if images is None else images
            result = train_and_score_fold(crops, recipe, fold, n_folds=n_folds, seed=seed, variants=variants, images=images)
            result.update({"n_folds": int(n_folds), "seed": int(seed)})
            if path is not None:
                write_json(path, result)
        for variant in variants:
            scores = dict(result[variant])
            per_nodule = pd.DataFrame(scores.pop("per_nodule"))
            rows.append({"recipe": recipe.name, "fold": fold, "variant": variant, **scores, "train_seconds": result["train_seconds"], "precision": result.get("precision", "float32")})
            nodule_rows.append(per_nodule.assign(recipe=recipe.name, fold=fold, variant=variant))
            logger.info("%s fold %d %s: nodule Dice %.3f, slice Dice %.3f", recipe.name, fold, variant, scores["nodule_dice"], scores["slice_dice"])
    table = pd.DataFrame(rows)
    table.attrs["per_nodule"] = pd.concat(nodule_rows, ignore_index=True).to_dict(orient="records")
    return table


#: The name notebook 06, ``experiments/real_ct.py`` and the README use.
cross_validate = cross_validate_all_patients


def _check_cached(record: dict, fields: dict, recipe: Recipe, *, variants: dict, path: Path, **settings: Any) -> None:
    """Refuse a cached record made with other recipe ``fields``, other ``settings`` or without ``variants``.

    ``settings`` (e.g. ``n_folds=4, seed=0``) are compared with the record's values of the same
    names; a record from before a setting was stored is taken to have the current value.
    """

    def plain(r: Recipe) -> dict:  # as JSON stores it (tuples become lists)
        return json.loads(json.dumps(r.to_dict()))

    cached, current = plain(Recipe.from_dict(fields)), plain(recipe)  # new fields: defaults
    if cached != current:
        changed = sorted(k for k, v in current.items() if cached.get(k) != v)
        raise RunFolderError(f"cached result was made with other recipe fields ({', '.join(changed)}); delete it to redo it", path=path)
    other = {name: record[name] for name, value in settings.items() if record.get(name, value) != value}
    if other:
        raise RunFolderError(f"cached result was made with {', '.join(f'{k}={v}' for k, v in other.items())}", path=path)
    missing = [v for v in variants if v not in record]
    if missing:
        raise RunFolderError(f"cached result lacks the variants {missing}", path=path)


def synthetic_to_real(
    real: CropSet,
    recipe: Recipe,
    *,
    n_synthetic: int = 2000,
    seed: int = 0,
    variants: dict[str, dict[str, bool]] | None = None,
    cache: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Train ``recipe`` on the synthetic generator only and score it on every real crop.

    This measures how realistic :mod:`nodulekit.phantom` is: no real image is seen in training.

    Parameters
    ----------
    real : CropSet
        Real crops with ground truth (e.g. the LIDC release at 64x64, 50 % consensus).
    recipe : Recipe
    n_synthetic : int
        Synthetic 64x64 crops generated (:func:`nodulekit.phantom.generate_crops`, seeded).
    seed : int
        Seeds the generator and the training.
    variants : dict, optional
        As in :func:`cross_validate_all_patients`.
    cache : path, optional
        JSON record: read back instead of retrained when present (and made with the same recipe
        and ``n_synthetic``), written otherwise.

    Returns
    -------
    pandas.DataFrame
        One row per variant: ``recipe``, ``variant``, ``n_synthetic`` and the
        :func:`score_predictions` scores on ``real``.
    """
    variants = VARIANTS if variants is None else variants
    path = None if cache is None else Path(cache)
    if path is not None and path.is_file():
        result = read_json(path)
        _check_cached(result, result["recipe"], recipe, variants=variants, path=path, n_synthetic=int(n_synthetic), seed=int(seed))
    else:
        pipeline = recipe.pipeline()
        synthetic = generate_crops(int(n_synthetic), size=real.images.shape[1], seed=seed)
        start = time.perf_counter()
        model, history = train_recipe(pipeline.apply(synthetic.images), training_targets(synthetic, recipe), synthetic.groups, recipe, seed=seed)
        result = {"recipe": recipe.to_dict(), "n_synthetic": int(n_synthetic), "seed": int(seed), "train_seconds": time.perf_counter() - start, "history": history.to_dict(orient="list")}
        images = pipeline.apply(real.images)
        for variant, change in variants.items():
            _, binary = predict_recipe(model, images, recipe.replace(**change))
            result[variant] = score_predictions(real, binary)
        keras.backend.clear_session()
        if path is not None:
            write_json(path, result)
    return pd.DataFrame([{"recipe": recipe.name, "variant": v, "n_synthetic": int(n_synthetic), **result[v]} for v in variants])


def summarise_cv(table: pd.DataFrame, *, metrics_shown: Sequence[str] = ("nodule_dice", "slice_dice", "slice_precision", "slice_recall")) -> pd.DataFrame:
    """Mean ± sd over folds of :func:`cross_validate_all_patients` tables (concatenated), one row per recipe and variant.

    Returns
    -------
    pandas.DataFrame
        Index (recipe, variant); per metric ``<metric>`` formatted ``"0.784 ± 0.010"`` and
        ``<metric>_mean`` as a number, plus ``folds`` (how many folds the row averages).
    """
    grouped = table.groupby(["recipe", "variant"], sort=False)
    out = pd.DataFrame({"folds": grouped["fold"].nunique()})
    for metric in metrics_shown:
        mean, sd = grouped[metric].mean(), grouped[metric].std(ddof=1).fillna(0.0)
        out[metric] = [f"{m:.3f} ± {d:.3f}" for m, d in zip(mean, sd)]
        out[f"{metric}_mean"] = mean
    return out


def reader_versus_others(readers: np.ndarray, nodule_ids: np.ndarray, *, level: float = 0.5) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Each reader's crops and the ``level`` consensus of the other readers who marked the same nodule.

    Parameters
    ----------
    readers : ndarray of bool, shape (n, readers, rows, columns)
        Per-reader masks of ``n`` crops (a reader who did not mark the nodule has empty masks).
    nodule_ids : ndarray, shape (n,)
        The nodule each crop belongs to.
    level : float
        Consensus level of the other readers (:func:`nodulekit.readers.consensus_mask`).

    Yields
    ------
    reader : int
    keep : ndarray of bool, shape (n,)
        The crops of the nodules this reader marked and at least one other reader marked too.
    others : ndarray of bool, shape (keep.sum(), rows, columns)
        The other readers' consensus on those crops, the reference ``readers[keep, reader]`` is
        compared with.
    """
    drew = pd.DataFrame(readers.any(axis=(2, 3))).groupby(nodule_ids, sort=False).any()
    marked = drew.loc[nodule_ids].to_numpy()  # (n, readers): the reader marked this crop's nodule somewhere
    for reader in range(readers.shape[1]):
        rest = [k for k in range(readers.shape[1]) if k != reader]
        n_others = marked[:, rest].sum(axis=1)
        keep = marked[:, reader] & (n_others > 0)
        if keep.any():
            yield reader, keep, consensus_mask(readers[keep][:, rest], level=level, n_readers=n_others[keep]).astype(bool)


def reader_agreement(crops: CropSet, predicted: np.ndarray | None = None, *, level: float = 0.5) -> pd.DataFrame:
    """Each radiologist scored like a model, against the consensus of the other radiologists; and a model scored the same way.

    The human reference for per-nodule Dice. For every nodule and every reader who marked it, the
    reader's mask is compared with the ``level`` consensus of the *other* readers who marked it
    (:func:`nodulekit.readers.consensus_mask`; at 0.5 that is 2 of 3, 1 of 2 or the single other
    reader), as 3-D Dice pooled over the nodule's slices (:func:`nodulekit.metrics.per_nodule_dice`).
    Nodules marked by one reader only have no one to compare with and are left out.

    With ``predicted``, the model's masks are scored against exactly the same references: for each
    (nodule, left-out reader) row, ``model_dice`` compares the model with the consensus of the readers
    other than that one, the reference that reader's ``dice`` faces. ``model_dice - dice`` is then a
    paired, like-for-like comparison of the model with a radiologist (a model scored against the
    consensus of *all* readers faces one more reader than each radiologist does, an easier reference).

    Parameters
    ----------
    crops : CropSet
        Crops with ``reader_masks`` (e.g. :func:`nodulekit.readers.read_lidc_release`).
    predicted : ndarray, shape (n, rows, columns), optional
        A model's binary masks of the same crops (nonzero = nodule).
    level : float
        Consensus level of the other readers.

    Returns
    -------
    pandas.DataFrame
        One row per (nodule, marking reader): ``nodule_id``, ``reader``, ``other_readers`` (how many
        the consensus pools), ``dice`` and, with ``predicted``, ``model_dice``. Per-nodule means
        (``df.groupby("nodule_id")[["dice", "model_dice"]].mean()``) weigh every nodule once.

    Raises
    ------
    InvalidParameterError
        When ``crops`` has no per-reader masks, or ``predicted`` does not match the crops' shape.
    """
    if crops.reader_masks is None:
        raise InvalidParameterError("reader_agreement needs crops with per-reader masks (CropSet.reader_masks)")
    if predicted is not None and np.shape(predicted) != crops.masks.shape:
        raise InvalidParameterError(f"predicted masks have shape {np.shape(predicted)}, the crops' masks {crops.masks.shape}")
    readers = crops.reader_masks.astype(bool)  # (n, readers, rows, columns)
    ids = crops.table["nodule_id"].to_numpy()
    n_marked = pd.DataFrame(readers.any(axis=(2, 3))).groupby(ids, sort=False).any().sum(axis=1)  # readers per nodule
    columns = ["nodule_id", "reader", "other_readers", "dice"] + ([] if predicted is None else ["model_dice"])
    rows = []
    for reader, keep, others in reader_versus_others(readers, ids, level=level):
        scores = metrics.per_nodule_dice(others, readers[keep, reader], ids[keep], empty="exclude")
        scores["other_readers"] = n_marked.loc[scores["nodule_id"]].to_numpy() - 1  # this reader marked it too
        if predicted is not None:
            model = metrics.per_nodule_dice(others, np.asarray(predicted)[keep] != 0, ids[keep], empty="exclude")
            scores["model_dice"] = model.set_index("nodule_id")["dice"].reindex(scores["nodule_id"]).to_numpy()
        rows.append(scores.assign(reader=reader)[columns])
    if not rows:
        return pd.DataFrame(columns=columns)
    return pd.concat(rows, ignore_index=True)
