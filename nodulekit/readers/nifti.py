"""NIfTI volumes (``.nii`` / ``.nii.gz``), e.g. the masks and scans other tools write."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..dataset import Volume
from ..errors import DataFormatError

__all__ = ["read_nifti", "is_nifti"]


def is_nifti(path: str | os.PathLike) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz`` (any case)."""
    return Path(path).name.lower().endswith((".nii", ".nii.gz"))


def read_nifti(path: str | os.PathLike) -> Volume:
    """Read a 3-D NIfTI volume with its voxel spacing.

    Parameters
    ----------
    path : path
        A ``.nii`` or ``.nii.gz`` file.

    Returns
    -------
    Volume
        ``hu`` as float32 (z, y, x) in the file's units, ``spacing`` (z, y, x) in mm from the
        header, ``meta["source"]`` the path. No mask or nodule table.

    Raises
    ------
    DataFormatError
        The file cannot be read by SimpleITK or does not hold a 3-D volume.
    """
    import SimpleITK as sitk

    path = Path(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DataFormatError(f"unreadable NIfTI file ({exc})", path=path) from exc
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if array.ndim != 3:
        raise DataFormatError(f"expected a 3-D volume, got shape {array.shape}", path=path)
    sx, sy, sz = image.GetSpacing()
    return Volume(array, (sz, sy, sx), meta={"source": str(path)})
