"""Segmentation figures: CT slices with the found nodules outlined and boxed in green (paper Fig. 2).

:func:`plot_overlay` and :func:`plot_segmentation_grid` make Matplotlib figures for notebooks and
the paper's Fig. 2 ("Segmentasi Citra Paru": CT images with the segmented regions in green boxes),
on top of :func:`nodulekit.overlay.overlay_rgb` (re-exported here with ``display_scale``,
``save_overlay`` and ``LUNG_WINDOW``), which draws into an RGB array without Matplotlib.

Colours: predicted contour red, ground-truth contour yellow, one green box per predicted nodule.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InvalidParameterError
from ..overlay import LUNG_WINDOW, display_scale, overlay_rgb, save_overlay

__all__ = [
    "LUNG_WINDOW",
    "display_scale",
    "overlay_rgb",
    "save_overlay",
    "plot_overlay",
    "plot_segmentation_grid",
]


def plot_overlay(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    truth: np.ndarray | None = None,
    window: tuple[float, float] | None | str = "auto",
    title: str | None = None,
    ax=None,
    **options,
):
    """One slice with its nodules outlined and boxed, on Matplotlib axes.

    Parameters
    ----------
    image, mask, truth, window
        As in :func:`overlay_rgb`.
    title : str, optional
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure when omitted.
    **options
        ``boxes``, ``contours``, ``box_margin`` of :func:`overlay_rgb`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(4, 4))
    else:
        fig = ax.figure
    ax.imshow(overlay_rgb(image, mask, truth=truth, window=window, **options), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def plot_segmentation_grid(
    images: Sequence[np.ndarray] | np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    *,
    truths: Sequence[np.ndarray] | np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    columns: int = 4,
    window: tuple[float, float] | None | str = "auto",
    panel_size: float = 2.6,
    **options,
):
    """The paper's Fig. 2: a grid of CT images with the segmented nodules in green boxes.

    Parameters
    ----------
    images : sequence of 2-D arrays
        The images (crops or whole slices), HU or display scale.
    masks : sequence of 2-D arrays
        Predicted masks, one per image.
    truths : sequence of 2-D arrays, optional
        Ground-truth masks (yellow contours).
    titles : sequence of str, optional
        One title per panel (e.g. the Dice score).
    columns : int
        Panels per row (>= 1).
    window : (low, high), None or "auto"
        Display range, as in :func:`display_scale`.
    panel_size : float
        Inches per panel.
    **options
        ``boxes``, ``contours``, ``box_margin`` of :func:`overlay_rgb`.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InvalidParameterError
        When the numbers of images, masks, truths and titles differ, or ``columns`` < 1.
    """
    import matplotlib.pyplot as plt

    count = len(images)
    if len(masks) != count or (truths is not None and len(truths) != count) or (titles is not None and len(titles) != count):
        raise InvalidParameterError("images, masks, truths and titles must have the same length")
    if count == 0 or int(columns) < 1:
        raise InvalidParameterError(f"need at least one image and columns >= 1, got {count} images, columns={columns}")
    columns = min(int(columns), count)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(panel_size * columns, panel_size * rows), squeeze=False)
    for index, ax in enumerate(axes.ravel()):
        if index >= count:
            ax.set_axis_off()
            continue
        plot_overlay(
            images[index],
            masks[index],
            truth=None if truths is None else truths[index],
            window=window,
            title=None if titles is None else titles[index],
            ax=ax,
            **options,
        )
    fig.tight_layout()
    return fig
