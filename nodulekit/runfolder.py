"""The run-folder format in one place: where a training run keeps each file, and how it checks them.

::

    run_dir/
      config.json, preprocessing.json, data.json    the run's configuration, pipeline and data record
      grid/<architecture>/lr=<lr>_bs=<batch>/       one unit folder per grid trial
      cv/<architecture>/fold-<k>/                   one unit folder per cross-validation fold
      results/<table>.csv, results/results.json     the tables
      best.keras, best.json                         the run's model of choice
      keras_tuner/                                  KerasTuner's oracle (distributed grid only)

A unit folder holds ``unit.json``, ``state/`` (while training), ``best.keras``, ``history.csv``,
``metrics.json``, ``tensorboard/`` and the ``done`` marker, written last, with the SHA-256 of
``best.keras`` (:func:`file_sha256`). The guarantees (atomic writes, resume) are described in
:mod:`nodulekit.training`; writes go through :func:`nodulekit.utils.atomic_write`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .safety import check_writable

__all__ = ["RunFolder", "UnitFolder", "file_sha256"]


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class UnitFolder:
    """The files of one unit of work (a grid trial or a fold).

    Parameters
    ----------
    path : pathlib.Path
        The unit's folder.
    """

    path: Path

    @property
    def spec(self) -> Path:
        """``unit.json``: what the unit trains (spec, config, data fingerprint)."""
        return self.path / "unit.json"

    @property
    def state(self) -> Path:
        """``state/``: the resume point, only while the unit trains."""
        return self.path / "state"

    @property
    def checkpoint(self) -> Path:
        """``best.keras``: the lowest-validation-loss model."""
        return self.path / "best.keras"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def done(self) -> Path:
        """The marker written last (status, the unit's meta, SHA-256 of ``best.keras``)."""
        return self.path / "done"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    #: The files a finished unit consists of (removed together when a unit is redone).
    FILES = ("done", "metrics.json", "history.csv", "best.keras", "unit.json")

    def is_finished(self) -> bool:
        """True when the ``done`` marker and the checkpoint exist (their content is not checked)."""
        return self.done.exists() and self.checkpoint.exists()


@dataclass(frozen=True)
class RunFolder:
    """The layout of a training run folder (see the module docstring).

    Parameters
    ----------
    root : path
        The run folder.

    Examples
    --------
    >>> run = RunFolder("runs/paper")
    >>> run.fold("unet", 2).checkpoint.as_posix()
    'runs/paper/cv/unet/fold-2/best.keras'
    """

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        """``config.json``: the run's TrainConfig (a rerun with another one is refused)."""
        return self.root / "config.json"

    @property
    def preprocessing(self) -> Path:
        """``preprocessing.json``: the preprocessing Pipeline (inference reuses it)."""
        return self.root / "preprocessing.json"

    @property
    def data(self) -> Path:
        """``data.json``: data fingerprint, crop count and shape, patients of each split and fold."""
        return self.root / "data.json"

    @property
    def results(self) -> Path:
        """``results/``: the run's tables."""
        return self.root / "results"

    def results_table(self, name: str) -> Path:
        """``results/<name>.csv``."""
        return self.results / f"{name}.csv"

    @property
    def results_record(self) -> Path:
        """``results/results.json``, written when the run has finished."""
        return self.results / "results.json"

    @property
    def best_model(self) -> Path:
        """``best.keras``: the run's model of choice (chosen on validation, never on test)."""
        return self.root / "best.keras"

    @property
    def best_record(self) -> Path:
        """``best.json``: which fold ``best.keras`` is, and why."""
        return self.root / "best.json"

    @property
    def keras_tuner(self) -> Path:
        return self.root / "keras_tuner"

    def unit(self, name: str) -> UnitFolder:
        """The unit folder ``root/<name>`` (``name`` as ``UnitSpec.name``: ``grid/...`` or ``cv/...``)."""
        return UnitFolder(self.root / name)

    def fold(self, architecture: str, fold: int) -> UnitFolder:
        """The unit folder of cross-validation fold ``fold`` of ``architecture``."""
        return self.unit(f"cv/{architecture}/fold-{int(fold)}")

    def finished_folds(self) -> list[tuple[str, int]]:
        """``(architecture, fold)`` of every fold with a ``done`` marker, sorted."""
        found = []
        for marker in (self.root / "cv").glob("*/fold-*/done"):
            found.append((marker.parent.parent.name, int(marker.parent.name.split("-", 1)[1])))
        return sorted(found)

    def check_writable(self, *, min_free_mb: float = 50.0) -> Path:
        """Create the folder and prove it can be written (:func:`nodulekit.safety.check_writable`)."""
        return check_writable(self.root, min_free_mb=min_free_mb)
