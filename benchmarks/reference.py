"""The reference the benchmark compares nodulekit with: a U-Net / Attention U-Net written the usual way.

A plain Keras Functional model, float32, fed NumPy arrays through ``fit`` and ``predict``, with the
attention gates at full resolution as most tutorials write them (Oktay et al. 2018 as ported to
Keras in blog posts and MONAI): the gating signal is upsampled to the skip connection's size, both
are projected by 1x1 convolutions there, added, ReLU, a 1x1 convolution to one channel, sigmoid,
and the skip is multiplied by the coefficients. Same widths, same blocks and same transposed
convolution as nodulekit's builders, so the two differ only in how they are built and fed.

Pure Keras 3 (no TensorFlow import), so the same file runs under ``KERAS_BACKEND=jax`` on a GPU.
"""

from __future__ import annotations

from typing import Sequence

import keras
from keras import layers

__all__ = ["build_reference", "FILTERS"]

#: The paper's widths.
FILTERS = (16, 32, 64, 128, 256)


def _block(x, width: int):
    x = layers.Conv2D(width, 3, padding="same", activation="relu", kernel_initializer="he_normal")(x)
    return layers.Conv2D(width, 3, padding="same", activation="relu", kernel_initializer="he_normal")(x)


def _full_resolution_gate(x, g, inter: int):
    """Additive attention gate computed at the skip's (fine) resolution."""
    g = layers.UpSampling2D(size=2, interpolation="bilinear")(g)
    theta_x = layers.Conv2D(inter, 1, use_bias=False)(x)
    phi_g = layers.Conv2D(inter, 1)(g)
    joint = layers.Activation("relu")(layers.Add()([theta_x, phi_g]))
    alpha = layers.Conv2D(1, 1, activation="sigmoid")(joint)
    return layers.Multiply()([x, alpha])


def build_reference(
    architecture: str = "attention_unet",
    input_shape: Sequence[int | None] = (64, 64, 1),
    *,
    filters: Sequence[int] = FILTERS,
) -> keras.Model:
    """Build the tutorial-style reference model (uncompiled, float32 unless a global policy says otherwise).

    Parameters
    ----------
    architecture : {"unet", "attention_unet"}
        Plain U-Net or U-Net with a full-resolution attention gate on every skip.
    input_shape : tuple
        ``(height, width, channels)``.
    filters : sequence of int
        Widths, top to bottom.

    Returns
    -------
    keras.Model
    """
    if architecture not in ("unet", "attention_unet"):
        raise ValueError(f"architecture must be 'unet' or 'attention_unet', got {architecture!r}")
    inputs = keras.Input(shape=tuple(input_shape))
    x, skips = inputs, []
    for width in filters[:-1]:
        x = _block(x, width)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = _block(x, filters[-1])
    for skip, width in zip(reversed(skips), reversed(filters[:-1])):
        if architecture == "attention_unet":
            skip = _full_resolution_gate(skip, x, max(1, width // 2))
        up = layers.Conv2DTranspose(width, 2, strides=2, padding="same")(x)
        x = _block(layers.Concatenate()([up, skip]), width)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"reference_{architecture}")
