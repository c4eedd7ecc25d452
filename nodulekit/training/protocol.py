"""The paper's protocol end to end: patient split, grid search, model selection, k-fold CV, tables.

See :mod:`nodulekit.training` for the run-folder layout and the guarantees (resume, atomicity,
reproducibility).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..dataset import CropSet
from ..phantom import generate_crops
from ..errors import InvalidParameterError, MissingDataError, NodulekitError, TrainingError
from ..precision import resolve_precision
from ..preprocessing import CenterCrop, paper_pipeline
from ..readers import read_any
from ..runfolder import RunFolder
from ..splits import development_folds
from ..utils import atomic_write, configure_logging, copy_atomic, read_json, set_seed, write_json
from .config import TrainConfig
from .distributed import make_strategy, worker_role
from .units import HISTORY_KEYS, UnitData, UnitSpec, load_finished, train_unit, unit_meta
from .workers import resolve_workers, run_units_in_workers

__all__ = [
    "run_protocol",
    "grid_search",
    "run_development_folds",
    "select_hyperparameters",
    "summarize_folds",
    "load_results",
    "main",
    "build_parser",
    "train_command",
    "RESULT_TABLES",
    "SUMMARY_METRICS",
]

logger = logging.getLogger(__name__)

#: Tables returned by :func:`run_protocol` and saved in ``results/``.
RESULT_TABLES = ("grid", "selection", "folds", "summary", "histories")

#: Test metrics summarised as mean ± sd over folds (``test_<name>`` columns of the folds table).
SUMMARY_METRICS = ("dice", "iou", "precision", "recall", "accuracy", "background_accuracy")



class _Protocol:
    """Prepared data, splits and run folder of one protocol run (shared by the public functions)."""

    def __init__(
        self,
        crops: CropSet | None,
        *,
        run_dir: str | os.PathLike,
        config: TrainConfig | None = None,
        pipeline=None,
        strategy=None,
        progress: bool = True,
        verbose: int = 0,
    ):
        self.config = config if config is not None else TrainConfig()
        self.strategy = strategy
        self.verbose = verbose
        self.run = RunFolder(run_dir)
        self.run_dir = self.run.root
        self.is_chief, task = worker_role(strategy)
        if self.is_chief:
            self.run.check_writable()
            self.write_dir = self.run_dir
        else:  # a non-chief worker mirrors the chief into scratch space (see distributed.py)
            self.write_dir = Path(tempfile.mkdtemp(prefix=f"nodulekit-worker-{task}-"))
        set_seed(self.config.seed, deterministic_ops=self.config.deterministic)

        if crops is None:
            crops = generate_crops(self.config.synthetic_crops, seed=self.config.seed)
        if not isinstance(crops, CropSet):
            raise TrainingError(f"crops must be a CropSet, got {type(crops).__name__}")
        crops = _limit_crops(crops, self.config.max_crops, self.config.seed)
        self.pipeline = pipeline if pipeline is not None else paper_pipeline()
        crops = _crop_like(crops, self.pipeline)
        self.images = self.pipeline.apply(crops.images)
        multiple = 2 ** (len(self.config.filters) - 1)
        rows, columns = self.images.shape[1:]
        if rows % multiple or columns % multiple:
            raise InvalidParameterError(
                f"crops are {rows}x{columns}; a {len(self.config.filters)}-level U-Net needs sides that are "
                f"multiples of {multiple}: crop or pad them first (e.g. crop_size=64 in the reader)"
            )
        self.masks = crops.masks
        self.groups = crops.groups
        self.crops = crops
        self.fingerprint = _fingerprint(self.images, self.masks, self.groups)

        plan = development_folds(self.groups, fractions=self.config.fractions, n_folds=self.config.n_folds, seed=self.config.seed)
        self.train, self.val, self.test = plan.train, plan.val, plan.test
        self.folds = [(fold.train, fold.validation) for fold in plan.folds]
        self._check_folder()

        total = _grid_epochs_counted(self.config)
        total += len(self.config.architectures) * self.config.n_folds * self.config.epochs
        self.bar = tqdm(total=total, desc="protocol", unit="epoch", disable=not (progress and self.is_chief), smoothing=0.1)

    # -- run folder ---------------------------------------------------------------------------
    def _check_folder(self) -> None:
        """Refuse a run folder made with another configuration or other data; else record ours."""
        config_file, data_file = self.run.config, self.run.data
        if config_file.exists():
            differences = self.config.result_differences(TrainConfig.load(config_file))
            if differences:
                raise TrainingError(
                    f"run folder was made with another configuration (differs in {differences}); "
                    "use a new run_dir or the same configuration",
                    path=self.run_dir,
                )
        if data_file.exists() and read_json(data_file).get("fingerprint") != self.fingerprint:
            raise TrainingError(
                "run folder was made with other data or preprocessing; use a new run_dir", path=self.run_dir
            )
        if not self.is_chief:
            return
        self.config.save(config_file)
        self.pipeline.save(self.run.preprocessing)
        write_json(
            data_file,
            {
                "fingerprint": self.fingerprint,
                "n_crops": int(len(self.images)),
                "crop_shape": list(self.images.shape[1:]),
                "units": self.crops.units,
                "n_patients": int(len(np.unique(self.groups))),
                "split": {
                    name: sorted(map(str, np.unique(self.groups[index])))
                    for name, index in (("train", self.train), ("val", self.val), ("test", self.test))
                },
                "folds": [sorted(map(str, np.unique(self.groups[hold]))) for _, hold in self.folds],
            },
        )

    # -- units --------------------------------------------------------------------------------
    def grid_spec(self, architecture: str, learning_rate: float, batch_size: int) -> UnitSpec:
        return UnitSpec("grid", architecture, float(learning_rate), int(batch_size), self.config.trial_epochs)

    def grid_specs(self) -> list[UnitSpec]:
        return [
            self.grid_spec(architecture, learning_rate, batch_size)
            for architecture in self.config.architectures
            for learning_rate in self.config.learning_rates
            for batch_size in self.config.batch_sizes
        ]

    def unit_data(self, spec: UnitSpec) -> UnitData:
        if spec.phase == "grid":
            train, val, test = self.train, self.val, None
        else:
            (train, val), test = self.folds[spec.fold], self.test
        parts = [self.fingerprint] + [",".join(map(str, i)) for i in (train, val) + (() if test is None else (test,))]
        return UnitData(
            train_images=self.images[train],
            train_masks=self.masks[train],
            val_images=self.images[val],
            val_masks=self.masks[val],
            test_images=None if test is None else self.images[test],
            test_masks=None if test is None else self.masks[test],
            fingerprint=hashlib.sha256("|".join(parts).encode()).hexdigest()[:16],
        )

    def _advance(self, epochs: int, text: str) -> None:
        self.bar.update(epochs)
        self.bar.set_postfix_str(text, refresh=False)

    def run_unit(self, spec: UnitSpec, *, pause_after: int | None = None) -> dict[str, Any]:
        return train_unit(
            spec,
            self.unit_data(spec),
            folder=RunFolder(self.write_dir).unit(spec.name).path,
            config=self.config,
            strategy=self.strategy,
            read_from=None if self.is_chief else self.run.unit(spec.name).path,
            on_epoch=self._advance,
            verbose=self.verbose,
            pause_after=pause_after,
        )

    def run_grid(self, *, size_bar: bool = True) -> list[dict[str, Any]]:
        """Every grid trial's record, in grid order; with ``config.grid_halving = (rung, keep)``
        every trial first trains ``rung`` epochs and only each architecture's best ``keep`` go on
        (the others get status ``"stopped"``; see :func:`halving_survivors`)."""
        specs = self.grid_specs()
        if size_bar:
            self.bar.total = _grid_epochs_counted(self.config)
        if self.config.grid_halving is None:
            return self.run_units(specs, size_bar=False)
        rung, keep = self.config.grid_halving
        at_rung = self.run_units(specs, size_bar=False, pause_after=rung)
        survivors = halving_survivors(at_rung, rung=rung, keep=keep)
        finished = iter(self.run_units([spec for spec, go_on in zip(specs, survivors) if go_on], size_bar=False))
        return [next(finished) if go_on else _stopped(record, rung) for record, go_on in zip(at_rung, survivors)]

    def run_units(self, specs: list[UnitSpec], *, size_bar: bool = True, pause_after: int | None = None) -> list[dict[str, Any]]:
        """Run ``specs`` (side by side in ``config.workers`` processes, or one after the other in
        this one); the records in the order of ``specs``. ``size_bar``: size the progress bar to
        their epochs (:func:`run_protocol` sizes it once for the whole run). ``pause_after``: as in
        :func:`~nodulekit.training.units.train_unit`."""
        if size_bar:
            self.bar.total = sum(spec.epochs for spec in specs)
        workers = resolve_workers(self.config.workers, units=len(specs), strategy=self.strategy) if self.is_chief else 1
        todo = [i for i, spec in enumerate(specs) if not self._finished(spec)] if workers > 1 else []
        workers = min(workers, len(todo))  # finished units are skipped here, not in a worker
        if workers <= 1:
            return [self.run_unit(spec, pause_after=pause_after) for spec in specs]
        trained = run_units_in_workers(
            [specs[i] for i in todo],
            [self.unit_data(specs[i]) for i in todo],
            [self.run.unit(specs[i].name).path for i in todo],
            config=self.config,
            workers=workers,
            notify=self._advance,
            pause_after=pause_after,
        )
        records = dict(zip(todo, trained))
        return [records[i] if i in records else self.run_unit(spec) for i, spec in enumerate(specs)]  # finished: skipped here

    def _finished(self, spec: UnitSpec) -> bool:
        return load_finished(self.run.unit(spec.name).path, unit_meta(spec, self.config, self.unit_data(spec))) is not None

    def close(self) -> None:
        self.bar.close()
        if not self.is_chief:
            shutil.rmtree(self.write_dir, ignore_errors=True)

    def __enter__(self) -> "_Protocol":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------
# Public API


def grid_search(
    crops: CropSet | None = None,
    *,
    run_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    pipeline=None,
    strategy=None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train every (architecture, learning rate, batch size) of the grid; one row per trial.

    Trials train on the train split and are scored on the validation split with their
    lowest-validation-loss checkpoint. Finished trials are skipped, an interrupted one resumes.

    The arguments are :func:`run_protocol`'s; the result is the grid table it describes.
    """
    with _Protocol(crops, run_dir=run_dir, config=config, pipeline=pipeline, strategy=strategy, progress=progress) as protocol:
        return _grid_table(protocol.run_grid())


def halving_survivors(records: list[dict], *, rung: int, keep: int) -> list[bool]:
    """Successive halving's rule: which grid trials train on after ``rung`` epochs.

    Per architecture, the ``keep`` trials with the highest :func:`rung_score` go on (ties: the
    earlier trial in grid order); a failed trial never does.

    Parameters
    ----------
    records : list of dict
        One per grid trial (``architecture`` and ``history`` at least), in grid order.
    rung, keep : int
        :attr:`TrainConfig.grid_halving <nodulekit.training.TrainConfig.grid_halving>`.

    Returns
    -------
    list of bool
        Parallel to ``records``.
    """
    go_on = [False] * len(records)
    by_architecture: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_architecture.setdefault(record["architecture"], []).append(i)
    for trials in by_architecture.values():
        scores = {i: rung_score(records[i], rung) for i in trials if records[i]["status"] != "failed"}
        ranked = sorted((i for i, score in scores.items() if math.isfinite(score)), key=lambda i: -scores[i])  # stable: grid order breaks ties
        for i in ranked[:keep]:
            go_on[i] = True
    return go_on


def rung_score(record: dict, rung: int) -> float:
    """A trial's score at successive halving's rung: its validation Dice (the Keras epoch metric)
    at its lowest validation loss among the first ``rung`` epochs, i.e. of the weights the protocol
    would keep had the trial stopped there; NaN when no such epoch has a finite loss."""
    seen = [entry for entry in record.get("history", []) if entry["epoch"] <= rung and math.isfinite(entry["val_loss"])]
    if not seen:
        return math.nan
    return float(min(seen, key=lambda entry: entry["val_loss"])["val_dice"])


def _stopped(record: dict, rung: int) -> dict:
    """The grid record of a trial that successive halving stopped at ``rung``."""
    if record["status"] == "failed":
        return record
    kept = {k: v for k, v in record.items() if not k.startswith(("val_", "test_")) or k == "best_val_loss"}
    score = rung_score(record, rung)
    return {**kept, "status": "stopped", "reason": f"successive halving: not among the best at epoch {rung} (val_dice {score:.4f})"}


def _grid_epochs_counted(config: TrainConfig) -> int:
    """Progress-bar epochs of the grid (a resumed survivor reports its first ``rung`` epochs again)."""
    trials = len(config.learning_rates) * len(config.batch_sizes)
    if config.grid_halving is None:
        return len(config.architectures) * trials * config.trial_epochs
    rung, keep = config.grid_halving
    return len(config.architectures) * (trials * rung + min(keep, trials) * config.trial_epochs)


def select_hyperparameters(grid: pd.DataFrame, *, metric: str = "val_dice") -> pd.DataFrame:
    """Per architecture, the grid trial with the highest ``metric`` among those that did not fail
    (nor were stopped by successive halving).

    Ties go to the earlier trial in grid order (smaller learning rate, then smaller batch).

    Raises
    ------
    TrainingError
        When every trial of an architecture failed (the reasons are listed).
    """
    rows = []
    for architecture, trials in grid.groupby("architecture", sort=False):
        usable = trials[(trials["status"] == "ok") & np.isfinite(trials[metric].astype(float))]
        if usable.empty:
            reasons = "; ".join(f"lr={r.learning_rate:g} bs={r.batch_size}: {r.reason}" for r in trials.itertuples())
            raise TrainingError(f"every grid trial of {architecture} failed: {reasons}")
        best = usable.loc[usable[metric].astype(float).idxmax()]
        rows.append(
            {
                "architecture": architecture,
                "learning_rate": float(best["learning_rate"]),
                "batch_size": int(best["batch_size"]),
                metric: float(best[metric]),
                "trials_ok": int(len(usable)),
                "trials_failed": int(len(trials) - len(usable) - (trials["status"] == "stopped").sum()),
            }
        )
    return pd.DataFrame(rows)


def run_development_folds(
    crops: CropSet | None = None,
    *,
    run_dir: str | os.PathLike,
    selection: pd.DataFrame | dict[str, tuple[float, int]],
    config: TrainConfig | None = None,
    pipeline=None,
    strategy=None,
    progress: bool = True,
) -> pd.DataFrame:
    """The protocol's cross-validation phase: patient-grouped k folds of each architecture with its
    chosen hyper-parameters (the real-CT recipes' cross-validation over all patients is
    :func:`nodulekit.evaluation.cross_validate_all_patients`).

    The folds split the train + validation ("development") patients
    (:func:`nodulekit.splits.development_folds`); each fold trains ``config.epochs`` epochs, keeps
    the lowest-validation-loss checkpoint and scores it on the held-out test patients.

    Parameters
    ----------
    selection : DataFrame or dict
        From :func:`select_hyperparameters`, or ``{architecture: (learning_rate, batch_size)}``.
    crops, run_dir, config, pipeline, strategy, progress
        As in :func:`run_protocol`.

    Returns
    -------
    pandas.DataFrame
        The folds table (see :func:`run_protocol`).
    """
    with _Protocol(crops, run_dir=run_dir, config=config, pipeline=pipeline, strategy=strategy, progress=progress) as protocol:
        return _folds_table(protocol.run_units(_cv_specs(protocol, selection)))


def run_protocol(
    crops: CropSet | None = None,
    *,
    run_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    pipeline=None,
    strategy=None,
    progress: bool = True,
    verbose: int = 0,
) -> dict[str, pd.DataFrame]:
    """The paper's whole protocol: split, grid search, selection, cross-validation, result tables.

    Re-running the same call in the same ``run_dir`` skips every finished unit and resumes an
    interrupted one; a run killed at any moment and restarted ends with the same tables.

    Parameters
    ----------
    crops : CropSet, optional
        The data, in any units (``pipeline`` normalises it); grouped by ``crops.groups`` (patients).
        ``None`` makes ``config.synthetic_crops`` phantom crops (:func:`nodulekit.phantom.generate_crops`).
    run_dir : path
        The run folder (created; must be writable).
    config : TrainConfig, optional
        Every choice of the protocol; the paper's values by default.
    pipeline : nodulekit.preprocessing.Pipeline, optional
        Preprocessing applied to every crop before training; default
        :func:`~nodulekit.preprocessing.paper_pipeline` (gray -> median 3x3 -> per-image z-score).
        Saved as ``preprocessing.json`` so inference reuses it.
    strategy : tf.distribute.Strategy, optional
        Build and compile every model in its scope (several GPUs, machines or a TPU).
    progress : bool
        One progress bar over all epochs of all units, with an ETA.
    verbose : int
        Keras ``fit`` verbosity (0: quiet; the progress bar reports instead).

    Returns
    -------
    dict of str to pandas.DataFrame
        ``grid``: one row per trial (architecture, learning_rate, batch_size, status, reason,
        epochs_run, best_epoch, best_val_loss, val_dice, val_iou, val_precision, val_recall,
        val_accuracy, ..., seconds, selected). ``selection``: the chosen learning rate and batch
        size per architecture. ``folds``: one row per architecture and fold with the test metrics
        (test_dice, test_iou, test_precision, test_recall, test_accuracy and
        test_background_accuracy, the accuracy of predicting background everywhere).
        ``summary``: per architecture and metric the mean, the sample standard deviation
        (ddof=1) over folds and ``text`` = "mean ± sd". ``histories``: one row per unit and epoch
        with train/val loss, accuracy and Dice. All are also saved in ``run_dir/results/`` as CSV
        and together as ``results.json``.

    Raises
    ------
    RunFolderError
        If ``run_dir`` is not writable.
    TrainingError
        If ``run_dir`` holds a run of another configuration or other data, or every grid trial of
        an architecture failed.

    Notes
    -----
    Metrics use ``config.threshold`` (0.5) and ``config.empty`` for crops without nodule pixels
    (``"one"``: an empty prediction scores 1, any false positive 0); see
    :func:`nodulekit.metrics.segmentation_report`. Pixel accuracy is shown beside the
    all-background accuracy, which a model predicting nothing already reaches.

    References
    ----------
    .. [1] Paper sections 2.2-2.3 (grid 1e-4/1e-3/1e-2 x 8/16/32, Adam, focal Tversky 0.7/0.3,
       60/20/20 split, 4-fold cross-validation, 30 epochs, lowest validation loss kept).
    """
    start = time.perf_counter()
    with _Protocol(
        crops, run_dir=run_dir, config=config, pipeline=pipeline, strategy=strategy, progress=progress, verbose=verbose
    ) as protocol:
        grid_records = protocol.run_grid(size_bar=False)
        grid = _grid_table(grid_records)
        selection = select_hyperparameters(grid, metric=protocol.config.selection_metric)
        grid["selected"] = [
            any(
                (row.architecture == s.architecture) & (row.learning_rate == s.learning_rate) & (row.batch_size == s.batch_size)
                for s in selection.itertuples()
            )
            for row in grid.itertuples()
        ]
        fold_records = protocol.run_units(_cv_specs(protocol, selection), size_bar=False)
        folds = _folds_table(fold_records)
        results = {
            "grid": grid,
            "selection": selection,
            "folds": folds,
            "summary": summarize_folds(folds),
            "histories": _histories(grid_records + fold_records),
        }
        if protocol.is_chief:
            _save_results(protocol, results, seconds=time.perf_counter() - start, records=fold_records)
        return results


def summarize_folds(folds: pd.DataFrame, *, metrics: Sequence[str] = SUMMARY_METRICS) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1) over folds of each ``test_<metric>`` column.

    Returns
    -------
    pandas.DataFrame
        Columns architecture, metric, mean, sd, n_folds, text (``"0.812 ± 0.021"``).
    """
    rows = []
    for architecture, part in folds[folds["status"] == "ok"].groupby("architecture", sort=False):
        for metric in metrics:
            column = f"test_{metric}"
            if column not in part:
                continue
            values = part[column].astype(float).dropna()
            mean = float(values.mean()) if len(values) else math.nan
            sd = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            rows.append(
                {
                    "architecture": architecture,
                    "metric": metric,
                    "mean": mean,
                    "sd": sd,
                    "n_folds": int(len(values)),
                    "text": f"{mean:.3f} ± {sd:.3f}",
                }
            )
    return pd.DataFrame(rows, columns=["architecture", "metric", "mean", "sd", "n_folds", "text"])


def load_results(run_dir: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Read the tables a finished :func:`run_protocol` saved in ``run_dir/results/``.

    Raises
    ------
    MissingDataError
        If the run has no results yet.
    """
    run = RunFolder(run_dir)
    if not run.results_record.exists():
        raise MissingDataError("no results yet (run_protocol has not finished in this folder)", path=run.results)
    tables = {name: pd.read_csv(run.results_table(name)) for name in RESULT_TABLES}
    for table in tables.values():
        if "reason" in table:
            reason = table["reason"].astype(object)
            table["reason"] = reason.where(reason.notna(), "").astype(str)
    return tables


# ------------------------------------------------------------------------------------------------
# Tables


_UNIT_COLUMNS = ["architecture", "learning_rate", "batch_size", "fold", "status", "reason", "epochs_run", "best_epoch", "best_val_loss"]


def _grid_table(records: list[dict]) -> pd.DataFrame:
    table = _records_table(records).drop(columns=["fold", "phase"], errors="ignore")
    table["selected"] = False
    return table


def _folds_table(records: list[dict]) -> pd.DataFrame:
    return _records_table(records).drop(columns=["phase"], errors="ignore")


def _records_table(records: list[dict]) -> pd.DataFrame:
    rows = [{k: v for k, v in r.items() if k not in ("history", "skipped", "unit", "epochs")} for r in records]
    table = pd.DataFrame(rows)
    metric_columns = sorted(c for c in table.columns if c.startswith(("val_", "test_")) and c != "best_val_loss")
    ordered = [c for c in _UNIT_COLUMNS if c in table] + metric_columns + ["seconds"]
    return table[ordered + [c for c in table.columns if c not in ordered]]


def _histories(records: list[dict]) -> pd.DataFrame:
    rows = []
    for record in records:
        for entry in record.get("history", []):
            rows.append(
                {
                    "phase": record["phase"],
                    "architecture": record["architecture"],
                    "learning_rate": record["learning_rate"],
                    "batch_size": record["batch_size"],
                    "fold": record["fold"],
                    **entry,
                }
            )
    columns = ["phase", "architecture", "learning_rate", "batch_size", "fold", "epoch", *HISTORY_KEYS, "seconds"]
    return pd.DataFrame(rows, columns=columns)


def _save_results(protocol: _Protocol, results: dict[str, pd.DataFrame], *, seconds: float, records: list[dict]) -> None:
    protocol.run.results.mkdir(exist_ok=True)
    for name, table in results.items():
        with atomic_write(protocol.run.results_table(name)) as handle:
            table.to_csv(handle, index=False)
    _publish_best_model(protocol, results["folds"])
    import tensorflow as tf

    document = {name: json.loads(table.to_json(orient="records")) for name, table in results.items()}
    document["run"] = {
        "seconds_this_call": round(seconds, 1),
        "train_seconds": round(float(results["grid"]["seconds"].sum() + results["folds"]["seconds"].sum()), 1),
        "precision": resolve_precision(protocol.config.mixed_precision),
        "threshold": protocol.config.threshold,
        "empty": protocol.config.empty,
        "sd": "sample standard deviation over folds (ddof=1)",
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
    }
    write_json(protocol.run.results_record, document)


def _publish_best_model(protocol: _Protocol, folds: pd.DataFrame) -> None:
    """Copy the run's model of choice to ``run_dir/best.keras`` (chosen on validation, never test).

    The architecture with the higher mean validation Dice over folds, and its fold with the highest
    validation Dice; ``best.json`` says which. :func:`nodulekit.inference.load_segmenter` loads a
    run folder through this file and ``preprocessing.json``.
    """
    usable = folds[folds["status"] == "ok"]
    if usable.empty or "val_dice" not in usable:
        return
    architecture = usable.groupby("architecture")["val_dice"].mean().idxmax()
    row = usable[usable["architecture"] == architecture].sort_values("val_dice", ascending=False).iloc[0]
    source = protocol.run.fold(architecture, int(row["fold"])).checkpoint
    copy_atomic(source, protocol.run.best_model)
    write_json(
        protocol.run.best_record,
        {"architecture": architecture, "fold": int(row["fold"]), "source": str(source.relative_to(protocol.run_dir)),
         "val_dice": float(row["val_dice"]), "rule": "highest mean validation Dice over folds, then its best fold"},
    )


def _as_choice(selection: pd.DataFrame | dict) -> dict[str, tuple[float, int]]:
    if isinstance(selection, pd.DataFrame):
        return {r.architecture: (float(r.learning_rate), int(r.batch_size)) for r in selection.itertuples()}
    return {str(k): (float(v[0]), int(v[1])) for k, v in dict(selection).items()}


def _cv_specs(protocol: _Protocol, selection) -> list[UnitSpec]:
    return [
        UnitSpec("cv", architecture, learning_rate, batch_size, protocol.config.epochs, fold=fold)
        for architecture, (learning_rate, batch_size) in _as_choice(selection).items()
        for fold in range(protocol.config.n_folds)
    ]


def _limit_crops(crops: CropSet, max_crops: int | None, seed: int) -> CropSet:
    """Keep whole patients, drawn in a seeded order, until ``max_crops`` crops are reached."""
    if max_crops is None or len(crops) <= max_crops:
        return crops
    patients = pd.unique(crops.groups)
    order = np.random.default_rng(seed).permutation(len(patients))
    keep, count = [], 0
    sizes = pd.Series(crops.groups).value_counts()
    for index in order:
        if count >= max_crops:
            break
        keep.append(patients[index])
        count += int(sizes[patients[index]])
    return crops.subset(np.flatnonzero(np.isin(crops.groups, keep)))


def _fingerprint(images: np.ndarray, masks: np.ndarray, groups: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(masks, dtype=np.uint8).tobytes())
    digest.update("\n".join(map(str, groups)).encode())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# KerasTuner: grid trials across machines


def tune_grid_distributed(
    crops=None,
    *,
    run_dir: str | os.PathLike,
    config=None,
    pipeline=None,
) -> dict[str, Any] | None:
    """Run the grid search with KerasTuner's chief/worker mode; every trial is a nodulekit unit.

    Start the same command on every machine, with a shared ``run_dir`` and the environment
    variables KerasTuner reads: ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` (the
    chief's address) and ``KERASTUNER_TUNER_ID`` (``"chief"`` on the chief, ``"tuner0"``,
    ``"tuner1"``, ... on the workers). Without these variables the trials run here, one after the
    other, through the same code.

    Parameters
    ----------
    crops : CropSet, optional
        As in :func:`~nodulekit.training.run_protocol` (the same on every machine).
    run_dir : path
        The run folder, shared by all machines.
    config : TrainConfig, optional
    pipeline : Pipeline, optional

    Returns
    -------
    dict or None
        On a worker (or without distribution): ``{"trials": n}`` with the number of trials this
        process trained. On the chief: ``None`` once every trial is finished; then call
        :func:`~nodulekit.training.run_protocol` with the same arguments for the selection and
        the cross-validation.

    Raises
    ------
    TrainingError
        If KerasTuner is not installed (``pip install keras-tuner``).

    References
    ----------
    .. [1] T. O'Malley et al., KerasTuner, https://github.com/keras-team/keras-tuner, 2019.
    """
    try:
        import keras_tuner
    except ImportError as exc:
        raise TrainingError("distributed grid search needs KerasTuner: pip install keras-tuner") from exc
    protocol = _Protocol(crops, run_dir=run_dir, config=config, pipeline=pipeline, progress=False)
    specs = {spec.name: spec for spec in protocol.grid_specs()}
    hyperparameters = keras_tuner.HyperParameters()
    hyperparameters.Choice("architecture", list(protocol.config.architectures))
    hyperparameters.Choice("learning_rate", list(protocol.config.learning_rates))
    hyperparameters.Choice("batch_size", list(protocol.config.batch_sizes))
    oracle = keras_tuner.oracles.GridSearchOracle(
        objective=keras_tuner.Objective(protocol.config.selection_metric, direction="max"),
        hyperparameters=hyperparameters,
        tune_new_entries=False,
        seed=protocol.config.seed,
        max_retries_per_trial=0,
        max_consecutive_failed_trials=len(specs) + 1,
    )

    class GridTuner(keras_tuner.Tuner):
        trained = 0

        def run_trial(self, trial, *args, **kwargs):
            values = trial.hyperparameters.values
            spec = protocol.grid_spec(values["architecture"], values["learning_rate"], values["batch_size"])
            record = protocol.run_unit(spec)
            GridTuner.trained += 0 if record.get("skipped") else 1
            if record["status"] != "ok":
                raise keras_tuner.errors.FailedTrialError(record["reason"])
            return {protocol.config.selection_metric: float(record[protocol.config.selection_metric])}

    tuner = GridTuner(
        oracle=oracle,
        directory=str(RunFolder(run_dir).keras_tuner),
        project_name="grid",
        overwrite=False,
    )
    tuner.search()
    if os.environ.get("KERASTUNER_TUNER_ID", "").startswith("chief") and "KERASTUNER_ORACLE_IP" in os.environ:
        return None
    return {"trials": GridTuner.trained}


# ------------------------------------------------------------------------------------------------
# Command line


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The options of ``nodulekit train`` (added to ``parser`` when given, e.g. a subparser)."""
    parser = parser or argparse.ArgumentParser(prog="nodulekit train", description=run_protocol.__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="run folder (created; re-run to resume)")
    parser.add_argument("--data", help="CropSet .npz, LIDC PNG release or image folder (default: synthetic)")
    parser.add_argument("--config", help="TrainConfig JSON file (the options below override it)")
    parser.add_argument("--quick", action="store_true", help="QUICK protocol: tiny data, full grid, 2 folds")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--grid-epochs", type=int)
    parser.add_argument(
        "--grid-halving", type=int, nargs=2, metavar=("RUNG", "KEEP"),
        help="successive halving: every grid trial trains RUNG epochs, the best KEEP per model go on (default: the full grid)",
    )
    parser.add_argument("--folds", type=int, dest="n_folds")
    parser.add_argument("--architectures", nargs="+")
    parser.add_argument("--learning-rates", type=float, nargs="+")
    parser.add_argument("--batch-sizes", type=int, nargs="+")
    parser.add_argument("--max-crops", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--mixed-precision", choices=["float32", "mixed_bfloat16", "mixed_float16", "auto"])
    parser.add_argument("--no-augment", action="store_false", dest="augment", default=None)
    parser.add_argument(
        "--workers", type=_workers_option, help="processes training units side by side ('auto': 2 on a CPU-only machine with >= 2 cores)"
    )
    parser.add_argument("--crop-size", type=int, help="centre-crop the data to this size first (e.g. 64 for LIDC)")
    parser.add_argument("--strategy", choices=["none", "mirrored", "multi_worker", "tpu"], default="none")
    parser.add_argument("--keras-tuner", action="store_true", help="spread the grid over machines with KerasTuner (see docs)")
    parser.add_argument("--no-progress", action="store_false", dest="progress")
    return parser


def _workers_option(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers must be 'auto' or a positive integer, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``nodulekit train``: run (or resume) the protocol and print the summary table.

    Returns 0 on success, 1 on a nodulekit error (message on stderr).
    """
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:  # run on its own; under ``nodulekit -v train`` the CLI configured it
        configure_logging()
    try:
        return train_command(args)
    except NodulekitError as exc:
        print(f"nodulekit train: error: {exc}", file=sys.stderr)
        return 1


def train_command(args: argparse.Namespace) -> int:
    """Run ``nodulekit train`` for parsed arguments (from :func:`build_parser`); returns 0.

    Raises nodulekit errors (the caller prints them); :func:`main` is the standalone entry.
    """
    config = TrainConfig.load(args.config) if args.config else (TrainConfig.quick() if args.quick else TrainConfig())
    overrides = {
        k: getattr(args, k)
        for k in ("epochs", "grid_epochs", "grid_halving", "n_folds", "max_crops", "seed", "mixed_precision", "augment", "workers")
        if getattr(args, k) is not None
    }
    for name in ("architectures", "learning_rates", "batch_sizes"):
        if getattr(args, name):
            overrides[name] = tuple(getattr(args, name))
    config = config.replace(**overrides)
    crops = _read_data(args.data) if args.data else None
    pipeline = paper_pipeline(crop_size=args.crop_size)
    if args.keras_tuner and config.grid_halving is not None:
        raise InvalidParameterError("--grid-halving runs in one protocol, not with --keras-tuner (KerasTuner trains every trial fully)")
    if args.keras_tuner:
        if tune_grid_distributed(crops, run_dir=args.run_dir, config=config, pipeline=pipeline) is not None:
            return 0  # a worker: the chief goes on with the cross-validation
    results = run_protocol(
        crops, run_dir=args.run_dir, config=config, pipeline=pipeline, strategy=make_strategy(args.strategy), progress=args.progress
    )
    table = results["summary"].pivot(index="architecture", columns="metric", values="text")
    print(table.to_string())
    print(f"results in {RunFolder(args.run_dir).results}")
    return 0


def _crop_like(crops: CropSet, pipeline) -> CropSet:
    """``crops`` with the pipeline's centre crops applied to images and masks alike.

    A pipeline that centre-crops (e.g. ``paper_pipeline(crop_size=64)`` on the LIDC release's
    128x128 crops) changes the image size; the masks must follow, and the raw crops kept for the
    figures too. The pipeline's own crop is then a no-op.
    """
    steps = [step for step in pipeline.steps if isinstance(step, CenterCrop)]
    if not steps:
        return crops
    images, masks, readers = crops.images, crops.masks, crops.reader_masks
    for step in steps:
        images, masks = step(images), step(masks)
        if readers is not None:  # (n, readers, rows, columns): crop as channels-last
            readers = np.moveaxis(step(np.moveaxis(readers, 1, -1)), -1, 1)
    return dataclasses.replace(crops, images=images, masks=masks, reader_masks=readers)


def _read_data(path: str) -> CropSet:
    if str(path).endswith(".npz"):
        return CropSet.load(path)
    data = read_any(path)
    if not isinstance(data, CropSet):
        raise TrainingError(f"training needs crops (a CropSet), but {path} holds a {type(data).__name__}")
    return data
