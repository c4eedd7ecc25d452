"""Files: the segmenter folder (read and written), any input as a stack of slices, results on disk."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..dataset import CropSet, Volume
from ..detection import CLASSIFIER_FILE, load_classifier
from ..dicom_seg import write_dicom_seg
from ..errors import DataFormatError, InvalidParameterError, MissingDataError, ModelFileError
from ..model_names import accepted_forms, resolve_model
from ..overlay import overlay_rgb
from ..patch_scorer import PatchScorer
from ..preprocessing import Pipeline
from ..safety import load_model
from ..utils import save_atomic, write_json
from .measure import match_nodules
from .result import SegmentationResult
from .threads import map_in_threads

__all__ = ["MODEL_FILE", "PIPELINE_FILE", "SETTINGS_FILE", "as_stack", "read_segmenter_files", "write_segmenter_files", "write_segmentation"]

logger = logging.getLogger(__name__)

#: File names inside a saved segmenter folder.
MODEL_FILE = "model.keras"
PIPELINE_FILE = "preprocessing.json"
SETTINGS_FILE = "segmenter.json"


def as_stack(data: Any, spacing: Sequence[float] | None) -> tuple[np.ndarray, tuple[float, float, float], str, bool]:
    """(images (n, rows, columns), spacing (slice, row, column), units, connect_slices) for any input."""
    nan = float("nan")
    if isinstance(data, Volume):
        return data.hu, tuple(float(s) for s in data.spacing), "HU", True
    if isinstance(data, CropSet):
        pixel = nan
        if "pixel_spacing_mm" in data.table and len(data.table):
            known = pd.to_numeric(data.table["pixel_spacing_mm"], errors="coerce").dropna()
            if len(known) and np.allclose(known, known.iloc[0]):
                pixel = float(known.iloc[0])
        if spacing is not None:
            pixel = float(list(spacing)[-1])
        return data.images, (nan, pixel, pixel), data.units, False
    array = np.asarray(data, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise DataFormatError(f"expected a Volume, a CropSet or a 2-D/3-D array, got {type(data).__name__} of shape {getattr(data, 'shape', None)}")
    values = (nan, nan, nan) if spacing is None else tuple(float(s) for s in spacing)
    if len(values) == 2:
        values = (nan, *values)
    if len(values) != 3:
        raise InvalidParameterError(f"spacing must be 2 or 3 mm values, got {spacing!r}")
    units = "HU" if float(np.nanmin(array)) < -500 else "float"
    return array, values, units, True


def read_segmenter_files(path: str | os.PathLike | None) -> tuple[Any, Pipeline | None, dict]:
    """The model, the preprocessing pipeline and the saved :class:`~nodulekit.inference.Segmenter` options of a model.

    Parameters
    ----------
    path : str, path or None
        Anything :func:`nodulekit.model_names.resolve_model` accepts (see
        :func:`~nodulekit.inference.load_segmenter`).

    Returns
    -------
    model : keras.Model
    pipeline : nodulekit.preprocessing.Pipeline or None
        ``None`` when the model has no ``preprocessing.json`` (the paper's per-image z-score).
    options : dict
        Segmenter keyword options: those saved in ``segmenter.json``, ``window`` (from the model's
        input size when not saved), ``metadata["source"]`` and ``classifier`` (the second stage
        from ``classifier.json``, or None).

    Raises
    ------
    MissingDataError
        When ``path`` is neither a shipped model's name nor an existing file or folder, or holds no model.
    ModelFileError
        When the model file or the pipeline cannot be loaded.
    """
    path = resolve_model(path)
    settings: dict = {}
    classifier = None
    if path.is_dir():
        if (path / SETTINGS_FILE).is_file():
            model_file = path / MODEL_FILE
            settings = json.loads((path / SETTINGS_FILE).read_text())
            pipeline_file = path / PIPELINE_FILE
            if (path / CLASSIFIER_FILE).is_file():
                classifier = load_classifier(path)
                if getattr(classifier, "patch_fusion", None) is not None:
                    classifier.patch_scorer = PatchScorer.load(path)
        else:
            model_file, pipeline_file, settings = _from_run_folder(path)
    else:
        model_file = path
        pipeline_file = path.with_name(PIPELINE_FILE)
    model = load_model(model_file)  # nodulekit's losses and metrics register as Keras loads
    pipeline = _load_pipeline(pipeline_file) if pipeline_file is not None and Path(pipeline_file).is_file() else None
    if pipeline is None:
        logger.info("%s: no preprocessing.json found; using the paper's per-image z-score", path)
    options = {k: settings[k] for k in ("window", "units", "threshold", "mode", "overlap", "metadata", "precision") if k in settings}
    if "window" not in options:
        side = tuple(model.input_shape)[1]
        options["window"] = int(side) if side else 64
    options.setdefault("metadata", {})["source"] = str(path)
    options["classifier"] = classifier
    return model, pipeline, options


def write_segmenter_files(folder: str | os.PathLike, *, model: Any = None, pipeline: Any, settings: dict, classifier: Any) -> None:
    """Write a segmenter folder: ``model.keras`` (when ``model`` is given), ``preprocessing.json``, ``segmenter.json`` and ``classifier.json``.

    Every file is written atomically; ``preprocessing.json`` and ``classifier.json`` are removed
    when ``pipeline`` or ``classifier`` is None, so that a stale one is not read back.
    """
    folder = Path(folder)
    if model is not None:
        save_atomic(model.save, folder / MODEL_FILE)
    if pipeline is not None:
        write_json(folder / PIPELINE_FILE, pipeline.get_config())
    else:
        (folder / PIPELINE_FILE).unlink(missing_ok=True)
    write_json(folder / SETTINGS_FILE, settings)
    if classifier is not None:
        classifier.save(folder)
    else:
        (folder / CLASSIFIER_FILE).unlink(missing_ok=True)


def _load_pipeline(pipeline_file: Path) -> Any:
    try:
        config = json.loads(Path(pipeline_file).read_text())
        if isinstance(config, dict) and "pipeline" in config and "steps" not in config:
            config = config["pipeline"]
        return Pipeline.from_config(config)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"unreadable preprocessing pipeline ({exc})", path=pipeline_file) from exc


def _from_run_folder(folder: Path) -> tuple[Path, Path | None, dict]:
    """(model file, pipeline file, settings) of a training run folder."""
    candidates = sorted(folder.rglob("*.keras"))
    if not candidates:
        raise MissingDataError(f"no .keras model in this folder; a model is {accepted_forms()}", path=folder)
    preferred = [p for p in candidates if p.stem in ("best", "model", "final")] or candidates
    model_file = min(preferred, key=lambda p: (len(p.relative_to(folder).parts), str(p)))
    pipelines = sorted(folder.rglob(PIPELINE_FILE))
    pipeline_file = pipelines[0] if pipelines else None
    return model_file, pipeline_file, {}


def _png(image: np.ndarray) -> bytes:
    """The PNG file of a uint8 image, as ``PIL.Image.save`` writes it."""
    from PIL import Image

    encoded = io.BytesIO()
    Image.fromarray(image).save(encoded, format="PNG")
    return encoded.getvalue()


def write_segmentation(
    result: SegmentationResult,
    folder: str | os.PathLike,
    *,
    names: Sequence[str] | None = None,
    truth: np.ndarray | None = None,
    overlays: str = "nodules",
    nifti: bool = True,
    probabilities: bool = False,
    source: Volume | None = None,
    model_name: str = "nodulekit",
    progress: bool = True,
) -> dict[str, Any]:
    """Write a segmentation to ``folder``: masks, volume, overlays, nodule table.

    Files: ``masks/<name>.png`` (0/255, one per slice or image), ``mask.npy`` (uint8, the whole
    stack), ``labels.npy`` (int32 nodule ids), ``mask.nii.gz`` (volumes only, with the voxel
    spacing; SimpleITK), ``overlays/<name>.png`` (slice with red contours and green boxes; yellow
    ground-truth contours when ``truth`` is given), ``nodules.csv``, ``truth_nodules.csv`` (when
    ``truth`` is given, see :func:`match_nodules`), optionally ``probabilities.npy`` (float16) and,
    when ``source`` is a DICOM series, ``nodules.seg.dcm``: a DICOM SEG with one segment per ranked
    nodule that opens on the series in 3D Slicer or OHIF (:func:`nodulekit.dicom_seg.write_dicom_seg`).

    Parameters
    ----------
    result : SegmentationResult
    folder : path
        Output folder (created).
    names : sequence of str, optional
        File stem per slice/image; default ``slice-0000``, ``slice-0001``, ...
    truth : ndarray, optional
        Ground-truth mask, same shape as ``result.mask``.
    overlays : {"nodules", "all", "none"}
        Overlay PNGs for the slices with a nodule (or ground truth), for every slice, or none.
    nifti, probabilities : bool
        Also write ``mask.nii.gz`` / ``probabilities.npy``.
    source : Volume, optional
        The volume that was segmented; a DICOM series (``meta["format"] == "dicom"``) also gets
        ``nodules.seg.dcm``. A series that cannot carry a SEG (e.g. its headers lack the Frame of
        Reference UID that the SEG IOD requires) gets a warning instead; the other files stand.
    model_name : str
        The model named in the DICOM SEG's algorithm identification.
    progress : bool
        Progress bar over slices.

    Returns
    -------
    dict
        ``{"files": {...}, "n_nodules": int, "truth": [...] or None}``, also the content of the
        summary the command line writes.
    """
    from PIL import Image

    if overlays not in ("nodules", "all", "none"):
        raise InvalidParameterError(f"overlays must be 'nodules', 'all' or 'none', got {overlays!r}")
    folder = Path(folder)
    count = len(result.mask)
    names = [f"slice-{k:04d}" for k in range(count)] if names is None else [str(n) for n in names]
    if len(names) != count or len(set(names)) != count:
        raise InvalidParameterError(f"names must be {count} distinct strings, got {len(names)} ({len(set(names))} distinct)")
    if truth is not None:
        truth = np.asarray(truth)
        truth = truth[None] if truth.ndim == 2 else truth
        if truth.shape != result.mask.shape:
            raise InvalidParameterError(f"truth shape {truth.shape} differs from the result's {result.mask.shape}")
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {"masks": "masks/"}
    np.save(folder / "mask.npy", result.mask.astype(np.uint8, copy=False))
    np.save(folder / "labels.npy", result.labels.astype(np.int32, copy=False))  # no copy when already int32 (0.63 GB on 600 slices)
    files.update({"mask_npy": "mask.npy", "labels_npy": "labels.npy"})
    if probabilities:
        np.save(folder / "probabilities.npy", result.probabilities.astype(np.float16))
        files["probabilities_npy"] = "probabilities.npy"
    if nifti and result.info.get("connect_slices", True) and count > 1:
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(result.mask.astype(np.uint8, copy=False))
        spacing = [s if np.isfinite(s) else 1.0 for s in result.spacing]
        image.SetSpacing((spacing[2], spacing[1], spacing[0]))
        sitk.WriteImage(image, str(folder / "mask.nii.gz"), useCompression=True)
        files["mask_nifti"] = "mask.nii.gz"
    if overlays != "none":
        (folder / "overlays").mkdir(exist_ok=True)
        files["overlays"] = "overlays/"
    empty_png = _png(np.zeros(result.mask.shape[1:], np.uint8))  # most slices of a scan have no nodule: their PNG is encoded once
    bar = tqdm(total=count, desc="writing", unit="slice", disable=not progress)

    def write_slice(index: int) -> int:
        """The slice's mask PNG and, when asked for, its overlay; 1 when an overlay was written."""
        marked = bool(result.mask[index].any())
        png = _png((result.mask[index] > 0).astype(np.uint8) * 255) if marked else empty_png
        (folder / "masks" / f"{names[index]}.png").write_bytes(png)
        interesting = marked or (truth is not None and truth[index].any())
        drawn = overlays == "all" or (overlays == "nodules" and interesting)
        if drawn:
            rgb = overlay_rgb(result.images[index], result.mask[index], truth=None if truth is None else truth[index])
            Image.fromarray(rgb).save(folder / "overlays" / f"{names[index]}.png")
        bar.update()
        return int(drawn)

    written = sum(map_in_threads(write_slice, range(count)))  # Pillow's PNG encoder releases the GIL: the same files, on the usable cores
    bar.close()
    table = result.nodules.copy()
    table.insert(1, "slice_name", [names[int(i)] for i in table["largest_slice"]])
    table.to_csv(folder / "nodules.csv", index=False, float_format="%.4g")
    files["nodules_csv"] = "nodules.csv"
    matched = None
    if truth is not None:
        matched = match_nodules(result, truth)
        matched.to_csv(folder / "truth_nodules.csv", index=False, float_format="%.4g")
        files["truth_csv"] = "truth_nodules.csv"
    if isinstance(source, Volume) and source.meta.get("format") == "dicom":
        try:
            write_dicom_seg(result.labels, source, folder / "nodules.seg.dcm", nodules=result.nodules, model_name=model_name)
            files["dicom_seg"] = "nodules.seg.dcm"
        except DataFormatError as error:  # the SEG is an extra: the other results stand without it
            logger.warning("no DICOM SEG written: %s", error)
    return {
        "files": files,
        "n_nodules": int(len(result.nodules)),
        "n_overlays": written,
        "truth": None if matched is None else matched.to_dict(orient="records"),
    }
