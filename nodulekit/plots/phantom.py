"""Figures of the synthetic CT generator: a whole axial slice, real vs synthetic crops, realism.

Every function takes ``ax=`` or ``fig=`` where it draws on one or several axes and returns the
Figure; save with :func:`nodulekit.plots.save_figure`.
"""

from __future__ import annotations

import numpy as np

from ..dataset import CropSet, Volume
from ..errors import InvalidParameterError
from ..phantom.realism import crop_statistics, scale_per_crop

__all__ = ["plot_synthetic_slice", "plot_real_vs_synthetic", "plot_realism"]


def _window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.clip((hu - (center - width / 2)) / width, 0.0, 1.0)


def _outline(ax, mask: np.ndarray, color: str = "red", linewidth: float = 0.8) -> None:
    if np.asarray(mask).any():
        ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors=color, linewidths=linewidth)


def plot_synthetic_slice(
    volume: Volume,
    *,
    index: int | None = None,
    window: tuple[float, float] = (-600.0, 1500.0),
    outline: bool = True,
    ax=None,
):
    """Show one axial slice of a (synthetic) volume in a lung window, nodules outlined.

    Parameters
    ----------
    volume : Volume
        E.g. from :func:`nodulekit.phantom.generate_slice` or :func:`~nodulekit.phantom.generate_volume`.
    index : int, optional
        Slice to show (default: the slice with the most nodule pixels, else the middle one).
    window : (float, float)
        Display window centre and width in HU (default: lung window -600/1500).
    outline : bool
        Outline the nodule mask in red.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    if not isinstance(volume, Volume):
        raise InvalidParameterError(f"volume must be a nodulekit Volume, got {type(volume).__name__}")
    n = volume.hu.shape[0]
    if index is None:
        if volume.mask is not None and volume.mask.any():
            index = int(np.argmax(volume.mask.reshape(n, -1).sum(1)))
        else:
            index = n // 2
    if not 0 <= index < n:
        raise InvalidParameterError(f"index must be in [0, {n - 1}], got {index}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(_window(volume.hu[index], *window), cmap="gray", vmin=0, vmax=1)
    if outline and volume.mask is not None:
        _outline(ax, volume.mask[index], linewidth=1.0)
    spacing = volume.spacing
    ax.set_title(
        f"synthetic axial slice {index}: {volume.hu.shape[1]}x{volume.hu.shape[2]}, "
        f"{spacing[1]:.2f} mm px, {spacing[0]:.2f} mm slices",
        fontsize=9,
    )
    ax.set_axis_off()
    return ax.figure


def _scaled(images: np.ndarray) -> np.ndarray:
    return scale_per_crop(images)


def plot_real_vs_synthetic(
    real: CropSet,
    synthetic: CropSet,
    *,
    n: int = 8,
    rows: int = 2,
    seed: int = 0,
    outline: bool = True,
    fig=None,
):
    """Real and synthetic crops side by side (left block real, right block synthetic).

    Crops are min-max scaled per crop (as the LIDC PNG release is) and drawn with their masks outlined.

    Parameters
    ----------
    real, synthetic : CropSet
    n : int
        Crops per row and set.
    rows : int
        Rows per set.
    seed : int
        Which crops (random, non-empty masks preferred).
    outline : bool
    fig : matplotlib Figure, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    if n < 1 or rows < 1:
        raise InvalidParameterError(f"n and rows must be >= 1, got n={n}, rows={rows}")
    rng = np.random.default_rng(seed)
    if fig is None:
        fig = plt.figure(figsize=(2 * n * 0.9 + 0.4, rows * 0.95 + 0.5))
    grid = fig.add_gridspec(rows, 2 * n + 1, width_ratios=[1] * n + [0.15] + [1] * n, wspace=0.04, hspace=0.04)
    for block, (name, crops) in enumerate((("real (LIDC-IDRI)", real), ("synthetic (nodulekit.phantom)", synthetic))):
        nonempty = np.flatnonzero(crops.masks.reshape(len(crops), -1).any(1))
        pool = nonempty if len(nonempty) >= n * rows else np.arange(len(crops))
        pick = rng.choice(pool, size=min(n * rows, len(pool)), replace=False)
        images = _scaled(crops.images[pick])
        for k, index in enumerate(pick):
            r, c = divmod(k, n)
            ax = fig.add_subplot(grid[r, c + block * (n + 1)])
            ax.imshow(images[k], cmap="gray", vmin=0, vmax=1)
            if outline:
                _outline(ax, crops.masks[index])
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0 and c == 0:
                ax.set_title(name, loc="left", fontsize=9)
    return fig


def plot_realism(real: CropSet, synthetic: CropSet, *, blob: CropSet | None = None, fig=None):
    """Distributions behind :func:`nodulekit.phantom.realism_report`, real vs synthetic (vs blobs).

    Four panels: pooled intensity histogram of the per-crop scaled crops, nodule area (pixels, log
    scale), GLCM contrast and nodule contrast (mean inside the mask minus its surroundings).

    Parameters
    ----------
    real, synthetic : CropSet
        Same crop size.
    blob : CropSet, optional
        The naive phantom (:func:`nodulekit.phantom.blob_crops`), drawn dashed.
    fig : matplotlib Figure, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    sets = [("real", real, "black", "-"), ("synthetic", synthetic, "tab:red", "-")]
    if blob is not None:
        sets.append(("naive blobs", blob, "tab:blue", "--"))
    if fig is None:
        fig = plt.figure(figsize=(12, 3.0))
    axes = fig.subplots(1, 4)
    tallest = 0.0
    for name, crops, color, style in sets:
        stats = crop_statistics(crops, max_crops=1000)
        line = {"density": True, "histtype": "step", "color": color, "linestyle": style}
        axes[0].hist(_scaled(crops.images).ravel(), bins=64, range=(0, 1), label=name, **line)
        area = stats["area"][stats["area"] > 0]
        axes[1].hist(np.log10(area), bins=30, range=(0, 3.5), **line)
        axes[2].hist(stats["glcm_contrast"], bins=30, range=(0, 8), **line)
        heights, _, _ = axes[3].hist(stats["contrast_nodule"].dropna(), bins=30, range=(-0.2, 1), **line)
        if name != "naive blobs":
            tallest = max(tallest, float(np.max(heights)))
    axes[0].set(xlabel="intensity (per-crop min-max)", ylabel="density", yscale="log", title="intensities")
    axes[1].set(xlabel="log10 mask area (pixels)", title="nodule size")
    axes[2].set(xlabel="GLCM contrast", title="texture")
    axes[3].set(xlabel="inside mask - surroundings", title="nodule contrast", ylim=(0, 1.5 * tallest or None))
    axes[0].set_ylim(bottom=1e-3)
    axes[0].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
