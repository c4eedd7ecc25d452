"""Figures of the study notebooks that no other family draws.

* :func:`plot_lung_ct` — the paper's Fig. 1: a whole lung CT slice, the nodule and its 64x64 crop box.
* :func:`plot_research_stages` — the paper's "Tahapan Penelitian" flow diagram.
* :func:`plot_preprocessing_crops` — every preprocessing step on the same crops, with histograms.
* :func:`plot_fold_metrics` — test metrics per model and fold beside the all-background baseline.
* :func:`plot_prediction_pairs` — the paper's Fig. 2 as pairs: ground truth next to the prediction
  (red contour, green box).
* :func:`plot_attention_maps` — the attention gates' coefficients over the crops.
* :func:`plot_honest_accuracy` — the paper's Fig. 5: pixel accuracy beside the all-background
  accuracy, Dice, IoU, precision and recall.
* :func:`plot_model_comparison` — U-Net vs Attention U-Net, fold by fold, with the paired tests.
* :func:`plot_summary_table` — the one-page summary table as a figure.

Every function draws on given axes (``ax=`` / ``axes=``) or makes its own and returns the Figure;
:func:`nodulekit.plots.save_figure` saves them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..crops import center_crop, crop_at
from ..dataset import Volume
from ..errors import InvalidParameterError
from ..overlay import display_scale, overlay_rgb
from ..postprocess import keep_largest_components

__all__ = [
    "RESEARCH_STAGES",
    "MODEL_COLORS",
    "BASELINE_COLOR",
    "plot_lung_ct",
    "plot_research_stages",
    "plot_preprocessing_crops",
    "plot_fold_metrics",
    "plot_prediction_pairs",
    "plot_attention_maps",
    "plot_honest_accuracy",
    "plot_model_comparison",
    "plot_summary_table",
]

#: The paper's research stages (title, what nodulekit does there and where).
RESEARCH_STAGES: tuple[tuple[str, str], ...] = (
    ("Data", "CT crops with masks\n(synthetic or LIDC-IDRI)\nnotebook 01"),
    ("Preprocessing", "crop 64x64, grayscale,\nmedian filter, z-score\nnotebook 01"),
    ("Hyperparameter tuning", "learning rate x batch size\ngrid, best val. Dice\nnotebook 02"),
    ("Training", "U-Net and Attention U-Net\n4-fold CV, focal Tversky\nnotebook 03"),
    ("Evaluation", "Dice, IoU, precision, recall,\naccuracy vs baseline\nnotebook 04"),
    ("Segmentation results", "green boxes, paired test,\nsummary (Figs. 2, 5)\nnotebooks 04-05"),
)

#: One colour per architecture, and the baseline's.
MODEL_COLORS = {"unet": "tab:orange", "attention_unet": "tab:purple"}
BASELINE_COLOR = "0.6"

_METRIC_LABELS = {
    "dice": "Dice",
    "iou": "IoU",
    "precision": "precision",
    "recall": "recall",
    "accuracy": "pixel accuracy",
    "background_accuracy": "all-background accuracy",
}


def _label(architecture: str) -> str:
    return {"unet": "U-Net", "attention_unet": "Attention U-Net"}.get(architecture, architecture.replace("_", " "))


def _color(architecture: str, index: int) -> str:
    return MODEL_COLORS.get(architecture, f"C{index}")


# ------------------------------------------------------------------------------------------------
# Fig. 1 and the research stages


def plot_lung_ct(
    volume: Volume,
    *,
    index: int | None = None,
    crop_size: int = 64,
    window: tuple[float, float] = (-600.0, 1500.0),
    axes=None,
):
    """The paper's Fig. 1: a whole axial lung CT slice with the nodule and its crop box, and the crop.

    Left: the slice in a lung window, every nodule outlined in red and the ``crop_size`` box around
    the largest one dashed in lime (the crop convention of :func:`nodulekit.crops.crops_from_volume`).
    Right: that crop, enlarged.

    Parameters
    ----------
    volume : Volume
        CT in HU with a nodule mask (e.g. :func:`nodulekit.study.example_slice`).
    index : int, optional
        Slice to show; default the slice with the most nodule pixels.
    crop_size : int
        Side of the crop box in pixels (the paper's 64).
    window : (center, width)
        Display window in HU (lung window -600 / 1500).
    axes : pair of matplotlib Axes, optional
        Where to draw (slice, crop); a new figure when omitted.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InvalidParameterError
        The volume has no nodule in its mask, or ``index`` is out of range.

    References
    ----------
    .. [1] The paper's Fig. 1 "Citra Paru".
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from scipy import ndimage

    if not isinstance(volume, Volume) or volume.mask is None or not volume.mask.any():
        raise InvalidParameterError("plot_lung_ct needs a Volume whose mask holds at least one nodule")
    n = len(volume.hu)
    if index is None:
        index = int(np.argmax(volume.mask.reshape(n, -1).sum(1)))
    if not 0 <= index < n:
        raise InvalidParameterError(f"index must be in [0, {n - 1}], got {index}")
    if int(crop_size) < 8:
        raise InvalidParameterError(f"crop_size must be >= 8 pixels, got {crop_size!r}")
    hu, mask = volume.hu[index], volume.mask[index] > 0
    largest = keep_largest_components(mask, connectivity=1, keep=1)  # 4-connected
    if not largest.any():
        raise InvalidParameterError(f"slice {index} has no nodule pixels")
    y, x = ndimage.center_of_mass(largest)
    top, left = int(np.floor(y)) - crop_size // 2, int(np.floor(x)) - crop_size // 2

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 5), gridspec_kw={"width_ratios": [1.6, 1]})
    else:
        axes = list(np.ravel(axes))
        fig = axes[0].figure
    center, width = window
    shown = np.clip((hu - (center - width / 2)) / width, 0.0, 1.0)
    whole, zoom = axes[0], axes[1]
    whole.imshow(shown, cmap="gray", vmin=0, vmax=1)
    whole.contour(mask.astype(float), levels=[0.5], colors="red", linewidths=0.8)
    box = Rectangle((left - 0.5, top - 0.5), crop_size, crop_size, fill=False, edgecolor="lime", linestyle="--", linewidth=1.5)
    whole.add_patch(box)
    whole.text(left, top - 6, f"{crop_size}x{crop_size} crop", color="lime", fontsize=8, va="bottom")
    rows, columns = hu.shape
    pixel = volume.spacing[1]
    whole.set_title(f"axial CT slice, {rows}x{columns} px ({pixel:.2f} mm/px), lung window", fontsize=9)
    whole.set_axis_off()

    crop = crop_at(shown, (top, left), crop_size, pad_value=0.0)
    crop_mask = crop_at(mask.astype(np.uint8), (top, left), crop_size, pad_value=0)
    zoom.imshow(crop, cmap="gray", vmin=0, vmax=1)
    if crop_mask.any():
        zoom.contour(crop_mask.astype(float), levels=[0.5], colors="red", linewidths=1.2)
    diameter = 2 * np.sqrt(largest.sum() / np.pi) * pixel
    zoom.set_title(f"the crop: nodule ≈ {diameter:.1f} mm across", fontsize=9)
    for spine in zoom.spines.values():
        spine.set_edgecolor("lime")
        spine.set_linestyle("--")
        spine.set_linewidth(1.5)
    zoom.set_xticks([])
    zoom.set_yticks([])
    fig.tight_layout()
    return fig


def plot_research_stages(stages: Sequence[tuple[str, str]] = RESEARCH_STAGES, *, ax=None):
    """The research stages as a left-to-right flow diagram (the paper's "Tahapan Penelitian").

    Parameters
    ----------
    stages : sequence of (title, detail)
        One box each, in order; default :data:`RESEARCH_STAGES` (data -> preprocessing ->
        hyperparameter tuning -> training -> evaluation -> segmentation results).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import textwrap

    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    stages = list(stages)
    if not stages:
        raise InvalidParameterError("stages must name at least one stage")
    if ax is None:
        fig, ax = plt.subplots(figsize=(2.45 * len(stages), 2.6))
    else:
        fig = ax.figure
    width, gap, height = 2.0, 0.45, 1.9
    colors = plt.get_cmap("Blues")(np.linspace(0.25, 0.6, len(stages)))
    for k, (title, detail) in enumerate(stages):
        x = k * (width + gap)
        style = "round,pad=0.02,rounding_size=0.12"
        ax.add_patch(FancyBboxPatch((x, 0), width, height, boxstyle=style, facecolor=colors[k], edgecolor="0.25", gid=f"stage-{k}"))
        title = "\n".join(textwrap.wrap(title, 15))
        ax.text(x + width / 2, height - 0.42, title, ha="center", va="center", fontsize=9.5, fontweight="bold")
        ax.text(x + width / 2, 0.6, detail, ha="center", va="center", fontsize=7.3, linespacing=1.3)
        if k:
            start, end = (x - gap + 0.03, height / 2), (x - 0.03, height / 2)
            ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color="0.2"))
    ax.set_xlim(-0.1, len(stages) * (width + gap) - gap + 0.1)
    ax.set_ylim(-0.1, height + 0.1)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title("Research stages", fontsize=11)
    return fig


def plot_preprocessing_crops(images: np.ndarray, pipeline, *, masks: np.ndarray | None = None, bins: int = 64, axes=None):
    """Every preprocessing step on the same crops: one row per crop, then the pooled histograms.

    Column 0 is the input, column k the output of step k of ``pipeline``. The last row shows the
    intensity histogram of all crops together after that step, with its mean and standard
    deviation, so the effect of each step on the intensities is visible.

    Parameters
    ----------
    images : ndarray
        ``(n, rows, columns)`` or ``(n, rows, columns, 3)`` (RGB, as the paper's exported crops).
    pipeline : nodulekit.preprocessing.Pipeline
    masks : ndarray, shape (n, rows, columns), optional
        Nodule masks, outlined (centre-cropped along with the images when a step crops).
    bins : int
    axes : array of Axes, shape (n + 1, len(pipeline) + 1), optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    if images.ndim not in (3, 4) or len(images) == 0:
        raise InvalidParameterError(f"images must be a non-empty batch (n, rows, columns[, 3]), got shape {images.shape}")
    if masks is not None and (len(masks) != len(images) or np.shape(masks)[1:] != images.shape[1:3]):
        raise InvalidParameterError(f"masks shape {np.shape(masks)} does not match images {images.shape}")
    stages = pipeline.trace(images)
    n, columns = len(images), len(stages)
    if axes is None:
        fig, axes = plt.subplots(n + 1, columns, figsize=(2.0 * columns, 2.0 * n + 1.7), squeeze=False,
                                 gridspec_kw={"height_ratios": [1] * n + [0.9]})
    else:
        axes = np.asarray(axes).reshape(n + 1, columns)
        fig = axes[0, 0].figure
    for column, (name, batch) in enumerate(stages):
        batch = np.asarray(batch, np.float32)
        for row in range(n):
            ax = axes[row, column]
            picture = batch[row]
            if picture.ndim == 3:
                low, high = float(picture.min()), float(picture.max())
                ax.imshow((picture[..., :3] - low) / max(high - low, 1e-6))
            else:
                ax.imshow(picture, cmap="gray")
                if masks is not None:
                    outline = np.asarray(masks[row]) > 0
                    if outline.shape != picture.shape:
                        outline = center_crop(outline, picture.shape, pad_value=0)
                    if outline.any():
                        ax.contour(outline.astype(float), levels=[0.5], colors="lime", linewidths=0.7)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name.replace("_", " "), fontsize=9)
            if column == 0:
                ax.set_ylabel(f"crop {row + 1}", fontsize=8)
        values = batch.ravel()
        mean, sd = float(values.mean()), float(values.std())
        mean = 0.0 if abs(mean) < 1e-4 * max(sd, 1.0) else mean  # float round-off after the z-score
        hist = axes[n, column]
        hist.hist(values, bins=bins, color="0.3")
        hist.set_title(f"mean {mean:.3g}, sd {sd:.3g}", fontsize=7.5)
        hist.tick_params(labelsize=6.5)
        hist.set_yticks([])
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# Evaluation


def _split_baseline(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series | None]:
    models = table[table["architecture"] != "all background"]
    baseline = table[table["architecture"] == "all background"]
    return models, (baseline.iloc[0] if len(baseline) else None)


def plot_fold_metrics(
    table: pd.DataFrame, *, metrics: Sequence[str] = ("dice", "iou", "precision", "recall", "accuracy"), ax=None
):
    """Test metrics per model: the mean over folds as a bar, each fold as a dot, the baseline hatched.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`nodulekit.study.fold_metrics_table` (architecture, fold, the metrics), optionally with
        its ``all background`` row, drawn as a grey hatched bar in each group.
    metrics : sequence of str
        Groups of bars, left to right.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    missing = [m for m in metrics if m not in table]
    if missing:
        raise InvalidParameterError(f"table lacks metric columns {missing}")
    models, baseline = _split_baseline(table)
    architectures = list(pd.unique(models["architecture"]))
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.7 * len(metrics) + 1.5, 3.6))
    else:
        fig = ax.figure
    bars = len(architectures) + (baseline is not None)
    width = 0.8 / bars
    for group, metric in enumerate(metrics):
        for k, architecture in enumerate(architectures):
            values = models.loc[models["architecture"] == architecture, metric].astype(float)
            x = group - 0.4 + width * (k + 0.5)
            label = _label(architecture) if group == 0 else None
            ax.bar(x, values.mean(), width, color=_color(architecture, k), alpha=0.8, label=label)
            label = "fold" if group == 0 and k == 0 else None
            ax.scatter(np.full(len(values), x), values, color="black", s=10, zorder=3, label=label)
        if baseline is not None:
            x = group - 0.4 + width * (len(architectures) + 0.5)
            ax.bar(x, float(baseline[metric]), width, color="white", edgecolor=BASELINE_COLOR, hatch="///",
                   label="all background" if group == 0 else None)
            value = float(baseline[metric])
            ax.text(x, value + 0.01, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(metrics)), [_METRIC_LABELS.get(m, m) for m in metrics])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test score")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=bars + 1, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    ax.set_title("Held-out test patients: each model's folds and the all-background prediction", fontsize=10)
    fig.tight_layout()
    return fig


def plot_prediction_pairs(
    images: Sequence[np.ndarray] | np.ndarray,
    predictions: Sequence[np.ndarray] | np.ndarray,
    truths: Sequence[np.ndarray] | np.ndarray,
    *,
    titles: Sequence[str] | None = None,
    columns: int = 3,
    window: tuple[float, float] | None | str = "auto",
    panel_size: float = 2.2,
):
    """The paper's Fig. 2 as pairs: each crop with its ground truth next to the model's segmentation.

    Left of each pair: the radiologists' (or synthetic) ground truth outlined in yellow. Right: the
    prediction outlined in red with a green box around each segmented nodule (as in the paper),
    the ground truth again in yellow for comparison.

    Parameters
    ----------
    images, predictions, truths : sequences of 2-D arrays
        The crops (HU or any intensity), binary predictions and ground truths.
    titles : sequence of str, optional
        One per pair (e.g. the Dice of the crop).
    columns : int
        Pairs per row.
    window : (low, high), None or "auto"
        Display range, as in :func:`nodulekit.plots.inference.display_scale`.
    panel_size : float
        Inches per panel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    count = len(images)
    if count == 0 or len(predictions) != count or len(truths) != count or (titles is not None and len(titles) != count):
        raise InvalidParameterError("images, predictions, truths (and titles) must be non-empty and of the same length")
    if int(columns) < 1:
        raise InvalidParameterError(f"columns must be >= 1, got {columns!r}")
    columns = min(int(columns), count)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(panel_size * 2 * columns, panel_size * rows + 0.3), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for k in range(count):
        row, column = divmod(k, columns)
        left, right = axes[row, 2 * column], axes[row, 2 * column + 1]
        left.imshow(overlay_rgb(images[k], None, truth=truths[k], window=window), interpolation="nearest")
        right.imshow(overlay_rgb(images[k], predictions[k], truth=truths[k], window=window), interpolation="nearest")
        left.set_title("ground truth" if titles is None else f"{titles[k]}\nground truth", fontsize=8)
        right.set_title("segmentation", fontsize=8)
    fig.suptitle("yellow: ground truth · red: predicted contour · green: predicted nodule box", fontsize=9)
    fig.tight_layout()
    return fig


def plot_attention_maps(
    images: np.ndarray,
    maps: dict[str, np.ndarray],
    *,
    truths: np.ndarray | None = None,
    predictions: np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    window: tuple[float, float] | None | str = "auto",
    axes=None,
):
    """The attention gates' coefficients over the crops: where the Attention U-Net looks.

    One row per crop: the crop (ground truth in yellow), each gate's coefficient map (coarsest
    first) upsampled to the crop and drawn over it, then the prediction.

    Parameters
    ----------
    images : ndarray, shape (n, h, w)
        The crops for display.
    maps : dict of str to ndarray
        :func:`nodulekit.models.attention_maps` of the same crops: ``(n, h_k, w_k)`` in [0, 1].
    truths, predictions : ndarray, shape (n, h, w), optional
    titles : sequence of str, optional
        One per row.
    window : (low, high), None or "auto"
    axes : array of Axes, shape (n, len(maps) + 1 + (predictions is not None)), optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from scipy import ndimage

    images = np.asarray(images)
    if images.ndim != 3 or not maps:
        raise InvalidParameterError("images must be (n, h, w) and maps must hold at least one gate")
    n = len(images)
    for name, values in maps.items():
        if len(values) != n:
            raise InvalidParameterError(f"map {name!r} has {len(values)} crops, images have {n}")
    names = list(maps)
    columns = 1 + len(names) + (predictions is not None)
    if axes is None:
        fig, axes = plt.subplots(n, columns, figsize=(2.0 * columns, 2.0 * n + 0.4), squeeze=False)
    else:
        axes = np.asarray(axes).reshape(n, columns)
        fig = axes[0, 0].figure
    image = None
    for row in range(n):
        ax = axes[row, 0]
        ax.imshow(overlay_rgb(images[row], None, truth=None if truths is None else truths[row], window=window))
        ax.set_title("crop" if titles is None else titles[row], fontsize=8)
        grey = display_scale(images[row], window=window)
        for k, name in enumerate(names):
            values = np.asarray(maps[name][row], np.float32)
            zoom = (images.shape[1] / values.shape[0], images.shape[2] / values.shape[1])
            upsampled = np.clip(ndimage.zoom(values, zoom, order=1), 0.0, 1.0)
            ax = axes[row, 1 + k]
            ax.imshow(grey, cmap="gray")
            image = ax.imshow(upsampled, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            if row == 0:
                gate = name.replace("_coefficients", "").replace("_", " ")
                ax.set_title(f"{gate} ({values.shape[0]}x{values.shape[1]})", fontsize=8)
        if predictions is not None:
            ax = axes[row, -1]
            truth = None if truths is None else truths[row]
            ax.imshow(overlay_rgb(images[row], predictions[row], truth=truth, window=window))
            if row == 0:
                ax.set_title("segmentation", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=list(axes.ravel()), orientation="horizontal", fraction=0.04, pad=0.03, shrink=0.5,
                     label="attention coefficient α (0: suppressed, 1: passed on)")
    return fig


# ------------------------------------------------------------------------------------------------
# Results


def plot_honest_accuracy(table: pd.DataFrame, *, paper_accuracy: float | None = 0.94, axes=None):
    """The paper's Fig. 5, honestly: pixel accuracy beside the all-background accuracy, and the overlap scores.

    Left: pixel accuracy per model (mean ± sd over folds) beside the accuracy of predicting no
    nodule anywhere on the same crops, and the paper's 94 %. Right: Dice, IoU, precision and recall
    of the same models beside the baseline's: the scores that show whether a nodule was found.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`nodulekit.study.fold_metrics_table` with its ``all background`` row.
    paper_accuracy : float, optional
        The paper's reported accuracy (dashed line); ``None`` to leave it out.
    axes : pair of Axes, optional

    Returns
    -------
    matplotlib.figure.Figure

    References
    ----------
    .. [1] The paper's Fig. 5 "Hasil Accuracy Data" (94 %).
    """
    import matplotlib.pyplot as plt

    models, baseline = _split_baseline(table)
    if baseline is None:
        raise InvalidParameterError("table needs its 'all background' row (fold_metrics_table(..., baseline=...))")
    architectures = list(pd.unique(models["architecture"]))
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 2]})
    else:
        axes = list(np.ravel(axes))
        fig = axes[0].figure
    left, right = axes[0], axes[1]
    names = ["all background", *[_label(a) for a in architectures]]
    accuracy = [models.loc[models["architecture"] == a, "accuracy"].astype(float) for a in architectures]
    means = [float(baseline["accuracy"])] + [float(v.mean()) for v in accuracy]
    sds = [0.0] + [float(v.std(ddof=1)) if len(v) > 1 else 0.0 for v in accuracy]
    colors = ["white"] + [_color(a, k) for k, a in enumerate(architectures)]
    edges = [BASELINE_COLOR] + ["black"] * len(architectures)
    bars = left.bar(range(len(names)), means, yerr=sds, color=colors, edgecolor=edges, capsize=3)
    bars[0].set_hatch("///")
    for k, value in enumerate(means):
        left.text(k, value + 0.002, f"{100 * value:.1f} %", ha="center", va="bottom", fontsize=8)
    if paper_accuracy is not None:
        label = f"paper: {100 * paper_accuracy:.0f} %"
        left.axhline(paper_accuracy, color="black", linestyle="--", linewidth=1, label=label)
        left.legend(fontsize=8, loc="lower right", framealpha=0.9)
    left.set_ylim(0.0, 1.05)
    left.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
    left.set_ylabel("pixel accuracy")
    left.grid(axis="y", alpha=0.3)
    left.set_title("Pixel accuracy (the paper's Fig. 5):\npredicting no nodule at all scores as high", fontsize=9)

    metrics = ["dice", "iou", "precision", "recall"]
    plot_fold_metrics(table, metrics=metrics, ax=right)
    right.set_title("What accuracy hides: overlap with the nodule", fontsize=9)
    fig.tight_layout()
    return fig


def plot_model_comparison(
    folds: pd.DataFrame,
    *,
    first: str = "unet",
    second: str = "attention_unet",
    metrics: Sequence[str] = ("dice", "iou", "precision", "recall"),
    comparison: pd.DataFrame | None = None,
    axes=None,
):
    """U-Net vs Attention U-Net fold by fold: one line per fold joins the two models' test scores.

    Parameters
    ----------
    folds : pandas.DataFrame
        The ``folds`` table (architecture, fold, ``test_<metric>``).
    first, second : str
        The architectures (left, right).
    metrics : sequence of str
        One panel each.
    comparison : pandas.DataFrame, optional
        :func:`nodulekit.study.paired_comparison`: its p-values go in the panel titles.
    axes : sequence of Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    usable = folds[folds["status"] == "ok"]
    if axes is None:
        fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 3.2), squeeze=False)
        axes = axes[0]
    else:
        axes = list(np.ravel(axes))
        fig = axes[0].figure
    for ax, metric in zip(axes, metrics):
        column = f"test_{metric}"
        if column not in usable:
            raise InvalidParameterError(f"folds table has no column {column!r}")
        a = usable[usable["architecture"] == first].set_index("fold")[column]
        b = usable[usable["architecture"] == second].set_index("fold")[column]
        paired = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").astype(float)
        for k, (_, row) in enumerate(paired.iterrows()):
            label = "one fold" if k == 0 else None
            ax.plot([0, 1], [row["a"], row["b"]], color="0.55", marker="o", markersize=4, linewidth=1, label=label)
        ax.plot([0, 1], [paired["a"].mean(), paired["b"].mean()], color="black", linewidth=2.5, marker="s", label="mean")
        ax.set_xticks([0, 1], [_label(first), _label(second)], fontsize=8)
        ax.set_xlim(-0.3, 1.3)
        ax.set_ylabel(_METRIC_LABELS.get(metric, metric))
        title = _METRIC_LABELS.get(metric, metric)
        if comparison is not None and (comparison["metric"] == metric).any():
            row = comparison[comparison["metric"] == metric].iloc[0]
            title += f"\npaired t p = {row['p_t_test']:.2g}, Wilcoxon p = {row['p_wilcoxon']:.2g}"
        ax.set_title(title, fontsize=8.5)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_summary_table(table: pd.DataFrame, *, title: str | None = "Summary", ax=None, wrap: int = 36):
    """Draw a table (e.g. :func:`nodulekit.study.summary_table`) as a figure, one page wide.

    Parameters
    ----------
    table : pandas.DataFrame
        Index = row labels, columns = column labels, cells as text.
    title : str, optional
    ax : matplotlib Axes, optional
    wrap : int
        Wrap cell text at this many characters.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import textwrap

    import matplotlib.pyplot as plt

    def wrapped(value) -> str:
        return "\n".join(textwrap.wrap(str(value), wrap)) if str(value) else ""

    cells = [[wrapped(v) for v in row] for row in table.astype(str).to_numpy()]
    lines = [max(1, max(c.count("\n") + 1 for c in row)) if row else 1 for row in cells]
    if ax is None:
        fig, ax = plt.subplots(figsize=(3.0 + 2.6 * len(table.columns), 0.35 * sum(lines) + 1.0))
    else:
        fig = ax.figure
    ax.set_axis_off()
    drawn = ax.table(
        cellText=cells,
        rowLabels=[wrapped(i) for i in table.index],
        colLabels=[wrapped(_label(str(c))) for c in table.columns],
        loc="upper center",
        cellLoc="left",
        rowLoc="left",
    )
    drawn.auto_set_font_size(False)
    drawn.set_fontsize(7.5)
    total = sum(lines) + 1
    for (row, column), cell in drawn.get_celld().items():
        height = (lines[row - 1] if row > 0 else 1) / total * 0.95
        cell.set_height(height)
        if row == 0:
            cell.set_text_props(fontweight="bold")
            cell.set_facecolor("0.9")
    if title:
        ax.set_title(title, fontsize=11, loc="left")
    return fig
