"""Segmentation losses: focal Tversky (the paper's), Tversky, soft Dice, BCE and BCE + Dice.

Every loss is a plain function ``loss(y_true, y_pred, *, ...) -> (batch,)`` plus a thin, registered
``keras.losses.Loss`` class with ``get_config``, registered under the package name ``nodulekit``, so
a model compiled with one saves to ``.keras`` and loads in a fresh process once this module is
imported, without ``custom_objects``.

Conventions, stated once because libraries disagree:

* ``y_true`` is the binary mask, ``y_pred`` the sigmoid probability, both ``(batch, height, width[,
  1])``.
* Per pixel, ``TP = y p``, ``FN = y (1 - p)``, ``FP = (1 - y) p``, summed over each image
  (``reduction="image"``, the default: one index per image, then the mean over the batch) or over the
  whole batch (``reduction="batch"``: one index for the batch, as in Abraham & Khan's reference code).
* Tversky index ``TI = (TP + s) / (TP + fn_weight * FN + fp_weight * FP + s)``: ``fn_weight`` weights
  FALSE NEGATIVES. The paper's alpha = 0.7 is ``fn_weight=0.7`` (recall matters more than precision
  for small nodules). MONAI's ``alpha`` weights false positives, and Keras's own ``Tversky`` loss has
  changed meaning between versions, so nodulekit uses explicit names.
* Focal Tversky loss ``FTL = (1 - TI) ** gamma`` with ``gamma=0.75`` (the paper's 1/gamma with
  gamma = 4/3).

Numerical safety. ``(1 - TI) ** 0.75`` has the derivative ``0.75 (1 - TI) ** -0.25``, infinite at
``TI = 1`` (a perfect prediction, or an empty mask predicted empty): the reference implementation
returns NaN gradients there (``inf * 0``). nodulekit clamps ``1 - TI`` below at ``eps = 1e-6``, so the
loss value changes by at most ``1e-6 ** 0.75 = 3e-5`` and the gradient factor is bounded by
``0.75 * eps ** -0.25 ≈ 24``; smooth ``s > 0`` keeps every ratio finite on empty masks.

Why training with the focal Tversky loss can collapse, and the fix. A region loss (focal Tversky,
Tversky, soft Dice) sees a pixel only through the sigmoid's slope: ``dL/dz = dL/dp * p (1 - p)``.
It rewards confidence without limit and never sees a pixel whose sigmoid is saturated on the wrong
side. Trained from scratch with Adam (1e-3) on a U-Net without normalisation, the logits explode
within the first 20-40 steps (on the LIDC dev crops the median |logit| went from 0.3 to ~100 after
20 steps and to 100-10,000 later; 97 % of pixels had |logit| > 15), so every step moves the whole
map by a lot, and a step that pushes every pixel below a logit of about -17 leaves every gradient
at exactly zero in float32: the model predicts nothing forever (loss flat at ~0.89, validation loss
constant). It is a matter of luck per run, not of the focal exponent, the per-image reduction or
the empty masks: in 8 seeds x 2 epochs each, per-image focal Tversky died 0 times, batch-reduced
focal Tversky 1, focal Tversky with a prior-initialised bias 1, soft Dice 1, Tversky 3, BCE + Dice
0 (BCE's ``dL/dz = p - y`` stays -1 on a missed nodule pixel, so it recovers). A lower learning
rate or a warm-up only delays the explosion, and removing the gradient of already-right pixels
does not stop it.

The fix belongs in the network, not in the loss: batch normalisation after every convolution
(``build_unet(..., batch_norm=True)``, as in Abraham & Khan's own code) keeps the logits near
|logit| ~ 2-5, and starting the output bias at the foreground prior
(``output_bias=initial_output_bias(train_masks)``, about -3.2 on the LIDC crops) removes the
initial flood of false positives that otherwise makes the first epochs slow. With both, the
paper's loss and settings learn on the real crops (``tests/test_losses.py``). The loss itself
stays the paper's formula.

References
----------
.. [1] A. Tversky, "Features of similarity", Psychological Review 84(4), 1977.
.. [2] S. S. M. Salehi, D. Erdogmus, A. Gholipour, "Tversky loss function for image segmentation
   using 3D fully convolutional deep networks", MLMI 2017.
.. [3] N. Abraham, N. M. Khan, "A Novel Focal Tversky Loss Function with Improved Attention U-Net
   for Lesion Segmentation", ISBI 2019.
.. [4] F. Milletari, N. Navab, S.-A. Ahmadi, "V-Net", 3DV 2016 (soft Dice).
.. [5] T.-Y. Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017 (prior bias init).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from . import confusion  # the module, not the name: importing Keras may import this module first (see nodulekit.confusion)
from .errors import InvalidParameterError

__all__ = [
    "focal_tversky",
    "tversky",
    "dice_loss",
    "bce",
    "bce_dice",
    "tversky_index",
    "FocalTverskyLoss",
    "TverskyLoss",
    "DiceLoss",
    "BCELoss",
    "BCEDiceLoss",
    "get_loss",
    "initial_output_bias",
    "LOSSES",
    "EPSILON",
]

#: Lower clamp of ``1 - TI`` in the focal Tversky loss (bounds its gradient).
EPSILON = 1e-6

_REDUCTIONS = ("image", "batch")


# --------------------------------------------------------------------------------------------------
# Plain functions


def tversky_index(
    y_true,
    y_pred,
    *,
    fn_weight: float = 0.7,
    fp_weight: float = 0.3,
    smooth: float = 1.0,
    reduction: str = "image",
):
    """The (smoothed) Tversky index per image, or one for the whole batch.

    ``TI = (TP + smooth) / (TP + fn_weight * FN + fp_weight * FP + smooth)``, with TP, FN, FP the soft
    counts ``sum(y p)``, ``sum(y (1 - p))``, ``sum((1 - y) p)``. ``fn_weight = fp_weight = 0.5`` gives
    the soft Dice coefficient.

    Parameters
    ----------
    y_true : tensor, shape (batch, height, width[, 1])
        Binary ground truth.
    y_pred : tensor, same shape
        Predicted probabilities in [0, 1].
    fn_weight, fp_weight : float
        Weights of false negatives and false positives (>= 0, not both 0).
    smooth : float
        Added to numerator and denominator (>= 0); keeps empty masks finite.
    reduction : {"image", "batch"}
        Sum over each image (one index per image) or over the whole batch (one index).

    Returns
    -------
    tensor of float32, shape (batch,)
        The index, repeated over the batch when ``reduction="batch"``.
    """
    _check_weights(fn_weight, fp_weight, smooth, reduction)
    tp, fn, fp = _soft_counts(y_true, y_pred, reduction)
    denominator = tp + fn_weight * fn + fp_weight * fp + smooth
    return (tp + smooth) / ops.maximum(denominator, 1e-12)


@keras.saving.register_keras_serializable(package="nodulekit")
def focal_tversky(
    y_true,
    y_pred,
    *,
    fn_weight: float = 0.7,
    fp_weight: float = 0.3,
    gamma: float = 0.75,
    smooth: float = 1.0,
    reduction: str = "image",
):
    """Focal Tversky loss ``(1 - TI) ** gamma`` (Abraham & Khan 2019), NaN-safe.

    ``TI = (TP + smooth) / (TP + fn_weight * FN + fp_weight * FP + smooth)``: ``fn_weight`` weights
    FALSE NEGATIVES (the paper's alpha = 0.7), ``fp_weight`` false positives (beta = 0.3).
    ``1 - TI`` is clamped below at :data:`EPSILON` so value and gradient stay finite at ``TI = 1``.

    Parameters
    ----------
    y_true, y_pred : tensor, shape (batch, height, width[, 1])
        Binary mask and predicted probabilities.
    fn_weight, fp_weight : float
        See :func:`tversky_index`.
    gamma : float
        Focal exponent (> 0); the paper's 0.75 (= 1 / (4/3)). ``gamma = 1`` is the Tversky loss.
    smooth : float
        See :func:`tversky_index`.
    reduction : {"image", "batch"}
        One index per image (default) or one for the batch.

    Returns
    -------
    tensor of float32, shape (batch,)
        Loss per image (the batch value repeated when ``reduction="batch"``); in [0, 1].

    Examples
    --------
    A 4-pixel nodule of which the prediction finds 2 (2 false negatives, no false positive):
    ``TI = (2 + 1) / (2 + 0.7 * 2 + 1) = 0.6818``, loss ``0.3182 ** 0.75 = 0.4236``.

    >>> import numpy as np
    >>> y = np.zeros((1, 4, 4, 1), "float32"); y[0, :2, :2] = 1
    >>> p = np.zeros_like(y); p[0, 0, :2] = 1
    >>> round(float(focal_tversky(y, p)[0]), 4)
    0.4236
    """
    _check_gamma(gamma)
    loss = tversky(y_true, y_pred, fn_weight=fn_weight, fp_weight=fp_weight, smooth=smooth, reduction=reduction)
    return ops.power(ops.maximum(loss, EPSILON), gamma)


@keras.saving.register_keras_serializable(package="nodulekit")
def tversky(
    y_true,
    y_pred,
    *,
    fn_weight: float = 0.7,
    fp_weight: float = 0.3,
    smooth: float = 1.0,
    reduction: str = "image",
):
    """Tversky loss ``1 - TI`` (Salehi et al. 2017); ``fn_weight`` weights false negatives.

    Parameters and returns as in :func:`focal_tversky` (without ``gamma``).
    """
    index = tversky_index(y_true, y_pred, fn_weight=fn_weight, fp_weight=fp_weight, smooth=smooth, reduction=reduction)
    return 1.0 - index


@keras.saving.register_keras_serializable(package="nodulekit")
def dice_loss(y_true, y_pred, *, smooth: float = 1.0, reduction: str = "image"):
    """Soft Dice loss ``1 - (2 TP + s) / (2 TP + FN + FP + s)`` (Milletari et al. 2016).

    Parameters and returns as in :func:`focal_tversky` (the Tversky index with weights 0.5 / 0.5).
    """
    return tversky(y_true, y_pred, fn_weight=0.5, fp_weight=0.5, smooth=smooth, reduction=reduction)


@keras.saving.register_keras_serializable(package="nodulekit")
def bce(y_true, y_pred, *, reduction: str = "image"):
    """Binary cross-entropy, the mean over the pixels of each image (or of the batch).

    Computed from the logits when ``y_pred`` comes straight from a sigmoid layer (Keras keeps them),
    otherwise from probabilities clipped to ``[1e-7, 1 - 1e-7]``: finite on saturated sigmoids.

    Returns
    -------
    tensor of float32, shape (batch,)
    """
    _check_weights(0.5, 0.5, 0.0, reduction)
    y_true = ops.cast(y_true, y_pred.dtype)
    per_pixel = keras.losses.binary_crossentropy(y_true, y_pred)  # mean over the last axis
    per_pixel = ops.cast(per_pixel, "float32")
    batch = ops.shape(per_pixel)[0]
    per_image = ops.mean(ops.reshape(per_pixel, (batch, -1)), axis=1)
    if reduction == "batch":
        return ops.ones_like(per_image) * ops.mean(per_image)
    return per_image


@keras.saving.register_keras_serializable(package="nodulekit")
def bce_dice(y_true, y_pred, *, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0, reduction: str = "image"):
    """``bce_weight * BCE + dice_weight * soft Dice loss``, per image (or batch).

    Returns
    -------
    tensor of float32, shape (batch,)
    """
    if bce_weight < 0 or dice_weight < 0 or bce_weight + dice_weight == 0:
        raise InvalidParameterError(f"bce_weight and dice_weight must be >= 0 and not both 0, got {bce_weight}, {dice_weight}")
    return bce_weight * bce(y_true, y_pred, reduction=reduction) + dice_weight * dice_loss(
        y_true, y_pred, smooth=smooth, reduction=reduction
    )


def initial_output_bias(masks: np.ndarray | float) -> float:
    """The logit of the foreground fraction: a good initial bias for the final sigmoid.

    Parameters
    ----------
    masks : ndarray or float
        Training masks (any shape, values {0, 1}) or a foreground fraction in (0, 1).

    Returns
    -------
    float
        ``log(pi / (1 - pi))`` with ``pi`` the foreground fraction, clipped to [1e-4, 0.5]: a model
        built with ``output_bias=initial_output_bias(train_masks)`` starts predicting ``pi``
        everywhere instead of 0.5.

    References
    ----------
    .. [1] T.-Y. Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, section 4.1 ("prior").
    """
    if np.ndim(masks) == 0:
        fraction = float(masks)
        if not 0.0 < fraction < 1.0:
            raise InvalidParameterError(f"a foreground fraction must be in (0, 1), got {masks!r}")
    else:
        masks = np.asarray(masks)
        if masks.size == 0:
            raise InvalidParameterError("masks is empty: cannot estimate the foreground fraction")
        fraction = float(np.mean(masks > 0))
    fraction = min(max(fraction, 1e-4), 0.5)
    return math.log(fraction / (1.0 - fraction))


# --------------------------------------------------------------------------------------------------
# Keras Loss classes


class _RegionLoss(keras.losses.Loss):
    """Shared plumbing: keyword options stored, validated, returned by get_config.

    ``reduction`` here means the region reduction ("image" or "batch"), as in the functions; the
    per-image losses are then averaged over the batch (Keras's ``"sum_over_batch_size"``).
    """

    _function = None
    _defaults: dict[str, Any] = {}

    def __init__(self, *, name: str | None = None, dtype: str | None = None, **options: Any):
        unknown = sorted(set(options) - set(self._defaults))
        if unknown:
            raise InvalidParameterError(f"{type(self).__name__} got unknown options {unknown}; allowed: {sorted(self._defaults)}")
        self.options = {**self._defaults, **options}
        super().__init__(name=name or self._default_name, reduction="sum_over_batch_size", dtype=dtype)
        # Validate now (not at the first training step).
        type(self)._function(np.zeros((1, 2, 2, 1), "float32"), np.zeros((1, 2, 2, 1), "float32"), **self.options)

    def call(self, y_true, y_pred):
        return type(self)._function(y_true, y_pred, **self.options)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        config = dict(config)
        config.pop("dtype", None)
        return cls(**config)


@keras.saving.register_keras_serializable(package="nodulekit")
class FocalTverskyLoss(_RegionLoss):
    """Keras loss wrapping :func:`focal_tversky` (the paper's loss: fn_weight 0.7, fp_weight 0.3, gamma 0.75).

    Parameters
    ----------
    fn_weight, fp_weight, gamma, smooth, reduction
        As in :func:`focal_tversky`.
    name : str
        Loss name (``"focal_tversky"``).

    Examples
    --------
    >>> loss = FocalTverskyLoss(fn_weight=0.7, fp_weight=0.3, gamma=0.75)
    >>> loss.get_config()["fn_weight"]
    0.7
    """

    _function = staticmethod(focal_tversky)
    _default_name = "focal_tversky"
    _defaults = {"fn_weight": 0.7, "fp_weight": 0.3, "gamma": 0.75, "smooth": 1.0, "reduction": "image"}


@keras.saving.register_keras_serializable(package="nodulekit")
class TverskyLoss(_RegionLoss):
    """Keras loss wrapping :func:`tversky` (``1 - TI``)."""

    _function = staticmethod(tversky)
    _default_name = "tversky"
    _defaults = {"fn_weight": 0.7, "fp_weight": 0.3, "smooth": 1.0, "reduction": "image"}


@keras.saving.register_keras_serializable(package="nodulekit")
class DiceLoss(_RegionLoss):
    """Keras loss wrapping :func:`dice_loss` (soft Dice)."""

    _function = staticmethod(dice_loss)
    _default_name = "dice"
    _defaults = {"smooth": 1.0, "reduction": "image"}


@keras.saving.register_keras_serializable(package="nodulekit")
class BCELoss(_RegionLoss):
    """Keras loss wrapping :func:`bce` (binary cross-entropy per image)."""

    _function = staticmethod(bce)
    _default_name = "bce"
    _defaults = {"reduction": "image"}


@keras.saving.register_keras_serializable(package="nodulekit")
class BCEDiceLoss(_RegionLoss):
    """Keras loss wrapping :func:`bce_dice` (BCE + soft Dice)."""

    _function = staticmethod(bce_dice)
    _default_name = "bce_dice"
    _defaults = {"bce_weight": 1.0, "dice_weight": 1.0, "smooth": 1.0, "reduction": "image"}


#: Loss names accepted by :func:`get_loss`.
LOSSES = {
    "focal_tversky": FocalTverskyLoss,
    "tversky": TverskyLoss,
    "dice": DiceLoss,
    "bce": BCELoss,
    "bce_dice": BCEDiceLoss,
}


def get_loss(name: str, **options: Any) -> keras.losses.Loss:
    """A loss object by name: ``"focal_tversky"``, ``"tversky"``, ``"dice"``, ``"bce"`` or ``"bce_dice"``.

    Parameters
    ----------
    name : str
        Loss name (``-`` and ``+`` spellings such as ``"bce+dice"`` are accepted).
    **options
        Keyword options of that loss (e.g. ``fn_weight=0.7``).

    Returns
    -------
    keras.losses.Loss

    Raises
    ------
    InvalidParameterError
        On an unknown name or option.
    """
    key = str(name).lower().replace("-", "_").replace("+", "_").replace(" ", "")
    key = {"focaltversky": "focal_tversky", "ftl": "focal_tversky", "bcedice": "bce_dice", "binary_crossentropy": "bce"}.get(key, key)
    if key not in LOSSES:
        raise InvalidParameterError(f"loss must be one of {sorted(LOSSES)}, got {name!r}")
    return LOSSES[key](**options)


# --------------------------------------------------------------------------------------------------
# Helpers


def _soft_counts(y_true, y_pred, reduction: str):
    """``tp, fn, fp`` per image (:func:`nodulekit.confusion.soft_confusion`), or the batch's sums repeated."""
    tp, fp, fn = confusion.soft_confusion(y_true, y_pred)
    if reduction == "batch":
        ones = ops.ones_like(tp)
        tp, fn, fp = ones * ops.sum(tp), ones * ops.sum(fn), ones * ops.sum(fp)
    return tp, fn, fp


def _check_weights(fn_weight: float, fp_weight: float, smooth: float, reduction: str) -> None:
    if not (np.isfinite(fn_weight) and np.isfinite(fp_weight)) or fn_weight < 0 or fp_weight < 0 or fn_weight + fp_weight == 0:
        raise InvalidParameterError(f"fn_weight and fp_weight must be >= 0 and not both 0, got {fn_weight}, {fp_weight}")
    if not np.isfinite(smooth) or smooth < 0:
        raise InvalidParameterError(f"smooth must be >= 0, got {smooth}")
    if reduction not in _REDUCTIONS:
        raise InvalidParameterError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_gamma(gamma: float) -> None:
    if not np.isfinite(gamma) or gamma <= 0:
        raise InvalidParameterError(f"gamma must be > 0, got {gamma}")
