"""Prototypes of speed changes measured by the benchmark, kept here until the lead moves them into nodulekit.

Nothing in this file is used by nodulekit itself. Each prototype is the smallest change that
can be copied into its module:

* :func:`build_variant` — nodulekit's U-Net / Attention U-Net (same layers, same names where the
  layer is the same) with two optional, cheaper building blocks:

  - ``upsampling="pixel_shuffle"``: the 2x2 stride-2 transposed convolution written as a 1x1
    convolution to ``4 * width`` channels followed by a depth-to-space rearrangement. A 2x2/stride-2
    transposed convolution has no overlapping taps, so the two are the same function (same
    parameter count, weights map one to one, :func:`transpose_to_pixel_shuffle_weights`); the 1x1
    form runs as one matrix product on oneDNN instead of the slow ``Conv2DBackpropFilter`` of a
    strided transposed convolution.
  - ``gate_resample="nearest"``: the attention coefficients are brought from the coarse grid to
    the skip's size by nearest-neighbour repetition instead of bilinear interpolation.

* :func:`make_dataset_batched` — nodulekit's ``tf.data`` pipeline with the augmentation applied
  to whole batches (one ``ImageProjectiveTransformV3`` per batch with one composed transform per
  image: flips, 90-degree turns, rotation, zoom and shift) instead of one ``map`` call per crop.
  Random draws are stateless functions of ``(seed, epoch, batch number)``: the same epoch gives
  the same batches on a resumed run.

Pure Keras where possible (the model builders), so that they run under ``KERAS_BACKEND=jax``.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import numpy as np
from keras import layers

__all__ = ["build_variant", "transpose_to_pixel_shuffle_weights", "make_dataset_batched", "PixelShuffle"]


@keras.saving.register_keras_serializable(package="nodulekit_bench")
class PixelShuffle(layers.Layer):
    """Depth to space by ``factor`` (channels-last): ``(h, w, f*f*c) -> (f*h, f*w, c)``."""

    def __init__(self, factor: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, inputs):
        f = self.factor
        shape = keras.ops.shape(inputs)
        height, width, channels = shape[1], shape[2], inputs.shape[-1] // (f * f)
        x = keras.ops.reshape(inputs, (-1, height, width, f, f, channels))
        x = keras.ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return keras.ops.reshape(x, (-1, height * f, width * f, channels))

    def compute_output_shape(self, input_shape):
        f = self.factor
        h, w, c = input_shape[1], input_shape[2], input_shape[3]
        return (input_shape[0], None if h is None else h * f, None if w is None else w * f, c // (f * f))

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def transpose_to_pixel_shuffle_weights(kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights of a ``Conv2DTranspose(width, 2, strides=2)`` as the equivalent 1x1 conv + :class:`PixelShuffle`.

    Keras stores a transposed-convolution kernel as ``(2, 2, out, in)``; output pixel
    ``(2i + a, 2j + b)`` is ``kernel[a, b].T @ x[i, j] + bias``. The 1x1 convolution's kernel is
    ``(1, 1, in, 4 * out)`` with output channel ``(a * 2 + b) * out + o``, which PixelShuffle puts at
    offset ``(a, b)``.
    """
    kernel = np.asarray(kernel)
    size_a, size_b, out, inp = kernel.shape
    conv = kernel.transpose(3, 0, 1, 2).reshape(inp, size_a * size_b * out)
    return conv[np.newaxis, np.newaxis], np.tile(np.asarray(bias), size_a * size_b)


def build_variant(
    architecture: str = "attention_unet",
    input_shape: Sequence[int | None] = (64, 64, 1),
    *,
    filters: Sequence[int] = (16, 32, 64, 128, 256),
    upsampling: str = "transpose",
    gate_resample: str = "bilinear",
) -> keras.Model:
    """nodulekit's model (default options) with the cheaper blocks described in the module docstring.

    Parameters
    ----------
    architecture : {"unet", "attention_unet"}
    input_shape : tuple
    filters : sequence of int
    upsampling : {"transpose", "pixel_shuffle"}
    gate_resample : {"bilinear", "nearest"}

    Returns
    -------
    keras.Model
        Uncompiled; with ``upsampling="transpose"`` and ``gate_resample="bilinear"`` the same network
        as ``nodulekit.models.build_model(architecture)``.
    """
    if upsampling not in ("transpose", "pixel_shuffle"):
        raise ValueError(f"upsampling must be 'transpose' or 'pixel_shuffle', got {upsampling!r}")
    if gate_resample not in ("bilinear", "nearest"):
        raise ValueError(f"gate_resample must be 'bilinear' or 'nearest', got {gate_resample!r}")
    attention = architecture == "attention_unet"

    def conv(x, width, name):
        x = layers.Conv2D(width, 3, padding="same", kernel_initializer="he_normal", name=f"{name}_conv")(x)
        return layers.Activation("relu", name=f"{name}_relu")(x)

    def block(x, width, name):
        return conv(conv(x, width, f"{name}_1"), width, f"{name}_2")

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x, skips = inputs, []
    for level, width in enumerate(filters[:-1], start=1):
        x = block(x, width, f"down_{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, 2, name=f"down_{level}_pool")(x)
    x = block(x, filters[-1], "bottom")
    for k, (skip, width) in enumerate(zip(reversed(skips), reversed(filters[:-1])), start=1):
        if attention:
            name, inter = f"attention_gate_{k}", max(1, width // 2)
            theta_x = layers.Conv2D(inter, 2, strides=2, use_bias=False, name=f"{name}_theta_x")(skip)
            phi_g = layers.Conv2D(inter, 1, name=f"{name}_phi_g")(x)
            joint = layers.Activation("relu", name=f"{name}_relu")(layers.Add(name=f"{name}_add")([theta_x, phi_g]))
            coarse = layers.Activation("sigmoid", name=f"{name}_sigmoid")(layers.Conv2D(1, 1, name=f"{name}_psi")(joint))
            alpha = layers.UpSampling2D(2, interpolation=gate_resample, name=f"{name}_coefficients")(coarse)
            skip = layers.Multiply(name=f"{name}_apply")([skip, alpha])
        if upsampling == "transpose":
            up = layers.Conv2DTranspose(width, 2, strides=2, padding="same", name=f"up_{k}_transpose")(x)
        else:
            up = layers.Conv2D(4 * width, 1, name=f"up_{k}_shuffle_conv")(x)
            up = PixelShuffle(2, name=f"up_{k}_shuffle")(up)
        x = block(layers.Concatenate(name=f"up_{k}_concat")([up, skip]), width, f"up_{k}")
    logits = layers.Conv2D(1, 1, name="output_logits")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="mask")(logits)
    return keras.Model(inputs, outputs, name=f"{architecture}_variant")


# --------------------------------------------------------------------------------------------------
# Batched augmentation (TensorFlow only: nodulekit's training pipeline is tf.data)


def _batch_transforms(tf, batch, size, seed, augmentation):
    """One projective transform (output -> input coordinates) per image: flips, 90-degree turns,
    rotation and zoom about the centre, then a shift; shape (batch, 8)."""
    seeds = tf.random.experimental.stateless_split(seed, num=6)
    uniform = lambda k, low=-1.0, high=1.0: tf.random.stateless_uniform([batch], seeds[k], low, high)  # noqa: E731
    height, width = tf.cast(size[0], tf.float32), tf.cast(size[1], tf.float32)
    cy, cx = (height - 1.0) / 2.0, (width - 1.0) / 2.0
    # Forward map (about the centre): output = S(shift) . R(angle) . Z(zoom) . T90^k . F(flips) . input.
    # The warp op wants the inverse (input coordinates of each output pixel).
    ones, zeros = tf.ones([batch]), tf.zeros([batch])
    flip_x = tf.where(uniform(0, 0.0, 1.0) < 0.5, -ones, ones) if augmentation.flips else ones
    flip_y = tf.where(uniform(1, 0.0, 1.0) < 0.5, -ones, ones) if augmentation.flips else ones
    turns = tf.floor(uniform(2, 0.0, 4.0)) if augmentation.rotate90 else zeros
    angle = turns * (math.pi / 2.0) + uniform(3) * (augmentation.rotation_degrees * math.pi / 180.0)
    zoom = 1.0 + uniform(4) * augmentation.scale
    shift = tf.random.stateless_uniform([batch, 2], seeds[5], -1.0, 1.0) * augmentation.shift_pixels
    # Inverse of rotation+zoom applied after the flips: input = F . R(-angle) / zoom . (out - c - shift) + c
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    a0, a1 = flip_x * cos, flip_x * sin
    b0, b1 = -flip_y * sin, flip_y * cos
    ox, oy = cx + shift[:, 1], cy + shift[:, 0]
    a2 = cx - a0 * ox - a1 * oy
    b2 = cy - b0 * ox - b1 * oy
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def make_dataset_batched(
    images: np.ndarray,
    masks: np.ndarray,
    *,
    batch_size: int,
    shuffle: bool = False,
    augment=False,
    seed: int = 0,
    epoch: int = 0,
    drop_remainder: bool = False,
):
    """Like ``nodulekit.training.make_dataset`` with the augmentation done per batch (see module docstring).

    Pipeline: ``from_tensor_slices`` -> ``cache`` -> seeded ``shuffle`` -> ``batch`` -> ``map``
    (batched augmentation, ``AUTOTUNE``, deterministic) -> ``prefetch``. Images become
    ``(batch, h, w, 1)`` float32 and masks float32 as in nodulekit.
    """
    import tensorflow as tf

    from nodulekit.training.data import Augmentation, epoch_seed

    images = np.asarray(images, dtype=np.float32)[..., np.newaxis]
    masks = np.asarray(masks, dtype=np.float32)[..., np.newaxis]
    if isinstance(augment, Augmentation):
        augmentation, augment = augment, True
    else:
        augmentation = Augmentation()
    mix = epoch_seed(seed, epoch)
    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).cache()
    if shuffle and len(images) > 1:
        dataset = dataset.shuffle(len(images), seed=mix, reshuffle_each_iteration=False)
    dataset = dataset.batch(int(batch_size), drop_remainder=drop_remainder)
    if augment:
        size = images.shape[1:3]
        geometric = augmentation.flips or augmentation.rotate90 or augmentation.affine

        def augment_batch(number, batch):
            image, mask = batch
            count = tf.shape(image)[0]
            seed_pair = tf.cast(tf.stack([tf.constant(mix, tf.int64), number]) % (2**31 - 1), tf.int32)
            transforms = _batch_transforms(tf, count, size, seed_pair, augmentation)
            warp = lambda values, how: tf.raw_ops.ImageProjectiveTransformV3(  # noqa: E731
                images=values, transforms=transforms, output_shape=list(size), fill_value=0.0,
                interpolation=how, fill_mode="NEAREST",
            )
            if geometric:
                image, mask = warp(image, "BILINEAR"), warp(mask, "NEAREST")
            if augmentation.intensity > 0:
                jitter = tf.random.stateless_uniform(
                    [count, 1, 1, 2], tf.random.experimental.stateless_fold_in(seed_pair, 7),
                    -augmentation.intensity, augmentation.intensity,
                )
                image = image * (1.0 + jitter[..., :1]) + jitter[..., 1:]
            return image, mask

        dataset = dataset.enumerate().map(augment_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------------------------------
# Reduced-precision inference of a model trained in float32


def with_precision(model: keras.Model, policy: str = "mixed_bfloat16", *, keep_float32: Sequence[str] = ("mask",)) -> keras.Model:
    """The same Functional model (same weights) with every layer's dtype policy set to ``policy``.

    Layers named in ``keep_float32`` (nodulekit's final sigmoid ``"mask"``, and any layer whose
    policy is already float32 *and* that is an output activation) stay in float32, so the
    probabilities come out in float32. Used to run a float32-trained model in bfloat16 on CPUs with
    AVX512-BF16 (about 1.8x the inference throughput here) without retraining.
    """
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer" or layer["config"].get("name") in keep_float32:
            continue
        layer["config"]["dtype"] = policy
    clone = model.__class__.from_config(config)
    clone.set_weights(model.get_weights())
    return clone
