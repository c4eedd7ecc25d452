"""Training: the paper's grid search and k-fold cross-validation as one resumable, reproducible run.

Modules: :mod:`~nodulekit.training.recipe` (:class:`Recipe`: how to train one model, the engine's one
training configuration), :mod:`~nodulekit.training.config` (:class:`TrainConfig`: the paper's
protocol, a grid and folds whose units are recipes, ``config.recipe(architecture, lr, batch)``),
:mod:`~nodulekit.training.augment` (the one augmentation: :class:`Augmentation`, applied by the
``tf.data`` pipeline and by the real-CT recipes' NumPy feeder), :mod:`~nodulekit.training.data`
(``tf.data`` pipeline),
:mod:`~nodulekit.training.callbacks` (the one ``fit`` path, :func:`~nodulekit.training.callbacks.fit_model`:
a single ``model.fit`` call with the best checkpoint, the resume state and early stopping as Keras
callbacks; the real-CT recipes of :mod:`nodulekit.evaluation` train through it too),
:mod:`~nodulekit.training.units` (one grid trial or fold: train, checkpoint, resume, score),
:mod:`~nodulekit.training.protocol` (:func:`run_protocol`, the tables, the ``nodulekit train``
entry point :func:`main`), :mod:`~nodulekit.training.distributed` (``tf.distribute``, mixed
precision, KerasTuner across machines), :mod:`~nodulekit.training.patch_scorer` (the whole-scan
candidates' 3-D patch CNN, :func:`~nodulekit.training.patch_scorer.fit_patch_scorer`).

The protocol (paper sections 2.2-2.3)
-------------------------------------
1. Split the patients 60/20/20 into train / validation / test (seeded, :func:`nodulekit.splits.patient_split`).
2. Grid search per architecture: learning rate {1e-4, 1e-3, 1e-2} x batch size {8, 16, 32}, Adam,
   focal Tversky loss (fn_weight 0.7, fp_weight 0.3, gamma 0.75); train on train, keep the
   lowest-validation-loss checkpoint, score it on validation; choose the highest validation Dice.
   A trial that diverges (NaN/inf loss, TerminateOnNaN) is recorded as failed with its reason and
   excluded; the grid goes on. An option, not the paper's: successive halving
   (``TrainConfig.grid_halving``) trains each trial a few epochs and only the best few on.
3. 4-fold cross-validation (patient-grouped) of the train + validation patients with the chosen
   values, 30 epochs, lowest validation loss kept; every fold's model is scored on the test patients.
4. Tables (pandas, saved as CSV and JSON): grid, selection, folds (test Dice, IoU, precision, recall,
   pixel accuracy and all-background accuracy), summary (mean ± sd over folds), per-epoch histories.

Run folder
----------
The paths are owned by :class:`nodulekit.runfolder.RunFolder` (and ``UnitFolder`` for a unit)::

    run_dir/
      config.json            TrainConfig of the run (a rerun with another config is refused)
      preprocessing.json     the preprocessing Pipeline (inference reuses it)
      data.json              data fingerprint, crop count and shape, patients of each split and fold
      grid/<architecture>/lr=<lr>_bs=<batch>/   one folder per grid trial  (a "unit")
      cv/<architecture>/fold-<k>/               one folder per fold         (a "unit")
        unit.json            what the unit trains (spec, config, data fingerprint)
        state/               only while training: state.json (epoch, history, best val loss,
                             early-stopping counter, SHA-256 of the files below),
                             epoch-NNNN.weights.h5 (weights + optimizer), best-epoch-NNNN.keras
        best.keras           the lowest-validation-loss model (loads with keras.models.load_model)
        history.csv          per epoch: loss, accuracy, dice, val_loss, val_accuracy, val_dice, seconds
        metrics.json         the unit's row: status, reason, best epoch, val_* (and test_*) metrics, history
        done                 written last: status, the unit's spec, SHA-256 of best.keras
        tensorboard/         only with TrainConfig.tensorboard
                             (a trial stopped by successive halving keeps only unit.json and state/)
      results/               grid.csv, selection.csv, folds.csv, summary.csv, histories.csv, results.json
      best.keras, best.json  the run's model of choice (chosen on validation Dice, never on test)

Guarantees
----------
* Atomic: every file is written to a temporary name and renamed; ``state/state.json`` is written
  last in each epoch and names the files of its epoch; ``done`` is written last in a unit.
  SIGKILL at any instant loses at most the epoch in progress.
* Resumable: rerunning the same call skips units with a valid ``done`` (``best.keras`` matching its
  SHA-256; a corrupted or missing checkpoint is detected and the unit redone) and resumes an
  interrupted unit from its last finished epoch, with the same optimizer state, best-loss threshold
  and history. Each epoch's shuffle and augmentation are functions of (seed, unit, epoch) only.
* Reproducible: ``TrainConfig.seed`` drives the split, the folds, initial weights, shuffles and
  augmentation; with ``deterministic=True`` (default) the same seed on the same machine gives the
  same tables, killed-and-resumed or not (tests compare to 1e-6).
* Writable: the run folder is probed before anything trains (:class:`~nodulekit.errors.RunFolderError`).

Limits worth knowing
--------------------
* Under a strategy with R replicas, a last batch of fewer than R crops would leave a replica an
  empty batch (TensorFlow's CPU convolutions reject it), so such a batch is dropped from that
  epoch; the validation and test scores of the kept model always use every crop.
* Multi-worker training needs ``run_dir`` on a file system every worker sees; Keras 3's
  ``fit`` needs a small workaround there (:func:`~nodulekit.training.distributed.prepare_model_for_strategy`).
* ``deterministic=True`` asks TensorFlow for deterministic kernels; on a GPU an op without one
  raises an error naming it: then set ``deterministic=False`` (results then vary in the last digits).
* Each unit builds and traces a fresh model (a few seconds on a CPU): most of the QUICK protocol's
  time on 2 cores is graph tracing, not training.
"""

from __future__ import annotations

from ..precision import precision_policy, resolve_precision
from ..safety import check_writable
from .config import TrainConfig
from . import protocol
from .augment import Augmentation, augment_pair
from .data import make_dataset
from .distributed import make_strategy, worker_role
from .protocol import (
    RESULT_TABLES,
    SUMMARY_METRICS,
    build_parser,
    grid_search,
    load_results,
    main,
    run_development_folds,
    run_protocol,
    select_hyperparameters,
    summarize_folds,
    train_command,
    tune_grid_distributed,
)
from .recipe import Recipe
from .units import UnitData, UnitSpec, load_finished, train_unit

__all__ = [
    "Recipe",
    "TrainConfig",
    "Augmentation",
    "make_dataset",
    "augment_pair",
    *protocol.__all__,  # the protocol's public names, listed once (in protocol.py)
    "tune_grid_distributed",
    "UnitSpec",
    "UnitData",
    "train_unit",
    "load_finished",
    "check_writable",
    "make_strategy",
    "precision_policy",
    "resolve_precision",
    "worker_role",
]
