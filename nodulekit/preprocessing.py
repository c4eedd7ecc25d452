"""The paper's preprocessing as one composable, serialisable pipeline (training and inference).

Section 2.1 of the paper: crop to 64x64, RGB -> grayscale, z-score normalisation (mean 0,
standard deviation 1), noise removal with a median filter, and histogram equalisation. nodulekit
adds Hounsfield windowing for HU input and CLAHE. Each step works on a whole batch
``(n, rows, columns)`` at once; a :class:`Pipeline` chains them, saves to JSON
(:meth:`Pipeline.get_config`) and is rebuilt with :meth:`Pipeline.from_config`, so the exact
preprocessing travels with a trained model.

Examples
--------
>>> pipeline = paper_pipeline()
>>> [step.name for step in pipeline.steps]
['to_grayscale', 'median_filter', 'zscore']
>>> out = pipeline.apply(np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3)))
>>> out.shape, out.dtype
((2, 8, 8), dtype('float32'))
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .crops import _size_pair
from .crops import center_crop as _center_crop
from .errors import DataFormatError, InvalidParameterError
from .utils import write_json

__all__ = [
    "Pipeline",
    "Step",
    "paper_pipeline",
    "to_grayscale",
    "window_hu",
    "zscore",
    "zscore_windows",
    "median_filter",
    "equalize_histogram",
    "center_crop",
    "STEPS",
]

#: Registry of step names -> classes, used by :meth:`Pipeline.from_config`.
STEPS: dict[str, type["Step"]] = {}


def _register(cls: type["Step"]) -> type["Step"]:
    STEPS[cls.name] = cls
    return cls


def _gray_batch(images: np.ndarray, step: str) -> np.ndarray:
    if images.ndim != 3:
        raise InvalidParameterError(
            f"{step} needs a grayscale batch (n, rows, columns), got shape {images.shape}; "
            "put to_grayscale() first for RGB input"
        )
    return images


class Step:
    """One preprocessing operation on a batch; subclasses set ``name`` and implement ``__call__``.

    ``get_config()`` returns the constructor arguments (plus fitted statistics), so
    ``type(step)(**step.get_config())`` rebuilds it.
    """

    name: str = ""
    #: Whether :meth:`fit` learns something from data.
    needs_fit: bool = False

    def __call__(self, images: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit(self, images: np.ndarray) -> "Step":
        """Learn statistics from (training) images; a no-op for most steps."""
        return self

    def get_config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{self.name}({arguments})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()  # type: ignore[union-attr]


@_register
class ToGrayscale(Step):
    """RGB -> grayscale with luminance weights 0.2125 R + 0.7154 G + 0.0721 B (scikit-image's
    :func:`~skimage.color.rgb2gray`), keeping the intensity scale (0..255 stays 0..255).

    A grayscale batch ``(n, rows, columns)`` passes through unchanged; ``(n, rows, columns, 1)`` is
    squeezed; RGBA drops alpha.
    """

    name = "to_grayscale"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        from skimage.color import rgb2gray

        images = np.asarray(images)
        if images.ndim == 3:
            return images.astype(np.float32, copy=False)
        if images.ndim == 4 and images.shape[-1] == 1:
            return images[..., 0].astype(np.float32, copy=False)
        if images.ndim == 4 and images.shape[-1] in (3, 4):
            return rgb2gray(images[..., :3].astype(np.float32)).astype(np.float32)
        raise InvalidParameterError(f"to_grayscale expects (n, rows, columns[, 1|3|4]), got shape {images.shape}")


@_register
class WindowHU(Step):
    """Clip Hounsfield units to a window and scale it to [0, 1].

    Values <= ``center - width/2`` become 0, values >= ``center + width/2`` become 1, linear in
    between. The default lung window is center -600 HU, width 1500 HU (-1350..150 HU).

    Parameters
    ----------
    center, width : float
        Window centre and width in HU (width > 0).
    """

    name = "window_hu"

    def __init__(self, center: float = -600.0, width: float = 1500.0):
        if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
            raise InvalidParameterError(
                f"window_hu needs a finite center and a width > 0, got center={center}, width={width}"
            )
        self.center, self.width = float(center), float(width)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        low = self.center - self.width / 2
        # In float64: a width that float32 rounds to 0 (or a far-out centre) must not make NaNs.
        return np.clip((np.asarray(images, np.float64) - low) / self.width, 0.0, 1.0).astype(np.float32)

    def get_config(self) -> dict[str, Any]:
        return {"center": self.center, "width": self.width}


@_register
class ZScore(Step):
    """Z-score normalisation: subtract the mean and divide by the standard deviation.

    Parameters
    ----------
    per_image : bool
        True (default, the paper's reading): each image gets mean 0 and standard deviation 1 from
        its own statistics. False: one mean and standard deviation for all images, given as
        ``mean``/``std`` or learnt by :meth:`fit` (on the training set only).
    mean, std : float, optional
        Dataset statistics when ``per_image`` is False.
    epsilon : float
        Added to each image's standard deviation (per-image mode), so a constant image becomes
        all zeros.
    """

    name = "zscore"

    def __init__(
        self, per_image: bool = True, mean: float | None = None, std: float | None = None, epsilon: float = 1e-6
    ):
        if per_image and (mean is not None or std is not None):
            raise InvalidParameterError("zscore: mean/std are dataset statistics; pass per_image=False with them")
        if std is not None and not std > 0:
            raise InvalidParameterError(f"zscore: std must be > 0, got {std}")
        if not epsilon >= 0:
            raise InvalidParameterError(f"zscore: epsilon must be >= 0, got {epsilon}")
        self.per_image = bool(per_image)
        self.mean = None if mean is None else float(mean)
        self.std = None if std is None else float(std)
        self.epsilon = float(epsilon)
        self.needs_fit = not self.per_image

    def fit(self, images: np.ndarray) -> "ZScore":
        if not self.per_image:
            images = np.asarray(images, np.float64)
            self.mean, self.std = float(images.mean()), float(images.std())
            if not self.std > 0:
                raise DataFormatError("zscore.fit: the images are constant (standard deviation 0)")
        return self

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if self.per_image:
            axes = tuple(range(1, images.ndim)) if images.ndim > 2 else None
            mean = images.mean(axis=axes, keepdims=True, dtype=np.float64)
            std = images.std(axis=axes, keepdims=True, dtype=np.float64) + self.epsilon
        else:
            if self.mean is None or self.std is None:
                raise InvalidParameterError(
                    "zscore(per_image=False) is not fitted: call Pipeline.fit(train_images) or pass mean and std"
                )
            mean, std = self.mean, self.std
        return ((images - mean) / std).astype(np.float32)

    def get_config(self) -> dict[str, Any]:
        return {"per_image": self.per_image, "mean": self.mean, "std": self.std, "epsilon": self.epsilon}


def zscore_windows(windows: np.ndarray, *, epsilon: float = 1e-6) -> np.ndarray:
    """Z-score each training-size window by its own statistics, in float32.

    The window z-score of window training (``evaluation.AugmentedSequence``) and of a segmenter
    without a pipeline (``inference.Segmenter.preprocess_windows``); :func:`zscore` is the
    pipeline step (statistics in float64, ``epsilon`` added).

    Parameters
    ----------
    windows : ndarray, shape (n, rows, columns[, channels])
    epsilon : float
        Floor of the standard deviation (a constant window becomes all zeros).

    Returns
    -------
    ndarray of float32, shape like ``windows``
    """
    windows = np.asarray(windows, dtype=np.float32)
    axes = tuple(range(1, windows.ndim))
    mean = windows.mean(axis=axes, keepdims=True)
    std = windows.std(axis=axes, keepdims=True)
    return ((windows - mean) / np.maximum(std, epsilon)).astype(np.float32)


@_register
class MedianFilter(Step):
    """Median filter of ``size`` x ``size`` pixels on each image (scikit-image, border 'nearest').

    Removes salt-and-pepper noise: an isolated bright pixel vanishes, edges stay sharp.

    Parameters
    ----------
    size : int
        Odd window side, >= 1 (1 is the identity).
    """

    name = "median_filter"

    def __init__(self, size: int = 3):
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1 or size % 2 == 0:
            raise InvalidParameterError(f"median_filter size must be an odd int >= 1, got {size!r}")
        self.size = int(size)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        from skimage.filters import median

        images = _gray_batch(np.asarray(images, np.float32), self.name)
        if self.size == 1:
            return images
        if self.size == 3:
            return _median3(images)
        footprint = np.ones((1, self.size, self.size), bool)  # never mixes two images of the batch
        return median(images, footprint=footprint, mode="nearest").astype(np.float32)

    def get_config(self) -> dict[str, Any]:
        return {"size": self.size}


#: Devillard's 19 exchanges whose element 4 ends as the median of 9 (``opt_med9``, after Paeth).
_MEDIAN9_EXCHANGES = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def _median3(images: np.ndarray) -> np.ndarray:
    """3x3 median of each float32 image, border 'nearest': scikit-image's values, several times faster.

    The median of the 9 shifted copies by a sorting network of element-wise minima and maxima,
    so every output is one of its 9 inputs, as with a rank filter (a whole 512x512 scan's slices
    are median-filtered before every prediction). Images go through in groups of about 2**18
    pixels, whose temporaries stay small.
    """
    rows, columns = images.shape[1:]
    out = np.empty(images.shape, np.float32)
    group = max(1, 2**18 // max(rows * columns, 1))
    for begin in range(0, len(images), group):
        padded = np.pad(images[begin : begin + group], ((0, 0), (1, 1), (1, 1)), mode="edge")
        values = [padded[:, i : i + rows, j : j + columns] for i in range(3) for j in range(3)]
        for i, j in _MEDIAN9_EXCHANGES:
            values[i], values[j] = np.minimum(values[i], values[j]), np.maximum(values[i], values[j])
        out[begin : begin + group] = values[4]
    return out


@_register
class EqualizeHistogram(Step):
    """Histogram equalisation per image, output in [0, 1] (scikit-image).

    Parameters
    ----------
    method : "global" or "clahe"
        ``"global"``: :func:`skimage.exposure.equalize_hist` (each pixel becomes the fraction of
        pixels at or below its value). ``"clahe"``: contrast-limited adaptive equalisation,
        :func:`skimage.exposure.equalize_adapthist`, after min-max scaling each image to [0, 1].
    nbins : int
        Histogram bins.
    clip_limit : float
        CLAHE contrast limit in (0, 1].
    kernel_size : int, optional
        CLAHE tile size in pixels (default: 1/8 of the image side).
    """

    name = "equalize_histogram"

    def __init__(
        self, method: str = "global", nbins: int = 256, clip_limit: float = 0.01, kernel_size: int | None = None
    ):
        if method not in ("global", "clahe"):
            raise InvalidParameterError(f"equalize_histogram method must be 'global' or 'clahe', got {method!r}")
        if not isinstance(nbins, (int, np.integer)) or nbins < 2:
            raise InvalidParameterError(f"equalize_histogram nbins must be an int >= 2, got {nbins!r}")
        if not 0 < clip_limit <= 1:
            raise InvalidParameterError(f"equalize_histogram clip_limit must be in (0, 1], got {clip_limit}")
        if kernel_size is not None and (not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1):
            raise InvalidParameterError(f"equalize_histogram kernel_size must be a positive int, got {kernel_size!r}")
        self.method, self.nbins, self.clip_limit = method, int(nbins), float(clip_limit)
        self.kernel_size = None if kernel_size is None else int(kernel_size)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        from skimage import exposure

        images = _gray_batch(np.asarray(images, np.float32), self.name)
        out = np.empty_like(images)
        for index, image in enumerate(images):
            low, high = float(image.min()), float(image.max())
            if high == low:  # nothing to equalise
                out[index] = 0.0
            elif self.method == "global":
                out[index] = exposure.equalize_hist(image, nbins=self.nbins)
            else:
                scaled = (image - low) / (high - low)
                out[index] = exposure.equalize_adapthist(
                    scaled, kernel_size=self.kernel_size, clip_limit=self.clip_limit, nbins=self.nbins
                )
        return out

    def get_config(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "nbins": self.nbins,
            "clip_limit": self.clip_limit,
            "kernel_size": self.kernel_size,
        }


@_register
class CenterCrop(Step):
    """Central ``size`` x ``size`` window of each image (padded with the image minimum if smaller).

    Works on gray ``(n, rows, columns)`` and colour ``(n, rows, columns, channels)`` batches.
    """

    name = "center_crop"

    def __init__(self, size: int | Sequence[int] = 64):
        self.size = _size_pair(size)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 4:  # channels last: crop rows and columns
            return np.moveaxis(_center_crop(np.moveaxis(images, -1, 1), self.size), 1, -1)
        return _center_crop(images, self.size)

    def get_config(self) -> dict[str, Any]:
        return {"size": list(self.size)}


class Pipeline:
    """An ordered list of preprocessing steps applied to a batch of images.

    Parameters
    ----------
    steps : iterable of Step or dict
        Step objects (e.g. ``zscore()``) or their configs ``{"name": ..., "params": {...}}``.

    Examples
    --------
    >>> pipeline = Pipeline([to_grayscale(), median_filter(3), zscore()])
    >>> Pipeline.from_config(pipeline.get_config()) == pipeline
    True
    """

    def __init__(self, steps: Iterable[Step | dict] = ()):
        built = []
        for step in steps:
            if isinstance(step, dict):
                step = _step_from_config(step)
            if not isinstance(step, Step):
                raise InvalidParameterError(
                    f"pipeline steps must be Step objects or step configs, got {type(step).__name__}"
                )
            built.append(step)
        self.steps: list[Step] = built

    def fit(self, images: np.ndarray) -> "Pipeline":
        """Learn dataset statistics (e.g. ``zscore(per_image=False)``) from training images.

        Each step is fitted on the output of the steps before it. Returns ``self``.
        """
        current = self._as_batch(images)[0]
        for step in self.steps:
            step.fit(current)
            current = step(current)
        return self

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Run every step on a batch.

        Parameters
        ----------
        images : ndarray
            ``(n, rows, columns)`` gray, ``(n, rows, columns, 3)`` RGB, or one ``(rows, columns)``
            image (returned as one image).

        Returns
        -------
        ndarray of float32, shape (n, rows', columns') (or (rows', columns') for one image)

        Raises
        ------
        InvalidParameterError
            The result is not grayscale (an RGB batch without ``to_grayscale``), or a step's
            input has the wrong shape or type, or a dataset-statistics step is not fitted.
        DataFormatError
            The images hold NaN or infinite values (the message gives their image indices).
        """
        current, single = self._as_batch(images)
        for step in self.steps:
            current = step(current)
        current = np.asarray(current, np.float32)
        if current.ndim != 3:
            raise InvalidParameterError(
                f"pipeline output must be a grayscale batch (n, rows, columns), got {current.shape}; add to_grayscale()"
            )
        return current[0] if single else current

    __call__ = apply

    def trace(self, images: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """The input and the output after each step: ``[("input", x), (step.name, x1), ...]``."""
        current, _ = self._as_batch(images)
        out = [("input", current)]
        for step in self.steps:
            current = step(current)
            out.append((step.name, current))
        return out

    @staticmethod
    def _as_batch(images: np.ndarray) -> tuple[np.ndarray, bool]:
        images = np.asarray(images)
        single = images.ndim == 2
        if single:
            images = images[None]
        if images.ndim not in (3, 4):
            raise InvalidParameterError(
                f"images must be (n, rows, columns) or (n, rows, columns, channels), got {images.shape}"
            )
        if images.dtype != bool and (not np.issubdtype(images.dtype, np.number) or images.dtype.kind == "c"):
            raise InvalidParameterError(f"images must be real numbers, got dtype {images.dtype}")
        if 0 in images.shape[1:3]:
            raise InvalidParameterError(f"images must have at least one row and column, got shape {images.shape}")
        _check_finite(images)
        return images, single

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable description: ``{"steps": [{"name": ..., "params": {...}}, ...]}``."""
        return {"steps": [{"name": step.name, "params": copy.deepcopy(step.get_config())} for step in self.steps]}

    @classmethod
    def from_config(cls, config: dict) -> "Pipeline":
        """Rebuild a pipeline from :meth:`get_config`'s output.

        Raises
        ------
        InvalidParameterError
            An unknown step name or bad parameters.
        """
        if not isinstance(config, dict) or not isinstance(config.get("steps"), list):
            raise InvalidParameterError("a pipeline config must be a dict with a 'steps' list")
        return cls(config["steps"])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the config as JSON (atomically)."""
        write_json(path, self.get_config())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Pipeline":
        """Read a pipeline saved by :meth:`save`."""
        try:
            with open(path) as handle:
                config = json.load(handle)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataFormatError(f"not a pipeline JSON file ({exc})", path=path) from exc
        try:
            return cls.from_config(config)
        except InvalidParameterError as exc:
            raise DataFormatError(f"not a valid pipeline ({exc})", path=path) from exc

    def __len__(self) -> int:
        return len(self.steps)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.get_config() == other.get_config()

    def __repr__(self) -> str:
        return f"Pipeline([{', '.join(map(repr, self.steps))}])"


def _check_finite(images: np.ndarray, name: str = "images") -> None:
    """Refuse NaN or infinite values (they would silently turn a whole image, or training, into NaN)."""
    if images.dtype.kind != "f":
        return
    finite = np.isfinite(images)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(len(images), -1).all(axis=1))
        shown = ", ".join(str(i) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise DataFormatError(
            f"{name}: {int((~finite).sum())} NaN or infinite value(s) in {len(bad)} of {len(images)} image(s) "
            f"(index {shown}); replace or drop them before preprocessing (e.g. np.nan_to_num with the air value)"
        )


def _step_from_config(config: dict) -> Step:
    name = config.get("name") if isinstance(config, dict) else None
    if name not in STEPS:
        raise InvalidParameterError(f"unknown preprocessing step {name!r}; known: {sorted(STEPS)}")
    try:
        params = dict(config.get("params") or {})
        return STEPS[name](**params)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InvalidParameterError):
            raise
        raise InvalidParameterError(f"bad parameters for step {name!r}: {exc}") from exc


# Factories with the names the rest of nodulekit uses: Pipeline([to_grayscale(), zscore()]).
def to_grayscale() -> ToGrayscale:
    """Step: RGB -> grayscale (see :class:`ToGrayscale`)."""
    return ToGrayscale()


def window_hu(center: float = -600.0, width: float = 1500.0) -> WindowHU:
    """Step: clip HU to ``center ± width/2`` and scale to [0, 1] (see :class:`WindowHU`)."""
    return WindowHU(center, width)


def zscore(
    per_image: bool = True, *, mean: float | None = None, std: float | None = None, epsilon: float = 1e-6
) -> ZScore:
    """Step: z-score per image (default) or with dataset statistics (see :class:`ZScore`)."""
    return ZScore(per_image, mean=mean, std=std, epsilon=epsilon)


def median_filter(size: int = 3) -> MedianFilter:
    """Step: ``size`` x ``size`` median filter (see :class:`MedianFilter`)."""
    return MedianFilter(size)


def equalize_histogram(
    method: str = "global", *, nbins: int = 256, clip_limit: float = 0.01, kernel_size: int | None = None
) -> EqualizeHistogram:
    """Step: global histogram equalisation or CLAHE (see :class:`EqualizeHistogram`)."""
    return EqualizeHistogram(method, nbins=nbins, clip_limit=clip_limit, kernel_size=kernel_size)


def center_crop(size: int | Sequence[int] = 64) -> CenterCrop:
    """Step: central ``size`` crop (see :class:`CenterCrop`)."""
    return CenterCrop(size)


def paper_pipeline(
    *,
    crop_size: int | None = None,
    window: tuple[float, float] | None = None,
    median: bool = True,
    median_size: int = 3,
    equalize: bool | str = False,
    per_image: bool = True,
) -> Pipeline:
    """The paper's preprocessing (section 2.1) as a :class:`Pipeline`.

    Order: [centre crop] -> grayscale -> [HU window] -> median filter -> [histogram equalisation]
    -> z-score. The z-score comes last so the network always sees mean 0 / standard deviation 1.

    Parameters
    ----------
    crop_size : int, optional
        Centre-crop to this size first (e.g. 64 for 128x128 LIDC crops).
    window : (center, width), optional
        HU window for Hounsfield-unit input (e.g. ``(-600, 1500)``).
    median : bool
        Apply the median filter (the paper's noise removal).
    median_size : int
        Median window side.
    equalize : bool or "global" or "clahe"
        Histogram equalisation (True means "global").
    per_image : bool
        Z-score per image (default) or with dataset statistics (then call :meth:`Pipeline.fit`).

    References
    ----------
    "U-Net Architecture in Lung Image Segmentation to Detect Lung Nodules", section 2.1 (crop,
    grayscale, z-score normalisation, median filter, histogram equalisation); Zuiderveld, "Contrast
    Limited Adaptive Histogram Equalization", Graphics Gems IV, 1994 (CLAHE).
    """
    steps: list[Step] = []
    if crop_size is not None:
        steps.append(center_crop(crop_size))
    steps.append(to_grayscale())
    if window is not None:
        steps.append(window_hu(*window))
    if median:
        steps.append(median_filter(median_size))
    if equalize:
        steps.append(equalize_histogram("global" if equalize is True else equalize))
    steps.append(zscore(per_image))
    return Pipeline(steps)
