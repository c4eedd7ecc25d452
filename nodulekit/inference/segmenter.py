"""The :class:`Segmenter`: a trained model plus the exact preprocessing it was trained with.

It delegates: the lung mask to :mod:`.lung`, sliding-window and whole-slice prediction to the
pure functions of :mod:`.windows` (with the model as a predictor from :mod:`.forward`), nodule
measurement to :mod:`.measure`, inputs and files to :mod:`.io`, and the second stage to
:mod:`nodulekit.detection`. Why the two modes normalise differently, and which is the default, is
in the package docstring (:mod:`nodulekit.inference`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..crops import center_crop
from ..dataset import CropSet, Volume
from ..detection import CLASSIFIER_FILE, CandidateClassifier, PerSourceClassifier, candidate_features, rank_candidates, source_features
from .._version import __version__
from ..errors import DataFormatError, InvalidParameterError, ModelFileError
from ..postprocess import bounding_box
from ..precision import resolve_precision
from ..preprocessing import zscore_windows
from .candidates import rank_union
from .forward import make_forward
from .io import as_stack, read_segmenter_files, write_segmenter_files
from .lung import search_region
from .measure import measure_nodules
from .result import SegmentationResult
from .windows import local_zscore, predict_full, predict_sliding

__all__ = ["MODES", "Segmenter", "load_segmenter"]

logger = logging.getLogger(__name__)

#: Inference modes of :meth:`Segmenter.predict`.
MODES = ("sliding", "full")

#: Allowed ``Segmenter.precision`` values.
INFERENCE_PRECISIONS = ("auto", "float32", "mixed_bfloat16", None)


class Segmenter:
    """A trained model plus the exact preprocessing it was trained with.

    Parameters
    ----------
    model : keras.Model or callable
        Maps a float32 batch ``(n, rows, columns, 1)`` to probabilities ``(n, rows, columns, 1)``
        (a list of outputs, as with deep supervision, uses the first). A Keras model with a fixed
        input size is rebuilt without one for the fully convolutional mode (same weights).
    pipeline : nodulekit.preprocessing.Pipeline, optional
        The training preprocessing (``apply(images) -> float32 images``). ``None`` means a plain
        per-image z-score, the paper's normalisation.
    window : int
        Training crop size: the sliding-window size and the local-normalisation neighbourhood.
    units : str
        Units of the training images (``"HU"``, ``"uint8"``, ...); a pipeline that is not invariant
        to intensity scaling (no z-score) warns when given other units.
    threshold : float
        Probability above which a voxel is nodule, in (0, 1).
    mode : {"sliding", "full"}
        Default inference mode (see :meth:`predict`); ``"full"`` was measured better and faster
        (:mod:`nodulekit.inference`).
    overlap : float
        Default sliding-window overlap, in [0, 1).
    metadata : dict, optional
        Free-form provenance (architecture, run folder, training data), saved with the segmenter.
    classifier : nodulekit.detection.CandidateClassifier or PerSourceClassifier, optional
        The second stage: scores every 3-D candidate of a scan in HU, so that :meth:`segment`
        sorts the nodule table by a calibrated ``score`` and keeps those at or above the
        classifier's operating point. A :class:`~nodulekit.detection.PerSourceClassifier` also adds
        the blob candidates inside the lung mask (:func:`~nodulekit.inference.rank_union`; the
        table gets a ``source`` column). Loaded from ``classifier.json`` by :func:`load_segmenter`.
    precision : {"auto", "float32", "mixed_bfloat16"}
        Arithmetic of the forward pass of a float32 Keras model. ``"auto"`` (default): bfloat16
        on CPUs with native bfloat16 (AVX512-BF16/AMX) and no GPU, float32 elsewhere; the weights
        stay as trained and the final sigmoid stays float32. Measured in ``benchmarks/``: 1.8x the
        model's throughput; on 512 real LIDC crops with the shipped model the probabilities
        differ from float32 by 6e-5 on average and 0.005 % of the pixels change side of 0.5.

    Examples
    --------
    >>> from nodulekit.models import build_unet
    >>> segmenter = Segmenter(build_unet((64, 64, 1), filters=(4, 8, 16, 32, 64)), None)
    >>> segmenter.predict(np.zeros((1, 100, 90), np.float32), mode="sliding", progress=False).shape
    (1, 100, 90)
    """

    def __init__(
        self,
        model: Any,
        pipeline: Any = None,
        *,
        window: int = 64,
        units: str = "HU",
        threshold: float = 0.5,
        mode: str = "full",
        overlap: float = 0.5,
        metadata: dict | None = None,
        precision: str | None = "auto",
        classifier: CandidateClassifier | None = None,
    ) -> None:
        if precision not in INFERENCE_PRECISIONS:
            raise InvalidParameterError(f"precision must be one of {INFERENCE_PRECISIONS}, got {precision!r}")
        if int(window) < 16 or int(window) % 16:
            raise InvalidParameterError(f"window must be a multiple of 16 (>= 16), got {window!r}")
        if not 0 < float(threshold) < 1:
            raise InvalidParameterError(f"threshold must be in (0, 1), got {threshold!r}")
        if mode not in MODES:
            raise InvalidParameterError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0 <= float(overlap) < 1:
            raise InvalidParameterError(f"overlap must be in [0, 1), got {overlap!r}")
        self.model = model
        self.pipeline = pipeline
        self.window = int(window)
        self.units = str(units)
        self.threshold = float(threshold)
        self.mode = mode
        self.overlap = float(overlap)
        self.metadata = dict(metadata or {})
        self.precision = precision
        self.classifier = classifier
        self._functions: dict[str, Callable] = {}
        self._last_counts: dict[str, Any] = {}
        self._before_zscore, self._after_zscore, self._has_zscore = _split_pipeline(pipeline)
        self._steps_reach = _steps_reach(self._before_zscore, self._after_zscore)

    def __repr__(self) -> str:
        name = getattr(self.model, "name", type(self.model).__name__)
        return f"Segmenter({name}, window={self.window}, mode={self.mode!r}, threshold={self.threshold})"

    # -- preprocessing ---------------------------------------------------------------------------

    def preprocess_windows(self, windows: np.ndarray) -> np.ndarray:
        """Apply the training pipeline to training-size windows, as to training crops."""
        windows = np.asarray(windows, dtype=np.float32)
        if self.pipeline is None:
            return zscore_windows(windows)
        return np.asarray(self.pipeline.apply(windows), dtype=np.float32)

    def preprocess_slices(self, slices: np.ndarray) -> np.ndarray:
        """Apply the training pipeline to whole slices with the per-image z-score made local.

        Steps before the per-image z-score run on the whole slice, the z-score becomes
        :func:`local_zscore` over ``window x window`` neighbourhoods, the steps after it run on the
        result. Centre crops are skipped (a whole slice is not cropped). A pipeline without a
        per-image z-score is applied as it is.
        """
        slices = np.asarray(slices, dtype=np.float32)
        if self._before_zscore is not None:
            slices = np.asarray(self._before_zscore.apply(slices), dtype=np.float32)
        if self._has_zscore:
            slices = local_zscore(slices, self.window)
        if self._after_zscore is not None:
            slices = np.asarray(self._after_zscore.apply(slices), dtype=np.float32)
        return slices

    # -- prediction ------------------------------------------------------------------------------

    def _forward(self, batch: np.ndarray, *, fully_convolutional: bool) -> np.ndarray:
        """Model probabilities for a preprocessed float32 batch (n, rows, columns)."""
        fixed = tuple(getattr(self.model, "input_shape", (None, None, None))[1:3])
        if None not in fixed and fixed != tuple(batch.shape[1:3]):
            fully_convolutional = True  # e.g. a model exported for 512x512 slices, used on windows
        key = "full" if fully_convolutional else "window"
        if key not in self._functions:
            self._functions[key] = make_forward(self.model, fully_convolutional=fully_convolutional, precision=self.precision)
        out = self._functions[key](batch[..., None])
        return np.asarray(out, dtype=np.float32).reshape(batch.shape)

    def predict(
        self,
        slices: np.ndarray,
        *,
        mode: str | None = None,
        region: np.ndarray | None = None,
        overlap: float | None = None,
        batch_size: int | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """Nodule probabilities for whole slices.

        Parameters
        ----------
        slices : ndarray, shape (n, rows, columns) or (rows, columns)
            Raw intensities in the units the pipeline expects (HU for CT volumes).
        mode : {"sliding", "full"}, optional
            ``"sliding"``: training-size windows with ``overlap``, each preprocessed exactly like a
            training crop, predictions blended with :func:`gaussian_weights`. ``"full"``: one fully
            convolutional pass over the bounding box of ``region`` (padded to a multiple of 16),
            normalised with :func:`local_zscore`. Default: the segmenter's ``mode``.
        region : ndarray of bool, shape like ``slices``, optional
            Where to look (the lung mask): windows that miss it are skipped, slices without it are
            skipped, and probabilities outside it are 0. ``None``: everywhere.
        overlap : float, optional
            Sliding-window overlap in [0, 1); default the segmenter's.
        batch_size : int, optional
            Windows (sliding) or slices (full) per model call; chosen from the image size if omitted.
        progress : bool
            Show a progress bar.

        Returns
        -------
        ndarray of float32, shape like ``slices``
        """
        slices = np.asarray(slices, dtype=np.float32)
        squeeze = slices.ndim == 2
        if squeeze:
            slices = slices[None]
            region = None if region is None else np.asarray(region)[None]
        if slices.ndim != 3:
            raise InvalidParameterError(f"slices must have shape (n, rows, columns), got {slices.shape}")
        _check_finite(slices, "slices")
        if region is not None:
            region = np.asarray(region, dtype=bool)
            if region.shape != slices.shape:
                raise InvalidParameterError(f"region shape {region.shape} differs from slices shape {slices.shape}")
        mode = self.mode if mode is None else mode
        if mode not in MODES:
            raise InvalidParameterError(f"mode must be one of {MODES}, got {mode!r}")
        overlap = self.overlap if overlap is None else float(overlap)
        if not 0 <= overlap < 1:
            raise InvalidParameterError(f"overlap must be in [0, 1), got {overlap!r}")
        if batch_size is not None and int(batch_size) < 1:
            raise InvalidParameterError(f"batch_size must be >= 1, got {batch_size!r}")
        if mode == "sliding":
            out, self._last_counts = predict_sliding(
                slices,
                partial(self._forward, fully_convolutional=False),
                window=self.window,
                overlap=overlap,
                region=region,
                preprocess=self.preprocess_windows,
                batch_size=batch_size or 64,
                progress=progress,
            )
        else:
            out, self._last_counts = predict_full(
                slices,
                partial(self._forward, fully_convolutional=True),
                window=self.window,
                region=region,
                preprocess=self.preprocess_slices,
                batch_size=batch_size,
                progress=progress,
                context=self._slice_reach,
                outside_region=0.0,
            )
        if region is not None and mode == "sliding":
            out[~region] = 0.0
        return out[0] if squeeze else out

    # -- the whole job ---------------------------------------------------------------------------

    def segment(
        self,
        data: Volume | CropSet | np.ndarray,
        *,
        spacing: Sequence[float] | None = None,
        units: str | None = None,
        connect_slices: bool | None = None,
        mode: str | None = None,
        lungs: bool | str = "auto",
        lung_options: dict | None = None,
        threshold: float | None = None,
        min_diameter_mm: float = 3.0,
        min_voxels: int = 3,
        min_score: float | None = None,
        max_nodules: int | None = None,
        overlap: float | None = None,
        batch_size: int | None = None,
        progress: bool = True,
    ) -> SegmentationResult:
        """Find, outline and measure the nodules in a CT volume, a slice, or a set of images.

        Parameters
        ----------
        data : Volume, CropSet or ndarray
            A :class:`~nodulekit.dataset.Volume` (HU; nodules are connected across slices), a
            :class:`~nodulekit.dataset.CropSet` (independent images; nodules are 2-D, one image
            each), or an array (``(rows, columns)`` one image, ``(slices, rows, columns)`` a volume).
        spacing : sequence of float, optional
            Voxel size in mm ``(slice, row, column)`` for an array input (default unknown: NaN, so
            sizes in mm are NaN and only ``diameter_px`` is measured).
        units : str, optional
            Units of an array input (``"HU"``, ``"uint8"``, ``"float"``); guessed when omitted
            (HU when any value is below -500).
        connect_slices : bool, optional
            Join nodules across slices (a volume) or not (independent images). Default: True for a
            Volume or a 3-D array, False for a CropSet.
        mode : {"sliding", "full"}, optional
            See :meth:`predict`.
        lungs : bool or "auto"
            Restrict the search to :func:`lung_mask`. ``"auto"``: for inputs in HU of at least
            256x256 pixels (whole CT slices), not for crops or display-scaled images. When no lung
            is found (a head or abdomen slab) nothing is searched: no nodules, ``result.lung`` all
            False and a warning (``lungs=False`` searches the whole image).
        lung_options : dict, optional
            Keyword options of :func:`lung_mask` (``threshold``, ``closing_mm``, ``margin_mm``, ...).
        threshold : float, optional
            Probability threshold in (0, 1); default the segmenter's.
        min_diameter_mm : float
            Nodules with a smaller longest axial diameter are dropped (LIDC marks nodules from 3 mm),
            >= 0; not applied when the pixel spacing is unknown.
        min_voxels : int
            Components with fewer voxels are dropped, >= 1.
        min_score : float, optional
            With a second-stage ``classifier`` and a CT volume in HU: every candidate is scored
            (:mod:`nodulekit.detection`), the table is sorted by ``score`` (``nodule_id`` 1 = the
            highest) and candidates scoring below ``min_score`` are dropped; default the
            classifier's operating point (``classifier.threshold``), 0 keeps all. With a per-source
            classifier (:class:`~nodulekit.detection.PerSourceClassifier`) and a lung mask, the
            blob candidates join the segmenter's (:func:`~nodulekit.inference.rank_union`; the
            table gets ``source``, ``info`` gets ``blob_s`` and ``blob_candidates``). Without a
            classifier the table stays sorted by volume, has no ``score``, and a warning is logged
            for CT volumes.
        max_nodules : int, optional
            Keep at most this many nodules (the highest scores, or the largest without a classifier).
        overlap, batch_size, progress
            As in :meth:`predict`.

        Returns
        -------
        SegmentationResult

        Raises
        ------
        InvalidParameterError
            On an option out of range.
        DataFormatError
            On an input of the wrong kind or shape.
        """
        start, cpu_start = time.perf_counter(), time.process_time()
        threshold = self.threshold if threshold is None else float(threshold)
        if not 0 < threshold < 1:
            raise InvalidParameterError(f"threshold must be in (0, 1), got {threshold!r}")
        images, spacing3, guessed_units, connect = as_stack(data, spacing)
        units = guessed_units if units is None else str(units)
        connect = connect if connect_slices is None else bool(connect_slices)
        if units not in (self.units, "zscore") and not self._scale_invariant:
            logger.warning("input is in %s but the model was trained on %s without a z-score: results may be off", units, self.units)
        timings: dict[str, float] = {}
        tick = time.perf_counter()
        lung = search_region(images, units=units, spacing=spacing3, lungs=lungs, options=lung_options)
        if lung is not None:
            timings["lung_mask_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        mode = self.mode if mode is None else mode
        probabilities = self.predict(images, mode=mode, region=lung, overlap=overlap, batch_size=batch_size, progress=progress)
        timings["predict_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        labels, nodules = measure_nodules(
            _above(probabilities, threshold, self._last_counts.get("box") if mode == "full" else None),
            spacing=spacing3,
            probabilities=probabilities,
            hu=images if units == "HU" else None,
            connect_slices=connect,
            min_diameter_mm=min_diameter_mm,
            min_voxels=min_voxels,
        )
        timings["measure_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        candidates = len(nodules)
        labels, nodules, scored, union = self._rank(
            labels, nodules, probabilities, images, lung, spacing3, units=units, connect=connect, min_score=min_score, max_nodules=max_nodules, progress=progress
        )
        timings["rank_s"] = time.perf_counter() - tick
        timings.update({k: v for k, v in union.items() if k.endswith("_s")})
        candidates = union.get("candidates", candidates)
        timings["total_s"] = time.perf_counter() - start
        timings["cpu_s"] = time.process_time() - cpu_start  # CPU seconds of this process, all threads
        info = {
            "mode": mode,
            "window": self.window,
            "overlap": self.overlap if overlap is None else float(overlap),
            "precision": resolve_precision(self.precision, inference=True),
            "threshold": threshold,
            "lung_mask": lung is not None,
            "connect_slices": connect,
            "units": units,
            "shape": list(images.shape),
            "second_stage": scored,
            "candidates": candidates,
            "candidate_sources": ["segmenter", "blob"] if union else ["segmenter"],
            "blob_candidates": union.get("blob_candidates"),
            "min_score": (self.classifier.threshold if min_score is None else float(min_score)) if scored else None,
            **self._last_counts,
            **{k: round(v, 3) for k, v in timings.items()},
        }
        logger.info("%d nodule(s) in %s images, %.1f s (%s mode)", len(nodules), "x".join(map(str, images.shape)), timings["total_s"], mode)
        return SegmentationResult(
            probabilities=probabilities,
            mask=_marked(labels),
            labels=labels,
            nodules=nodules,
            spacing=spacing3,
            lung=lung,
            images=images,
            info=info,
        )

    def _rank(self, labels, nodules, probabilities, images, lung, spacing, *, units, connect, min_score, max_nodules, progress=False):
        """Score, sort and filter the candidates with the second stage (or keep the largest without one).

        Returns the labels, the nodule table, whether the second stage scored them (it scores
        the 3-D candidates of a CT volume in HU of 2+ slices with known spacing) and, when a
        per-source second stage added the blob candidates (a lung mask is needed), their timing
        and count (:func:`rank_union`; else an empty dict).
        """
        ct_volume = connect and units == "HU" and len(images) > 1 and bool(np.isfinite(spacing).all())
        scored = self.classifier is not None and ct_volume
        if self.classifier is not None and connect and units == "HU" and not ct_volume:
            logger.warning("the second stage scores 3-D candidates of 2+ slices with known spacing, not %s: nodules listed by size, without a score", "x".join(map(str, images.shape)))
        per_source = isinstance(self.classifier, PerSourceClassifier)
        if scored and per_source and lung is not None:
            labels, nodules, union = rank_union(
                labels, nodules, probabilities=probabilities, hu=images, lung=lung, spacing=spacing,
                classifier=self.classifier, min_score=min_score, max_nodules=max_nodules, progress=progress,
            )
            return labels, nodules, True, union
        if scored:
            features = candidate_features(labels, nodules, probabilities=probabilities, hu=images, lung=lung, spacing=spacing, progress=progress)
            if per_source:  # no lung mask: the segmenter's candidates alone, scored by its classifier
                nodules = nodules.assign(source="segmenter")
                features = features.join(source_features(nodules)).assign(source="segmenter")
            if not len(nodules):
                scores = np.zeros(0)
            elif per_source:
                scores = self.classifier.predict_proba(features, self.classifier.patch_logits(nodules, hu=images, probabilities=probabilities, spacing=spacing))
            else:
                scores = self.classifier.predict_proba(features)
            floor = self.classifier.threshold if min_score is None else float(min_score)
            return (*rank_candidates(labels, nodules, scores, min_score=floor, max_nodules=max_nodules), True, {})
        if min_score is not None:
            raise InvalidParameterError(
                "min_score needs a second-stage classifier (classifier.json in the model folder) and a CT volume in HU"
            )
        if self.classifier is None and ct_volume:
            logger.warning("no second-stage classifier (%s): nodules are listed by volume, without a score", CLASSIFIER_FILE)
        if max_nodules is not None:
            if int(max_nodules) < 0:
                raise InvalidParameterError(f"max_nodules must be >= 0, got {max_nodules!r}")
            nodules = nodules.head(int(max_nodules))
            labels = np.where(labels <= len(nodules), labels, 0).astype(np.int32)
        return labels, nodules, False, {}

    def predict_crops(self, images: np.ndarray, *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Probabilities for training-style crops: the whole training pipeline (centre crop included), one pass.

        Parameters
        ----------
        images : ndarray, shape (n, rows, columns) or (n, rows, columns, 3)
            Raw crops as the training data came (e.g. 128x128 LIDC crops if training centre-cropped).
        batch_size : int
            Crops per model call.
        progress : bool
            Show a progress bar.

        Returns
        -------
        ndarray of float32, shape (n, rows', columns')
            On the pipeline's output grid (after its centre crop).
        """
        _check_finite(np.asarray(images, dtype=np.float32), "images")
        processed = self.preprocess_windows(images)
        fully = processed.shape[1:] != (self.window, self.window)
        out = np.empty(processed.shape, np.float32)
        for begin in tqdm(range(0, len(processed), int(batch_size)), desc="crops", unit="batch", disable=not progress):
            out[begin : begin + int(batch_size)] = self._forward(processed[begin : begin + int(batch_size)], fully_convolutional=fully)
        return out

    def evaluate(self, crops: CropSet, *, threshold: float | None = None, batch_size: int = 64, progress: bool = False) -> dict:
        """Score the model on labelled crops preprocessed exactly as in training.

        Parameters
        ----------
        crops : CropSet
            Crops with ground-truth masks (masks are centre-cropped like the images when the
            pipeline crops).
        threshold : float, optional
            Probability threshold; default the segmenter's.
        batch_size, progress
            As in :meth:`predict_crops`.

        Returns
        -------
        dict
            The pooled report of :func:`nodulekit.metrics.score_crops` (the one scorer of
            predicted crops) plus ``n_crops`` and ``threshold``.
        """
        from ..metrics import score_crops  # metrics imports Keras: loaded on first use

        threshold = self.threshold if threshold is None else float(threshold)
        probabilities = self.predict_crops(crops.images, batch_size=batch_size, progress=progress)
        masks = crops.masks
        if masks.shape[1:] != probabilities.shape[1:]:
            masks = center_crop(masks, probabilities.shape[1:])
        report = dict(score_crops(masks, probabilities, threshold=threshold).report)
        report.update({"n_crops": int(len(crops)), "threshold": threshold})
        return report

    @property
    def _slice_reach(self) -> int | None:
        """How far (pixels) :meth:`preprocess_slices` looks around a pixel; None when unbounded.

        :func:`predict_full` then preprocesses only the box it predicts and this margin around it,
        with the same values in the box. The local z-score reads ``window // 2`` pixels
        (:func:`local_zscore`'s ``window x window`` box); the other steps add theirs.
        """
        if self._steps_reach is None:
            return None
        return self._steps_reach + (self.window // 2 if self._has_zscore else 0)

    @property
    def _scale_invariant(self) -> bool:
        """True when the pipeline z-scores (any affine intensity scale then gives the same input)."""
        return self._has_zscore

    # -- persistence -----------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``model.keras``, ``preprocessing.json``, ``segmenter.json`` (and ``classifier.json``) into ``folder``.

        :func:`load_segmenter` reads the folder back. Only Keras models can be saved.
        """
        import keras

        folder = Path(folder)
        if not isinstance(self.model, keras.Model):
            raise ModelFileError("only a Keras model can be saved in a segmenter folder", path=folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_segmenter_files(folder, model=self.model, pipeline=self.pipeline, settings=self.settings(), classifier=self.classifier)
        return folder

    def save_settings(self, folder: str | os.PathLike) -> None:
        """Write ``preprocessing.json``, ``segmenter.json`` and ``classifier.json`` (each removed when stale) into ``folder``, atomically."""
        write_segmenter_files(folder, pipeline=self.pipeline, settings=self.settings(), classifier=self.classifier)

    def settings(self) -> dict:
        """The segmenter's options as a JSON-serialisable dict (what ``segmenter.json`` holds)."""
        return {
            "window": self.window,
            "units": self.units,
            "threshold": self.threshold,
            "mode": self.mode,
            "overlap": self.overlap,
            "precision": self.precision,
            "metadata": self.metadata,
            "nodulekit_version": __version__,
        }



def load_segmenter(path: str | os.PathLike | None = None, **overrides: Any) -> Segmenter:
    """Load a :class:`Segmenter` from a shipped model's name, a saved segmenter folder, a training run folder or a ``.keras`` file.

    Parameters
    ----------
    path : str, path or None
        Anything :func:`nodulekit.model_names.resolve_model` accepts:

        * the name of a shipped model (``lidc_attention_unet``, alias ``pretrained``; ``None``: the default);
        * a folder written by :meth:`Segmenter.save` or ``nodulekit export`` (``model.keras`` +
          ``preprocessing.json`` + ``segmenter.json``, and ``classifier.json``, the second stage,
          when it has one);
        * a run folder written by :func:`nodulekit.training.run_protocol` (its best checkpoint and
          the preprocessing pipeline it recorded);
        * a ``.keras`` file; a ``preprocessing.json`` beside it is used when present, else the
          paper's per-image z-score.
    **overrides
        Segmenter options (``threshold``, ``mode``, ``overlap``, ``window``, ``classifier``) that
        replace the saved ones.

    Returns
    -------
    Segmenter

    Raises
    ------
    MissingDataError
        When ``path`` is neither a shipped model's name nor an existing file or folder, or holds no model.
    ModelFileError
        When the model file cannot be loaded.
    """
    model, pipeline, options = read_segmenter_files(path)
    options.update({k: v for k, v in overrides.items() if v is not None})
    return Segmenter(model, pipeline, **options)


def _pipeline_steps(pipeline: Any) -> list:
    steps = getattr(pipeline, "steps", None)
    return list(steps) if steps is not None else []


def _step_name(step: Any) -> str:
    for attribute in ("name", "kind", "__name__"):
        value = getattr(step, attribute, None)
        if isinstance(value, str):
            return value
    if isinstance(step, dict):
        return str(step.get("name", step.get("kind", "")))
    if isinstance(step, (tuple, list)) and step and isinstance(step[0], str):
        return step[0]
    return type(step).__name__


def _split_pipeline(pipeline: Any) -> tuple[Any, Any, bool]:
    """Split a pipeline at its z-score: (steps before, steps after, has a z-score), centre crops dropped."""
    if pipeline is None:
        return None, None, True
    steps = _pipeline_steps(pipeline)
    names = [_step_name(s).lower() for s in steps]
    # Only a per-image z-score becomes local; a z-score with fixed dataset statistics is pixel-wise already.
    cut = next((i for i, (s, n) in enumerate(zip(steps, names)) if "zscore" in n and getattr(s, "per_image", True)), None)
    has_zscore = cut is not None
    cut = len(steps) if cut is None else cut
    before = [s for s, n in zip(steps[:cut], names[:cut]) if "crop" not in n]
    after = [s for s, n in zip(steps[cut + 1 :], names[cut + 1 :]) if "crop" not in n]
    cls = type(pipeline)
    return (cls(before) if before else None, cls(after) if after else None, has_zscore)


#: How far (pixels) a pipeline step looks around a pixel of a whole slice, by step name (0: pixel-wise).
#: A step not listed, or a per-image z-score left after the split (statistics of the whole slice),
#: has no bounded reach.
_STEP_REACH: dict[str, Callable[[Any], int | None]] = {
    "to_grayscale": lambda step: 0,
    "window_hu": lambda step: 0,
    "zscore": lambda step: None if getattr(step, "per_image", True) else 0,
    "median_filter": lambda step: int(step.size) // 2 if isinstance(getattr(step, "size", None), int) else None,
}


def _steps_reach(before: Any, after: Any) -> int | None:
    """How far the pipeline steps around the local z-score look around a pixel (their reaches add up), or None when unbounded."""
    reach = 0
    for step in [*_pipeline_steps(before), *_pipeline_steps(after)]:
        rule = _STEP_REACH.get(_step_name(step))
        step_reach = None if rule is None else rule(step)
        if step_reach is None:
            return None
        reach += step_reach
    return reach


def _above(probabilities: np.ndarray, threshold: float, box: Sequence[int] | None) -> np.ndarray:
    """``probabilities >= threshold``, computed inside the (row0, row1, column0, column1) ``box`` of a
    full-mode prediction only: outside it the probabilities are 0, below any threshold in (0, 1), and
    the rest of the scan's mask is never written."""
    if box is None or probabilities.ndim != 3:
        return probabilities >= threshold
    rows, columns = slice(box[0], box[1]), slice(box[2], box[3])
    above = np.zeros(probabilities.shape, bool)
    above[:, rows, columns] = probabilities[:, rows, columns] >= threshold
    return above


def _marked(labels: np.ndarray) -> np.ndarray:
    """``(labels > 0).astype(np.uint8)``, written inside the labels' bounding box only (a scan's nodules fill a sliver of it)."""
    mask = np.zeros(labels.shape, np.uint8)
    box = bounding_box(labels) if labels.ndim else None
    if box is not None:
        mask[box] = labels[box] > 0
    return mask


def _check_finite(array: np.ndarray, what: str) -> None:
    step = max(1, 2**22 // max(int(np.prod(array.shape[1:])), 1))  # a few MB at a time: no whole-scan temporary
    if not all(np.isfinite(array[begin : begin + step]).all() for begin in range(0, len(array), step)):
        raise DataFormatError(
            f"{what} hold {int((~np.isfinite(array)).sum())} NaN or infinite value(s); "
            "replace them (e.g. with the air value) before segmenting"
        )
