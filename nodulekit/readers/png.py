"""Readers for 2-D crop folders: the LIDC-IDRI PNG release and the paper's image/mask folders."""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..crops import _size_pair, center_crop, consensus_mask
from ..dataset import CropSet
from ..errors import DataFormatError, InvalidParameterError, MissingDataError
from ._common import (
    IMAGE_EXTENSIONS,
    as_binary_mask,
    as_gray,
    check_inside,
    natural_key,
    read_image,
)

__all__ = ["read_lidc_release", "read_image_folder", "find_lidc_patients"]

logger = logging.getLogger(__name__)

_NODULE = re.compile(r"^nodule-(\d+)$")
_SLICE = re.compile(r"^slice-(\d+)\.png$", re.IGNORECASE)
_READER = re.compile(r"^mask-(\d+)$")


def _workers(max_workers: int | None) -> int:
    if max_workers is None:
        return min(8, (os.cpu_count() or 1) + 2)
    if not isinstance(max_workers, (int, np.integer)) or max_workers < 1:
        raise InvalidParameterError(f"max_workers must be a positive int, got {max_workers!r}")
    return int(max_workers)


def _load_slice(image_path: Path, mask_paths: Sequence[Path], crop_size, mask_threshold=None):
    """Decode one image and its masks: gray float32 image, uint8 {0,1} masks (readers, h, w),
    which masks are non-empty before any cropping, and whether the image file is 8-bit."""
    raw = read_image(image_path)
    image = as_gray(raw)
    masks = np.zeros((len(mask_paths), *image.shape), np.uint8)
    for reader, mask_path in enumerate(mask_paths):
        mask = read_image(mask_path)
        if mask.shape[:2] != image.shape:
            raise DataFormatError(
                f"mask size {mask.shape[:2]} differs from its image's size {image.shape} ({Path(image_path).name})",
                path=mask_path,
            )
        masks[reader] = as_binary_mask(mask, path=mask_path, threshold=mask_threshold)
    marked = masks.reshape(len(mask_paths), -1).any(axis=1)
    if crop_size is not None:
        image, masks = center_crop(image, crop_size, pad_value=0), center_crop(masks, crop_size, pad_value=0)
    return image, masks, marked, raw.dtype == np.uint8


def _load_pairs(
    items: Sequence[tuple[Path, Sequence[Path]]],
    n_readers: int,
    *,
    crop_size=None,
    mask_threshold: float | None = None,
    progress: bool,
    description: str,
    max_workers: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode every (image, mask files) pair in a thread pool (PNG decoding releases the GIL),
    straight into preallocated arrays.

    Returns images (n, h, w) float32, masks (n, n_readers, h, w) uint8, marked (n, n_readers) bool
    (mask non-empty before cropping) and eight_bit (n,) bool.
    """
    first = _load_slice(items[0][0], items[0][1], crop_size, mask_threshold)
    shape = first[0].shape
    images = np.empty((len(items), *shape), np.float32)
    masks = np.zeros((len(items), n_readers, *shape), np.uint8)
    marked = np.zeros((len(items), n_readers), bool)
    eight_bit = np.zeros(len(items), bool)

    def store(index: int, loaded=None) -> None:
        image, slice_masks, slice_marked, is_8bit = loaded or _load_slice(*items[index], crop_size, mask_threshold)
        if image.shape != shape:
            raise DataFormatError(
                f"image size {image.shape} differs from {Path(items[0][0]).name}'s {shape} (pass crop_size to unify)",
                path=items[index][0],
            )
        images[index] = image
        masks[index, : len(slice_masks)] = slice_masks
        marked[index, : len(slice_marked)] = slice_marked
        eight_bit[index] = is_8bit

    store(0, first)
    block_size = 64 * max_workers
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        with tqdm(total=len(items), desc=description, unit="slice", disable=not progress) as bar:
            bar.update(1)
            for start in range(1, len(items), block_size):
                stop = min(start + block_size, len(items))
                list(pool.map(store, range(start, stop)))  # list() re-raises a worker's error here
                bar.update(stop - start)
    return images, masks, marked, eight_bit


def find_lidc_patients(root: str | os.PathLike) -> list[Path]:
    """Patient folders (``LIDC-IDRI-XXXX`` holding ``nodule-N``) under ``root``, in natural order.

    ``root`` may also be one patient folder itself.

    Raises
    ------
    MissingDataError
        ``root`` does not exist or holds no patient folder with nodules.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingDataError("LIDC PNG release folder not found", path=root)
    if any(_NODULE.match(p.name) and p.is_dir() for p in root.iterdir()):
        return [root]
    patients = [
        p for p in root.iterdir() if p.is_dir() and any(_NODULE.match(n.name) for n in p.iterdir() if n.is_dir())
    ]
    if not patients:
        raise MissingDataError("no LIDC-IDRI-XXXX/nodule-N folders found (empty or not a LIDC PNG release)", path=root)
    return sorted(patients, key=natural_key)


def _select_patients(found: list[Path], patients, root: Path) -> list[Path]:
    if patients is None:
        return found
    if isinstance(patients, (int, np.integer)) and not isinstance(patients, bool):
        if patients < 1:
            raise InvalidParameterError(f"patients must be a positive count or a list of ids, got {patients}")
        return found[: int(patients)]
    if isinstance(patients, str):
        patients = [patients]
    wanted = list(dict.fromkeys(str(p) for p in patients))
    by_name = {p.name: p for p in found}
    missing = [p for p in wanted if p not in by_name]
    if missing:
        raise MissingDataError(
            f"patients not in the release: {missing[:5]}{' ...' if len(missing) > 5 else ''}", path=root
        )
    return [by_name[p] for p in wanted]


def _nodule_files(nodule: Path) -> tuple[list[int], list[Path], list[list[Path]]]:
    """Slice numbers, image files and per-reader mask files of one nodule folder (validated)."""
    images_dir = nodule / "images"
    if not images_dir.is_dir():
        raise MissingDataError("nodule folder has no images/ subfolder", path=nodule)
    slices = sorted(int(m.group(1)) for m in map(_SLICE.match, os.listdir(images_dir)) if m)
    if not slices:
        raise MissingDataError("images/ holds no slice-K.png files", path=images_dir)
    readers = sorted(int(m.group(1)) for m in (_READER.match(p.name) for p in nodule.iterdir() if p.is_dir()) if m)
    if not readers:
        raise MissingDataError("nodule folder has no mask-J/ reader folders", path=nodule)
    if readers != list(range(len(readers))):
        raise MissingDataError(f"reader folders must be mask-0..mask-{len(readers) - 1}, found {readers}", path=nodule)
    mask_files = []
    for reader in readers:
        folder = nodule / f"mask-{reader}"
        present = set(os.listdir(folder))
        lacking = [k for k in slices if f"slice-{k}.png" not in present]
        if lacking:
            raise MissingDataError(
                f"missing mask for slice(s) {lacking[:5]} (every images/slice-K.png needs mask-{reader}/slice-K.png)",
                path=folder / f"slice-{lacking[0]}.png",
            )
        mask_files.append([folder / f"slice-{k}.png" for k in slices])
    return slices, [images_dir / f"slice-{k}.png" for k in slices], mask_files


def read_lidc_release(
    root: str | os.PathLike,
    *,
    consensus: float | str = 0.5,
    patients: Iterable[str] | int | None = None,
    crop_size: int | tuple[int, int] | None = None,
    progress: bool = True,
    max_workers: int | None = None,
) -> CropSet:
    """Read the LIDC-IDRI PNG release (nodule crops with four radiologists' masks).

    Layout: ``root/LIDC-IDRI-XXXX/nodule-N/images/slice-K.png`` and
    ``root/LIDC-IDRI-XXXX/nodule-N/mask-J/slice-K.png`` (one folder per reading, J = 0..3). Images
    are 8-bit grayscale crops, min-max scaled per crop (not Hounsfield units); masks are {0, 255}.

    Parameters
    ----------
    root : path
        The release folder (holding ``LIDC-IDRI-XXXX`` folders) or one patient folder.
    consensus : float in (0, 1] or "union"
        Ground truth: a pixel is nodule when at least this fraction of the readers *who marked this
        nodule* drew it (a reader marked the nodule when their mask is non-empty on any of its
        slices) — pylidc's ``consensus(clevel)``. ``"union"``: any reader.
    patients : list of str or int, optional
        Patient ids to read (e.g. ``["LIDC-IDRI-0001"]``), or the first N patients in order.
        Default: all.
    crop_size : int or (int, int), optional
        Centre-crop (or pad) every image and mask to this size (e.g. 64 for the paper's crops).
        Default: as stored (128x128).
    progress : bool
        Show a progress bar.
    max_workers : int, optional
        Threads decoding PNGs (default: CPU count + 2, at most 8).

    Returns
    -------
    CropSet
        ``units="uint8"``; ``masks`` the consensus; ``reader_masks`` of shape (n, 4, h, w) in the
        release's mask-J order (mask-J is not the same radiologist from one nodule to the next).
        The table has ``patient_id`` ("LIDC-IDRI-0001"), ``nodule_id``
        ("LIDC-IDRI-0001/nodule-0"), ``slice_index`` (K), ``n_readers`` (readers who marked the
        nodule), ``readers_on_slice``, ``source`` (image path); spacings are NaN (not stored).

    Raises
    ------
    MissingDataError
        No patient folders, a requested patient absent, a nodule without images or mask folders,
        or a slice without its mask.
    DataFormatError
        An unreadable or truncated PNG, a mask whose size differs from its image, a non-binary
        mask, crops of different sizes without ``crop_size``, or a file that resolves outside
        ``root`` (a symbolic link; see :func:`nodulekit.safety.contained`).
    InvalidParameterError
        Bad ``consensus``, ``patients``, ``crop_size`` or ``max_workers``.

    References
    ----------
    Armato et al., "The Lung Image Database Consortium (LIDC) and Image Database Resource
    Initiative (IDRI)", Med. Phys. 38:915-931, 2011.
    """
    root = Path(root)
    consensus_mask(np.zeros((1, 1, 1), np.uint8), level=consensus)  # validates the level early
    if crop_size is not None:
        _size_pair(crop_size)
    workers = _workers(max_workers)
    selected = _select_patients(find_lidc_patients(root), patients, root)

    records, image_paths, mask_paths, nodule_slices = [], [], [], []
    n_reader_folders = 0
    for patient in selected:
        nodules = sorted((p for p in patient.iterdir() if p.is_dir() and _NODULE.match(p.name)), key=natural_key)
        for nodule in nodules:
            slices, images, masks = _nodule_files(nodule)
            n_reader_folders = max(n_reader_folders, len(masks))
            start = len(image_paths)
            for position, (k, image) in enumerate(zip(slices, images)):
                records.append(
                    {
                        "patient_id": patient.name,
                        "nodule_id": f"{patient.name}/{nodule.name}",
                        "slice_index": k,
                        "source": str(image),
                    }
                )
                image_paths.append(image)
                mask_paths.append([reader_files[position] for reader_files in masks])
            nodule_slices.append((start, len(image_paths)))

    check_inside(root, [*image_paths, *(path for paths in mask_paths for path in paths)])
    images, reader_masks, marked, _ = _load_pairs(
        list(zip(image_paths, mask_paths)),
        n_reader_folders,
        crop_size=crop_size,
        progress=progress,
        description="LIDC PNG",
        max_workers=workers,
    )
    n = len(images)

    n_readers = np.zeros(n, np.int64)
    for start, stop in nodule_slices:
        n_readers[start:stop] = marked[start:stop].any(axis=0).sum()
    table = pd.DataFrame.from_records(records)
    table.insert(3, "pixel_spacing_mm", np.nan)
    table.insert(4, "slice_spacing_mm", np.nan)
    table.insert(5, "n_readers", n_readers)
    table["readers_on_slice"] = marked.sum(axis=1)
    masks = consensus_mask(reader_masks, level=consensus, n_readers=n_readers)
    logger.info("read %d slices of %d nodules from %d patients in %s", n, len(nodule_slices), len(selected), root)
    return CropSet(images=images, masks=masks, table=table, reader_masks=reader_masks, units="uint8")



def _files_by_stem(folder: Path, what: str) -> dict[str, Path]:
    """``{stem: path}`` of the image files in ``folder``; refuses two files with one stem."""
    found: dict[str, Path] = {}
    hidden = []
    for path in sorted(folder.iterdir(), key=natural_key):
        if path.name.startswith("."):  # .DS_Store, macOS "._name.png" resource forks, editor files
            hidden.append(path.name)
            continue
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            if path.stem in found:
                raise DataFormatError(
                    f"two {what} files share the name {path.stem!r}: {found[path.stem].name}, {path.name}", path=folder
                )
            found[path.stem] = path
    if hidden:
        logger.info("%s: ignored %d hidden file(s), e.g. %s", folder, len(hidden), hidden[0])
    return found


def read_image_folder(
    root: str | os.PathLike,
    *,
    images: str = "images",
    masks: str = "masks",
    mask_threshold: float | None = None,
    patient_pattern: str | None = None,
    crop_size: int | tuple[int, int] | None = None,
    progress: bool = True,
    max_workers: int | None = None,
) -> CropSet:
    """Read a folder of image/mask pairs, the paper's own format.

    ``root/images/<name>.<png|jpg|jpeg|tif|tiff|bmp>`` with ``root/masks/<name>.<any of those>``
    (same name, any image extension). Images may be RGB or gray, 8- or 16-bit; RGB is converted to
    gray with luminance weights, keeping the value scale. An optional ``root/table.csv`` with a
    ``name`` column (the file name without extension) supplies table columns such as
    ``patient_id``, ``nodule_id``, ``slice_index``, ``pixel_spacing_mm`` (it is what
    ``nodulekit.phantom.write_image_folder`` writes).

    Parameters
    ----------
    root : path
        The folder holding ``images/`` and ``masks/``.
    images, masks : str
        Names of the two subfolders.
    mask_threshold : float, optional
        Masks must be binary (0 and one other value) unless a threshold is given; then pixels
        ``> mask_threshold`` are nodule (for lossy JPEG masks).
    patient_pattern : str, optional
        Regular expression whose first group, searched in the file name, is the patient id (e.g.
        ``r"(LIDC-IDRI-\\d{4})"``). Without it (and without ``table.csv``) every image is its own
        patient, so patient-level splits cannot see that two crops share a patient: a warning
        says so.
    crop_size : int or (int, int), optional
        Centre-crop (or pad) every pair to this size; needed when the images differ in size.
    progress : bool
        Show a progress bar.
    max_workers : int, optional
        Threads decoding images.

    Returns
    -------
    CropSet
        ``units="uint8"`` for 8-bit images, ``"float"`` for 16-bit or floating-point ones.

    Raises
    ------
    MissingDataError
        ``root``, ``images/`` or ``masks/`` absent, no image files, or an image without its mask.
    DataFormatError
        An unreadable or truncated file, an image/mask size mismatch, a non-binary mask, images of
        different sizes (without ``crop_size``) or of mixed bit depth, a bad ``table.csv``, or a
        file that resolves outside ``root`` (a symbolic link).

    Notes
    -----
    Recoveries (logged): hidden files (``.DS_Store``, macOS ``._name.png``) and files with other
    endings are ignored; masks without an image are ignored with a warning. RGBA images lose their
    alpha channel, palette images are expanded to RGB, and RGB becomes gray; 16-bit images keep
    their values (``units="float"``). Masks may be {0, 1}, {0, 255} or any other single
    foreground value.
    """
    root = Path(root)
    workers = _workers(max_workers)
    if crop_size is not None:
        _size_pair(crop_size)
    image_dir, mask_dir = root / images, root / masks
    for folder, what in ((root, "image folder"), (image_dir, "images folder"), (mask_dir, "masks folder")):
        if not folder.is_dir():
            raise MissingDataError(f"{what} not found (expected root/{images}/ and root/{masks}/)", path=folder)
    image_files = _files_by_stem(image_dir, "image")
    if not image_files:
        raise MissingDataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the folder", path=image_dir)
    mask_files = _files_by_stem(mask_dir, "mask")
    lacking = [stem for stem in image_files if stem not in mask_files]
    if lacking:
        raise MissingDataError(
            f"{len(lacking)} image(s) without a mask, e.g. {image_files[lacking[0]].name} needs "
            f"{masks}/{lacking[0]}.<ext>",
            path=mask_dir / f"{lacking[0]}.png",
        )
    extra = [stem for stem in mask_files if stem not in image_files]
    if extra:
        logger.warning(
            "%s: ignored %d mask(s) without an image, e.g. %s", mask_dir, len(extra), mask_files[extra[0]].name
        )
    stems = list(image_files)
    check_inside(root, [*image_files.values(), *(mask_files[stem] for stem in stems)])
    image_array, mask_array, _, eight_bit = _load_pairs(
        [(image_files[stem], [mask_files[stem]]) for stem in stems],
        1,
        crop_size=crop_size,
        mask_threshold=mask_threshold,
        progress=progress,
        description="image folder",
        max_workers=workers,
    )
    if eight_bit.any() and not eight_bit.all():
        raise DataFormatError(
            "the folder mixes 8-bit and 16-bit/float images; convert them to one depth", path=image_dir
        )

    table = _image_folder_table(root, stems, image_files, patient_pattern)
    units = "uint8" if eight_bit.all() else "float"
    logger.info("read %d image/mask pairs from %s", len(stems), root)
    return CropSet(images=image_array, masks=mask_array[:, 0], table=table, units=units)


def _image_folder_table(root: Path, stems: list[str], image_files: dict, patient_pattern: str | None) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "name": stems,
            "patient_id": stems,
            "nodule_id": stems,
            "slice_index": 0,
            "pixel_spacing_mm": np.nan,
            "slice_spacing_mm": np.nan,
            "n_readers": 1,
            "source": [str(image_files[s]) for s in stems],
        }
    )
    csv_path = root / "table.csv"
    if csv_path.is_file():
        try:
            extra = pd.read_csv(csv_path, dtype={"name": str, "patient_id": str, "nodule_id": str})
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise DataFormatError(f"unreadable table ({exc})", path=csv_path) from exc
        if "name" not in extra.columns:
            raise DataFormatError("table.csv needs a 'name' column (image file name without extension)", path=csv_path)
        extra = extra.drop(columns=[c for c in ("source",) if c in extra.columns]).drop_duplicates("name")
        missing = sorted(set(stems) - set(extra["name"]))
        if missing:
            raise DataFormatError(
                f"table.csv has no row for {len(missing)} image(s), e.g. {missing[0]!r}", path=csv_path
            )
        table = table[[c for c in table.columns if c == "name" or c not in extra.columns]].merge(
            extra, on="name", how="left"
        )
        return table
    if patient_pattern is not None:
        try:
            pattern = re.compile(patient_pattern)
        except re.error as exc:
            raise InvalidParameterError(f"patient_pattern is not a regular expression ({exc})") from exc
        patients = []
        for stem in stems:
            match = pattern.search(stem)
            if match is None:
                raise DataFormatError(
                    f"patient_pattern {patient_pattern!r} does not match the file name", path=image_files[stem]
                )
            patients.append(match.group(1) if pattern.groups else match.group(0))
        table["patient_id"] = patients
        table["nodule_id"] = [f"{p}/{s}" for p, s in zip(patients, stems)]
    else:
        logger.warning(
            "%s: no table.csv and no patient_pattern: each of the %d images counts as its own patient, so "
            "patient-level splits cannot keep one patient's crops together",
            root,
            len(stems),
        )
    return table
