"""Figure of the preprocessing steps: each intermediate image with its intensity histogram."""

from __future__ import annotations

import numpy as np

from ..crops import center_crop
from ..errors import InvalidParameterError

__all__ = ["plot_preprocessing_steps"]


def plot_preprocessing_steps(
    image: np.ndarray,
    pipeline,
    *,
    mask: np.ndarray | None = None,
    bins: int = 64,
    title: str | None = None,
    axes=None,
):
    """Show one image after each step of a preprocessing pipeline, with intensity histograms.

    Column 0 is the input; column k the output of step k. The top row shows the image (with the
    nodule outline when ``mask`` is given); the bottom row its intensity histogram with mean and
    standard deviation, so the effect of each step (grayscale, window, median filter,
    equalisation, z-score) on the intensity distribution is visible.

    Parameters
    ----------
    image : ndarray
        One image, ``(rows, columns)`` or ``(rows, columns, 3)``.
    pipeline : nodulekit.preprocessing.Pipeline
        The steps to show (e.g. :func:`~nodulekit.preprocessing.paper_pipeline`).
    mask : ndarray, optional
        Nodule mask of the same rows/columns as ``image`` (outlined in every panel whose size
        matches).
    bins : int
        Histogram bins.
    title : str, optional
        Figure title.
    axes : array of matplotlib Axes, shape (2, len(pipeline) + 1), optional
        Where to draw; a new figure is made when omitted.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    image = np.asarray(image)
    if image.ndim == 2:
        batch = image[None]
    elif image.ndim == 3 and image.shape[-1] in (3, 4):
        batch = image[None]
    else:
        raise InvalidParameterError(f"image must be (rows, columns) or (rows, columns, 3), got shape {image.shape}")
    stages = pipeline.trace(batch)
    columns = len(stages)
    if axes is None:
        fig, axes = plt.subplots(
            2, columns, figsize=(2.6 * columns, 5.2), gridspec_kw={"height_ratios": [1.3, 1]}, squeeze=False
        )
    else:
        axes = np.asarray(axes).reshape(2, columns)
        fig = axes[0, 0].figure
    for column, (name, stage) in enumerate(stages):
        picture = np.asarray(stage[0], np.float32)
        top, bottom = axes[0, column], axes[1, column]
        if picture.ndim == 3:  # still RGB before to_grayscale
            shown = picture[..., :3]
            shown = (shown - shown.min()) / max(float(np.ptp(shown)), 1e-6)
            top.imshow(shown)
            values = picture[..., :3].ravel()
        else:
            top.imshow(picture, cmap="gray")
            values = picture.ravel()
            if mask is not None and np.asarray(mask).shape[-2:] == picture.shape:
                top.contour(np.asarray(mask) > 0, levels=[0.5], colors="lime", linewidths=0.8)
            elif mask is not None:
                cropped = center_crop(np.asarray(mask) > 0, picture.shape, pad_value=0)
                top.contour(cropped, levels=[0.5], colors="lime", linewidths=0.8)
        top.set_title(name.replace("_", " "), fontsize=9)
        top.set_xticks([])
        top.set_yticks([])
        bottom.hist(values, bins=bins, color="0.3")
        bottom.set_title(f"mean {values.mean():.3g}, sd {values.std():.3g}", fontsize=8)
        bottom.tick_params(labelsize=7)
        bottom.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
