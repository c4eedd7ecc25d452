"""One unit of the protocol (a grid trial or a cross-validation fold): train, checkpoint, resume, score.

A unit owns one folder (layout in :mod:`nodulekit.training`). While it trains, ``state/`` holds
the resume point; every file is written to a temporary name and renamed into place, and
``state/state.json`` (written last in each epoch) names the files that belong to the epoch it
records, so a SIGKILL at any instant leaves either the previous epoch's state or the new one,
never a mix. When the unit ends, ``best.keras``, ``history.csv`` and ``metrics.json`` are written,
then the ``done`` marker (with the checkpoint's SHA-256), and ``state/`` is removed.

Training itself is one ``model.fit`` call (:func:`~nodulekit.training.callbacks.fit_model`); the
best checkpoint, the resume state and early stopping are Keras callbacks
(:mod:`nodulekit.training.callbacks`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..errors import RunFolderError
from ..precision import precision_policy
from ..runfolder import UnitFolder, file_sha256
from ..safety import load_model
from ..utils import atomic_write, copy_atomic, read_json, write_json
from .config import HISTORY_KEYS, NON_RESULT_FIELDS, SELECTION_ONLY_FIELDS, TrainConfig
from .data import batches_per_epoch, make_dataset
from .distributed import prepare_model_for_strategy

__all__ = ["UnitSpec", "UnitData", "train_unit", "load_finished", "unit_meta", "file_sha256", "unit_seed", "HISTORY_KEYS"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnitSpec:
    """What one unit trains.

    Attributes
    ----------
    phase : {"grid", "cv"}
        A grid-search trial (train on the train split, score on validation) or a cross-validation
        fold (train on the fold, checkpoint on its validation part, score on the test split).
    architecture : str
    learning_rate : float
    batch_size : int
    epochs : int
    fold : int, optional
        Fold number (cv only).
    """

    phase: str
    architecture: str
    learning_rate: float
    batch_size: int
    epochs: int
    fold: int | None = None

    @property
    def name(self) -> str:
        """Relative folder of the unit, e.g. ``grid/unet/lr=0.001_bs=16`` or ``cv/unet/fold-2``."""
        if self.phase == "grid":
            return f"grid/{self.architecture}/lr={self.learning_rate:g}_bs={self.batch_size}"
        return f"cv/{self.architecture}/fold-{self.fold}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "architecture": self.architecture,
            "learning_rate": float(self.learning_rate),
            "batch_size": int(self.batch_size),
            "epochs": int(self.epochs),
            "fold": self.fold,
        }


@dataclass
class UnitData:
    """Preprocessed arrays of one unit: ``(n, height, width)`` images and masks per split.

    ``fingerprint`` identifies the crops (their indices in the protocol's CropSet and a hash of the
    data), so a folder made from other data is never mistaken for this unit's.
    """

    train_images: np.ndarray
    train_masks: np.ndarray
    val_images: np.ndarray
    val_masks: np.ndarray
    test_images: np.ndarray | None = None
    test_masks: np.ndarray | None = None
    fingerprint: str = ""


def unit_seed(seed: int, spec: UnitSpec) -> int:
    """Seed of a unit. All grid trials of one architecture share it (same initial weights and
    shuffles, so the grid compares learning rates and batch sizes only); every fold has its own.
    It does not depend on which other units ran, so skipping or resuming units changes nothing."""
    key = f"{int(seed)}/{spec.phase}/{spec.architecture}/{spec.fold}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little") & 0x7FFFFFFF


# ------------------------------------------------------------------------------------------------
# Finished units


def unit_meta(spec: UnitSpec, config: TrainConfig, data: UnitData) -> dict[str, Any]:
    """What identifies a unit's results (``unit.json``, checked against its ``done`` marker): the
    spec, the configuration without :data:`~nodulekit.training.config.NON_RESULT_FIELDS` (speed
    and logging only, so a unit may resume under other values) and without
    :data:`~nodulekit.training.config.SELECTION_ONLY_FIELDS` (which trials run, not how), and the
    data fingerprint."""
    skip = NON_RESULT_FIELDS + SELECTION_ONLY_FIELDS
    values = {name: value for name, value in config.to_dict().items() if name not in skip}
    return {"spec": spec.to_dict(), "config": values, "data": data.fingerprint}


def load_finished(folder: str | os.PathLike, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a finished unit, or ``None`` when it must be (re)done.

    A unit counts as finished when its ``done`` marker exists, was written for the same unit
    (``meta``: spec, config, data fingerprint) and, for a successful unit, ``best.keras`` still has
    the SHA-256 recorded in the marker. A corrupted or missing checkpoint is logged and the unit is
    redone.
    """
    unit = UnitFolder(Path(folder))
    if not unit.done.exists():
        return None
    done = _read_for(unit.done, meta, what="done marker", then="redoing the unit")
    if done is None:
        return None
    try:
        record = read_json(unit.metrics)
    except (OSError, ValueError) as exc:
        logger.warning("%s: unreadable metrics (%s); redoing the unit", folder, exc)
        return None
    if done.get("status") == "ok":
        checkpoint = unit.checkpoint
        if not checkpoint.exists() or file_sha256(checkpoint) != done.get("checkpoint_sha256"):
            logger.warning("%s: checkpoint best.keras is missing or corrupted; redoing the unit", folder)
            return None
    return record


# ------------------------------------------------------------------------------------------------
# Training one unit


def train_unit(
    spec: UnitSpec,
    data: UnitData,
    *,
    folder: str | os.PathLike,
    config: TrainConfig,
    strategy=None,
    read_from: str | os.PathLike | None = None,
    on_epoch: Callable[[int, str], None] | None = None,
    verbose: int = 0,
    pause_after: int | None = None,
) -> dict[str, Any]:
    """Train one unit to completion (or resume it), keeping the lowest-validation-loss checkpoint.

    Parameters
    ----------
    spec : UnitSpec
    data : UnitData
    folder : path
        The unit's folder (created).
    config : TrainConfig
        The protocol: the unit trains ``config.recipe(spec.architecture, spec.learning_rate,
        spec.batch_size, phase=spec.phase)`` (model, loss, augmentation, threshold, early
        stopping) under its precision, seed and empty-mask policy.
    strategy : tf.distribute.Strategy, optional
        The model, its optimizer and ``compile`` are created inside ``strategy.scope()``.
    read_from : path, optional
        Folder to read the resume state and the finished marker from when it is not ``folder``
        (a non-chief worker of a multi-worker run reads the chief's and writes to scratch).
    on_epoch : callable, optional
        ``on_epoch(epochs_advanced, text)`` after each epoch (and once for skipped epochs): drives
        the protocol's progress bar.
    verbose : int
        Keras ``fit`` verbosity (0: quiet).
    pause_after : int, optional
        Stop after this many epochs without finishing (successive halving's rung): the resume
        state stays, so a later call without ``pause_after`` continues exactly where the unit
        stopped, as after an interruption. Such a record has ``status`` ``"paused"``, the history
        so far and no metrics. A unit that is finished, failed or stopped early is returned as usual.

    Returns
    -------
    dict
        One row of the results: the spec, ``status`` (``"ok"``, ``"failed"`` or ``"paused"``), ``reason``,
        ``epochs_run``, ``best_epoch``, ``best_val_loss``, ``seconds``, the validation metrics
        (``val_dice``, ...) and, for folds, the test metrics (``test_dice``, ...) and
        ``test_background_accuracy``; plus ``history`` (list of per-epoch dicts) and ``skipped``.
    """
    import keras

    from ..losses import get_loss, initial_output_bias
    from ..metrics import DiceCoefficient
    from ..models import build_model
    from .callbacks import BestCheckpoint, EpochRecord, ResumableEarlyStopping, UnitBackup, fit_model, new_state

    folder = Path(folder)
    source = Path(read_from) if read_from is not None else folder
    meta = unit_meta(spec, config, data)
    notify = on_epoch or (lambda advance, text: None)

    finished = load_finished(source, meta)
    if finished is not None:
        notify(spec.epochs, f"{spec.name} (done)")
        return {**finished, "skipped": True}

    folder.mkdir(parents=True, exist_ok=True)
    unit = UnitFolder(folder)
    state = _load_state(UnitFolder(source).state, meta)
    if state is None:
        _reset(folder)
    elif source != folder:
        _reset(folder)
        shutil.copytree(UnitFolder(source).state, unit.state)
    state_dir = unit.state
    state_dir.mkdir(exist_ok=True)
    _remove_leftovers(folder)
    write_json(unit.spec, meta)

    state = state or new_state(meta)
    if state["epoch"]:
        notify(state["epoch"], f"{spec.name} (resumed at epoch {state['epoch']})")
        logger.info("%s: resuming after epoch %d", spec.name, state["epoch"])

    seed = unit_seed(config.seed, spec)
    recipe = config.recipe(spec.architecture, spec.learning_rate, spec.batch_size, phase=spec.phase)
    height, width = data.train_images.shape[1:]
    keras.backend.clear_session()  # before the policy: clear_session also resets Keras's dtype policy
    with precision_policy(config.mixed_precision):
        keras.utils.set_random_seed(seed)
        scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
        with scope:
            options = dict(recipe.model_options)  # filters, output_bias and the other build_model options
            if options.get("output_bias") == "prior":
                options["output_bias"] = initial_output_bias(data.train_masks) if data.train_masks.any() else None
            model = build_model(recipe.architecture, (height, width, 1), **options)
            model.compile(
                optimizer=keras.optimizers.Adam(learning_rate=recipe.learning_rate),
                loss=get_loss(recipe.loss, **recipe.loss_options),
                metrics=[
                    keras.metrics.BinaryAccuracy(name="accuracy", threshold=recipe.threshold),
                    DiceCoefficient(
                        name="dice", threshold=recipe.threshold, empty="exclude" if config.empty == "separate" else config.empty
                    ),
                ],
                jit_compile=config.jit_compile,
            )
            prepare_model_for_strategy(model, strategy)
            if state["weights"]:  # restored by UnitBackup.on_train_begin; the optimizer must exist first
                model.optimizer.build(model.trainable_variables)
        replicas = strategy.num_replicas_in_sync if strategy is not None else 1

        def starves_a_replica(n: int) -> bool:
            # A last batch smaller than the replica count leaves a replica an empty batch, which
            # TensorFlow's CPU convolutions reject; such a batch is dropped (the final scores use
            # every crop).
            return 0 < n % spec.batch_size < replicas

        stopping = ResumableEarlyStopping(state, patience=recipe.early_stopping_patience)
        callbacks: list = [
            EpochRecord(state, learning_rate=spec.learning_rate),
            BestCheckpoint(state, directory=state_dir),
            stopping,
            UnitBackup(state, directory=state_dir),  # after the callbacks that change the state
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: state["failed"]
                or notify(1, f"{spec.name} epoch {epoch + 1}/{spec.epochs} val_loss {state['history'][-1]['val_loss']:.4f}")
            ),
        ]
        if config.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(unit.tensorboard)))
        last = spec.epochs if pause_after is None else min(pause_after, spec.epochs)
        if state["epoch"] < last and state["failed"] is None and not stopping.should_stop(epochs_done=state["epoch"]):
            drop = starves_a_replica(len(data.train_images))
            train = make_dataset(
                data.train_images,
                data.train_masks,
                batch_size=spec.batch_size,
                shuffle=True,
                augment=recipe.augmentation or False,
                seed=seed,
                epoch=state["epoch"],
                epochs=spec.epochs - state["epoch"],
                drop_remainder=drop,
            )
            validation = make_dataset(
                data.val_images,
                data.val_masks,
                batch_size=spec.batch_size,
                drop_remainder=starves_a_replica(len(data.val_images)),
            )
            _, out_of_memory = fit_model(
                model,
                train,
                validation_data=validation,
                initial_epoch=state["epoch"],
                epochs=last,
                steps_per_epoch=batches_per_epoch(len(data.train_images), spec.batch_size, drop_remainder=drop),
                callbacks=callbacks,
                verbose=verbose,
            )
            if out_of_memory is not None:
                state["failed"] = f"out of memory at epoch {state['epoch'] + 1} ({out_of_memory})"
            if state["failed"] is not None:
                logger.warning("%s: %s", spec.name, state["failed"])
    epoch = state["epoch"]
    del model
    keras.backend.clear_session()
    if pause_after is not None and epoch < spec.epochs and state["failed"] is None and not stopping.should_stop(epochs_done=epoch):
        return _paused(spec, state)
    stop_reason = stopping.reason
    if epoch < spec.epochs:
        notify(spec.epochs - epoch, f"{spec.name} stopped")
    return _finish(spec, data, folder, meta, state, config, stop_reason)


def _record(spec: UnitSpec, state: dict, *, status: str, reason: str) -> dict[str, Any]:
    """A unit's row from its state: the spec, status, reason, epochs run, best epoch and loss, seconds."""
    return {
        "unit": spec.name,
        **spec.to_dict(),
        "status": status,
        "reason": reason,
        "epochs_run": int(state["epoch"]),
        "best_epoch": state["best_epoch"],
        "best_val_loss": state["best_val_loss"] if state["best"] else math.nan,
        "seconds": round(float(state["seconds"]), 3),
    }


def _paused(spec: UnitSpec, state: dict) -> dict[str, Any]:
    """The record of a unit paused by ``pause_after`` (its resume state stays on disk)."""
    return {**_record(spec, state, status="paused", reason=""), "history": state["history"], "skipped": False}


def _finish(
    spec: UnitSpec,
    data: UnitData,
    folder: Path,
    meta: dict,
    state: dict,
    config: TrainConfig,
    stop_reason: str | None,
) -> dict[str, Any]:
    """Write best.keras, history.csv, metrics.json and the done marker (last); drop state/."""
    history = pd.DataFrame(state["history"], columns=["epoch", *HISTORY_KEYS, "seconds"])
    unit = UnitFolder(folder)
    with atomic_write(unit.history) as handle:
        history.to_csv(handle, index=False)
    record = _record(spec, state, status="ok", reason=stop_reason or "")
    checkpoint = unit.checkpoint
    if state["failed"] is None and state["best"] is None:
        state["failed"] = "no epoch gave a finite validation loss"
    if state["failed"] is not None:
        record.update(status="failed", reason=state["failed"])
        with contextlib.suppress(FileNotFoundError):
            checkpoint.unlink()
        done = {"status": "failed", "meta": meta, "reason": state["failed"]}
    else:
        copy_atomic(unit.state / state["best"], checkpoint)
        record.update(_evaluate(checkpoint, data, config))
        done = {"status": "ok", "meta": meta, "checkpoint_sha256": file_sha256(checkpoint)}
    record["history"] = state["history"]
    write_json(unit.metrics, record)
    write_json(unit.done, done)  # last: the unit counts as finished from here on
    shutil.rmtree(unit.state, ignore_errors=True)
    return {**record, "skipped": False}


def _evaluate(checkpoint: Path, data: UnitData, config: TrainConfig) -> dict[str, float]:
    """Score the kept checkpoint on validation (and test, when given) with the numpy metrics."""
    import keras

    from ..metrics import score_crops
    from ..models import predict_probabilities

    model = load_model(checkpoint)
    scores: dict[str, float] = {}
    splits = [("val", data.val_images, data.val_masks)]
    if data.test_images is not None:
        splits.append(("test", data.test_images, data.test_masks))
    for prefix, images, masks in splits:
        probabilities = predict_probabilities(model, images, batch_size=64)
        report = score_crops(masks, probabilities, threshold=config.threshold, empty=config.empty).report
        scores.update({f"{prefix}_{k}": _plain(v) for k, v in report.items() if _is_scalar(v) and k != "threshold"})
    del model
    keras.backend.clear_session()
    return scores


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _plain(value: Any) -> float | int:
    return int(value) if isinstance(value, (int, np.integer)) else float(value)


# ------------------------------------------------------------------------------------------------
# State files


def _load_state(state_dir: Path, meta: dict) -> dict | None:
    """The saved resume state, or ``None`` if absent, made for another unit, or corrupted."""
    path = state_dir / "state.json"
    if not path.exists():
        return None
    state = _read_for(path, meta, what="resume state", then="restarting the unit")
    if state is None:
        return None
    for key in ("weights", "best"):
        name = state.get(key)
        if name and (not (state_dir / name).exists() or file_sha256(state_dir / name) != state.get(f"{key}_sha256")):
            logger.warning("%s: %s is missing or corrupted; restarting the unit", state_dir, name)
            return None
    state["best_val_loss"] = math.inf if state.get("best_val_loss") is None else float(state["best_val_loss"])
    return state


def _read_for(path: Path, meta: dict, *, what: str, then: str) -> dict | None:
    """The JSON record at ``path`` when it is readable and was written for ``meta``; else ``None``
    (logged as ``"<path>: unreadable <what> ...; <then>"`` or ``"... of other settings or data"``)."""
    try:
        record = read_json(path)
    except (OSError, ValueError) as exc:
        logger.warning("%s: unreadable %s (%s); %s", path, what, exc, then)
        return None
    if record.get("meta") != meta:
        logger.warning("%s: %s of other settings or data; %s", path, what, then)
        return None
    return record


def _reset(folder: Path) -> None:
    """Remove everything a previous, unusable attempt left in a unit folder."""
    unit = UnitFolder(folder)
    for name in UnitFolder.FILES:
        with contextlib.suppress(FileNotFoundError):
            (unit.path / name).unlink()
    shutil.rmtree(unit.state, ignore_errors=True)
    shutil.rmtree(unit.tensorboard, ignore_errors=True)


def _remove_leftovers(folder: Path) -> None:
    """Delete temporary files a killed writer left behind (never named by any state)."""
    for pattern in (".tmp-*", ".*.tmp"):
        for path in [*folder.glob(pattern), *UnitFolder(folder).state.glob(pattern)]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
