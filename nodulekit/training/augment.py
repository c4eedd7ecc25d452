"""The one training augmentation: :class:`Augmentation` describes it, two feeders apply it.

An :class:`Augmentation` (frozen) holds the strengths; both feeders read the same description:

* :func:`augment_pair` — TensorFlow, stateless random ops, one image per call: the paper
  protocol's ``tf.data`` pipeline (:func:`nodulekit.training.data.make_dataset`), where every draw
  is a function of (seed, epoch, crop) so a resumed run sees the same batches.
* :func:`augment_batch` — NumPy, a batch at a time from a ``numpy.random.Generator``: the real-CT
  recipes' backend-agnostic feeder (:class:`nodulekit.evaluation.AugmentedSequence`, Keras 3 on
  TensorFlow or JAX). It does the geometric symmetries and the intensity jitter, not the affine part.

``Recipe(augment=True)`` of the real-CT recipes is :data:`RECIPE_AUGMENTATION`: a uniformly drawn
symmetry of the square (flip x 90-degree turn) and a normal intensity jitter of sd 0.1, no affine
part. :func:`augment_batch` draws exactly as the recipes' feeder always drew (per image a turn
``k`` in 0..3 and a flip in {0, 1}, then the batch's gains and shifts), so a real-CT retrain gives
the same numbers as before and the cached fold results stay valid; the paper protocol's
``tf.data`` draws are unchanged too.

:func:`augment_patches` is the 3-D counterpart for the whole-scan candidates' patch scorer
(:mod:`nodulekit.training.patch_scorer`): the 16 symmetries of a patch that keep its slice axis.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidParameterError
from ..postprocess import dihedral

__all__ = ["Augmentation", "RECIPE_AUGMENTATION", "INTENSITY_NOISES", "augment_pair", "augment_batch", "augment_patches"]

#: Laws of the intensity jitter's gain and shift.
INTENSITY_NOISES = ("uniform", "normal")


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
    intensity_noise : {"uniform", "normal"}
        Law of u and v: uniform on [-i, i] (the paper protocol's), or normal with standard
        deviation i (the real-CT recipes', :data:`RECIPE_AUGMENTATION`). Left out of
        :meth:`to_dict` when ``"uniform"``, so configs saved before it existed read back equal.
    """

    flips: bool = True
    rotate90: bool = True
    rotation_degrees: float = 10.0
    scale: float = 0.1
    shift_pixels: float = 2.0
    intensity: float = 0.1
    intensity_noise: str = "uniform"

    def __post_init__(self) -> None:
        for name in ("rotation_degrees", "scale", "shift_pixels", "intensity"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InvalidParameterError(f"Augmentation.{name} must be a finite number >= 0, got {value!r}")
        if self.scale >= 1:
            raise InvalidParameterError(f"Augmentation.scale must be < 1, got {self.scale!r}")
        if self.intensity_noise not in INTENSITY_NOISES:
            raise InvalidParameterError(f"Augmentation.intensity_noise must be one of {INTENSITY_NOISES}, got {self.intensity_noise!r}")

    @property
    def affine(self) -> bool:
        """True when the small affine transform is on."""
        return self.rotation_degrees > 0 or self.scale > 0 or self.shift_pixels > 0

    def to_dict(self) -> dict[str, Any]:
        """The strengths as plain values (``intensity_noise`` only when not ``"uniform"``)."""
        values = dataclasses.asdict(self)
        if values["intensity_noise"] == "uniform":
            del values["intensity_noise"]
        return values


#: ``Recipe(augment=True)``: the 8 symmetries of the square and a normal intensity jitter of sd 0.1,
#: no affine part (the real-CT recipes' augmentation).
RECIPE_AUGMENTATION = Augmentation(rotation_degrees=0.0, scale=0.0, shift_pixels=0.0, intensity=0.1, intensity_noise="normal")


def augment_batch(
    images: np.ndarray, masks: np.ndarray, augmentation: Augmentation, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Augment a NumPy batch of ``(n, height, width, 1)`` images and masks (the recipes' feeder).

    Parameters
    ----------
    images, masks : ndarray of float32, shape (n, height, width, 1)
    augmentation : Augmentation
        Without an affine part (``rotation_degrees = scale = shift_pixels = 0``).
    rng : numpy.random.Generator
        Drawn from in a fixed order: per image the geometric draws, then the batch's intensity
        gains and shifts.

    Returns
    -------
    (ndarray, ndarray)
        New arrays; the masks moved exactly as the images (flips and 90-degree turns are exact).

    Raises
    ------
    InvalidParameterError
        With an affine part, or 90-degree turns of non-square images.
    """
    if augmentation.affine:
        raise InvalidParameterError("the NumPy feeder does no affine augmentation; set rotation_degrees, scale and shift_pixels to 0")
    x, y = np.array(images, dtype=np.float32), np.array(masks, dtype=np.float32)
    if augmentation.rotate90 and x.shape[1] != x.shape[2]:
        raise InvalidParameterError(f"90-degree turns need square images, got {x.shape[1]}x{x.shape[2]}")
    if augmentation.flips or augmentation.rotate90:
        for i in range(len(x)):
            k, flip = _symmetry(augmentation, rng)
            x[i], y[i] = dihedral(x[i], k, flip), dihedral(y[i], k, flip)
    if augmentation.intensity > 0:
        shape = (len(x), 1, 1, 1)
        if augmentation.intensity_noise == "normal":
            gain = 1.0 + augmentation.intensity * rng.standard_normal(shape)
            shift = augmentation.intensity * rng.standard_normal(shape)
        else:
            gain = 1.0 + rng.uniform(-augmentation.intensity, augmentation.intensity, shape)
            shift = rng.uniform(-augmentation.intensity, augmentation.intensity, shape)
        x = (x * gain + shift).astype(np.float32)
    return x, y


def _symmetry(augmentation: Augmentation, rng: np.random.Generator) -> tuple[int, int]:
    """A random ``(k, flip)`` for :func:`nodulekit.postprocess.dihedral` within the allowed moves.

    Flips and turns together: uniform over the 8 symmetries of the square (as the ``tf.data``
    pipeline's two flips and a turn). Flips alone: left-right and up-down flips, each with
    probability 1/2 (a double flip is a half turn). Turns alone: uniform over the 4 turns.
    """
    if augmentation.flips and augmentation.rotate90:
        return int(rng.integers(4)), int(rng.integers(2))
    if augmentation.rotate90:
        return int(rng.integers(4)), 0
    flip_lr, flip_ud = rng.integers(2), rng.integers(2)
    # dihedral(k, flip) flips left-right after k turns; an up-down flip is a half turn after a left-right one
    return (2 if flip_ud else 0), int(flip_lr != flip_ud)


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
        if augmentation.intensity_noise == "normal":
            jitter = tf.random.stateless_normal([2], seeds[7], stddev=augmentation.intensity)
        else:
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


def augment_patches(patches: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy with each patch flipped along each axis and its rows and columns swapped, each with probability 1/2.

    The 16 symmetries of a patch that keep the slice axis a slice axis (a nodule has no preferred
    direction; the scan's anisotropy stays along z).
    """
    out = np.array(patches, copy=True)
    for axis in (1, 2, 3):
        flip = rng.random(len(out)) < 0.5
        out[flip] = np.flip(out[flip], axis=axis)
    swap = rng.random(len(out)) < 0.5
    out[swap] = np.swapaxes(out[swap], 2, 3)
    return out
