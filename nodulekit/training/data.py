"""The ``tf.data`` input pipeline and its on-the-fly augmentation.

Each epoch's batches are built from ``(seed, epoch)``: the shuffle order and every random
augmentation are pure functions of the seed, the epoch and the crop's index (stateless random ops).
A run resumed at epoch ``k`` therefore sees exactly the batches the uninterrupted run saw at epoch
``k``, whatever ran before, and parallel ``map`` calls cannot reorder randomness. One dataset
chains the epochs a single ``fit`` call trains (``make_dataset(..., epoch=k, epochs=n)``).

Pipeline (keras-io order): ``map`` (to tensors, ``AUTOTUNE``) -> ``cache`` -> per epoch: seeded
``shuffle`` -> ``map`` (augmentation, ``AUTOTUNE``, deterministic) -> ``batch``; the epochs
concatenated -> ``prefetch``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidParameterError

__all__ = ["Augmentation", "make_dataset", "batches_per_epoch", "augment_pair", "epoch_seed"]


@dataclass(frozen=True)
class Augmentation:
    """Strengths of the training augmentation (geometric ones move image and mask together).

    Attributes
    ----------
    flips : bool
        Random left-right and up-down flips (each with probability 1/2).
    rotate90 : bool
        Random multiple of 90 degrees (square crops only).
    rotation_degrees : float
        Extra rotation drawn uniformly from [-r, r] degrees (0 disables the affine part).
    scale : float
        Zoom factor drawn from [1 - s, 1 + s].
    shift_pixels : float
        Translation drawn from [-t, t] pixels on each axis.
    intensity : float
        Intensity jitter: ``image * (1 + u) + v`` with u, v drawn from [-i, i] (the images are
        z-scored, so 0.1 is a tenth of a standard deviation).
    """

    flips: bool = True
    rotate90: bool = True
    rotation_degrees: float = 10.0
    scale: float = 0.1
    shift_pixels: float = 2.0
    intensity: float = 0.1

    def __post_init__(self) -> None:
        for name in ("rotation_degrees", "scale", "shift_pixels", "intensity"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InvalidParameterError(f"Augmentation.{name} must be a finite number >= 0, got {value!r}")
        if self.scale >= 1:
            raise InvalidParameterError(f"Augmentation.scale must be < 1, got {self.scale!r}")

    @property
    def affine(self) -> bool:
        """True when the small affine transform is on."""
        return self.rotation_degrees > 0 or self.scale > 0 or self.shift_pixels > 0


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch (a fixed mix of the unit seed and the epoch number)."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0] & 0x7FFFFFFF)


def augment_pair(image, mask, seed, augmentation: Augmentation):
    """Augment one ``(height, width, 1)`` image and its mask with stateless random draws.

    Parameters
    ----------
    image, mask : tf.Tensor of float32, shape (height, width, 1)
    seed : tf.Tensor of int32, shape (2,)
        Stateless seed; the same seed gives the same transform.
    augmentation : Augmentation

    Returns
    -------
    (tf.Tensor, tf.Tensor)
        The augmented image (bilinear) and mask (nearest neighbour, still binary).
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, num=8)
    uniform = lambda k, low=0.0, high=1.0: tf.random.stateless_uniform([], seeds[k], low, high)  # noqa: E731
    if augmentation.flips:
        flip_lr = uniform(0) < 0.5
        image = tf.where(flip_lr, tf.reverse(image, [1]), image)
        mask = tf.where(flip_lr, tf.reverse(mask, [1]), mask)
        flip_ud = uniform(1) < 0.5
        image = tf.where(flip_ud, tf.reverse(image, [0]), image)
        mask = tf.where(flip_ud, tf.reverse(mask, [0]), mask)
    if augmentation.rotate90 and image.shape[0] == image.shape[1]:
        turns = tf.random.stateless_uniform([], seeds[2], 0, 4, dtype=tf.int32)
        image = tf.image.rot90(image, turns)
        mask = tf.image.rot90(mask, turns)
    if augmentation.affine:
        transform = _affine_transform(
            tf.shape(image)[:2],
            angle=uniform(3, -1.0, 1.0) * augmentation.rotation_degrees * math.pi / 180.0,
            zoom=1.0 + uniform(4, -1.0, 1.0) * augmentation.scale,
            shift=tf.stack([uniform(5, -1.0, 1.0), uniform(6, -1.0, 1.0)]) * augmentation.shift_pixels,
        )
        image = _warp(image, transform, "BILINEAR")
        mask = _warp(mask, transform, "NEAREST")
    if augmentation.intensity > 0:
        jitter = tf.random.stateless_uniform([2], seeds[7], -augmentation.intensity, augmentation.intensity)
        image = image * (1.0 + jitter[0]) + jitter[1]
    return image, mask


def _affine_transform(size, *, angle, zoom, shift):
    """The 8-parameter projective transform (output -> input coordinates) of a rotation and zoom
    about the image centre followed by a shift, as ``ImageProjectiveTransformV3`` wants it."""
    import tensorflow as tf

    height, width = tf.cast(size[0], tf.float32), tf.cast(size[1], tf.float32)
    cy, cx = (height - 1.0) / 2.0, (width - 1.0) / 2.0
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    # input = R^-1 (output - centre - shift) + centre
    a0, a1 = cos, sin
    b0, b1 = -sin, cos
    ox, oy = cx + shift[1], cy + shift[0]
    a2 = cx - a0 * ox - a1 * oy
    b2 = cy - b0 * ox - b1 * oy
    return tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])


def _warp(image, transform, interpolation: str):
    import tensorflow as tf

    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis],
        transforms=transform[tf.newaxis],
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode="NEAREST",
    )
    return tf.ensure_shape(out[0], image.shape)


def make_dataset(
    images: np.ndarray,
    masks: np.ndarray,
    *,
    batch_size: int,
    shuffle: bool = False,
    augment: bool | Augmentation = False,
    seed: int = 0,
    epoch: int = 0,
    epochs: int = 1,
    drop_remainder: bool = False,
):
    """A batched ``tf.data.Dataset`` of ``(image, mask)`` pairs for one epoch.

    Parameters
    ----------
    images : ndarray, shape (n, height, width)
        Preprocessed images (float).
    masks : ndarray, shape (n, height, width)
        Binary masks.
    batch_size : int
        Crops per batch (the last batch may be smaller). Under a ``tf.distribute`` strategy this is
        the global batch, split over the replicas by Keras.
    shuffle : bool
        Shuffle the crops with a seed drawn from ``(seed, epoch)``.
    augment : bool or Augmentation
        Augment on the fly; ``True`` uses :class:`Augmentation` defaults.
    seed : int
        Unit seed.
    epoch : int
        Epoch number: a different shuffle and different augmentations every epoch, the same ones
        every time the same epoch is rebuilt (resume).
    epochs : int
        Consecutive epochs ``epoch, epoch + 1, ...`` in one dataset, one after the other, for a
        single ``fit(..., steps_per_epoch=batches_per_epoch(...))`` call over them (the crops are
        cached once).
    drop_remainder : bool
        Drop the last, smaller batch (used under a distribution strategy when that batch would
        leave a replica without a single crop).

    Returns
    -------
    tf.data.Dataset
        Elements ``(images, masks)`` of shape ``(batch, height, width, 1)``, both float32.

    Raises
    ------
    InvalidParameterError
        On mismatched shapes or a bad batch size.

    Examples
    --------
    >>> ds = make_dataset(np.zeros((10, 16, 16)), np.zeros((10, 16, 16)), batch_size=4)
    >>> [tuple(x.shape) for x, _ in ds]
    [(4, 16, 16, 1), (4, 16, 16, 1), (2, 16, 16, 1)]
    """
    import tensorflow as tf

    images = np.asarray(images, dtype=np.float32)
    masks = np.asarray(masks)
    if images.ndim != 3 or masks.shape != images.shape:
        raise InvalidParameterError(
            f"images and masks must both have shape (n, height, width); got {images.shape} and {masks.shape}"
        )
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 1:
        raise InvalidParameterError(f"epochs must be a positive integer, got {epochs!r}")
    if isinstance(augment, Augmentation):
        augmentation, augment = augment, True
    else:
        augmentation = Augmentation()
    n = len(images)

    def to_tensors(index, image, mask):
        return index, image[..., tf.newaxis], tf.cast(mask, tf.float32)[..., tf.newaxis]

    dataset = tf.data.Dataset.from_tensor_slices((np.arange(n, dtype=np.int64), images, masks.astype(np.uint8)))
    cached = dataset.map(to_tensors, num_parallel_calls=tf.data.AUTOTUNE).cache()  # one cache for every epoch

    def one_epoch(number: int):
        mix = epoch_seed(seed, number)
        dataset = cached
        if shuffle and n > 1:
            dataset = dataset.shuffle(n, seed=mix, reshuffle_each_iteration=False)
        if augment:

            def random_view(index, image, mask):
                pair_seed = tf.stack([tf.constant(mix, tf.int64), index])
                return augment_pair(image, mask, tf.cast(pair_seed % (2**31 - 1), tf.int32), augmentation)

            dataset = dataset.map(random_view, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        else:
            dataset = dataset.map(lambda index, image, mask: (image, mask))
        return dataset.batch(int(batch_size), drop_remainder=drop_remainder)

    dataset = one_epoch(epoch)
    for number in range(epoch + 1, epoch + epochs):
        dataset = dataset.concatenate(one_epoch(number))
    return dataset.prefetch(tf.data.AUTOTUNE)


def batches_per_epoch(n: int, batch_size: int, *, drop_remainder: bool = False) -> int:
    """Batches that :func:`make_dataset` gives per epoch for ``n`` crops."""
    return n // batch_size if drop_remainder else -(-n // batch_size)
