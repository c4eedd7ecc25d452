"""The ``tf.data`` input pipeline of the paper protocol, augmenting on the fly.

The augmentation itself (:class:`~nodulekit.training.augment.Augmentation` and its TensorFlow
implementation :func:`~nodulekit.training.augment.augment_pair`) lives in
:mod:`nodulekit.training.augment`, beside the NumPy one the real-CT recipes' feeder uses.

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

import numpy as np

from ..errors import InvalidParameterError
from .augment import Augmentation, augment_pair

__all__ = ["Augmentation", "make_dataset", "batches_per_epoch", "augment_pair", "epoch_seed"]


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch (a fixed mix of the unit seed and the epoch number)."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0] & 0x7FFFFFFF)


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
