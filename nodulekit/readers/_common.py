"""Helpers shared by the readers: image decoding with clear errors, binary masks (the readers'
consensus is :func:`nodulekit.crops.consensus_mask`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import DataFormatError, InvalidParameterError, MissingDataError
from ..safety import check_image_pixels, contained

__all__ = [
    "read_image",
    "as_gray",
    "as_binary_mask",
    "natural_key",
    "check_inside",
    "IMAGE_EXTENSIONS",
]

#: File endings the image readers accept (lower case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def natural_key(name: str | os.PathLike) -> tuple:
    """Sort key that orders ``slice-2`` before ``slice-10`` (numbers compared as numbers)."""
    parts = re.split(r"(\d+)", Path(name).name)
    return tuple(int(part) if part.isdigit() else part for part in parts)


def check_inside(root: str | os.PathLike, paths: Iterable[str | os.PathLike]) -> None:
    """Refuse any of ``paths`` that resolves outside the data-set folder ``root``.

    A folder below ``root`` is known to stay inside when its parent does and it is not a symbolic
    link, so each folder costs one ``lstat``; a file is resolved only when it is a symbolic link or
    names ``..``. Checking the 15,815 files of the LIDC PNG release takes about 0.3 s.

    Raises
    ------
    DataFormatError
        Naming the first path that leaves ``root`` (see :func:`nodulekit.safety.contained`).
    """
    # The paths were found under ``root`` relative to the working directory (``root`` may itself be
    # relative, e.g. "../data"): make both absolute so ``contained`` does not join them twice. The
    # containment test still resolves links and ``..`` on the absolute path.
    root = os.path.abspath(os.fspath(root))
    paths = [os.path.join(os.getcwd(), os.fspath(p)) if not os.path.isabs(os.fspath(p)) else os.fspath(p) for p in paths]
    top = os.path.normpath(root)
    verified = {top}

    def check_folder(folder: str) -> None:
        if folder in verified:
            return
        parent = os.path.dirname(folder)
        if parent != folder and parent.startswith(top):
            check_folder(parent)
            if not os.path.islink(folder) and os.path.basename(folder) not in ("..", "."):
                verified.add(folder)
                return
        contained(root, folder)
        verified.add(folder)

    for path in paths:
        path = os.path.normpath(os.fspath(path)) if ".." not in os.fspath(path) else os.fspath(path)
        check_folder(os.path.dirname(path))
        if os.path.islink(path) or ".." in path:
            contained(root, path)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode one image file (PNG, JPEG, TIFF, BMP) to an array, refusing broken files.

    Parameters
    ----------
    path : path
        The image file.

    Returns
    -------
    ndarray
        ``(rows, columns)`` for grayscale or ``(rows, columns, channels)`` for colour, in the file's
        own integer type (uint8, uint16, ...) or float for floating-point TIFFs. Alpha is dropped
        (RGBA -> RGB, gray + alpha -> gray); palette, CMYK and YCbCr images are converted to RGB;
        1-bit images become uint8 {0, 1}.

    Raises
    ------
    MissingDataError
        The file does not exist.
    DataFormatError
        The file is empty, not a decodable image, truncated, larger than
        :data:`nodulekit.safety.MAX_IMAGE_PIXELS` (checked before decoding: decompression bombs),
        not 2-D gray/RGB, or holds NaN/infinite pixels.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DataFormatError("empty file (0 bytes), not an image", path=path)
        with Image.open(path) as image:
            check_image_pixels(image.size, path=path)  # before decoding: refuses decompression bombs
            image.load()
            mode = image.mode
            if mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
                mode = image.mode
            if mode in ("LA", "La"):
                image = image.convert("L")
                mode = image.mode
            elif mode in ("PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBa"):  # colour spaces -> RGB
                image = image.convert("RGB")
                mode = image.mode
            array = np.asarray(image)
    except FileNotFoundError as exc:
        raise MissingDataError("image file not found", path=path) from exc
    except UnidentifiedImageError as exc:
        array = _read_with_tifffile(path, exc)
        mode = ""
    except Image.DecompressionBombError as exc:
        raise DataFormatError(f"refused: {exc}", path=path) from exc
    except DataFormatError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated data, broken chunks, bad headers
        raise DataFormatError(f"unreadable or truncated image ({exc})", path=path) from exc
    except Exception as exc:  # noqa: BLE001 - decoders of damaged files raise struct.error, IndexError, ...
        raise DataFormatError(f"damaged image ({type(exc).__name__}: {exc})", path=path) from exc
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if mode in ("I;16", "I;16B", "I;16L") and array.dtype != np.uint16:
        array = array.astype(np.uint16)
    if array.ndim == 3 and array.shape[-1] == 4:  # RGBA / CMYK: keep the colour channels
        array = array[..., :3]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3) or min(array.shape[:2]) == 0:
        raise DataFormatError(f"expected a 2-D grayscale or RGB image, got an array of shape {array.shape}", path=path)
    if array.dtype.kind not in "uif":
        raise DataFormatError(f"unsupported pixel type {array.dtype} (expected integer or float pixels)", path=path)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataFormatError(f"{bad} pixel(s) are NaN or infinite", path=path)
    return array


def _read_with_tifffile(path: Path, error: Exception) -> np.ndarray:
    """Float or unusual TIFFs that Pillow cannot open."""

    if path.suffix.lower() not in (".tif", ".tiff"):
        raise DataFormatError(f"not a readable image ({error})", path=path) from error
    try:
        import tifffile

        with tifffile.TiffFile(path) as tiff:
            if not tiff.series:
                raise ValueError("no image in the file")
            check_image_pixels(tiff.series[0].shape, path=path)
            array = np.asarray(tiff.series[0].asarray())
    except DataFormatError:
        raise
    except Exception as exc:  # tifffile raises many types for broken files
        raise DataFormatError(f"unreadable or truncated TIFF ({exc})", path=path) from exc
    return np.squeeze(array)


def as_gray(array: np.ndarray) -> np.ndarray:
    """Grayscale version of an image array, keeping its intensity scale (float32).

    RGB is converted with :func:`skimage.color.rgb2gray`'s luminance weights
    (0.2125 R + 0.7154 G + 0.0721 B) on the raw values, so 0..255 stays 0..255.
    """
    from skimage.color import rgb2gray

    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 3:
        return rgb2gray(array.astype(np.float32)).astype(np.float32)
    return array.astype(np.float32)


def as_binary_mask(
    array: np.ndarray, *, path: str | os.PathLike | None = None, threshold: float | None = None
) -> np.ndarray:
    """A mask image as uint8 {0, 1}, refusing masks that are not binary.

    Parameters
    ----------
    array : ndarray
        Decoded mask, gray ``(rows, columns)`` or RGB ``(rows, columns, 3)`` (any channel on counts).
    path : path, optional
        The mask file, named in the error.
    threshold : float, optional
        When given, pixels ``> threshold`` are foreground and other values are accepted (use for
        lossy JPEG masks). When None (default), the mask must hold 0 and at most one other value
        (e.g. {0, 255} or {0, 1}).

    Raises
    ------
    DataFormatError
        The mask holds more than two values and no ``threshold`` was given.
    """
    array = np.asarray(array)
    if array.ndim == 3:
        array = array.max(axis=-1)
    if threshold is not None:
        return (array > threshold).astype(np.uint8)
    foreground = array != 0
    values = array[foreground]
    if values.size and (values != values.flat[0]).any():
        distinct = np.unique(array)
        shown = ", ".join(str(v) for v in distinct[:6]) + (", ..." if distinct.size > 6 else "")
        raise DataFormatError(
            f"mask is not binary: {distinct.size} distinct values ({shown}); expected 0 and one "
            "foreground value such as 255 (pass a mask threshold for lossy masks)",
            path=path,
        )
    return foreground.astype(np.uint8)
