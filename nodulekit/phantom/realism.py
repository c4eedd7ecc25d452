"""How close synthetic crops are to real ones, in numbers.

:func:`realism_report` compares two :class:`~nodulekit.dataset.CropSet` (typically the generator's
crops and the LIDC-IDRI crops) after the same per-crop min-max scaling, which makes HU crops and
8-bit PNG crops comparable (the downstream per-image z-score is invariant to that affine map):

* intensity: pooled histograms of the scaled crops (Wasserstein distance, histogram intersection);
* nodule size: the distribution of mask areas in pixels (two-sample Kolmogorov-Smirnov statistic);
* attachment: the fraction of nodules attached to a large bright structure (chest wall, mediastinum),
  measured the same way on both sets from image and mask (:func:`attached_to_wall`);
* nodule contrast: mean scaled intensity inside the mask minus the median of a ring around it;
* tissue: the fraction of each crop brighter than its Otsu threshold (how much wall/mediastinum);
* texture: grey-level co-occurrence contrast, homogeneity, energy and correlation
  (:func:`skimage.feature.graycomatrix`), compared as distributions.

:func:`blob_crops` makes the naive phantom (a disc in uniform lung with white noise) that the
generator should beat on every distance.

References
----------
.. [1] Haralick RM, Shanmugam K, Dinstein I. Textural features for image classification. IEEE Trans
   Syst Man Cybern 3:610-621, 1973 (grey-level co-occurrence statistics).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy import stats

from ..dataset import CropSet
from ..errors import InvalidParameterError
from ..utils import as_rng

__all__ = ["scale_per_crop", "crop_statistics", "attached_to_wall", "realism_report", "blob_crops"]

_BINS = 64
_GLCM = ("contrast", "homogeneity", "energy", "correlation")


def scale_per_crop(images: np.ndarray) -> np.ndarray:
    """Min-max scale each crop to [0, 1] (constant crops become 0)."""
    images = np.asarray(images, dtype=np.float64)
    low = images.min(axis=(1, 2), keepdims=True)
    span = images.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (images - low) / np.where(span > 0, span, 1.0), 0.0)


def _otsu(image: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(image)) if np.ptp(image) > 0 else 0.5


def attached_to_wall(image: np.ndarray, mask: np.ndarray, *, min_thickness: float = 6.0) -> bool:
    """Whether a nodule touches a large bright structure (chest wall, mediastinum, diaphragm).

    The crop (scaled to [0, 1]) is split at its Otsu threshold; the bright region beside the nodule
    (outside the mask dilated by one pixel, but touching the mask dilated by three) counts as a wall
    when some part of it is at least ``min_thickness`` pixels from its own edge (thicker than the
    vessels a nodule may touch) and it reaches the crop border.

    Parameters
    ----------
    image : ndarray (rows, columns)
        One crop, any units.
    mask : ndarray (rows, columns)
        The nodule mask.
    min_thickness : float
        Half-thickness (pixels) a bright structure needs to count as wall.

    Returns
    -------
    bool
    """
    mask = np.asarray(mask) > 0
    if not mask.any():
        return False
    scaled = scale_per_crop(image[None])[0]
    bright = scaled > _otsu(scaled)
    near = ndi.binary_dilation(mask, iterations=3)
    outside = bright & ~ndi.binary_dilation(mask, iterations=1)
    labels, _ = ndi.label(outside)
    touching = np.unique(labels[near & outside])
    touching = touching[touching > 0]
    if not len(touching):
        return False
    border = np.zeros_like(mask)
    border[[0, -1], :] = border[:, [0, -1]] = True
    depth = ndi.distance_transform_edt(np.isin(labels, touching))
    for label in touching:
        region = labels == label
        if (region & border).any() and depth[region].max() >= min_thickness:
            return True
    return False


def crop_statistics(crops: CropSet, *, max_crops: int | None = 2000, seed: int = 0) -> pd.DataFrame:
    """Per-crop statistics used by :func:`realism_report` (one row per crop).

    Parameters
    ----------
    crops : CropSet
    max_crops : int, optional
        Use a random subset of at most this many crops (speed).
    seed : int
        Seed of that subset.

    Returns
    -------
    pandas.DataFrame
        Columns ``area``, ``attached``, ``contrast_nodule``, ``tissue_fraction``, ``bright_fraction``
        and the GLCM statistics ``glcm_contrast``, ``glcm_homogeneity``, ``glcm_energy``,
        ``glcm_correlation``.
    """
    from skimage.feature import graycomatrix, graycoprops

    index = np.arange(len(crops))
    if max_crops is not None and len(index) > max_crops:
        index = np.sort(as_rng(seed).choice(index, max_crops, replace=False))
    scaled = scale_per_crop(crops.images[index])
    rows = []
    for image, mask in zip(scaled, crops.masks[index] > 0):
        row = {"area": int(mask.sum())}
        row["attached"] = attached_to_wall(image, mask) if mask.any() else np.nan
        if mask.sum() >= 4:
            ring = ndi.binary_dilation(mask, iterations=5) & ~ndi.binary_dilation(mask, iterations=2)
            row["contrast_nodule"] = float(image[mask].mean() - np.median(image[ring]))
        else:
            row["contrast_nodule"] = np.nan
        row["tissue_fraction"] = float((image > _otsu(image)).mean())
        row["bright_fraction"] = float((image > 0.75).mean())
        levels = np.clip((image * 32).astype(np.uint8), 0, 31)
        glcm = graycomatrix(levels, distances=[1], angles=[0, np.pi / 2], levels=32, symmetric=True, normed=True)
        for name in _GLCM:
            row[f"glcm_{name}"] = float(graycoprops(glcm, name).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def _pooled_histogram(images: np.ndarray) -> np.ndarray:
    hist, _ = np.histogram(scale_per_crop(images), bins=_BINS, range=(0.0, 1.0))
    return hist / max(hist.sum(), 1)


def realism_report(synthetic: CropSet, real: CropSet, *, max_crops: int | None = 2000, seed: int = 0) -> pd.DataFrame:
    """Compare synthetic crops with real crops, statistic by statistic.

    Both sets should have the same crop size (e.g. 64x64 centre crops). Images are min-max scaled
    per crop before any comparison.

    Parameters
    ----------
    synthetic, real : CropSet
    max_crops : int, optional
        Random subset size per set for the per-crop statistics (speed).
    seed : int

    Returns
    -------
    pandas.DataFrame
        One row per statistic: ``statistic``, ``real`` and ``synthetic`` (a summary value: median or
        fraction), ``distance`` (between the two distributions) and ``measure`` (which distance:
        ``wasserstein`` on [0, 1] intensities, ``1 - intersection``, ``ks`` (two-sample
        Kolmogorov-Smirnov statistic) or ``abs_difference`` of fractions).

    Raises
    ------
    InvalidParameterError
        The crop sizes differ or a set is empty.
    """
    if not len(synthetic) or not len(real):
        raise InvalidParameterError("realism_report needs two non-empty CropSets")
    if synthetic.images.shape[1:] != real.images.shape[1:]:
        raise InvalidParameterError(
            f"crop sizes differ: synthetic {synthetic.images.shape[1:]} vs real {real.images.shape[1:]}; "
            "centre-crop both to the same size"
        )
    centres = (np.arange(_BINS) + 0.5) / _BINS
    h_syn, h_real = _pooled_histogram(synthetic.images), _pooled_histogram(real.images)
    rows = [
        {
            "statistic": "intensity_histogram",
            "real": float((centres * h_real).sum()),
            "synthetic": float((centres * h_syn).sum()),
            "distance": float(stats.wasserstein_distance(centres, centres, h_real, h_syn)),
            "measure": "wasserstein",
        },
        {
            "statistic": "intensity_histogram_overlap",
            "real": 1.0,
            "synthetic": float(np.minimum(h_real, h_syn).sum()),
            "distance": float(1.0 - np.minimum(h_real, h_syn).sum()),
            "measure": "1 - intersection",
        },
    ]
    s_syn = crop_statistics(synthetic, max_crops=max_crops, seed=seed)
    s_real = crop_statistics(real, max_crops=max_crops, seed=seed)
    for column in ["area", "contrast_nodule", "tissue_fraction", "bright_fraction"] + [f"glcm_{g}" for g in _GLCM]:
        a, b = s_real[column].dropna().to_numpy(), s_syn[column].dropna().to_numpy()
        if column == "area":
            a, b = a[a > 0], b[b > 0]
        rows.append(
            {
                "statistic": column,
                "real": float(np.median(a)) if len(a) else np.nan,
                "synthetic": float(np.median(b)) if len(b) else np.nan,
                "distance": float(stats.ks_2samp(a, b).statistic) if len(a) and len(b) else np.nan,
                "measure": "ks",
            }
        )
    a, b = s_real["attached"].dropna().astype(float), s_syn["attached"].dropna().astype(float)
    rows.append(
        {
            "statistic": "fraction_attached_to_wall",
            "real": float(a.mean()),
            "synthetic": float(b.mean()),
            "distance": float(abs(a.mean() - b.mean())),
            "measure": "abs_difference",
        }
    )
    a, b = (s_real["bright_fraction"] > 0.01).mean(), (s_syn["bright_fraction"] > 0.01).mean()
    rows.append(
        {
            "statistic": "fraction_with_bright_structures",
            "real": float(a),
            "synthetic": float(b),
            "distance": float(abs(a - b)),
            "measure": "abs_difference",
        }
    )
    return pd.DataFrame(rows, columns=["statistic", "real", "synthetic", "distance", "measure"])


def blob_crops(n: int, *, size: int = 64, seed: int = 0) -> CropSet:
    """The naive phantom: one disc nodule (0 HU) in uniform lung (-850 HU) with white noise.

    A reference point for :func:`realism_report`: a generator worth its name is closer to real CT
    than this on every statistic.

    Parameters
    ----------
    n : int
    size : int
    seed : int

    Returns
    -------
    CropSet
        ``units="HU"``, masks are the discs.
    """
    if n < 1 or size < 8:
        raise InvalidParameterError(f"n must be >= 1 and size >= 8, got n={n!r}, size={size!r}")
    rng = as_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    radius = np.clip(rng.lognormal(np.log(5.0), 0.5, n), 2.0, size / 3)
    masks = (np.hypot(yy, xx)[None] <= radius[:, None, None]).astype(np.uint8)
    images = -850.0 + 850.0 * masks + rng.normal(0.0, 30.0, (n, size, size))
    table = pd.DataFrame(
        {
            "patient_id": [f"BLOB-{i:04d}" for i in range(n)],
            "nodule_id": [f"BLOB-{i:04d}/nodule-0" for i in range(n)],
            "slice_index": 0,
            "pixel_spacing_mm": 0.7,
            "slice_spacing_mm": np.nan,
            "n_readers": 1,
            "source": "blob",
        }
    )
    return CropSet(images=images.astype(np.float32), masks=masks, table=table, units="HU")
