"""Whole slices through a crop-trained model: sliding windows or one fully convolutional pass.

:func:`predict_sliding` and :func:`predict_full` are pure functions of the images, a ``predictor``
(a batch of preprocessed images -> probabilities of the same shape) and the settings, in the manner
of MONAI's ``sliding_window_inference(inputs, roi_size, sw_batch_size, predictor, overlap)``;
:class:`~nodulekit.inference.Segmenter` passes its model and its training preprocessing.

References
----------
.. [1] O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical Image
   Segmentation", MICCAI 2015 (overlap-tile inference).
.. [2] F. Isensee et al., "nnU-Net", Nature Methods 18:203-211, 2021 (Gaussian-weighted sliding
   window blending, sigma = 1/8 of the window).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from ..errors import InvalidParameterError
from ..utils import available_cores

__all__ = ["gaussian_weights", "window_starts", "local_zscore", "predict_sliding", "predict_full"]


def gaussian_weights(size: int, *, sigma_scale: float = 0.125, floor: float = 1e-3) -> np.ndarray:
    """Gaussian importance map for blending overlapping windows (nnU-Net / MONAI style).

    Parameters
    ----------
    size : int
        Window side in pixels.
    sigma_scale : float
        Standard deviation as a fraction of ``size`` (nnU-Net uses 1/8), > 0.
    floor : float
        Smallest weight (relative to the centre's 1), so that edge pixels still count, in (0, 1].

    Returns
    -------
    ndarray of float32, shape (size, size)
        1 at the centre, falling to about ``exp(-8)`` (clipped to ``floor``) at the edges.
    """
    if int(size) < 1 or float(sigma_scale) <= 0 or not 0 < float(floor) <= 1:
        raise InvalidParameterError(f"gaussian_weights needs size >= 1, sigma_scale > 0, floor in (0, 1]; got {size}, {sigma_scale}, {floor}")
    centre = (int(size) - 1) / 2.0
    axis = np.arange(int(size), dtype=np.float64) - centre
    profile = np.exp(-0.5 * (axis / (float(sigma_scale) * int(size))) ** 2)
    weights = np.outer(profile, profile)
    return np.maximum(weights / weights.max(), float(floor)).astype(np.float32)


def window_starts(length: int, window: int, step: int) -> np.ndarray:
    """Start offsets of windows of ``window`` pixels every ``step`` pixels covering ``length``.

    The last window is flush with the end, so every pixel is covered; an axis shorter than the
    window gets one window at 0 (the caller pads).

    Examples
    --------
    >>> window_starts(512, 64, 32)[-3:]
    array([384, 416, 448])
    >>> window_starts(100, 64, 48)
    array([ 0, 36])
    """
    if window < 1 or step < 1:
        raise InvalidParameterError(f"window and step must be >= 1, got {window}, {step}")
    if length <= window:
        return np.array([0])
    starts = list(range(0, length - window + 1, step))
    if starts[-1] != length - window:
        starts.append(length - window)
    return np.array(starts)


def local_zscore(images: np.ndarray, size: int, *, epsilon: float = 1e-6) -> np.ndarray:
    """Normalise each pixel by the mean and standard deviation of the ``size x size`` box around it.

    This is what a per-image z-score of the ``size x size`` crop centred on each pixel would give
    that pixel: the fully convolutional equivalent of the paper's per-crop normalisation.

    Parameters
    ----------
    images : ndarray, shape (n, rows, columns)
    size : int
        Side of the neighbourhood (the training crop size), >= 1.
    epsilon : float
        Added to the standard deviation (flat regions).

    Returns
    -------
    ndarray of float32, shape like ``images``
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3 or int(size) < 1:
        raise InvalidParameterError(f"local_zscore needs (n, rows, columns) images and size >= 1, got {images.shape}, {size}")
    box = (1, int(size), int(size))
    mean = ndimage.uniform_filter(images, size=box, mode="reflect")
    # The same operations in the same order as std = sqrt(max(E[x^2] - mean^2, 0)) and
    # (x - mean) / (std + epsilon), in place on two float64 buffers: the same values, fewer temporaries.
    square = np.multiply(images, images)
    ndimage.uniform_filter(square, size=box, mode="reflect", output=square)
    spread = np.multiply(mean, mean)
    np.subtract(square, spread, out=square)
    np.maximum(square, 0.0, out=square)
    np.sqrt(square, out=square)
    np.add(square, float(epsilon), out=square)
    np.subtract(images, mean, out=spread)
    np.divide(spread, square, out=spread)
    return spread.astype(np.float32)


def _grow_to_multiple(box, shape, multiple: int):
    """Grow a (r0, r1, c0, c1) box inside ``shape`` so each side is a multiple of ``multiple`` if it fits."""
    out = list(box)
    for axis, limit in ((0, shape[0]), (1, shape[1])):
        low, high = out[2 * axis], out[2 * axis + 1]
        need = (-(high - low)) % multiple
        grow_high = min(need, limit - high)
        high += grow_high
        low -= min(need - grow_high, low)
        out[2 * axis], out[2 * axis + 1] = low, high
    return tuple(int(v) for v in out)


def predict_sliding(
    slices: np.ndarray,
    predictor: Callable[[np.ndarray], np.ndarray],
    *,
    window: int,
    overlap: float = 0.5,
    region: np.ndarray | None = None,
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[np.ndarray, dict]:
    """Probabilities for whole slices from ``window x window`` windows blended with :func:`gaussian_weights`.

    Parameters
    ----------
    slices : ndarray of float32, shape (n, rows, columns)
        Raw intensities; slices smaller than a window are padded by reflection.
    predictor : callable
        Maps a preprocessed batch ``(b, window, window)`` to probabilities of the same shape.
    window : int
        Window side in pixels (the training crop size).
    overlap : float
        Fraction of a window shared with the next one, in [0, 1).
    region : ndarray of bool, shape like ``slices``, optional
        Windows that miss it are skipped (their pixels stay 0). ``None``: every window.
    preprocess : callable, optional
        Applied to each batch of raw windows before ``predictor`` (the training preprocessing of a crop).
    batch_size : int
        Windows per ``predictor`` call.
    progress : bool
        Show a progress bar over windows.

    Returns
    -------
    probabilities : ndarray of float32, shape like ``slices``
    counts : dict
        ``{"windows": how many windows were predicted}``.
    """
    n, rows, columns = slices.shape
    pad_rows, pad_columns = max(0, window - rows), max(0, window - columns)
    if pad_rows or pad_columns:  # images smaller than a window: pad by reflection (as training never saw zeros)
        slices = np.pad(slices, ((0, 0), (0, pad_rows), (0, pad_columns)), mode="reflect" if min(rows, columns) > 1 else "edge")
        if region is not None:
            region = np.pad(region, ((0, 0), (0, pad_rows), (0, pad_columns)))
    step = max(1, int(round(window * (1.0 - overlap))))
    row_starts = window_starts(slices.shape[1], window, step)
    column_starts = window_starts(slices.shape[2], window, step)
    positions = [
        (k, r, c)
        for k in range(n)
        for r in row_starts
        for c in column_starts
        if region is None or region[k, r : r + window, c : c + window].any()
    ]
    weights = gaussian_weights(window)
    total = np.zeros(slices.shape, np.float32)
    weight_sum = np.zeros(slices.shape, np.float32)
    bar = tqdm(total=len(positions), desc="windows", unit="win", disable=not progress)
    for begin in range(0, len(positions), batch_size):
        chunk = positions[begin : begin + batch_size]
        windows = np.stack([slices[k, r : r + window, c : c + window] for k, r, c in chunk])
        probabilities = predictor(windows if preprocess is None else preprocess(windows))
        for (k, r, c), p in zip(chunk, probabilities):
            total[k, r : r + window, c : c + window] += p * weights
            weight_sum[k, r : r + window, c : c + window] += weights
        bar.update(len(chunk))
    bar.close()
    out = np.divide(total, weight_sum, out=np.zeros_like(total), where=weight_sum > 0)
    return out[:, :rows, :columns], {"windows": len(positions)}


def predict_full(
    slices: np.ndarray,
    predictor: Callable[[np.ndarray], np.ndarray],
    *,
    window: int,
    region: np.ndarray | None = None,
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    context: int | None = None,
    outside_region: float | None = None,
) -> tuple[np.ndarray, dict]:
    """Probabilities for whole slices from one fully convolutional pass over the region's bounding box.

    Each batch of slices is preprocessed whole (so local statistics are those of a window), cut to
    the bounding box of ``region`` (plus ``window // 4`` pixels, grown to a multiple of 16 where
    the slice allows), padded by reflection to a multiple of 16 and predicted at once. With
    ``context``, only the box and ``context`` pixels around it (inside the slice) are preprocessed:
    the same values in the box as preprocessing whole slices, on a fraction of the pixels.

    Parameters
    ----------
    slices : ndarray of float32, shape (n, rows, columns)
        Raw intensities.
    predictor : callable
        Maps a preprocessed batch ``(b, rows', columns')`` (sides multiples of 16) to probabilities
        of the same shape.
    window : int
        The training crop size (sets the margin around the region).
    region : ndarray of bool, shape like ``slices``, optional
        Slices without it are skipped; the box is its bounding box. ``None``: every whole slice.
    preprocess : callable, optional
        Applied to each batch of whole raw slices before the box is cut (e.g. a local z-score).
    batch_size : int, optional
        Slices per ``predictor`` call; default about two 512x512 slices' worth of pixels.
    progress : bool
        Show a progress bar over slices.
    context : int, optional
        How far (pixels) ``preprocess`` looks around a pixel (its reach: e.g. ``window // 2`` for
        :func:`local_zscore`, plus 1 for a 3x3 median filter), >= 0. ``None``: unknown (e.g. a
        histogram equalisation reads the whole slice), so whole slices are preprocessed.
    outside_region : float, optional
        Set the probabilities outside ``region`` to this value, batch by batch inside the box (the
        same as ``out[~region] = outside_region`` afterwards, without touching the rest of a
        scan's array). ``None``: the model's values inside the box are kept.

    Returns
    -------
    probabilities : ndarray of float32, shape like ``slices``
        0 outside the box and on skipped slices (the pages of a whole scan's array outside the
        box are never written).
    counts : dict
        ``{"slices": slices predicted, "box": [row0, row1, column0, column1]}`` (no box when none).
    """
    n, rows, columns = slices.shape
    out = np.zeros(slices.shape, np.float32)
    if region is None:
        keep = np.arange(n)
        box = (0, rows, 0, columns)
    else:
        keep = np.flatnonzero(region.reshape(n, -1).any(axis=1))
        if not len(keep):
            return out, {"slices": 0}
        box = _region_box(region, margin=window // 4)
    box = _grow_to_multiple(box, (rows, columns), 16)
    height, width = box[1] - box[0], box[3] - box[2]
    target = (-(-height // 16) * 16, -(-width // 16) * 16)
    if batch_size is None:
        batch_size = max(1, (512 * 512 * 2) // (target[0] * target[1]))
    if context is not None and int(context) < 0:
        raise InvalidParameterError(f"context must be >= 0 pixels (or None), got {context!r}")
    # What is preprocessed: whole slices, or the box and the preprocessing's reach around it.
    source = (0, rows, 0, columns) if context is None or preprocess is None else _widen(box, (rows, columns), int(context) + 1)  # a pixel to spare
    inner = (box[0] - source[0], box[1] - source[0], box[2] - source[2], box[3] - source[2])

    def prepare(index: np.ndarray) -> np.ndarray:
        """The model's input for slices ``index``: preprocessed, cut to the box, padded to a multiple of 16."""
        # Normalise with the whole neighbourhood of every box pixel (local statistics are then those of a window), then cut the box.
        raw = slices[index, source[0] : source[1], source[2] : source[3]]
        normalised = raw if preprocess is None else preprocess(raw)
        normalised = normalised[:, inner[0] : inner[1], inner[2] : inner[3]]
        return np.pad(normalised, ((0, 0), (0, target[0] - height), (0, target[1] - width)), mode="reflect")

    bar = tqdm(total=len(keep), desc="slices", unit="slice", disable=not progress)
    batches = [keep[begin : begin + int(batch_size)] for begin in range(0, len(keep), int(batch_size))]
    for index, padded in zip(batches, _prepared_ahead(prepare, batches, threaded=preprocess is not None)):
        probabilities = np.asarray(predictor(padded))[:, :height, :width]
        if outside_region is not None and region is not None:
            probabilities = np.where(region[index, box[0] : box[1], box[2] : box[3]], probabilities, np.float32(outside_region))
        out[index, box[0] : box[1], box[2] : box[3]] = probabilities
        bar.update(len(index))
    bar.close()
    return out, {"slices": int(len(keep)), "box": [int(b) for b in box]}


def _prepared_ahead(prepare: Callable[[np.ndarray], np.ndarray], batches: list, *, threaded: bool):
    """``prepare(batch)`` for each batch in order, the next one prepared in a thread while the caller predicts this one.

    The model releases the GIL while it runs, and so do most of NumPy's and SciPy's kernels of the
    preprocessing: with two cores the preprocessing of a scan hides behind the model. Each batch is
    prepared by the same function as in a plain loop (the same values).
    """
    if not threaded or len(batches) < 2 or available_cores() < 2:
        yield from (prepare(batch) for batch in batches)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(prepare, batches[0])
        for number in range(len(batches)):
            ready = pending.result()
            if number + 1 < len(batches):
                pending = pool.submit(prepare, batches[number + 1])
            yield ready


def _widen(box: tuple[int, int, int, int], shape: tuple[int, int], margin: int) -> tuple[int, int, int, int]:
    """A (row0, row1, column0, column1) box ``margin`` pixels wider on every side, inside ``shape``."""
    return (max(0, box[0] - margin), min(shape[0], box[1] + margin), max(0, box[2] - margin), min(shape[1], box[3] + margin))


def _region_box(region: np.ndarray, *, margin: int) -> tuple[int, int, int, int]:
    """(row0, row1, column0, column1): the bounding box of ``region`` over all slices, ``margin`` pixels wider, inside the slice."""
    rows, columns = region.shape[1:]
    any_rows = np.flatnonzero(region.any(axis=(0, 2)))
    any_columns = np.flatnonzero(region.any(axis=(0, 1)))
    return (
        max(0, any_rows[0] - margin),
        min(rows, any_rows[-1] + 1 + margin),
        max(0, any_columns[0] - margin),
        min(columns, any_columns[-1] + 1 + margin),
    )
