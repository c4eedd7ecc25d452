"""A small 3-D CNN that scores whole-scan candidates from the scan around them (the third scorer).

The second stage's trees (:mod:`nodulekit.detection`) see a candidate through hand-made
features. :class:`PatchScorer` sees it directly: a 3-D patch of the CT and of the segmentation
model's probabilities around the candidate's centre (:func:`candidate_patches`), sampled on a
fixed grid in millimetres, so that scans of any voxel size give the same patch. Its output is a
logit; a :class:`~nodulekit.detection.PerSourceClassifier` with a ``patch_fusion`` entry adds it to
the trees' logit and calibrates the sum (the late fusion of the false-positive-reduction stage of
[1]_, on a much smaller network). It is trained by
:func:`nodulekit.training.patch_scorer.fit_patch_scorer` on the candidates of synthetic scans
(``experiments/detection_patches.py``) and saved beside ``classifier.json`` as
:data:`PATCH_SCORER_FILE`.

Patch conventions (part of a saved scorer's contract; changing them needs a retrained model):

* grid :data:`PATCH_SHAPE` (slices, rows, columns) = (12, 24, 24) points, :data:`PATCH_STEP_MM` =
  (2.0, 1.25, 1.25) mm apart: 24 mm along z, 30 mm in-plane, centred on the candidate's
  ``centroid_z/y/x`` (voxel coordinates; a blob candidate's centre is the filter's peak);
* trilinear interpolation (:func:`scipy.ndimage.map_coordinates`, order 1); outside the scan the
  CT is air (-1000 HU) and the probability 0;
* channel 0: HU mapped by ``(hu + 1000) / 1400`` and clipped to [0, 1.1] (air 0, soft tissue
  about 0.73, dense bone and calcium 1.1); channel 1: the probability.

References
----------
.. [1] A. A. A. Setio et al., "Pulmonary nodule detection in CT images: false positive reduction
   using multi-view convolutional networks", IEEE TMI 35(5):1160-1169, 2016.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import pandas as pd
from scipy import ndimage

from .errors import DataFormatError, MissingDataError, ModelFileError
from .safety import load_model
from .utils import save_atomic

__all__ = ["PATCH_SCORER_FILE", "PATCH_SHAPE", "PATCH_STEP_MM", "PatchScorer", "build_patch_network", "candidate_patches"]

#: File name of a patch scorer inside a segmenter folder (beside ``classifier.json``).
PATCH_SCORER_FILE = "patch_scorer.keras"
#: Patch grid (slices, rows, columns) and its spacing in mm.
PATCH_SHAPE = (12, 24, 24)
PATCH_STEP_MM = (2.0, 1.25, 1.25)
#: HU scaling of channel 0: ``(hu - HU_FLOOR) / HU_SPAN``, clipped to [0, HU_TOP].
HU_FLOOR, HU_SPAN, HU_TOP = -1000.0, 1400.0, 1.1
#: Outside the scan: air, no probability.
_AIR_HU = -1000.0


def _grid_mm() -> np.ndarray:
    """Offsets of the patch points from the centre in mm, shape (3, *PATCH_SHAPE)."""
    axes = [(np.arange(n) - (n - 1) / 2) * step for n, step in zip(PATCH_SHAPE, PATCH_STEP_MM)]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def candidate_patches(hu: np.ndarray, probabilities: np.ndarray, centres: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The two-channel patch of each candidate (module docstring), shape (n, *PATCH_SHAPE, 2), float32.

    Parameters
    ----------
    hu : ndarray, shape (slices, rows, columns)
        The scan in Hounsfield units.
    probabilities : ndarray, shape like ``hu``
        The segmentation model's probabilities.
    centres : ndarray, shape (n, 3)
        Candidate centres in voxels (slice, row, column), e.g. a nodule table's
        ``centroid_z/y/x``.
    spacing : sequence of 3 floats
        Voxel size in mm (slice, row, column).

    Examples
    --------
    >>> hu = np.full((8, 32, 32), -1000.0); hu[3:5, 14:18, 14:18] = 40.0
    >>> patches = candidate_patches(hu, np.zeros_like(hu), np.array([[3.5, 15.5, 15.5]]), (2.0, 1.25, 1.25))
    >>> patches.shape, round(float(patches[0, 5:7, 11:13, 11:13, 0].min()), 3), float(patches[0, 0, 0, 0, 0])
    ((1, 12, 24, 24, 2), 0.743, 0.0)
    """
    hu, probabilities = np.asarray(hu), np.asarray(probabilities)
    if hu.ndim != 3 or probabilities.shape != hu.shape:
        raise DataFormatError(f"need a 3-D scan and probabilities of its shape, got {hu.shape} and {probabilities.shape}")
    centres = np.asarray(centres, float).reshape(-1, 3)
    sampling = np.asarray(spacing, float)
    if sampling.shape != (3,) or not np.all(np.isfinite(sampling) & (sampling > 0)):
        raise DataFormatError(f"need 3 positive voxel sizes in mm, got {spacing!r}")
    offsets = _grid_mm() / sampling[:, None, None, None]
    reach = np.abs(offsets.reshape(3, -1)).max(axis=1)
    out = np.empty((len(centres), *PATCH_SHAPE, 2), np.float32)
    for i, centre in enumerate(centres):
        low = np.maximum(np.floor(centre - reach).astype(int) - 1, 0)
        high = np.minimum(np.ceil(centre + reach).astype(int) + 2, hu.shape)
        box = tuple(slice(a, max(a, b)) for a, b in zip(low, high))
        points = offsets + (centre - low)[:, None, None, None]
        if any(s.stop <= s.start for s in box):  # the centre lies far outside the scan
            out[i, ..., 0], out[i, ..., 1] = 0.0, 0.0
            continue
        values = ndimage.map_coordinates(hu[box].astype(np.float32), points, order=1, mode="constant", cval=_AIR_HU)
        out[i, ..., 0] = np.clip((values - HU_FLOOR) / HU_SPAN, 0.0, HU_TOP)
        out[i, ..., 1] = ndimage.map_coordinates(probabilities[box].astype(np.float32), points, order=1, mode="constant", cval=0.0)
    return out


def build_patch_network(*, width: int = 16, seed: int = 0) -> keras.Model:
    """The patch scorer's network: three convolution blocks (width, 2 x width, 4 x width), pooled, one logit.

    Each block is a 3x3x3 convolution, batch normalization and ReLU, then max pooling (in-plane
    only after the first block, where the patch is thin along z). Global average and max pooling,
    dropout 0.3, a dense layer of 32 and a linear output. About 75,000 weights at ``width=16``.
    Compiled with Adam (1e-3) and binary cross-entropy on the logit.
    """
    keras.utils.set_random_seed(int(seed))
    inputs = keras.Input((*PATCH_SHAPE, 2), name="patch")
    x = inputs
    for block, filters in enumerate((width, 2 * width, 4 * width)):
        x = keras.layers.Conv3D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling3D((1, 2, 2) if block == 0 else 2)(x)
    x = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling3D()(x), keras.layers.GlobalMaxPooling3D()(x)])
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    outputs = keras.layers.Dense(1, name="logit", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name="patch_scorer")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    return model


class PatchScorer:
    """A candidate's logit of being a nodule from its patch (module docstring).

    Parameters
    ----------
    model : keras.Model
        A network of :func:`build_patch_network`'s form: input (n, *PATCH_SHAPE, 2), output (n, 1) logits.
    """

    def __init__(self, model: keras.Model) -> None:
        shape = tuple(model.input_shape[1:])
        if shape != (*PATCH_SHAPE, 2):
            raise ModelFileError(f"a patch scorer takes patches of shape {(*PATCH_SHAPE, 2)}, this model takes {shape}")
        self.model = model

    def __repr__(self) -> str:
        return f"PatchScorer({self.model.count_params()} weights)"

    def patch_logits(self, patches: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """Logits of patches, shape (n,): the mean over the patch and its in-plane half turn (test-time augmentation)."""
        patches = np.asarray(patches, np.float32)
        out = np.zeros(len(patches))
        for start in range(0, len(patches), batch_size):
            batch = patches[start : start + batch_size]
            turned = np.ascontiguousarray(batch[:, :, ::-1, ::-1])
            out[start : start + len(batch)] = (self.model.predict_on_batch(batch)[:, 0] + self.model.predict_on_batch(turned)[:, 0]) / 2
        return out

    def logits(self, table: pd.DataFrame, *, hu: np.ndarray, probabilities: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Logits of a nodule table's candidates, shape (len(table),), at their ``centroid_z/y/x``."""
        if not len(table):
            return np.zeros(0)
        centres = table[["centroid_z", "centroid_y", "centroid_x"]].to_numpy(float)
        return self.patch_logits(candidate_patches(hu, probabilities, centres, spacing))

    def save(self, folder: str | os.PathLike) -> Path:
        """Write :data:`PATCH_SCORER_FILE` into ``folder`` (atomically)."""
        path = Path(folder) / PATCH_SCORER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        model = self.model
        if getattr(model, "optimizer", None) is not None:  # the network only: a just-trained model would carry its optimizer's state (2.7x the file)
            model = keras.Model(self.model.inputs, self.model.outputs, name=self.model.name)  # the same layers, not compiled
        save_atomic(model.save, path)
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> PatchScorer:
        """Read :data:`PATCH_SCORER_FILE` from ``folder``.

        Raises
        ------
        MissingDataError
            When the folder has no patch scorer.
        ModelFileError
            When the file is not a readable patch scorer (the message names it).
        """
        path = Path(folder) / PATCH_SCORER_FILE
        if not path.is_file():
            raise MissingDataError(f"the second stage fuses a patch scorer, but this model folder has no {PATCH_SCORER_FILE}", path=Path(folder))
        return cls(load_model(path, compile=False))  # safe_mode; a damaged file is a ModelFileError naming it
