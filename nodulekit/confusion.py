"""Per-image confusion counts in Keras ops: the one place the training losses and the Keras metrics count.

``TP = sum(y p)``, ``FP = sum((1 - y) p)``, ``FN = sum(y (1 - p))`` over each image's pixels. With
probabilities ``p`` these are the soft counts of the overlap losses (:mod:`nodulekit.losses`:
Tversky, focal Tversky, Dice); with a binarised prediction they are the confusion counts of the
streaming Keras metrics (:mod:`nodulekit.metrics`), as MONAI's ``TverskyLoss`` gets its counts
from one helper. The NumPy scores of whole arrays (:func:`nodulekit.metrics.confusion_counts`)
count the same way on host arrays.

:mod:`nodulekit.losses` and :mod:`nodulekit.metrics` import this module as ``from . import
confusion`` and look the function up when called: importing Keras (here) registers their Keras
objects (``nodulekit/__init__.py``), which imports them while this module is still loading.
"""

from __future__ import annotations

from keras import ops

__all__ = ["soft_confusion"]


def soft_confusion(y_true, y_pred):
    """True positives, false positives and false negatives of every image, as float32.

    Parameters
    ----------
    y_true : tensor, shape (batch, ...)
        Ground truth in {0, 1} (or soft labels in [0, 1]).
    y_pred : tensor, same shape
        Predicted probabilities in [0, 1], or a binary prediction.

    Returns
    -------
    (tensor, tensor, tensor) of float32, each shape (batch,)
        ``tp, fp, fn`` summed over each image's pixels.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([[1.0, 1.0, 0.0, 0.0]])
    >>> p = np.array([[0.9, 0.5, 0.2, 0.0]])
    >>> [round(float(ops.convert_to_numpy(c)[0]), 2) for c in soft_confusion(y, p)]
    [1.4, 0.2, 0.6]
    """
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    batch = ops.shape(y_pred)[0]
    y_pred = ops.reshape(y_pred, (batch, -1))
    y_true = ops.reshape(y_true, (batch, -1))
    tp = ops.sum(y_true * y_pred, axis=1)
    fp = ops.sum((1.0 - y_true) * y_pred, axis=1)
    fn = ops.sum(y_true * (1.0 - y_pred), axis=1)
    return tp, fp, fn
