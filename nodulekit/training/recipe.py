"""How to train one model: :class:`Recipe`, the engine's one configuration of a training run.

A :class:`Recipe` is everything that decides one model's accuracy — architecture and options,
loss, optimiser settings, training length, augmentation, preprocessing, test-time augmentation
(TTA), post-processing, threshold, training windows, validation share and early stopping — as one
serialisable object. Both ways the package trains are made of recipes:

* the real-CT recipes (:data:`REAL_CT_RECIPES`, trained by :mod:`nodulekit.evaluation` over
  :func:`nodulekit.splits.all_patient_folds`) are named changes to :data:`PAPER_RECIPE`;
* the paper protocol (:class:`nodulekit.training.config.TrainConfig`: a grid of learning rates x
  batch sizes x architectures, folds, split fractions, seed, precision) trains one recipe per grid
  trial and per fold, :meth:`TrainConfig.recipe(architecture, learning_rate, batch_size)
  <nodulekit.training.config.TrainConfig.recipe>`, over :func:`nodulekit.splits.development_folds`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidParameterError
from ..preprocessing import Pipeline
from .augment import RECIPE_AUGMENTATION, Augmentation

__all__ = ["Recipe", "TARGETS", "PAPER_RECIPE", "REAL_CT_RECIPES", "real_ct_recipe"]

#: What a recipe trains towards (:attr:`Recipe.targets`): the hard consensus or the readers' fraction.
TARGETS = ("consensus", "soft")


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
    augment : bool or Augmentation
        The training batches' augmentation (:class:`nodulekit.training.augment.Augmentation`,
        applied by :func:`nodulekit.training.augment.augment_batch`): ``True`` is
        :data:`~nodulekit.training.augment.RECIPE_AUGMENTATION` (the 8 symmetries of the square and
        a normal intensity jitter of sd 0.1, no affine part), ``False`` none. Saved recipes keep
        ``true``/``false``, so cached results made before stay valid (same draws, same numbers).
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
        (the paper keeps the model with the lowest validation loss). Where the split strategy
        supplies the validation patients (the paper protocol's folds,
        :func:`nodulekit.splits.development_folds`) it records their share.
    window : int, optional
        Train on ``window x window`` windows cut at random from larger crops (e.g. 64 from the
        release's 128x128 crops), each re-normalised to zero mean and unit variance, so the model
        also sees nodule-free lung, vessels and pleura, as it will on a whole slice. ``None``:
        train on the crops as given (the paper).
    jitter : int
        Largest shift of a training window's centre from the crop centre, in pixels, uniform per
        axis (only with ``window``). Validation uses the centred window.
    early_stopping_patience : int, optional
        Stop after this many epochs without a lower validation loss (``None``: train all epochs,
        as the paper does).
    targets : {"consensus", "soft"}
        What the model is trained towards: ``"consensus"`` the crops' hard 50 % consensus masks
        (``CropSet.masks``); ``"soft"`` per pixel the fraction of the nodule's marking readers who
        drew it (:func:`nodulekit.crops.reader_fraction`, needs ``CropSet.reader_masks``), for the
        training and the validation loss. Scoring is against the consensus either way. Recipes
        saved before this field existed read back as ``"consensus"``.
    """

    name: str = "paper"
    architecture: str = "unet"
    model_options: dict = field(default_factory=dict)
    loss: str = "focal_tversky"
    loss_options: dict = field(default_factory=lambda: {"fn_weight": 0.7, "fp_weight": 0.3, "gamma": 0.75})
    learning_rate: float = 1e-3
    batch_size: int = 16
    epochs: int = 30
    augment: bool | Augmentation = False
    preprocessing: dict = field(default_factory=lambda: {"steps": [{"name": "to_grayscale"}, {"name": "median_filter", "size": 3}, {"name": "zscore", "per_image": True}]})
    tta: bool = False
    postprocess: bool = False
    threshold: float = 0.5
    validation_fraction: float = 0.15
    window: int | None = None
    jitter: int = 0
    early_stopping_patience: int | None = None
    targets: str = "consensus"

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):  # an Augmentation read back from JSON
            self.augment = Augmentation(**self.augment)
        if self.targets not in TARGETS:
            raise InvalidParameterError(f"recipe targets must be one of {', '.join(map(repr, TARGETS))}, got {self.targets!r}")

    @property
    def augmentation(self) -> Augmentation | None:
        """The training augmentation, or ``None`` without one."""
        if isinstance(self.augment, Augmentation):
            return self.augment
        return RECIPE_AUGMENTATION if self.augment else None

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON-able values."""
        values = dataclasses.asdict(self)
        if isinstance(self.augment, Augmentation):
            values["augment"] = self.augment.to_dict()
        return values

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


_BN_AUG: dict[str, Any] = {"architecture": "attention_unet", "model_options": {"output_bias": "prior", "batch_norm": True}, "augment": True, "epochs": 20, "batch_size": 32}

#: The recipes compared on the LIDC-IDRI dev set (notebook 06, ``experiments/real_ct.py``); each
#: is a change to :data:`PAPER_RECIPE`, kept only when patient-grouped CV says it helps.
REAL_CT_RECIPES: dict[str, dict[str, Any]] = {
    # The paper's recipe as written: no batch norm, zero output bias, focal Tversky 0.7/0.3/0.75,
    # Adam 1e-3, batch 16, 30 epochs (lowest validation loss kept).
    "paper_unet": {},
    "paper_attention_unet": {"architecture": "attention_unet"},
    # The collapse fix alone: start the output at the foreground prior.
    "paper_unet_prior": {"model_options": {"output_bias": "prior"}},
    "paper_attention_unet_prior": {"architecture": "attention_unet", "model_options": {"output_bias": "prior"}},
    # nodulekit's best so far (the shipped model): + batch norm, prior bias, augmentation, batch 32.
    "bn_aug": _BN_AUG,
    "bn_aug_unet": {**_BN_AUG, "architecture": "unet"},
    # bn_aug with balanced focal Tversky weights (precision trails recall with 0.7 / 0.3): measured,
    # not kept (per-nodule Dice -0.003 plain, +0.004 with TTA + post-processing, paired over folds).
    "bn_aug_balanced": {**_BN_AUG, "loss_options": {"fn_weight": 0.5, "fp_weight": 0.5, "gamma": 0.75}},
    # bn_aug trained on soft targets (the share of the marking readers who drew each pixel): measured,
    # not kept (per-nodule Dice +0.001 plain, +0.002 with TTA + post-processing, paired over folds).
    "bn_aug_soft": {**_BN_AUG, "targets": "soft"},
}


def real_ct_recipe(recipe: str, *, recipes: dict[str, dict[str, Any]] | None = None, **changes: Any) -> Recipe:
    """The entry ``recipe`` of ``recipes`` (default :data:`REAL_CT_RECIPES`) as a :class:`Recipe`,
    with further changes (e.g. ``name=``, ``epochs=``)."""
    recipes = REAL_CT_RECIPES if recipes is None else recipes
    if recipe not in recipes:
        raise InvalidParameterError(f"unknown recipe {recipe!r}; known: {', '.join(recipes)}")
    return PAPER_RECIPE.replace(**{"name": recipe, **recipes[recipe], **changes})
