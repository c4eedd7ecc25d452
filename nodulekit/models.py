"""The paper's segmentation networks: a U-Net and an Attention U-Net, as Keras 3 Functional models.

Both follow section 2.3 of the paper: widths (16, 32, 64, 128, 256); per level two 3x3 convolutions
with ReLU, then 2x2 max pooling with stride 2 (a 64x64x1 input reaches 4x4x256 at the bottom); the
up path doubles the size (2x2 transposed convolution by default), joins the skip connection and
applies two 3x3 convolutions; a final 1x1 convolution with a sigmoid gives the nodule probability.
The Attention U-Net puts an additive attention gate (Oktay et al. 2018) on every skip connection.

The builders return *uncompiled* models made only of built-in Keras layers, so a saved ``.keras``
file loads anywhere without ``custom_objects``. The final sigmoid always computes in float32, so
the models work under a ``mixed_float16`` policy.

Parameter counts with the default options (64x64x1 input): U-Net 1,940,817; Attention U-Net
2,006,341 (the four gates add 65,524).

Training with a pure region loss (the paper's focal Tversky loss, Tversky, soft Dice): build with
``batch_norm=True`` and ``output_bias=nodulekit.losses.initial_output_bias(train_masks)``. The
paper's plain network (no normalisation, zero bias) trained from scratch with Adam lets the logits
explode and some runs end predicting nothing; :mod:`nodulekit.losses` has the measurements.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import keras
import numpy as np
from keras import layers

from .errors import InvalidParameterError
from .postprocess import first_output

__all__ = [
    "build_unet",
    "build_attention_unet",
    "build_model",
    "attention_maps",
    "attention_layer_names",
    "predict_probabilities",
    "ARCHITECTURES",
    "UPSAMPLING_MODES",
    "PAPER_FILTERS",
]

logger = logging.getLogger(__name__)

#: The paper's channel widths, from the top level to the bottom.
PAPER_FILTERS = (16, 32, 64, 128, 256)

#: Architectures :func:`build_model` knows.
ARCHITECTURES = ("unet", "attention_unet")

#: How the up path doubles the feature-map size.
UPSAMPLING_MODES = ("transpose", "nearest", "bilinear")

#: Moving-average momentum of batch normalisation (PyTorch's default; Keras's 0.99 lags far behind
#: the fast-changing weights of short runs and makes early validation scores meaningless).
_BN_MOMENTUM = 0.9

#: Suffix of the layer that holds each gate's attention coefficients (read by :func:`attention_maps`).
_COEFFICIENT_SUFFIX = "_coefficients"


def build_unet(
    input_shape: Sequence[int | None] = (64, 64, 1),
    *,
    filters: Sequence[int] = PAPER_FILTERS,
    batch_norm: bool = False,
    dropout: float = 0.0,
    l2: float = 0.0,
    upsampling: str = "transpose",
    deep_supervision: bool = False,
    output_bias: float | None = None,
    name: str = "unet",
) -> keras.Model:
    """Build the paper's plain U-Net (uncompiled).

    Parameters
    ----------
    input_shape : tuple of (int or None)
        ``(height, width, channels)``. Height and width must be divisible by ``2 ** (len(filters) - 1)``
        (16 for the paper's five levels), or ``None`` for a fully convolutional model that takes
        any such size, e.g. ``(None, None, 1)`` for whole 512x512 CT slices.
    filters : sequence of int
        Channel width of each level, top to bottom; the paper's is ``(16, 32, 64, 128, 256)``.
    batch_norm : bool
        Batch normalisation (momentum 0.9) after every 3x3 convolution, before the ReLU, as in
        Abraham & Khan's focal Tversky code. Off by default (the paper does not mention it), but
        recommended with region losses: it keeps the logits bounded (see :mod:`nodulekit.losses`).
    dropout : float
        Dropout rate in [0, 1) between the two convolutions of every block (0 = none).
    l2 : float
        L2 weight-decay factor on every convolution kernel (0 = none).
    upsampling : {"transpose", "nearest", "bilinear"}
        ``"transpose"``: a learned 2x2 transposed convolution with stride 2 (the paper's "2x2
        up-sampling"); ``"nearest"``/``"bilinear"``: parameter-free interpolation.
    deep_supervision : bool
        Also output a sigmoid map from every coarser decoder level, upsampled (bilinear) to the
        input size. The model then has a list of outputs ``[mask, aux_1, ..., aux_{L-2}]`` with the
        full-resolution ``mask`` first and ``aux_1`` the coarsest; every output is compared with the
        same ground-truth mask.
    output_bias : float, optional
        Initial bias of the final 1x1 convolution (a logit). ``None`` keeps Keras's zero, i.e. an
        initial probability of 0.5 everywhere. ``log(pi / (1 - pi))`` starts the model at the
        foreground prior ``pi`` (Lin et al. 2017); see :mod:`nodulekit.losses` for when it matters.
    name : str
        Model name.

    Returns
    -------
    keras.Model
        Functional model from ``(batch, height, width, channels)`` float images to
        ``(batch, height, width, 1)`` float32 probabilities (a list of such with deep supervision).

    Raises
    ------
    InvalidParameterError
        On an input size not divisible by ``2 ** (len(filters) - 1)``, or any other bad option.

    References
    ----------
    .. [1] O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical Image
       Segmentation", MICCAI 2015.

    Examples
    --------
    >>> model = build_unet((64, 64, 1))
    >>> model.count_params()
    1940817
    """
    return _build(**locals(), attention=False)  # every argument above, passed on as given


def build_attention_unet(
    input_shape: Sequence[int | None] = (64, 64, 1),
    *,
    filters: Sequence[int] = PAPER_FILTERS,
    batch_norm: bool = False,
    dropout: float = 0.0,
    l2: float = 0.0,
    upsampling: str = "transpose",
    deep_supervision: bool = False,
    output_bias: float | None = None,
    name: str = "attention_unet",
) -> keras.Model:
    """Build the paper's Attention U-Net (uncompiled): a U-Net with an attention gate on every skip.

    Each gate takes ``x``, the skip connection (fine detail, ``C`` channels, size ``H x W``), and
    ``g``, the gating signal from the next coarser decoder level (``H/2 x W/2``). Both are
    projected to ``C // 2`` channels at the coarse size — ``x`` by a 2x2 convolution with stride 2,
    ``g`` by a 1x1 convolution — then added, passed through a ReLU, reduced to one channel by a 1x1
    convolution and a sigmoid: the attention coefficients, in [0, 1]. They are resampled
    (bilinear) to ``H x W`` and multiply ``x`` before it joins the up path. Working at the coarse
    size keeps the gates cheap; the coefficients are layers named
    ``attention_gate_<k>_coefficients`` (k = 1 at the coarsest skip), read by
    :func:`attention_maps`.

    Parameters
    ----------
    input_shape, filters, batch_norm, dropout, l2, upsampling, deep_supervision, output_bias, name
        As in :func:`build_unet`.

    Returns
    -------
    keras.Model
        Uncompiled Functional model, outputs as in :func:`build_unet`.

    Raises
    ------
    InvalidParameterError
        As in :func:`build_unet`.

    References
    ----------
    .. [1] O. Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018.
    .. [2] N. Abraham, N. M. Khan, "A Novel Focal Tversky Loss Function with Improved Attention
       U-Net for Lesion Segmentation", ISBI 2019.

    Examples
    --------
    >>> model = build_attention_unet((64, 64, 1))
    >>> model.count_params()
    2006341
    """
    return _build(**locals(), attention=True)  # every argument above, passed on as given


_BUILDERS = {"unet": build_unet, "attention_unet": build_attention_unet}


def build_model(architecture: str, input_shape: Sequence[int | None] = (64, 64, 1), **options: Any) -> keras.Model:
    """Build a model by name: ``"unet"`` or ``"attention_unet"``.

    Parameters
    ----------
    architecture : {"unet", "attention_unet"}
        Which network (``"attention-unet"`` and ``"AttentionUNet"`` spellings are accepted).
    input_shape : tuple
        As in :func:`build_unet`.
    **options
        Keyword options of :func:`build_unet` (``filters``, ``batch_norm``, ``dropout``, ``l2``,
        ``upsampling``, ``deep_supervision``, ``output_bias``, ``name``).

    Returns
    -------
    keras.Model

    Raises
    ------
    InvalidParameterError
        On an unknown architecture or option.
    """
    key = str(architecture).lower().replace("-", "_").replace(" ", "_")
    key = {"attentionunet": "attention_unet", "att_unet": "attention_unet", "u_net": "unet"}.get(key, key)
    if key not in _BUILDERS:
        raise InvalidParameterError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    allowed = {"filters", "batch_norm", "dropout", "l2", "upsampling", "deep_supervision", "output_bias", "name"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InvalidParameterError(f"unknown model options {unknown}; allowed: {sorted(allowed)}")
    return _BUILDERS[key](input_shape, **options)


def predict_probabilities(model: keras.Model, images: np.ndarray, *, batch_size: int = 128) -> np.ndarray:
    """Nodule probabilities of a one-channel segmentation model: ``(n, h, w)`` images in,
    ``(n, h, w)`` float32 out (the first output of a multi-output model). Every scorer of a trained
    model (a training unit, a real-CT fold, the study's held-out crops) predicts through it."""
    batch = np.asarray(images, np.float32)[..., np.newaxis]
    return np.asarray(first_output(model.predict(batch, batch_size=batch_size, verbose=0)), np.float32)[..., 0]


def attention_layer_names(model: keras.Model) -> list[str]:
    """Names of the layers that output attention coefficients, coarsest gate first (empty for a U-Net)."""
    return [layer.name for layer in model.layers if layer.name.endswith(_COEFFICIENT_SUFFIX)]


def attention_maps(model: keras.Model, images: np.ndarray, *, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Read the attention coefficients of every gate for a batch of images.

    Parameters
    ----------
    model : keras.Model
        A model from :func:`build_attention_unet` (trained or not; also after a ``.keras`` round trip).
    images : ndarray, shape (n, height, width) or (n, height, width, channels)
        Preprocessed images, as the model was trained on.
    batch_size : int
        Images per forward pass.

    Returns
    -------
    dict of str to ndarray
        ``{"attention_gate_1_coefficients": (n, h1, w1) float32, ...}``: one map per gate, in [0, 1],
        at the size of the skip connection it gates (``h / 8`` for gate 1 of a five-level model, up
        to ``h / 2`` for the last; upsample for an overlay).

    Raises
    ------
    InvalidParameterError
        If the model has no attention gates or the images do not fit it.
    """
    names = attention_layer_names(model)
    if not names:
        raise InvalidParameterError(f"model {model.name!r} has no attention gates (layers named '*{_COEFFICIENT_SUFFIX}')")
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4:
        raise InvalidParameterError(f"images must have shape (n, height, width[, channels]), got {images.shape}")
    expected = tuple(model.inputs[0].shape[1:])
    _check_spatial(images.shape[1:3], _depth_of(model), what="images")
    if expected[-1] is not None and images.shape[-1] != expected[-1]:
        raise InvalidParameterError(f"images have {images.shape[-1]} channels, the model expects {expected[-1]}")
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    outputs = probe.predict(images, batch_size=batch_size, verbose=0)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return {n: np.asarray(o, dtype=np.float32)[..., 0] for n, o in zip(names, outputs)}


# --------------------------------------------------------------------------------------------------
# Building blocks


def _build(
    input_shape: Sequence[int | None],
    *,
    attention: bool,
    filters: Sequence[int],
    batch_norm: bool,
    dropout: float,
    l2: float,
    upsampling: str,
    deep_supervision: bool,
    output_bias: float | None,
    name: str,
) -> keras.Model:
    filters = _check_filters(filters)
    input_shape = _check_input_shape(input_shape, len(filters))
    if not 0.0 <= float(dropout) < 1.0:
        raise InvalidParameterError(f"dropout must be in [0, 1), got {dropout!r}")
    if not float(l2) >= 0.0:
        raise InvalidParameterError(f"l2 must be >= 0, got {l2!r}")
    if upsampling not in UPSAMPLING_MODES:
        raise InvalidParameterError(f"upsampling must be one of {UPSAMPLING_MODES}, got {upsampling!r}")
    if output_bias is not None and not np.isfinite(float(output_bias)):
        raise InvalidParameterError(f"output_bias must be a finite float or None, got {output_bias!r}")
    conv = _ConvFactory(batch_norm=bool(batch_norm), dropout=float(dropout), l2=float(l2))

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    skips = []
    for level, width in enumerate(filters[:-1], start=1):
        x = conv.block(x, width, f"down_{level}")
        skips.append(x)
        x = layers.MaxPooling2D(pool_size=2, strides=2, name=f"down_{level}_pool")(x)
    x = conv.block(x, filters[-1], "bottom")

    decoder_outputs = []
    for k, (skip, width) in enumerate(zip(reversed(skips), reversed(filters[:-1])), start=1):
        if attention:
            skip = _attention_gate(skip, x, width // 2 or 1, conv, name=f"attention_gate_{k}")
        if upsampling == "transpose":
            up = layers.Conv2DTranspose(
                width, 2, strides=2, padding="same", kernel_regularizer=conv.regularizer(), name=f"up_{k}_transpose"
            )(x)
        else:
            up = layers.UpSampling2D(size=2, interpolation=upsampling, name=f"up_{k}_resize")(x)
        x = layers.Concatenate(name=f"up_{k}_concat")([up, skip])
        x = conv.block(x, width, f"up_{k}")
        decoder_outputs.append(x)

    bias = "zeros" if output_bias is None else keras.initializers.Constant(float(output_bias))
    logits = layers.Conv2D(1, 1, bias_initializer=bias, name="output_logits")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="mask")(logits)
    if deep_supervision:
        aux = []
        depth = len(decoder_outputs)
        for k, feature in enumerate(decoder_outputs[:-1], start=1):
            side = layers.Conv2D(1, 1, bias_initializer=bias, name=f"aux_{k}_logits")(feature)
            side = layers.UpSampling2D(size=2 ** (depth - k), interpolation="bilinear", name=f"aux_{k}_resize")(side)
            aux.append(layers.Activation("sigmoid", dtype="float32", name=f"aux_{k}")(side))
        outputs = [outputs, *aux]
    model = keras.Model(inputs, outputs, name=name)
    logger.debug("built %s with %d parameters", name, model.count_params())
    return model


class _ConvFactory:
    """3x3 convolution blocks with the shared options (batch norm, dropout, L2)."""

    def __init__(self, *, batch_norm: bool, dropout: float, l2: float):
        self.batch_norm = batch_norm
        self.dropout = dropout
        self.l2 = l2

    def regularizer(self):
        return keras.regularizers.L2(self.l2) if self.l2 > 0 else None

    def conv(self, x, width: int, name: str):
        x = layers.Conv2D(
            width,
            3,
            padding="same",
            use_bias=not self.batch_norm,
            kernel_initializer="he_normal",
            kernel_regularizer=self.regularizer(),
            name=f"{name}_conv",
        )(x)
        if self.batch_norm:
            x = layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"{name}_bn")(x)
        return layers.Activation("relu", name=f"{name}_relu")(x)

    def block(self, x, width: int, name: str):
        x = self.conv(x, width, f"{name}_1")
        if self.dropout > 0:
            x = layers.Dropout(self.dropout, name=f"{name}_dropout")(x)
        return self.conv(x, width, f"{name}_2")


def _attention_gate(x, g, inter: int, conv: _ConvFactory, *, name: str):
    """Additive attention gate at the coarse size; returns ``x`` times the resampled coefficients."""
    theta_x = layers.Conv2D(
        inter, 2, strides=2, use_bias=False, kernel_regularizer=conv.regularizer(), name=f"{name}_theta_x"
    )(x)
    phi_g = layers.Conv2D(inter, 1, kernel_regularizer=conv.regularizer(), name=f"{name}_phi_g")(g)
    joint = layers.Add(name=f"{name}_add")([theta_x, phi_g])
    joint = layers.Activation("relu", name=f"{name}_relu")(joint)
    psi = layers.Conv2D(1, 1, kernel_regularizer=conv.regularizer(), name=f"{name}_psi")(joint)
    coarse = layers.Activation("sigmoid", name=f"{name}_sigmoid")(psi)
    alpha = layers.UpSampling2D(size=2, interpolation="bilinear", name=f"{name}{_COEFFICIENT_SUFFIX}")(coarse)
    return layers.Multiply(name=f"{name}_apply")([x, alpha])


# --------------------------------------------------------------------------------------------------
# Argument checks


def _check_filters(filters: Sequence[int]) -> tuple[int, ...]:
    try:
        values = tuple(int(f) for f in filters)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"filters must be a sequence of positive integers, got {filters!r}") from None
    if len(values) < 2 or min(values) < 1 or any(int(f) != f for f in filters):
        raise InvalidParameterError(f"filters must hold at least two positive integers, got {filters!r}")
    return values


def _check_input_shape(input_shape: Sequence[int | None], levels: int) -> tuple[int | None, ...]:
    try:
        shape = tuple(None if s is None else int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"input_shape must be (height, width, channels), got {input_shape!r}") from None
    if len(shape) != 3:
        raise InvalidParameterError(f"input_shape must be (height, width, channels), got {input_shape!r}")
    if shape[2] is None or shape[2] < 1:
        raise InvalidParameterError(f"input_shape channels must be a positive integer, got {shape[2]!r}")
    _check_spatial(shape[:2], levels, what="input_shape")
    return shape


def _check_spatial(sides: Sequence[int | None], levels: int, *, what: str) -> None:
    multiple = 2 ** (levels - 1)
    for label, side in zip(("height", "width"), sides):
        if side is None:
            continue
        if side < multiple or side % multiple:
            raise InvalidParameterError(
                f"{what} {label} {side} must be a positive multiple of {multiple} "
                f"({levels} levels halve it {levels - 1} times); crop or pad, e.g. to {max(multiple, -(-side // multiple) * multiple)}"
            )


def _depth_of(model: keras.Model) -> int:
    """Number of levels of a nodulekit model (pooling layers + 1)."""
    return 1 + sum(isinstance(layer, layers.MaxPooling2D) for layer in model.layers)
