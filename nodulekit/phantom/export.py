"""Write crops in the file formats nodulekit's readers accept.

* :func:`write_image_folder` — the paper's own layout: ``root/images/<name>.png`` (RGB, like the
  paper's colour exports) and ``root/masks/<name>.png`` (0/255), read back by
  :func:`nodulekit.readers.read_image_folder`.
* :func:`write_lidc_release` — the LIDC-IDRI PNG release layout
  ``root/LIDC-IDRI-XXXX/nodule-N/images/slice-K.png`` and ``.../mask-J/slice-K.png``, 8-bit, each
  crop min-max scaled, masks {0, 255}, read back by :func:`nodulekit.readers.read_lidc_release`.

Both write a ``crops.csv`` beside the images with the CropSet table (kind, diameter, ...), so
nothing the generator knew is lost.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..dataset import CropSet
from ..errors import InvalidParameterError, RunFolderError

__all__ = ["to_uint8", "write_image_folder", "write_lidc_release"]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Min-max scale each crop to 0..255 (uint8), as the LIDC PNG release and the paper's exports do."""
    images = np.asarray(images, dtype=np.float64)
    low = images.min(axis=(-2, -1), keepdims=True)
    span = images.max(axis=(-2, -1), keepdims=True) - low
    scaled = np.where(span > 0, (images - low) / np.where(span > 0, span, 1.0), 0.0)
    return np.round(scaled * 255.0).astype(np.uint8)


def _check(cropset: CropSet, root) -> Path:
    if not isinstance(cropset, CropSet):
        raise InvalidParameterError(f"cropset must be a nodulekit CropSet, got {type(cropset).__name__}")
    if not len(cropset):
        raise InvalidParameterError("cropset is empty: nothing to write")
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"cannot create the output folder ({exc.strerror})", path=root) from exc
    return root


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _save_mask(mask: np.ndarray, path: Path) -> None:
    """A mask as an 8-bit PNG with values {0, 255}, as both layouts store them."""
    _save_png((mask > 0).astype(np.uint8) * 255, path)


def _write_table(table: pd.DataFrame, column: str, values: list[str], root: Path) -> None:
    """``crops.csv`` beside the images: the CropSet table with ``column`` (where each crop went) first."""
    table = table.copy()
    table.insert(0, column, values)
    table.to_csv(root / "crops.csv", index=False)


def write_image_folder(cropset: CropSet, root: str | os.PathLike, *, rgb: bool = True) -> Path:
    """Write crops as ``root/images/<name>.png`` and masks as ``root/masks/<name>.png``.

    Parameters
    ----------
    cropset : CropSet
        Any units; each crop is min-max scaled to 0..255.
    root : path
        Output folder (created).
    rgb : bool
        Save images as 3-channel RGB PNGs with equal channels (the paper's colour exports);
        ``False`` saves 8-bit grayscale.

    Returns
    -------
    pathlib.Path
        ``root``.

    Raises
    ------
    InvalidParameterError
        ``cropset`` is not a CropSet or is empty.
    RunFolderError
        ``root`` cannot be created.
    """
    root = _check(cropset, root)
    images = to_uint8(cropset.images)
    names = []
    for index, row in cropset.table.iterrows():
        slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{row['nodule_id']}-slice-{row['slice_index']}").strip("-")
        name = f"{index:05d}_{slug}"
        names.append(name)
        image = np.repeat(images[index][..., None], 3, axis=-1) if rgb else images[index]
        _save_png(image, root / "images" / f"{name}.png")
        _save_mask(cropset.masks[index], root / "masks" / f"{name}.png")
    _write_table(cropset.table, "name", names, root)
    return root


def write_lidc_release(cropset: CropSet, root: str | os.PathLike) -> Path:
    """Write crops in the LIDC-IDRI PNG release layout, with one mask folder per reader.

    Patients become ``LIDC-IDRI-0001``, ``LIDC-IDRI-0002``, ... in order of first appearance (the
    original ids are in ``crops.csv``); nodules become ``nodule-0``, ``nodule-1``, ... per patient;
    ``slice-K`` keeps each crop's ``slice_index``. Reader masks come from ``reader_masks`` (the
    exact/consensus ``masks`` as ``mask-0`` when there are none).

    Parameters
    ----------
    cropset : CropSet
        At most 9,999 patients.
    root : path
        Output folder (created).

    Returns
    -------
    pathlib.Path
        ``root``.

    Raises
    ------
    InvalidParameterError
        Not a CropSet, empty, more than 9,999 patients, or two crops with the same nodule and slice.
    RunFolderError
        ``root`` cannot be created.
    """
    root = _check(cropset, root)
    table = cropset.table
    patients = list(dict.fromkeys(table["patient_id"]))
    if len(patients) > 9999:
        raise InvalidParameterError(f"write_lidc_release holds at most 9999 patients, got {len(patients)}")
    if table.duplicated(["nodule_id", "slice_index"]).any():
        raise InvalidParameterError("two crops share a nodule_id and slice_index; the LIDC layout needs them unique")
    if (table["slice_index"].astype(int) < 0).any():
        raise InvalidParameterError("slice_index must be >= 0 for the LIDC layout (slice-K.png)")
    patient_folder = {p: f"LIDC-IDRI-{i + 1:04d}" for i, p in enumerate(patients)}
    nodule_folder: dict[str, str] = {}
    per_patient: dict[str, int] = {}
    for patient, nodule in zip(table["patient_id"], table["nodule_id"]):
        if nodule not in nodule_folder:
            nodule_folder[nodule] = f"nodule-{per_patient.get(patient, 0)}"
            per_patient[patient] = per_patient.get(patient, 0) + 1
    readers = cropset.reader_masks if cropset.reader_masks is not None else cropset.masks[:, None]
    images = to_uint8(cropset.images)
    folders = []
    for index, row in table.iterrows():
        folder = root / patient_folder[row["patient_id"]] / nodule_folder[row["nodule_id"]]
        name = f"slice-{int(row['slice_index'])}.png"
        _save_png(images[index], folder / "images" / name)
        for reader in range(readers.shape[1]):
            _save_mask(readers[index, reader], folder / f"mask-{reader}" / name)
        folders.append(str(folder.relative_to(root)))
    _write_table(table, "folder", folders, root)
    return root
