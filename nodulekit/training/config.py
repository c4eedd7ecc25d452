"""The paper protocol's configuration: every choice of the protocol, with the paper's values.

:class:`TrainConfig` is a protocol over the engine's one training configuration,
:class:`~nodulekit.training.recipe.Recipe`: a grid of learning rates x batch sizes x
architectures, the folds, the split fractions, the seed and the precision, whose units (grid trials
and folds) each train one recipe, :meth:`TrainConfig.recipe`. The real-CT recipes are values of the
same :class:`~nodulekit.training.recipe.Recipe`.

:class:`TrainConfig` is a frozen dataclass saved as ``config.json`` at the top of every run folder.
Re-running a protocol in the same folder with a different configuration is refused (the folder's
results would otherwise mix two experiments); fields that cannot change a number
(:data:`NON_RESULT_FIELDS`) may differ.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidParameterError
from ..utils import read_json, write_json
from .augment import Augmentation
from .recipe import Recipe

__all__ = ["TrainConfig", "PRECISIONS", "EMPTY_POLICIES", "NON_RESULT_FIELDS", "SELECTION_ONLY_FIELDS", "HISTORY_KEYS"]

#: Keys of the per-epoch history of a unit (Keras log names).
HISTORY_KEYS = ("loss", "accuracy", "dice", "val_loss", "val_accuracy", "val_dice")

#: Allowed ``TrainConfig.mixed_precision`` values (``"auto"``: bfloat16 on CPUs with AVX512-BF16/AMX,
#: float16 on GPUs, float32 otherwise).
PRECISIONS = (None, "float32", "mixed_bfloat16", "mixed_float16", "auto")

#: Allowed ``TrainConfig.empty`` values, passed to :func:`nodulekit.metrics.segmentation_report`.
EMPTY_POLICIES = ("one", "zero", "exclude", "separate")

#: Fields that change speed or logging only; a run folder may be resumed with other values.
NON_RESULT_FIELDS = ("tensorboard", "workers")

#: Fields that change which grid trials are trained to the end, never how a unit trains: part of a
#: run's configuration, not of a unit's identity (a trial trained under successive halving is the
#: same unit as in the full grid).
SELECTION_ONLY_FIELDS = ("grid_halving",)


@dataclass(frozen=True)
class TrainConfig:
    """Every choice of the training protocol; defaults are the paper's (sections 2.2-2.3).

    Attributes
    ----------
    architectures : tuple of str
        Models compared: ``"unet"`` and ``"attention_unet"``.
    learning_rates : tuple of float
        Grid of Adam learning rates (paper: 1e-4, 1e-3, 1e-2).
    batch_sizes : tuple of int
        Grid of batch sizes (paper: 8, 16, 32).
    epochs : int
        Epochs of every cross-validation fold (paper: 30).
    grid_epochs : int, optional
        Epochs of every grid trial; ``None`` means ``epochs`` (the paper trains each combination
        fully; fewer epochs make the search cheaper).
    grid_halving : tuple of (int, int), optional
        ``(rung, keep)``: successive halving of the grid (an option; ``None``, the default, trains
        every trial fully as the paper does). Every trial trains ``rung`` epochs; per architecture
        the ``keep`` trials with the best validation Dice at their lowest validation loss so far
        then train on to ``grid_epochs``, the others stop (status ``"stopped"``). A survivor is
        paused and resumed at an epoch boundary, so its record is the one the full grid gives; the
        choice differs from the full grid's only when the full grid's best trial is not among the
        ``keep`` at the rung. ``benchmarks/halving.py`` measures that on recorded learning curves.
    n_folds : int
        Folds of the patient-grouped cross-validation (paper: 4).
    fractions : tuple of float
        Train / validation / test fractions of the patients (paper: 0.6, 0.2, 0.2). The grid trains
        on train and selects on validation; the folds split train + validation; every fold's model
        is scored on test.
    loss : str
        Loss name for :func:`nodulekit.losses.get_loss` (paper: focal Tversky).
    fn_weight, fp_weight, gamma : float
        Focal Tversky weights of false negatives (alpha = 0.7) and false positives (beta = 0.3) and
        its focal exponent (0.75), Abraham & Khan 2019.
    filters : tuple of int
        Channel widths, top to bottom (paper: 16, 32, 64, 128, 256).
    model_options : dict
        Further keyword options of :func:`nodulekit.models.build_model` (``batch_norm``, ``dropout``,
        ``l2``, ``upsampling``). Default ``{"batch_norm": True}``, a change to the paper's model:
        without it whole folds of the paper's protocol stay at the all-background prediction from
        the first epoch (measured: 2 of 4 U-Net folds on the default synthetic data at lr 1e-4,
        batch 8, in float32 and bfloat16 alike; 0 of 4 with batch norm; on real LIDC-IDRI the
        paper's U-Net collapsed on 2 of 4 folds). ``{}`` is the paper's model exactly.
    output_bias : "prior", float or None
        Initial logit of the final sigmoid. ``"prior"`` (default) starts every unit at the
        foreground fraction of its training masks (:func:`nodulekit.losses.initial_output_bias`),
        which keeps the focal Tversky loss from collapsing to all-background predictions early on
        (see :mod:`nodulekit.losses`); ``None`` is Keras's zero (p = 0.5 everywhere). The paper
        does not say.
    augment : bool
        On-the-fly augmentation of the training batches (validation and test are never augmented).
    augmentation : Augmentation
        Its strengths (flips, 90-degree turns, small affine, intensity jitter).
    early_stopping_patience : int, optional
        Stop a unit after this many epochs without a lower validation loss (``None``: never; the
        paper trains all epochs).
    threshold : float
        Probability above which a pixel counts as nodule in the test metrics (0.5).
    empty : {"one", "zero", "exclude", "separate"}
        How crops whose ground truth is empty enter Dice/IoU (see
        :func:`nodulekit.metrics.segmentation_report`): ``"one"`` scores an empty prediction of an
        empty mask 1 and any false positive 0.
    selection_metric : str
        Grid column maximised to choose the learning rate and batch size per model (``"val_dice"``).
    seed : int
        Drives the patient split, the folds, weight initialisation, shuffling and augmentation.
    deterministic : bool
        Ask TensorFlow for deterministic kernels: the same seed on the same machine then gives the
        same table (differences below 1e-6). Slower on GPUs.
    jit_compile : bool
        Compile the training step with XLA. Off by default: for these small models on CPU the
        compilation costs more than it saves.
    mixed_precision : str, optional
        ``None``/``"float32"``, ``"mixed_bfloat16"`` (CPUs with AVX512-BF16 or AMX, TPUs),
        ``"mixed_float16"`` (GPUs) or ``"auto"`` (the default: bfloat16 on CPUs with native
        bfloat16, float16 on GPUs, float32 elsewhere; measured in ``benchmarks/``: 1.05-1.5x faster
        training on the 2-core AVX512-BF16 CPU and the same patient-grouped CV Dice on LIDC within
        0.006). The last layer and the loss stay in float32; ``"float32"`` turns it off.
    tensorboard : bool
        Also write TensorBoard logs into each unit folder.
    workers : int or "auto"
        Processes that train units side by side, each with ``cores // workers`` threads
        (:mod:`nodulekit.training.workers`). ``"auto"`` (default): 2 on a CPU-only machine with at
        least 2 cores (unless a strategy is given), else 1; 1 trains in
        this process with TensorFlow's default threads. Measured on the project's 2-core CPU: a
        unit keeps barely more than one core busy, and two side by side take 1.2x the time of one.
        The thread count changes floating-point rounding only, so a run folder may be resumed with
        another value.
    synthetic_crops : int
        Number of phantom crops made when the protocol gets no data.
    max_crops : int, optional
        Keep whole patients, drawn in a seeded order, until at least this many crops are kept
        (for quick runs on real data); ``None`` keeps all.
    """

    architectures: tuple[str, ...] = ("unet", "attention_unet")
    learning_rates: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    batch_sizes: tuple[int, ...] = (8, 16, 32)
    epochs: int = 30
    grid_epochs: int | None = None
    grid_halving: tuple[int, int] | None = None
    n_folds: int = 4
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    loss: str = "focal_tversky"
    fn_weight: float = 0.7
    fp_weight: float = 0.3
    gamma: float = 0.75
    filters: tuple[int, ...] = (16, 32, 64, 128, 256)
    model_options: dict = field(default_factory=lambda: {"batch_norm": True})
    output_bias: str | float | None = "prior"
    augment: bool = True
    augmentation: Augmentation = field(default_factory=Augmentation)
    early_stopping_patience: int | None = None
    threshold: float = 0.5
    empty: str = "one"
    selection_metric: str = "val_dice"
    seed: int = 0
    deterministic: bool = True
    jit_compile: bool = False
    mixed_precision: str | None = "auto"
    tensorboard: bool = False
    workers: int | str = "auto"
    synthetic_crops: int = 1200
    max_crops: int | None = None

    def __post_init__(self) -> None:
        # Normalise sequences to tuples (JSON gives lists) so that equal configs compare equal.
        for name in ("architectures", "learning_rates", "batch_sizes", "fractions", "filters"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "learning_rates", tuple(float(v) for v in self.learning_rates))
        if isinstance(self.grid_halving, list):
            object.__setattr__(self, "grid_halving", tuple(self.grid_halving))
        if isinstance(self.augmentation, dict):
            object.__setattr__(self, "augmentation", Augmentation(**self.augmentation))
        object.__setattr__(self, "model_options", dict(self.model_options))
        self._validate()

    def _validate(self) -> None:
        from ..models import ARCHITECTURES

        def bad(name: str, allowed: str) -> InvalidParameterError:
            return InvalidParameterError(f"TrainConfig.{name} must be {allowed}, got {getattr(self, name)!r}")

        if not self.architectures or any(a not in ARCHITECTURES for a in self.architectures):
            raise bad("architectures", f"a non-empty subset of {ARCHITECTURES}")
        if len(set(self.architectures)) != len(self.architectures):
            raise bad("architectures", "free of duplicates")
        if not self.learning_rates or any(not (math.isfinite(v) and v > 0) for v in self.learning_rates):
            raise bad("learning_rates", "non-empty positive finite numbers")
        if not self.batch_sizes or any(not _is_int(v) or v < 1 for v in self.batch_sizes):
            raise bad("batch_sizes", "non-empty positive integers")
        for name in ("learning_rates", "batch_sizes"):
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                raise bad(name, "free of duplicates")
        if not _is_int(self.epochs) or self.epochs < 1:
            raise bad("epochs", "a positive integer")
        if self.grid_epochs is not None and (not _is_int(self.grid_epochs) or self.grid_epochs < 1):
            raise bad("grid_epochs", "a positive integer or None")
        if self.grid_halving is not None and not (
            isinstance(self.grid_halving, tuple)
            and len(self.grid_halving) == 2
            and all(_is_int(v) and v >= 1 for v in self.grid_halving)
            and self.grid_halving[0] < self.trial_epochs
        ):
            raise bad("grid_halving", "None or (rung, keep): positive integers with rung < the grid trials' epochs")
        if not _is_int(self.n_folds) or self.n_folds < 2:
            raise bad("n_folds", "an integer >= 2")
        if len(self.fractions) != 3 or any(f <= 0 for f in self.fractions) or abs(sum(self.fractions) - 1) > 1e-6:
            raise bad("fractions", "three positive fractions (train, validation, test) summing to 1")
        if not 0 <= self.fp_weight or not 0 <= self.fn_weight or self.fn_weight + self.fp_weight <= 0:
            raise bad("fn_weight", "non-negative with fn_weight + fp_weight > 0")
        if not self.gamma > 0:
            raise bad("gamma", "> 0")
        if not 0 < self.threshold < 1:
            raise bad("threshold", "in (0, 1)")
        if self.empty not in EMPTY_POLICIES:
            raise bad("empty", f"one of {EMPTY_POLICIES}")
        if "output_bias" in self.model_options or "filters" in self.model_options:
            raise bad("model_options", "free of 'filters' and 'output_bias' (they are fields of their own)")
        if not (self.output_bias is None or self.output_bias == "prior" or isinstance(self.output_bias, (int, float))):
            raise bad("output_bias", "'prior', a number or None")
        if self.mixed_precision not in PRECISIONS:
            raise bad("mixed_precision", f"one of {PRECISIONS}")
        if self.early_stopping_patience is not None and (
            not _is_int(self.early_stopping_patience) or self.early_stopping_patience < 1
        ):
            raise bad("early_stopping_patience", "a positive integer or None")
        if not _is_int(self.seed) or self.seed < 0:
            raise bad("seed", "a non-negative integer")
        if not _is_int(self.synthetic_crops) or self.synthetic_crops < 8:
            raise bad("synthetic_crops", "an integer >= 8")
        if self.max_crops is not None and (not _is_int(self.max_crops) or self.max_crops < 8):
            raise bad("max_crops", "an integer >= 8 or None")
        if self.workers != "auto" and (not _is_int(self.workers) or self.workers < 1):
            raise bad("workers", "'auto' or a positive integer")
        if not self.selection_metric.startswith("val_"):
            raise bad("selection_metric", "a validation column such as 'val_dice'")

    # ------------------------------------------------------------------------------------------
    @classmethod
    def quick(cls, **overrides: Any) -> "TrainConfig":
        """The QUICK protocol: the full 3x3 grid for both models and 2 folds on tiny data.

        96 crops (synthetic, or whole patients of the given data up to 96 crops), 1 epoch per grid
        trial, 2 per fold, narrow models (4, 8, 16, 32, 64): the whole code path in a few minutes
        on 2 CPU cores. Its numbers are not meaningful; use the defaults for results.
        """
        values: dict[str, Any] = dict(
            epochs=2,
            grid_epochs=1,
            n_folds=2,
            filters=(4, 8, 16, 32, 64),
            synthetic_crops=96,
            max_crops=96,
        )
        values.update(overrides)
        return cls(**values)

    @property
    def trial_epochs(self) -> int:
        """Epochs of each grid trial (``grid_epochs``, or ``epochs`` when unset)."""
        return self.epochs if self.grid_epochs is None else self.grid_epochs

    @property
    def loss_options(self) -> dict[str, float]:
        """Keyword options of the loss: the Tversky weights (and gamma) for the Tversky losses, none
        for the others (Dice, BCE, BCE + Dice)."""
        key = self.loss.lower().replace("-", "_").replace(" ", "")
        if key in ("focal_tversky", "focaltversky", "ftl"):
            return {"fn_weight": self.fn_weight, "fp_weight": self.fp_weight, "gamma": self.gamma}
        if key == "tversky":
            return {"fn_weight": self.fn_weight, "fp_weight": self.fp_weight}
        return {}

    def recipe(self, architecture: str, learning_rate: float, batch_size: int, *, phase: str = "cv") -> Recipe:
        """The :class:`~nodulekit.training.recipe.Recipe` one unit of the protocol trains.

        Parameters
        ----------
        architecture : str
            One of :attr:`architectures`.
        learning_rate, batch_size : float, int
            A point of the grid (or the values selected on it).
        phase : {"grid", "cv"}
            A grid trial trains :attr:`trial_epochs` epochs and validates on the validation split
            (its share of train + validation patients is ``validation_fraction``); a fold trains
            :attr:`epochs` epochs and validates on one of :attr:`n_folds` parts.

        Returns
        -------
        Recipe
            ``model_options`` holds ``filters``, ``output_bias`` and :attr:`model_options`;
            preprocessing is the paper's (the protocol's ``pipeline`` argument may replace it);
            no TTA, no post-processing, no windows (the protocol scores the model as trained).

        Examples
        --------
        >>> r = TrainConfig().recipe("unet", 1e-3, 16)
        >>> r.name, r.loss, r.epochs, r.augmentation == TrainConfig().augmentation
        ('unet_lr=0.001_bs=16', 'focal_tversky', 30, True)
        """
        if phase not in ("grid", "cv"):
            raise InvalidParameterError(f"phase must be 'grid' or 'cv', got {phase!r}")
        train, val, _ = self.fractions
        return Recipe(
            name=f"{architecture}_lr={float(learning_rate):g}_bs={int(batch_size)}",
            architecture=architecture,
            model_options={"filters": self.filters, "output_bias": self.output_bias, **self.model_options},
            loss=self.loss,
            loss_options=self.loss_options,
            learning_rate=float(learning_rate),
            batch_size=int(batch_size),
            epochs=self.trial_epochs if phase == "grid" else self.epochs,
            augment=self.augmentation if self.augment else False,
            threshold=self.threshold,
            validation_fraction=val / (train + val) if phase == "grid" else 1.0 / self.n_folds,
            early_stopping_patience=self.early_stopping_patience,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        values = dataclasses.asdict(self)
        values["augmentation"] = self.augmentation.to_dict()  # as saved before intensity_noise existed
        return json.loads(json.dumps(values))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidParameterError(f"unknown TrainConfig fields {unknown}; known: {sorted(known)}")
        return cls(**values)

    def save(self, path: str | os.PathLike) -> Path:
        """Write as indented JSON, atomically."""
        write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        """Read a config written by :meth:`save`."""
        return cls.from_dict(read_json(path))

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def result_differences(self, other: "TrainConfig") -> list[str]:
        """Names of the fields that differ from ``other`` and can change results."""
        mine, theirs = self.to_dict(), other.to_dict()
        return sorted(k for k in mine if k not in NON_RESULT_FIELDS and mine[k] != theirs.get(k))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
