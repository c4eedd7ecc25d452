"""The study behind the notebooks: the data, the run's tables turned into the paper's answers.

The notebooks ``notebooks/01_preprocess.ipynb`` ... ``05_results.ipynb`` stay thin (parameters,
one or two library calls per cell, a figure); what they need beyond :mod:`nodulekit.training`,
:mod:`nodulekit.metrics` and :mod:`nodulekit.plots` lives here:

* the data and the configuration every notebook shares (:func:`load_study_data`,
  :func:`study_config`, :func:`example_slice`, :func:`paper_style_inputs`), so that all five
  notebooks work in one run folder;
* the held-out predictions of every fold model (:func:`predict_held_out`) and the all-background
  baseline any score must beat (:func:`baseline_scores`);
* tables: the grid as the paper would print it (:func:`grid_table`), the overfitting gap
  (:func:`overfitting_gap`), per-fold metrics beside the baseline (:func:`fold_metrics_table`), the
  paired U-Net vs Attention U-Net test over folds (:func:`paired_comparison`) and the one-page
  summary (:func:`summary_table`);
* ``results.json`` (:func:`write_results_json`) and the list of figures made (:func:`figure_index`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from . import readers
from .crops import center_crop, crops_from_volume
from .dataset import CropSet, Volume
from .errors import DataFormatError, InvalidParameterError, MissingDataError
from .phantom import generate_crops, generate_slice
from .preprocessing import Pipeline
from .risk import load_risk_table, synthetic_risk_table
from .runfolder import RunFolder
from .safety import load_model
from .training import TrainConfig
from .utils import read_json, write_json

if TYPE_CHECKING:  # Keras loads TensorFlow: imported only inside the functions that need it
    import keras

__all__ = [
    "PAPER_VALUES",
    "COMPARED_METRICS",
    "STUDY_FIGURES",
    "study_config",
    "load_study_data",
    "describe_crops",
    "example_slice",
    "paper_style_inputs",
    "mark_selected",
    "grid_table",
    "overfitting_gap",
    "HeldOutPredictions",
    "held_out_crops",
    "predict_held_out",
    "load_fold_model",
    "best_fold",
    "baseline_scores",
    "fold_metrics_table",
    "pick_examples",
    "example_titles",
    "paired_comparison",
    "risk_data",
    "summary_table",
    "figure_index",
    "missing_figures",
    "write_results_json",
]

logger = logging.getLogger(__name__)

#: Patients read from a real LIDC PNG release in QUICK mode (the full run reads all).
QUICK_PATIENTS = 12

#: What the paper and the literature report, for the summary table (see ``PAPER.md``).
PAPER_VALUES: dict[str, str] = {
    "accuracy": "0.94 (paper, Fig. 5)",
    "dice": "0.804 / 0.856 (Abraham & Khan 2019, BUS / ISIC); 0.82 (LIDC, Wang 2017)",
    "learning_rate": "chosen by grid (1e-4, 1e-3, 1e-2)",
    "batch_size": "chosen by grid (8, 16, 32)",
}

#: Every figure the notebook series writes (``figures/<name>``), by notebook. The paper's figures
#: keep its numbers (Fig. 1-5); the others carry a letter after the paper figure they belong to.
STUDY_FIGURES: dict[str, tuple[str, ...]] = {
    "01_preprocess": (
        "fig01_lung_ct.png",
        "fig01b_research_stages.png",
        "fig01c_data_crops.png",
        "fig01d_preprocessing_steps.png",
    ),
    "02_hyperparameter_search": ("fig04a_grid_search.png",),
    "03_train": ("fig04_training_curves.png", "fig04b_dice_curves.png"),
    "04_evaluate": (
        "fig05a_fold_metrics.png",
        "fig02_segmentation.png",
        "fig02b_worst_cases.png",
        "fig02c_attention_maps.png",
    ),
    "05_results": ("fig05_accuracy.png", "fig05b_unet_vs_attention.png", "fig03_risk_heatmap*.png", "fig06_summary.png"),
}

#: Test metrics compared between the models (``test_<name>`` columns of the folds table).
COMPARED_METRICS = ("dice", "iou", "precision", "recall", "accuracy")


# ------------------------------------------------------------------------------------------------
# Data and configuration


def study_config(*, quick: bool = False, seed: int = 0, **overrides: Any) -> TrainConfig:
    """The :class:`~nodulekit.training.TrainConfig` every notebook of the series uses.

    The full run uses the paper's protocol (:class:`~nodulekit.training.TrainConfig` defaults: the
    3x3 grid with every trial trained fully, 4 folds, 30 epochs, 1,200 synthetic crops); QUICK is
    :meth:`TrainConfig.quick() <nodulekit.training.TrainConfig.quick>` (the same path: the full grid
    for both models, 2 folds, on 96 crops with narrow models, 1 epoch per trial and 2 per fold; its
    numbers mean nothing). All notebooks must build the same configuration: a run folder refuses
    a second one.

    Parameters
    ----------
    quick : bool
        QUICK mode (tiny data, few epochs).
    seed : int
        Seed of the split, the folds, the weights and the shuffles.
    **overrides
        Any other :class:`~nodulekit.training.TrainConfig` field.

    Returns
    -------
    nodulekit.training.TrainConfig
    """
    values = {"seed": int(seed), **overrides}
    return TrainConfig.quick(**values) if quick else TrainConfig(**values)


def load_study_data(
    data_dir: str | os.PathLike | None = None,
    *,
    quick: bool = False,
    seed: int = 0,
    crop_size: int = 64,
    n_synthetic: int | None = None,
) -> CropSet:
    """The crops the study trains on: synthetic chest CT by default, or a real folder.

    Parameters
    ----------
    data_dir : path, optional
        ``None``: :func:`nodulekit.phantom.generate_crops` (the study's default data). Otherwise
        anything :func:`nodulekit.readers.read_any` reads: the LIDC-IDRI PNG release (in QUICK
        mode only its first :data:`QUICK_PATIENTS` patients), the paper's ``images/`` + ``masks/``
        folder, a CropSet ``.npz``, or a CT series with annotations (cut into crops around each
        nodule with :func:`nodulekit.crops.crops_from_volume`).
    quick : bool
        QUICK mode: fewer synthetic crops / patients.
    seed : int
        Seed of the synthetic data.
    crop_size : int
        Side of the crops (the paper's 64): larger crops are centre-cropped, volumes cut to it.
    n_synthetic : int, optional
        Number of synthetic crops; default ``study_config(quick=quick).synthetic_crops``.

    Returns
    -------
    CropSet

    Raises
    ------
    MissingDataError
        ``data_dir`` does not exist or holds nothing readable.
    DataFormatError
        ``data_dir`` holds no nodule crops and no annotated volume.
    """
    if data_dir is None:
        count = n_synthetic if n_synthetic is not None else study_config(quick=quick, seed=seed).synthetic_crops
        return generate_crops(int(count), size=crop_size, seed=seed)
    options: dict[str, Any] = {"crop_size": crop_size, "progress": False}
    if quick:
        options["patients"] = QUICK_PATIENTS
    data = readers.read_any(data_dir, **options)
    if isinstance(data, Volume):
        if data.mask is None and data.nodules is None:
            raise DataFormatError("the volume has neither a nodule mask nor a nodule table to cut crops from", path=data_dir)
        data = crops_from_volume(data, size=crop_size)
    if not isinstance(data, CropSet) or len(data) == 0:
        raise DataFormatError("no nodule crops found", path=data_dir)
    if data.images.shape[1:] != (crop_size, crop_size):
        data = CropSet(
            images=center_crop(data.images, crop_size),
            masks=center_crop(data.masks, crop_size, pad_value=0),
            table=data.table,
            reader_masks=None if data.reader_masks is None else center_crop(data.reader_masks, crop_size, pad_value=0),
            units=data.units,
        )
    logger.info("study data from %s: %r", data_dir, data)
    return data


def describe_crops(crops: CropSet) -> pd.DataFrame:
    """What a CropSet holds, in one column: counts, crop size, units and how much of it is nodule.

    Returns
    -------
    pandas.DataFrame
        Index: ``crops``, ``patients``, ``nodules``, ``crop size``, ``units``, ``crops without
        nodule pixels``, ``median nodule pixels``, ``background fraction`` (the pixel accuracy of
        predicting no nodule anywhere); one column ``value``.
    """
    pixels = crops.masks.reshape(len(crops), -1).sum(1)
    values = {
        "crops": len(crops),
        "patients": int(crops.table["patient_id"].nunique()),
        "nodules": int(crops.table["nodule_id"].nunique()),
        "crop size": "x".join(map(str, crops.images.shape[1:])),
        "units": crops.units,
        "crops without nodule pixels": int((pixels == 0).sum()),
        "median nodule pixels": float(np.median(pixels)) if len(pixels) else math.nan,
        "background fraction": round(float(np.mean(crops.masks == 0)), 4) if len(crops) else math.nan,
    }
    return pd.DataFrame({"value": pd.Series(values, dtype=object)})


def example_slice(data_dir: str | os.PathLike | None = None, *, seed: int = 0, n_nodules: int = 3) -> Volume:
    """A whole axial CT slice with nodules, for the paper's Fig. 1 and the preprocessing figure.

    A synthetic 512x512 slice (:func:`nodulekit.phantom.generate_slice`) unless ``data_dir`` holds
    an annotated CT series (DICOM + LIDC XML, LUNA16), whose slice with the most nodule pixels is
    returned. A folder of crops has no whole slice, so the synthetic one is used then too.

    Returns
    -------
    Volume
        One slice (``hu`` of shape (1, rows, columns)) with its nodule mask.
    """
    if data_dir is not None:
        volume = readers.read_any(data_dir, patients=1, progress=False)
        if isinstance(volume, Volume) and volume.mask is not None and volume.mask.any():
            index = int(np.argmax(volume.mask.reshape(len(volume.hu), -1).sum(1)))
            return Volume(
                hu=volume.hu[index : index + 1],
                spacing=volume.spacing,
                mask=volume.mask[index : index + 1],
                # only what stays true of one slice (per-reader masks and z positions refer to the series)
                meta={k: volume.meta[k] for k in ("source", "patient_id") if k in volume.meta} | {"slice_index": index},
            )
    return generate_slice(seed=seed, n_nodules=n_nodules)


def paper_style_inputs(
    volume: Volume, *, size: int = 128, window: tuple[float, float] = (-600.0, 1500.0)
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's raw inputs from a CT slice: RGB display crops around each nodule.

    The paper cut its crops by hand from exported colour images; this reproduces that input, a
    ``size`` x ``size`` RGB crop (lung window, 8 bit, three equal channels) around each nodule of
    the slice, so that every preprocessing step (centre crop to 64, grayscale, median filter,
    histogram equalisation, z-score) has something to do.

    Parameters
    ----------
    volume : Volume
        A slice with a nodule mask (e.g. :func:`example_slice`).
    size : int
        Side of the crops (larger than the network's 64 so the crop step shows).
    window : (center, width)
        Display window in HU.

    Returns
    -------
    images : ndarray of uint8, shape (n, size, size, 3)
    masks : ndarray of uint8, shape (n, size, size)
    """
    if volume.mask is None or not volume.mask.any():
        raise InvalidParameterError("paper_style_inputs needs a volume with at least one nodule in its mask")
    crops = crops_from_volume(volume, size=size, slices="centre")
    center, width = window
    scaled = np.clip((crops.images - (center - width / 2)) / width, 0.0, 1.0)
    grey = np.round(scaled * 255.0).astype(np.uint8)
    keep = crops.masks.reshape(len(crops), -1).any(1)
    return np.repeat(grey[keep][..., None], 3, axis=-1), crops.masks[keep]


# ------------------------------------------------------------------------------------------------
# Grid and training tables


def mark_selected(grid: pd.DataFrame, selection: pd.DataFrame) -> pd.DataFrame:
    """A copy of the grid table whose ``selected`` column marks each architecture's chosen trial."""
    grid = grid.copy()
    chosen = {(r.architecture, float(r.learning_rate), int(r.batch_size)) for r in selection.itertuples()}
    grid["selected"] = [
        (r.architecture, float(r.learning_rate), int(r.batch_size)) in chosen for r in grid.itertuples()
    ]
    return grid


def grid_table(grid: pd.DataFrame, *, metric: str = "val_dice") -> pd.DataFrame:
    """The grid as the paper would print it: one row per model and learning rate, one column per batch.

    Cells hold ``metric`` to three decimals; a failed trial shows ``"failed: <reason>"`` and the
    chosen trial is starred.

    Parameters
    ----------
    grid : pandas.DataFrame
        The ``grid`` table of :func:`nodulekit.training.grid_search` / ``run_protocol``.
    metric : str
        Column to show.

    Returns
    -------
    pandas.DataFrame
        Index (architecture, learning rate), columns ``batch <size>``.
    """
    if metric not in grid:
        raise InvalidParameterError(f"grid table has no column {metric!r}")

    def cell(row) -> str:
        if row.status != "ok":
            return f"failed: {row.reason}"
        text = f"{float(getattr(row, metric)):.3f}"
        return text + " *" if bool(getattr(row, "selected", False)) else text

    table = grid.assign(cell=[cell(r) for r in grid.itertuples()])
    pivot = table.pivot_table(
        index=["architecture", "learning_rate"], columns="batch_size", values="cell", aggfunc="first", sort=False
    )
    pivot.columns = [f"batch {int(c)}" for c in pivot.columns]
    pivot.index.names = ["architecture", "learning rate"]
    return pivot


def overfitting_gap(histories: pd.DataFrame, *, phase: str = "cv") -> pd.DataFrame:
    """The overfitting gap of the paper's Fig. 4 in numbers, per architecture (mean over folds).

    For the last epoch and for the epoch each fold kept (lowest validation loss): training and
    validation loss, accuracy and Dice and the gaps (training minus validation for accuracy and
    Dice, validation minus training for the loss, so a positive gap means overfitting).

    Parameters
    ----------
    histories : pandas.DataFrame
        The ``histories`` table of :func:`nodulekit.training.run_protocol`.
    phase : {"cv", "grid"}

    Returns
    -------
    pandas.DataFrame
        One row per architecture: ``epochs``, ``best_epoch`` (mean over folds), ``train_loss``,
        ``val_loss``, ``loss_gap``, ``train_accuracy``, ``val_accuracy``, ``accuracy_gap``,
        ``train_dice``, ``val_dice``, ``dice_gap`` (last epoch) and ``dice_gap_at_best``.
    """
    table = histories[histories["phase"] == phase]
    if table.empty:
        raise InvalidParameterError(f"histories has no rows for phase {phase!r}")
    rows = []
    for architecture, part in table.groupby("architecture", sort=False):
        last, best = [], []
        for _, unit in part.groupby(["fold", "learning_rate", "batch_size"], dropna=False):
            unit = unit.sort_values("epoch")
            last.append(unit.iloc[-1])
            best.append(unit.loc[unit["val_loss"].astype(float).idxmin()])
        last, best = pd.DataFrame(last), pd.DataFrame(best)
        row = {"architecture": architecture, "epochs": int(part["epoch"].max()), "best_epoch": float(best["epoch"].mean())}
        for name in ("loss", "accuracy", "dice"):
            row[f"train_{name}"] = float(last[name].mean())
            row[f"val_{name}"] = float(last[f"val_{name}"].mean())
            gap = last[f"val_{name}"] - last[name] if name == "loss" else last[name] - last[f"val_{name}"]
            row[f"{name}_gap"] = float(gap.mean())
        row["dice_gap_at_best"] = float((best["dice"] - best["val_dice"]).mean())
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# Held-out predictions


@dataclass
class HeldOutPredictions:
    """Every fold model's predictions on the held-out test patients of a run.

    Attributes
    ----------
    images : ndarray, shape (n, h, w)
        The test crops as read (HU, 8 bit, ...), for display.
    inputs : ndarray of float32, shape (n, h, w)
        The same crops after the run's preprocessing, as the models saw them.
    masks : ndarray of uint8, shape (n, h, w)
        Ground truth.
    table : pandas.DataFrame
        The crops' table rows (patient, nodule, slice, ...).
    probabilities : dict of (str, int) to ndarray
        ``{(architecture, fold): (n, h, w) float32}``.
    scores : pandas.DataFrame
        One row per model and crop: architecture, fold, crop (index into the arrays), patient_id,
        nodule_id, slice_index and :func:`nodulekit.metrics.per_image_scores`' columns.
    threshold : float
        Probability above which a pixel is nodule.
    empty : str
        Empty-mask policy of the scores.
    """

    images: np.ndarray
    inputs: np.ndarray
    masks: np.ndarray
    table: pd.DataFrame
    probabilities: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    scores: pd.DataFrame | None = None
    threshold: float = 0.5
    empty: str = "one"

    def prediction(self, architecture: str, fold: int) -> np.ndarray:
        """Binary masks (uint8) of one fold model."""
        return (self.probabilities[(architecture, int(fold))] > self.threshold).astype(np.uint8)


def load_fold_model(run_dir: str | os.PathLike, architecture: str, fold: int) -> keras.Model:
    """The kept (lowest validation loss) model of one cross-validation fold of a run.

    Raises
    ------
    MissingDataError
        The fold has not finished (no ``done`` marker or no ``best.keras``).
    """
    unit = RunFolder(run_dir).fold(architecture, fold)
    if not unit.is_finished():
        raise MissingDataError(
            "fold not finished (no done marker or best.keras); run the cross-validation first", path=unit.path
        )
    return load_model(unit.checkpoint)


def held_out_crops(crops: CropSet, *, run_dir: str | os.PathLike) -> CropSet:
    """The crops of the run's held-out test patients (as recorded in ``run_dir/data.json``).

    Raises
    ------
    MissingDataError
        The run has no ``data.json`` yet, or none of its test patients is in ``crops``.
    """
    path = RunFolder(run_dir).data
    if not path.exists():
        raise MissingDataError("run folder lacks data.json; run the protocol first", path=run_dir)
    patients = sorted(read_json(path)["split"]["test"])
    index = np.flatnonzero(np.isin(crops.groups.astype(str), patients))
    if index.size == 0:
        raise MissingDataError(
            f"none of the run's test patients ({', '.join(patients[:3])}, ...) is in the given crops", path=run_dir
        )
    return crops.subset(index)


def best_fold(folds: pd.DataFrame, architecture: str, *, metric: str = "val_dice") -> int:
    """The fold of ``architecture`` with the highest ``metric`` (chosen on validation, never on test)."""
    part = folds[(folds["architecture"] == architecture) & (folds["status"] == "ok")]
    if part.empty:
        raise InvalidParameterError(f"no finished fold of {architecture!r} in the table")
    return int(part.loc[part[metric].astype(float).idxmax(), "fold"])


def predict_held_out(crops: CropSet, *, run_dir: str | os.PathLike, batch_size: int = 64) -> HeldOutPredictions:
    """Predict the run's test patients with every finished fold model and score each crop.

    The test patients are those recorded in ``run_dir/data.json``; the crops are preprocessed
    with the run's own ``preprocessing.json``, and scored with its threshold and empty-mask policy
    (``config.json``).

    Parameters
    ----------
    crops : CropSet
        The study's data (the same the run was trained on).
    run_dir : path
        A run folder with finished cross-validation folds.
    batch_size : int
        Crops per forward pass.

    Returns
    -------
    HeldOutPredictions

    Raises
    ------
    MissingDataError
        The run has no ``data.json`` / ``preprocessing.json`` or no finished fold, or none of the
        test patients is in ``crops``.
    """
    from .metrics import score_crops
    from .models import predict_probabilities

    run = RunFolder(run_dir)
    for path in (run.data, run.preprocessing, run.config):
        if not path.exists():
            raise MissingDataError(f"run folder lacks {path.name}; run the protocol first", path=run.root)
    config = read_json(run.config)
    test = held_out_crops(crops, run_dir=run.root)
    inputs = Pipeline.load(run.preprocessing).apply(test.images)
    threshold, empty = float(config.get("threshold", 0.5)), str(config.get("empty", "one"))
    if empty == "separate":
        empty = "exclude"
    result = HeldOutPredictions(
        images=test.images, inputs=inputs, masks=test.masks, table=test.table, threshold=threshold, empty=empty
    )
    frames = []
    for architecture, fold in run.finished_folds():
        if read_json(run.fold(architecture, fold).done).get("status") != "ok":
            continue
        model = load_fold_model(run.root, architecture, fold)
        probabilities = predict_probabilities(model, inputs, batch_size=batch_size)
        result.probabilities[(architecture, fold)] = probabilities
        frame = score_crops(test.masks, probabilities, threshold=threshold, empty=empty).per_image
        frame.insert(0, "slice_index", test.table["slice_index"].to_numpy())
        frame.insert(0, "nodule_id", test.table["nodule_id"].to_numpy())
        frame.insert(0, "patient_id", test.table["patient_id"].to_numpy())
        frame.insert(0, "crop", np.arange(len(test)))
        frame.insert(0, "fold", fold)
        frame.insert(0, "architecture", architecture)
        frames.append(frame)
    if not frames:
        raise MissingDataError("no finished cross-validation fold in the run", path=run.root / "cv")
    order = {name: k for k, name in enumerate(config.get("architectures", []))}
    result.scores = pd.concat(frames, ignore_index=True).sort_values(
        ["architecture", "fold", "crop"], key=lambda s: s.map(order) if s.name == "architecture" else s
    ).reset_index(drop=True)
    result.probabilities = dict(sorted(result.probabilities.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])))
    return result


def baseline_scores(masks: np.ndarray, *, empty: str = "one") -> dict[str, float]:
    """Scores of the all-background prediction (no nodule anywhere): the floor every model must beat.

    Its pixel accuracy is the background fraction (92-98 % on nodule crops); its pooled Dice is 0;
    its mean Dice is the share of crops whose ground truth is empty when ``empty="one"`` (an empty
    prediction of an empty mask scores 1), else 0.

    Parameters
    ----------
    masks : ndarray, shape (n, h, w)
        Ground truth.
    empty : {"one", "zero", "exclude", "separate"}
        As in :func:`nodulekit.metrics.segmentation_report`.

    Returns
    -------
    dict
        ``dice, iou, precision, recall, accuracy, global_dice, background_accuracy, n_images,
        n_true_empty``.
    """
    from .metrics import score_crops

    masks = np.asarray(masks)
    report = score_crops(masks, np.zeros(masks.shape, np.float32), empty=empty).report
    keys = ("dice", "iou", "precision", "recall", "accuracy", "global_dice", "background_accuracy")
    return {k: report[k] for k in (*keys, "n_images", "n_true_empty")}


def fold_metrics_table(
    folds: pd.DataFrame, *, baseline: dict[str, float] | None = None, metrics: Sequence[str] = COMPARED_METRICS
) -> pd.DataFrame:
    """Per model and fold: test Dice, IoU, precision, recall, pixel accuracy, with the baseline beside.

    Parameters
    ----------
    folds : pandas.DataFrame
        The ``folds`` table of the run.
    baseline : dict, optional
        :func:`baseline_scores` of the test masks: added as a last row ``all background``.
    metrics : sequence of str

    Returns
    -------
    pandas.DataFrame
        Columns architecture, fold, the metrics and ``background_accuracy`` (the all-background
        accuracy of the same crops).
    """
    columns = [f"test_{m}" for m in metrics]
    missing = [c for c in columns if c not in folds]
    if missing:
        raise InvalidParameterError(f"folds table lacks columns {missing}")
    table = folds[folds["status"] == "ok"][["architecture", "fold", *columns, "test_background_accuracy"]].copy()
    table.columns = ["architecture", "fold", *metrics, "background_accuracy"]
    table["fold"] = table["fold"].astype(int).astype(str)
    if baseline is not None:
        row = {"architecture": "all background", "fold": "-", **{m: baseline[m] for m in metrics}}
        row["background_accuracy"] = baseline["background_accuracy"]
        table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
    return table.reset_index(drop=True)


def pick_examples(
    scores: pd.DataFrame, *, n: int = 6, which: str = "best", metric: str = "dice", nonempty: bool = True, seed: int = 0
) -> np.ndarray:
    """Crop indices to show: the ``n`` best, worst or random crops by ``metric``, one per nodule.

    Parameters
    ----------
    scores : pandas.DataFrame
        Rows of one model (``HeldOutPredictions.scores`` of one architecture and fold).
    n : int
    which : {"best", "worst", "random"}
    metric : str
    nonempty : bool
        Only crops whose ground truth has a nodule (an empty crop shows no segmentation).
    seed : int
        For ``which="random"``.

    Returns
    -------
    ndarray of int
        Values of the ``crop`` column, at most ``n``.
    """
    if which not in ("best", "worst", "random"):
        raise InvalidParameterError(f"which must be 'best', 'worst' or 'random', got {which!r}")
    part = scores[~scores["true_empty"]] if nonempty else scores
    if which == "random":
        part = part.sample(frac=1.0, random_state=seed)
    else:
        part = part.sort_values([metric, "crop"], ascending=[which == "worst", True])
    if part["nodule_id"].nunique() >= n:
        part = part.drop_duplicates("nodule_id")
    return part["crop"].to_numpy()[: int(n)].astype(int)


def example_titles(scores: pd.DataFrame, crops: Sequence[int], *, metric: str = "dice") -> list[str]:
    """Panel titles ``"nodule-3 slice 12: Dice 0.83"`` for the given crops of one model's scores."""
    rows = scores.set_index("crop").loc[list(crops)]
    titles = []
    for row in rows.itertuples():
        where = str(row.nodule_id).split("/")[-1] + (f" slice {row.slice_index}" if hasattr(row, "slice_index") else "")
        titles.append(f"{where}: {metric.capitalize()} {getattr(row, metric):.2f}")
    return titles


# ------------------------------------------------------------------------------------------------
# U-Net vs Attention U-Net


def paired_comparison(
    folds: pd.DataFrame,
    *,
    first: str = "unet",
    second: str = "attention_unet",
    metrics: Sequence[str] = COMPARED_METRICS,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Paired tests of two architectures over cross-validation folds (paired t-test and Wilcoxon).

    Fold k of both models trained on the same patients and was scored on the same test patients,
    so the folds pair up. The paired t-test decides the ``conclusion``; the Wilcoxon signed-rank
    test is reported beside it as the check that does not assume normal differences, but with 4
    folds it cannot go below p = 0.125 (two-sided, exact). With so few folds, and folds that share
    their test patients, "no significant difference" is the expected, honest outcome unless the
    gap is large and consistent.

    Parameters
    ----------
    folds : pandas.DataFrame
        The ``folds`` table (architecture, fold, status, ``test_<metric>``).
    first, second : str
        The architectures compared; differences are ``second - first``.
    metrics : sequence of str
    alpha : float
        Significance level of the ``conclusion`` column.

    Returns
    -------
    pandas.DataFrame
        One row per metric: n_folds, ``mean_<first>``, ``mean_<second>``, mean_difference,
        sd_difference (ddof=1), t, p_t_test, p_wilcoxon and conclusion (from the t-test).

    Raises
    ------
    InvalidParameterError
        An architecture or metric is not in the table, or the two share no fold.
    """
    from scipy import stats

    if not 0 < alpha < 1:
        raise InvalidParameterError(f"alpha must be in (0, 1), got {alpha!r}")
    usable = folds[folds["status"] == "ok"]
    for name in (first, second):
        if name not in set(usable["architecture"]):
            raise InvalidParameterError(f"architecture {name!r} has no finished fold in the table")
    rows = []
    for metric in metrics:
        column = f"test_{metric}"
        if column not in usable:
            raise InvalidParameterError(f"folds table has no column {column!r}")
        a = usable[usable["architecture"] == first].set_index("fold")[column].astype(float)
        b = usable[usable["architecture"] == second].set_index("fold")[column].astype(float)
        paired = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
        if paired.empty:
            raise InvalidParameterError(f"{first} and {second} share no finished fold")
        difference = paired["b"] - paired["a"]
        n = len(paired)
        sd = float(difference.std(ddof=1)) if n > 1 else math.nan
        t, p_t = math.nan, math.nan
        if n > 1 and sd > 0:
            result = stats.ttest_rel(paired["b"], paired["a"])
            t, p_t = float(result.statistic), float(result.pvalue)
        elif n > 1 and sd == 0 and float(difference.mean()) == 0:
            t, p_t = 0.0, 1.0
        p_w = math.nan
        if n > 0 and (difference != 0).any():
            p_w = float(stats.wilcoxon(paired["b"], paired["a"]).pvalue)
        elif n > 0:
            p_w = 1.0
        rows.append(
            {
                "metric": metric,
                "n_folds": n,
                f"mean_{first}": float(paired["a"].mean()),
                f"mean_{second}": float(paired["b"].mean()),
                "mean_difference": float(difference.mean()),
                "sd_difference": sd,
                "t": t,
                "p_t_test": p_t,
                "p_wilcoxon": p_w,
                "conclusion": _conclusion(float(difference.mean()), p_t, p_w, first, second, alpha),
            }
        )
    return pd.DataFrame(rows)


def _conclusion(difference: float, p_t: float, p_w: float, first: str, second: str, alpha: float) -> str:
    if math.isnan(p_t):
        return "not testable (fewer than two folds)"
    if p_t >= alpha:
        return f"no significant difference (paired t-test, alpha {alpha:g})"
    return f"{second if difference > 0 else first} higher (paired t-test, alpha {alpha:g})"


# ------------------------------------------------------------------------------------------------
# Risk factors


def risk_data(path: str | os.PathLike | None = None, *, seed: int = 0) -> pd.DataFrame:
    """The risk-factor table of Fig. 3: the real Kaggle CSV when ``path`` is given, else synthetic.

    See :func:`nodulekit.risk.load_risk_table` and :func:`nodulekit.risk.synthetic_risk_table`.
    """
    return load_risk_table(path) if path else synthetic_risk_table(seed=seed)


# ------------------------------------------------------------------------------------------------
# Summary and results.json


def summary_table(
    results: dict[str, pd.DataFrame],
    *,
    comparison: pd.DataFrame | None = None,
    gap: pd.DataFrame | None = None,
    baseline: dict[str, float] | None = None,
    data: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """The study on one page: per architecture the choices, the test scores, the gap and the test.

    Parameters
    ----------
    results : dict of DataFrame
        The run's tables (``selection``, ``summary``, ``grid``, ``folds``).
    comparison : pandas.DataFrame, optional
        :func:`paired_comparison` (its Dice row is summarised).
    gap : pandas.DataFrame, optional
        :func:`overfitting_gap`.
    baseline : dict, optional
        :func:`baseline_scores` of the test masks.
    data : dict, optional
        The run's ``data.json`` (crop and patient counts).

    Returns
    -------
    pandas.DataFrame
        Index: the quantities; columns: one per architecture, ``all background`` (the baseline)
        and ``paper / literature``.
    """
    selection = results["selection"].set_index("architecture")
    summary = results["summary"]
    grid = results["grid"]
    folds = results["folds"]
    architectures = list(selection.index)
    rows: dict[str, dict[str, str]] = {}

    def put(quantity: str, values: dict[str, str], base: str = "", paper: str = "") -> None:
        rows[quantity] = {**values, "all background": base, "paper / literature": paper}

    if data:
        count = f"{data.get('n_crops', '?')} crops of {data.get('n_patients', '?')} patients"
        put("data", {a: count for a in architectures})
    rates = {a: f"{selection.loc[a, 'learning_rate']:g}" for a in architectures}
    put("learning rate (grid)", rates, paper=PAPER_VALUES["learning_rate"])
    batches = {a: str(int(selection.loc[a, "batch_size"])) for a in architectures}
    put("batch size (grid)", batches, paper=PAPER_VALUES["batch_size"])
    trials = {a: f"{int((t['status'] == 'ok').sum())} / {int((t['status'] != 'ok').sum())}" for a, t in grid.groupby("architecture")}
    put("grid trials ok / failed", trials)
    runs = {a: folds[folds["architecture"] == a] for a in architectures}
    put("folds x epochs run", {a: f"{len(f)} x {int(f['epochs_run'].max())}" for a, f in runs.items()}, paper="4 x 30")
    labels = {
        "dice": "test Dice (mean ± sd over folds)",
        "iou": "test IoU",
        "precision": "test precision",
        "recall": "test recall",
        "accuracy": "test pixel accuracy",
        "background_accuracy": "all-background accuracy (same crops)",
    }
    for metric, label in labels.items():
        part = summary[summary["metric"] == metric].set_index("architecture")
        if part.empty:
            continue
        base = ""
        if baseline is not None and metric in baseline:
            base = f"{baseline[metric]:.3f}"
        values = {a: str(part.loc[a, "text"]) if a in part.index else "" for a in architectures}
        put(label, values, base, PAPER_VALUES.get(metric, ""))
    if gap is not None:
        gap = gap.set_index("architecture")
        put(
            "overfitting gap, last epoch (train - val Dice)",
            {a: f"{gap.loc[a, 'dice_gap']:+.3f}" for a in architectures if a in gap.index},
            paper="read from Fig. 4 (no number given)",
        )
    if comparison is not None and (comparison["metric"] == "dice").any():
        row = comparison[comparison["metric"] == "dice"].iloc[0]
        text = (
            f"diff {row['mean_difference']:+.3f}, t-test p = {row['p_t_test']:.3g}, "
            f"Wilcoxon p = {row['p_wilcoxon']:.3g}: {row['conclusion']}"
        )
        values = {a: "" for a in architectures[:-1]} | {architectures[-1]: text}
        put("paired test over folds (Dice)", values, paper="attention gate claimed better")
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "quantity"
    return table.fillna("")


def figure_index(folder: str | os.PathLike) -> list[str]:
    """Names of the figures (``fig*.png``) in ``folder``, sorted; empty when it does not exist."""
    folder = Path(folder)
    return sorted(p.name for p in folder.glob("fig*.png")) if folder.is_dir() else []


def missing_figures(folder: str | os.PathLike, notebooks: Sequence[str] | None = None) -> list[str]:
    """The figures of :data:`STUDY_FIGURES` (of the given notebooks, default all) not in ``folder``."""
    import fnmatch

    present = figure_index(folder)
    wanted = [name for key, names in STUDY_FIGURES.items() if notebooks is None or key in notebooks for name in names]
    return [name for name in wanted if not fnmatch.filter(present, name)]


def write_results_json(
    path: str | os.PathLike,
    *,
    results: dict[str, pd.DataFrame],
    comparison: pd.DataFrame | None = None,
    summary: pd.DataFrame | None = None,
    baseline: dict[str, float] | None = None,
    figures: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the study's results as one JSON file (atomically) and return its path.

    Holds the run's tables (``selection``, ``summary``, ``folds``, ``grid`` without histories),
    the paired comparison, the baseline, the one-page summary, the list of figures, and ``extra``
    (configuration, data, timings).
    """
    def records(table: pd.DataFrame) -> list[dict]:
        return json.loads(table.to_json(orient="records"))

    names = ("selection", "summary", "folds", "grid")
    document: dict[str, Any] = {name: records(results[name]) for name in names if name in results}
    if comparison is not None:
        document["paired_comparison"] = records(comparison)
    if baseline is not None:
        document["all_background_baseline"] = {k: float(v) for k, v in baseline.items()}
    if summary is not None:
        document["summary_table"] = json.loads(summary.to_json(orient="index"))
    document["figures"] = list(figures)
    document.update(extra or {})
    write_json(path, document)
    return Path(path)
