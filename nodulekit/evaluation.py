"""Honest accuracy on radiologist-annotated crops: recipes, patient-grouped CV, per-nodule Dice.

A :class:`Recipe` is everything that decides a model's accuracy — architecture and options, loss,
optimiser settings, training length, augmentation, preprocessing, test-time augmentation (TTA) and
post-processing — as one serialisable object. :func:`cross_validate` trains it on k-1 patient folds
and scores the held-out patients, per slice and per nodule (3-D Dice pooled over a nodule's slices,
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

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import keras
import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm.auto import tqdm

from . import losses as losses_module
from . import metrics
from .dataset import CropSet
from .errors import InvalidParameterError
from .models import build_model
from .preprocessing import Pipeline
from .splits import patient_kfold, patient_split
from .utils import as_rng, set_seed

__all__ = [
    "Recipe",
    "PAPER_RECIPE",
    "AugmentedSequence",
    "dihedral_tta",
    "model_predictor",
    "keep_central_component",
    "postprocess",
    "train_recipe",
    "predict_recipe",
    "score_predictions",
    "cross_validate",
]

logger = logging.getLogger(__name__)


@dataclass
class Recipe:
    """Everything that decides a segmentation model's accuracy, serialisable with :meth:`to_dict`.

    Attributes
    ----------
    name : str
        Label in result tables.
    architecture : {"unet", "attention_unet"}
    model_options : dict
        Keyword options of :func:`nodulekit.models.build_model` (``batch_norm``, ``dropout``,
        ``filters``, ...). ``output_bias="prior"`` starts the output at the training masks'
        foreground fraction (:func:`nodulekit.losses.initial_output_bias`).
    loss : str
        A :func:`nodulekit.losses.get_loss` name; ``loss_options`` its keyword options.
    learning_rate, batch_size, epochs : float, int, int
        Adam's learning rate, images per step and passes over the training crops.
    augment : bool
        Random dihedral flips/rotations and a small intensity jitter on every training batch.
    preprocessing : dict
        A :class:`nodulekit.preprocessing.Pipeline` config (applied to every crop before the model).
    tta : bool
        Average the probabilities of the 8 flips/rotations of every crop at prediction time.
    postprocess : bool
        Keep the predicted component at (or nearest to) the crop centre and fill its holes.
    threshold : float
        Probability threshold for the binary mask.
    validation_fraction : float
        Share of the training patients held out to keep the weights of the lowest validation loss
        (the paper keeps the model with the lowest validation loss).
    """

    name: str = "paper"
    architecture: str = "unet"
    model_options: dict = field(default_factory=dict)
    loss: str = "focal_tversky"
    loss_options: dict = field(default_factory=lambda: {"fn_weight": 0.7, "fp_weight": 0.3, "gamma": 0.75})
    learning_rate: float = 1e-3
    batch_size: int = 16
    epochs: int = 30
    augment: bool = False
    preprocessing: dict = field(default_factory=lambda: {"steps": [{"name": "to_grayscale"}, {"name": "median_filter", "size": 3}, {"name": "zscore", "per_image": True}]})
    tta: bool = False
    postprocess: bool = False
    threshold: float = 0.5
    validation_fraction: float = 0.15

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON-able values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Recipe":
        """Rebuild a recipe from :meth:`to_dict` output (unknown keys are an error)."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise InvalidParameterError(f"unknown recipe fields {unknown}")
        return cls(**values)

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def pipeline(self) -> Pipeline:
        """The preprocessing :class:`Pipeline` of this recipe."""
        return Pipeline.from_config(self.preprocessing)


#: The paper's recipe: U-Net, focal Tversky (0.7/0.3/0.75), Adam 1e-3, batch 16, 30 epochs,
#: gray -> median -> per-image z-score, no augmentation, no TTA, no post-processing.
PAPER_RECIPE = Recipe()


# --------------------------------------------------------------------------------------------------
# Data feeding (backend-agnostic)


class AugmentedSequence(keras.utils.PyDataset):
    """Shuffled batches of (image, mask) with optional dihedral and intensity augmentation.

    Parameters
    ----------
    images, masks : ndarray, shape (n, height, width)
        Preprocessed images and binary masks.
    batch_size : int
    augment : bool
        Random flips / 90-degree rotations (the 8 symmetries of the square) per image, and an
        intensity jitter ``x * (1 + 0.1 u) + 0.1 v`` with u, v standard normal per image.
    seed : int
        Seeds the shuffle and the augmentation.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, *, batch_size: int, augment: bool, seed: int = 0):
        super().__init__()
        self.images = np.asarray(images, dtype=np.float32)[..., np.newaxis]
        self.masks = np.asarray(masks, dtype=np.float32)[..., np.newaxis]
        self.batch_size = int(batch_size)
        self.augment = bool(augment)
        self.rng = as_rng(seed)
        self.order = self.rng.permutation(len(self.images))

    def __len__(self) -> int:
        return int(np.ceil(len(self.images) / self.batch_size))

    def __getitem__(self, index: int):
        take = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        x, y = self.images[take], self.masks[take]
        if self.augment:
            x, y = x.copy(), y.copy()
            for i in range(len(take)):
                k, flip = self.rng.integers(4), self.rng.integers(2)
                x[i], y[i] = _dihedral(x[i], k, flip), _dihedral(y[i], k, flip)
            gain = 1.0 + 0.1 * self.rng.standard_normal((len(take), 1, 1, 1))
            shift = 0.1 * self.rng.standard_normal((len(take), 1, 1, 1))
            x = (x * gain + shift).astype(np.float32)
        return x, y

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.images))


def _dihedral(image: np.ndarray, k: int, flip: int) -> np.ndarray:
    out = np.rot90(image, k, axes=(0, 1))
    return out[:, ::-1] if flip else out


def dihedral_tta(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    """Mean probability over the 8 flips/rotations of each image (each mapped back before averaging).

    Parameters
    ----------
    predict : callable
        Maps square images ``(n, h, w)`` to probabilities ``(n, h, w)`` (e.g. :func:`model_predictor`).
    images : ndarray, shape (n, h, w)
        Square images, preprocessed or raw as ``predict`` expects (flips commute with the
        per-image steps of the paper's pipeline).

    Returns
    -------
    ndarray of float32, shape (n, h, w)
    """
    images = np.asarray(images, dtype=np.float32)
    total = np.zeros(images.shape, dtype=np.float64)
    for k in range(4):
        for flip in range(2):
            view = np.ascontiguousarray(np.stack([_dihedral(im, k, flip) for im in images]))
            pred = np.asarray(predict(view))
            total += np.rot90(pred[:, :, ::-1] if flip else pred, -k, axes=(1, 2))
    return (total / 8.0).astype(np.float32)


def model_predictor(model: keras.Model, *, batch_size: int = 128) -> Callable[[np.ndarray], np.ndarray]:
    """A function ``(n, h, w) -> (n, h, w)`` probabilities from a one-channel segmentation model."""

    def predict(images: np.ndarray) -> np.ndarray:
        batch = np.asarray(images, np.float32)[..., np.newaxis]
        return _first_output(model.predict(batch, batch_size=batch_size, verbose=0))[..., 0]

    return predict


def _first_output(prediction):
    return prediction[0] if isinstance(prediction, (list, tuple)) else prediction


# --------------------------------------------------------------------------------------------------
# Post-processing


def keep_central_component(mask: np.ndarray) -> np.ndarray:
    """Keep the 8-connected component at the image centre, or the one nearest to it; fill its holes.

    Parameters
    ----------
    mask : ndarray of bool, shape (h, w)

    Returns
    -------
    ndarray of bool, shape (h, w)
        Empty when ``mask`` is empty.
    """
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    centre = ((h - 1) / 2.0, (w - 1) / 2.0)
    if count > 1:
        rows, cols = np.nonzero(labels)
        distance = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2
        best = np.zeros(count + 1) + np.inf
        np.minimum.at(best, labels[rows, cols], distance)
        keep = labels == int(np.argmin(best))
    else:
        keep = labels == 1
    return ndimage.binary_fill_holes(keep)


def postprocess(probabilities: np.ndarray, *, threshold: float = 0.5) -> np.ndarray:
    """Binarise and apply :func:`keep_central_component` to every crop; returns uint8 (n, h, w)."""
    binary = np.asarray(probabilities) >= threshold
    return np.stack([keep_central_component(m) for m in binary]).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Train, predict, score


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
        Preprocessed images (``recipe.pipeline()`` already applied) and binary masks.
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
        options["output_bias"] = losses_module.initial_output_bias(masks[train_idx])
    side = images.shape[1:3]
    model = build_model(recipe.architecture, (*side, 1), **options)
    model.compile(
        optimizer=keras.optimizers.Adam(recipe.learning_rate),
        loss=losses_module.get_loss(recipe.loss, **recipe.loss_options),
        metrics=[metrics.DiceCoefficient()],
    )
    train = AugmentedSequence(images[train_idx], masks[train_idx], batch_size=recipe.batch_size, augment=recipe.augment, seed=seed)
    callbacks = [keras.callbacks.TerminateOnNaN()]
    validation = None
    if len(val_idx):
        validation = (images[val_idx][..., np.newaxis], masks[val_idx][..., np.newaxis].astype(np.float32))
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=recipe.epochs + 1, restore_best_weights=True))
    history = model.fit(train, epochs=recipe.epochs, validation_data=validation, callbacks=callbacks, verbose=verbose)
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


def score_predictions(crops: CropSet, binary: np.ndarray) -> dict[str, Any]:
    """Per-slice and per-nodule scores of binary predictions against ``crops.masks``.

    Returns
    -------
    dict
        ``slice_dice`` (mean over slices with a non-empty consensus), ``slice_iou``,
        ``slice_precision``, ``slice_recall``, ``nodule_dice`` (mean 3-D Dice over nodules),
        ``nodule_dice_median``, ``accuracy`` and ``background_accuracy`` (pixel accuracy of the model
        and of predicting nothing), ``n_slices``, ``n_nodules``, ``n_empty_slices`` and
        ``n_empty_slices_kept_empty``, and ``empty_policy``.
    """
    truth = crops.masks.astype(bool)
    pred = np.asarray(binary).astype(bool)
    nonempty = truth.reshape(len(truth), -1).any(axis=1)
    per_slice = metrics.per_image_scores(truth[nonempty], pred[nonempty], empty="exclude")
    nodules = metrics.per_nodule_dice(truth, pred, crops.table["nodule_id"].to_numpy(), empty="exclude")
    pred_empty = ~pred.reshape(len(pred), -1).any(axis=1)
    return {
        "slice_dice": float(per_slice["dice"].mean()),
        "slice_iou": float(per_slice["iou"].mean()),
        "slice_precision": float(np.nanmean(per_slice["precision"])),
        "slice_recall": float(np.nanmean(per_slice["recall"])),
        "nodule_dice": float(nodules["dice"].mean()),
        "nodule_dice_median": float(nodules["dice"].median()),
        "accuracy": float(metrics.accuracy(truth, pred)),
        "background_accuracy": float(metrics.background_accuracy(truth)),
        "n_slices": int(len(truth)),
        "n_nodules": int(nodules["dice"].notna().sum()),
        "n_empty_slices": int((~nonempty).sum()),
        "n_empty_slices_kept_empty": int((~nonempty & pred_empty).sum()),
        "empty_policy": "slice Dice over non-empty consensus slices; nodule Dice pools all slices",
    }


def cross_validate(
    crops: CropSet,
    recipe: Recipe,
    *,
    n_folds: int = 4,
    folds: Sequence[int] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Patient-grouped k-fold cross-validation of ``recipe`` on ``crops``.

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

    Returns
    -------
    pandas.DataFrame
        One row per fold: the recipe name, the fold, :func:`score_predictions` output and the
        training time in seconds. ``df.attrs["per_nodule"]`` holds the per-nodule Dice of every
        held-out nodule.
    """
    pipeline = recipe.pipeline()
    images = pipeline.apply(crops.images)
    split = patient_kfold(crops.groups, n_folds=n_folds, seed=seed)
    chosen = range(n_folds) if folds is None else list(folds)
    rows, nodule_rows = [], []
    for fold in tqdm(chosen, desc=f"CV {recipe.name}", unit="fold", disable=not progress):
        train_idx, test_idx = split[fold]
        start = time.perf_counter()
        model, _ = train_recipe(images[train_idx], crops.masks[train_idx], crops.groups[train_idx], recipe, seed=seed + fold)
        seconds = time.perf_counter() - start
        test = crops.subset(test_idx)
        _, binary = predict_recipe(model, images[test_idx], recipe)
        scores = score_predictions(test, binary)
        rows.append({"recipe": recipe.name, "fold": fold, **scores, "train_seconds": seconds})
        per_nodule = metrics.per_nodule_dice(test.masks, binary, test.table["nodule_id"].to_numpy(), empty="exclude")
        nodule_rows.append(per_nodule.assign(recipe=recipe.name, fold=fold))
        logger.info("%s fold %d: nodule Dice %.3f, slice Dice %.3f (%.0f s)", recipe.name, fold, scores["nodule_dice"], scores["slice_dice"], seconds)
        keras.backend.clear_session()
    table = pd.DataFrame(rows)
    table.attrs["per_nodule"] = pd.concat(nodule_rows, ignore_index=True)
    return table
