"""The one ``fit`` path: a single ``model.fit`` call per unit, with its state kept by Keras callbacks.

Both training stacks train through :func:`fit_model`: the paper's protocol
(:func:`nodulekit.training.units.train_unit`, one resumable unit folder per grid trial or fold) and
the real-CT recipes (:func:`nodulekit.evaluation.train_recipe`, in memory). What a unit needs
beyond Keras's loop is done by callbacks, in the manner of ``keras.callbacks.BackupAndRestore``
(restore in ``on_train_begin``, save in ``on_epoch_end``), sharing one JSON-ready ``state`` dict:

========================  =========================================================================
:class:`EpochRecord`      history row and seconds of each epoch; a NaN/infinite loss (after
                          ``TerminateOnNaN``) marks the unit failed and stops it
:class:`BestCheckpoint`   ``best-epoch-NNNN.keras`` when the validation loss is the lowest so far
:class:`ResumableEarlyStopping`  early stopping whose counter is part of the saved state
:class:`UnitBackup`       ``on_train_begin``: weights + optimizer of the last saved epoch;
                          ``on_epoch_end``: the same, then ``state.json`` (written last, naming the
                          files of its epoch, so a SIGKILL at any instant leaves a whole state)
:class:`KeepBestWeights`  the in-memory variant (no folder): the lowest-validation-loss weights are
                          put back when training ends
========================  =========================================================================

Why not ``BackupAndRestore`` itself: it writes the weights and the epoch counter as two plain
(non-atomic) writes, so a kill between or during them resumes from mismatched or truncated state,
and it keeps neither the best-checkpoint threshold nor the history nor the early-stopping counter,
so a resumed run would not reproduce the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np

from ..runfolder import file_sha256
from ..utils import save_atomic, write_json
from .config import HISTORY_KEYS

__all__ = [
    "new_state",
    "EpochRecord",
    "BestCheckpoint",
    "ResumableEarlyStopping",
    "UnitBackup",
    "KeepBestWeights",
    "fit_model",
]

#: Exceptions of ``fit`` that fail a unit instead of ending the run (by type name: TensorFlow's
#: and JAX's out-of-memory errors).
RESOURCE_ERRORS = ("ResourceExhaustedError", "OutOfMemoryError")


def new_state(meta: dict[str, Any]) -> dict[str, Any]:
    """The state of a unit that has not trained yet (the keys ``state.json`` records)."""
    return {
        "meta": meta,
        "epoch": 0,
        "weights": None,
        "weights_sha256": None,
        "best": None,
        "best_sha256": None,
        "best_val_loss": math.inf,
        "best_epoch": None,
        "wait": 0,
        "seconds": 0.0,
        "history": [],
        "failed": None,
    }


class _StateCallback(keras.callbacks.Callback):
    """A callback that reads and updates the shared state dict of one unit."""

    def __init__(self, state: dict[str, Any]):
        super().__init__()
        self.state = state

    def _skip(self) -> bool:
        return self.state["failed"] is not None


class EpochRecord(_StateCallback):
    """Appends each epoch's logs and seconds to ``state["history"]``; fails the unit on divergence.

    An epoch whose training or validation loss is not finite, or that ``TerminateOnNaN`` stopped,
    is not recorded: ``state["failed"]`` says why and training stops.
    """

    def __init__(self, state: dict[str, Any], *, learning_rate: float):
        super().__init__(state)
        self.learning_rate = learning_rate
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = {k: float(v) for k, v in (logs or {}).items()}
        if self.model.stop_training or not all(np.isfinite(logs.get(k, np.nan)) for k in ("loss", "val_loss")):
            self.state["failed"] = (
                f"diverged: loss became NaN or infinite in epoch {epoch + 1} "
                f"(learning rate {self.learning_rate:g}; stopped by TerminateOnNaN)"
            )
            self.model.stop_training = True
            return
        seconds = time.perf_counter() - self._start
        self.state["history"].append({"epoch": epoch + 1, **{k: logs.get(k, math.nan) for k in HISTORY_KEYS}, "seconds": seconds})
        self.state["seconds"] += seconds


class BestCheckpoint(_StateCallback):
    """Saves the whole model (``best-epoch-NNNN.keras``) at each new lowest validation loss."""

    def __init__(self, state: dict[str, Any], *, directory: Path):
        super().__init__(state)
        self.directory = Path(directory)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self._skip():
            return
        current = self.state["history"][-1]["val_loss"]  # recorded by EpochRecord, which runs first
        if not current < self.state["best_val_loss"]:
            return
        name = save_atomic(self.model.save, self.directory / f"best-epoch-{epoch + 1:04d}.keras")
        self.state.update(
            best=name,
            best_sha256=file_sha256(self.directory / name),
            best_val_loss=current,
            best_epoch=epoch + 1,
        )


class ResumableEarlyStopping(_StateCallback):
    """Stops after ``patience`` epochs without a lower validation loss; the counter is saved state.

    ``state["wait"]`` restarts at 0 in the epoch :class:`BestCheckpoint` saved (which runs first),
    so a resumed unit stops exactly where the uninterrupted one would. ``patience=None`` only counts.
    """

    def __init__(self, state: dict[str, Any], *, patience: int | None):
        super().__init__(state)
        self.patience = patience
        self.reason: str | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self._skip():
            return
        self.state["wait"] = 0 if self.state["best_epoch"] == epoch + 1 else self.state["wait"] + 1
        if self.should_stop(epochs_done=epoch + 1):
            self.model.stop_training = True

    def should_stop(self, *, epochs_done: int) -> bool:
        """Whether the state has run out of patience after ``epochs_done`` epochs (then
        :attr:`reason` says so). A unit resumed from such a state (killed after its last epoch was
        saved, before it finished) trains no further epoch."""
        if self.patience is None or self.state["wait"] < self.patience:
            return False
        self.reason = f"early stopping after epoch {epochs_done} ({self.patience} epochs without a lower val_loss)"
        return True


class UnitBackup(_StateCallback):
    """Resume after SIGKILL: restores the last saved epoch on ``on_train_begin``, saves on ``on_epoch_end``.

    The weights and optimizer state go to ``epoch-NNNN.weights.h5``, then ``state.json`` (the
    shared state: epoch, history, best checkpoint, early-stopping counter and the SHA-256 of the
    files it names) is written last, both atomically; files no state names any longer are removed.
    """

    def __init__(self, state: dict[str, Any], *, directory: Path):
        super().__init__(state)
        self.directory = Path(directory)

    def on_train_begin(self, logs: dict | None = None) -> None:
        if not self.state["weights"]:
            return
        strategy = getattr(self.model, "distribute_strategy", None)  # TensorFlow backend
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            if not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(self.directory / self.state["weights"])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self._skip():
            return
        name = save_atomic(self.model.save_weights, self.directory / f"epoch-{epoch + 1:04d}.weights.h5")
        self.state.update(weights=name, weights_sha256=file_sha256(self.directory / name), epoch=epoch + 1)
        write_json(self.directory / "state.json", self.state)
        keep = {"state.json", self.state["weights"], self.state["best"]}
        for path in self.directory.iterdir():
            if path.name not in keep and not path.name.startswith(".tmp-"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


class KeepBestWeights(keras.callbacks.Callback):
    """Keeps the weights of the lowest ``val_loss`` in memory and puts them back when training ends
    (the first epoch counts as the best until one is lower; without validation it does nothing)."""

    def __init__(self):
        super().__init__()
        self.best, self.weights, self.best_epoch = math.inf, None, None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        current = (logs or {}).get("val_loss")
        if current is None:
            return
        if self.weights is None or current < self.best:
            self.best, self.weights, self.best_epoch = float(current), self.model.get_weights(), epoch

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.weights is not None:
            self.model.set_weights(self.weights)


def fit_model(
    model: keras.Model,
    train: Any,
    *,
    epochs: int,
    validation_data: Any = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    initial_epoch: int = 0,
    steps_per_epoch: int | None = None,
    shuffle: bool = False,
    verbose: int = 0,
) -> tuple[keras.callbacks.History | None, str | None]:
    """The one training call of nodulekit: ``model.fit`` once, ``TerminateOnNaN`` first.

    Parameters
    ----------
    model : keras.Model
        Compiled model.
    train : tf.data.Dataset or keras.utils.PyDataset
        Training batches; a dataset covering several epochs needs ``steps_per_epoch``.
    epochs, initial_epoch, steps_per_epoch, verbose
        As in ``keras.Model.fit``.
    shuffle : bool
        Keras's batch-order shuffle of a ``PyDataset`` (seeded through Python's ``random``); a
        ``tf.data`` dataset built by :func:`~nodulekit.training.data.make_dataset` shuffles itself.
    validation_data : optional
        As in ``keras.Model.fit``.
    callbacks : sequence of keras.callbacks.Callback
        Called in order after ``TerminateOnNaN``.

    Returns
    -------
    (History or None, str or None)
        Keras's history and ``None``; or ``None`` and the error's type name when the accelerator
        ran out of memory (the caller records the unit as failed; every other error propagates).
    """
    try:
        history = model.fit(
            train,
            validation_data=validation_data,
            initial_epoch=initial_epoch,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=[keras.callbacks.TerminateOnNaN(), *callbacks],
            shuffle=shuffle,
            verbose=verbose,
        )
    except Exception as exc:  # noqa: BLE001 - only resource exhaustion is a unit failure
        if type(exc).__name__ not in RESOURCE_ERRORS:
            raise
        return None, type(exc).__name__
    return history, None
