"""Whole-slice and whole-scan inference: lung mask, segmentation, nodules as measured 3-D objects.

The paper's networks see 64x64 crops centred on a nodule. A user has a whole CT scan. This package
bridges the two:

1. :func:`lung_mask` restricts the search to the lungs (scikit-image / SciPy morphology on HU).
2. :class:`Segmenter` bundles a trained model with the *exact* preprocessing
   :class:`~nodulekit.preprocessing.Pipeline` it was trained with and predicts whole slices, either
   with **sliding windows** of the training crop size (overlapping, blended with a Gaussian
   importance map) or **fully convolutionally** on the whole lung region at once.
3. :func:`measure_nodules` turns the thresholded probabilities into nodules: 3-D connected
   components across slices, each measured in mm with the real pixel and slice spacing.

Modules
-------
``lung`` (:func:`lung_mask`), ``windows`` (sliding windows and the whole-slice pass as pure
functions of the images and a predictor), ``forward`` (the model as a traced batch predictor),
``measure`` (:func:`measure_nodules`, :func:`match_nodules`), ``io`` (the segmenter folder, inputs,
:func:`write_segmentation`), ``segmenter`` (:class:`Segmenter`, :func:`load_segmenter`), ``result``
(:class:`SegmentationResult`). Everything public is importable from ``nodulekit.inference``.

Why the two modes normalise differently
---------------------------------------
Training z-scores each 64x64 crop on its own (the paper's per-image normalisation). A sliding
window z-scored on its own sees exactly the training condition. A whole slice z-scored as one image
does not: its mean and standard deviation are dominated by air, body and the field-of-view
padding, so the network would see intensities it never saw. The fully convolutional mode therefore
uses a *local* z-score: every pixel is normalised by the mean and standard deviation of the
``window x window`` neighbourhood centred on it (a box filter), i.e. by the statistics of the
training-size crop centred on that pixel, which is how a nodule sat in every training crop.

Which mode (measured)
---------------------
An Attention U-Net trained on synthetic crops (``nodulekit.phantom``, 25 epochs, validation Dice
0.90) segmenting three synthetic 24-slice scans (12 nodules): the fully convolutional pass found
11/12 nodules with mean per-nodule Dice 0.81 in 6-8 s per scan; sliding windows with 50 % overlap
found 10/12, Dice 0.68, in 18-22 s; with 25 % overlap 8/12, Dice 0.48 (2 shared CPU cores).
``"full"`` is therefore the default. Both modes share one caveat: a model trained only on crops
centred on nodules (the paper's data) never saw a crop without one, so on a whole scan it also
marks vessels; :func:`measure_nodules` reports every component with its size and probability.

References: the overlap-tile and Gaussian-blending papers in :mod:`.windows`, LIDC-IDRI's 3 mm
nodules in :mod:`.measure`.
"""


from __future__ import annotations

from .candidates import rank_union
from .forward import without_fixed_size
from .io import write_segmentation
from .lung import lung_mask
from .measure import NODULE_COLUMNS, match_nodules, measure_labels, measure_nodules
from .result import SegmentationResult
from .segmenter import MODES, Segmenter, load_segmenter
from .windows import gaussian_weights, local_zscore, window_starts

__all__ = [
    "MODES",
    "NODULE_COLUMNS",
    "Segmenter",
    "SegmentationResult",
    "lung_mask",
    "gaussian_weights",
    "window_starts",
    "local_zscore",
    "measure_labels",
    "measure_nodules",
    "rank_union",
    "load_segmenter",
    "without_fixed_size",
    "match_nodules",
    "write_segmentation",
]
