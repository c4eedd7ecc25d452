"""The one per-image counting of the losses and the Keras metrics (nodulekit.confusion)."""

from __future__ import annotations

import numpy as np
from keras import ops

from nodulekit.confusion import soft_confusion
from nodulekit.metrics import confusion_counts


def test_soft_counts_per_image_and_binary_counts_equal_the_numpy_confusion_counts():
    rng = np.random.default_rng(1)
    y = (rng.random((4, 8, 8, 1)) > 0.6).astype("float32")
    y[1] = 0  # an empty mask
    p = rng.random((4, 8, 8, 1)).astype("float32")
    tp, fp, fn = (ops.convert_to_numpy(c) for c in soft_confusion(y, p))
    flat_y, flat_p = y.reshape(4, -1), p.reshape(4, -1)
    np.testing.assert_allclose(tp, (flat_y * flat_p).sum(1), rtol=1e-6)
    np.testing.assert_allclose(fp, ((1 - flat_y) * flat_p).sum(1), rtol=1e-6)
    np.testing.assert_allclose(fn, (flat_y * (1 - flat_p)).sum(1), rtol=1e-6)
    assert tp[1] == 0 and fn[1] == 0  # nothing to find in the empty mask
    binary = (p > 0.5).astype("float32")
    counts = confusion_counts(y, p, threshold=0.5, per_image=True)
    tp, fp, fn = (ops.convert_to_numpy(c) for c in soft_confusion(y, binary))
    np.testing.assert_array_equal(tp, counts["tp"])
    np.testing.assert_array_equal(fp, counts["fp"])
    np.testing.assert_array_equal(fn, counts["fn"])
