"""Safe handling of untrusted files: image size limits, path containment, model loading, output folders.

Data sets and model files come from other people. nodulekit treats them as untrusted:

* **Decompression bombs.** A small compressed image can declare billions of pixels. Image readers
  check the declared size against :data:`MAX_IMAGE_PIXELS` *before* decoding
  (:func:`check_image_pixels`), and volume readers check against :data:`MAX_VOLUME_VOXELS`.
* **Path escapes.** A file inside a data set (a symbolic link, an ``ElementDataFile = ../x.raw``
  entry of a MetaImage header) cannot make a reader open a file outside the data-set folder
  (:func:`contained`).
* **Model files.** Models are loaded with Keras ``safe_mode=True`` (:func:`load_model`): a
  ``.keras`` file that would run Python code on loading (a ``Lambda`` layer, a class from an
  arbitrary module) is refused.
* **No pickle.** Arrays are read with ``np.load(..., allow_pickle=False)``; nodulekit never pickles
  or unpickles user data.
* **Output folders.** :func:`check_writable` proves a folder can be written (permission, read-only
  file system, disk full) before long work starts.

All refusals raise :class:`~nodulekit.errors.NodulekitError` subclasses whose message starts with
the file or folder concerned.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Sequence

from .errors import DataFormatError, MissingDataError, ModelFileError, RunFolderError

__all__ = [
    "MAX_IMAGE_PIXELS",
    "MAX_VOLUME_VOXELS",
    "MODEL_SUFFIXES",
    "PROBE_BYTES",
    "check_image_pixels",
    "check_volume_voxels",
    "contained",
    "load_model",
    "check_writable",
]

logger = logging.getLogger(__name__)

#: Largest image (rows x columns) the image readers decode: 8192 x 8192 pixels. A CT slice is
#: 512 x 512; anything far larger is a mistake or a decompression bomb. Assign a new value to
#: ``nodulekit.safety.MAX_IMAGE_PIXELS`` to change it (it is read at every call).
MAX_IMAGE_PIXELS: int = 8192 * 8192

#: Largest volume (slices x rows x columns) the volume readers decode: 2**30 voxels (4 GiB as
#: float32; a chest CT has about 512 x 512 x 600 = 1.6e8).
MAX_VOLUME_VOXELS: int = 2**30

#: Model file endings :func:`load_model` accepts.
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


def check_image_pixels(shape: Sequence[int], *, path: str | os.PathLike | None = None) -> None:
    """Refuse an image whose declared size exceeds :data:`MAX_IMAGE_PIXELS`, before decoding it.

    Parameters
    ----------
    shape : sequence of int
        The image's two spatial sizes (``(width, height)`` as Pillow reports, or ``(rows,
        columns)``); further entries (channels, pages) multiply the count too.
    path : path, optional
        The file, named in the error.

    Raises
    ------
    DataFormatError
        More pixels than :data:`MAX_IMAGE_PIXELS` (a decompression bomb or not a CT image).
    """
    why = "possible decompression bomb; "
    _refuse_oversize(shape, MAX_IMAGE_PIXELS, "MAX_IMAGE_PIXELS", what="image", unit="pixels", why=why, path=path)


def check_volume_voxels(shape: Sequence[int], *, path: str | os.PathLike | None = None) -> None:
    """Refuse a volume whose declared size exceeds :data:`MAX_VOLUME_VOXELS`, before reading it.

    Raises
    ------
    DataFormatError
        More voxels than :data:`MAX_VOLUME_VOXELS`.
    """
    _refuse_oversize(shape, MAX_VOLUME_VOXELS, "MAX_VOLUME_VOXELS", what="volume", unit="voxels", path=path)


def _refuse_oversize(shape: Sequence[int], limit: int, setting: str, *, what: str, unit: str, why: str = "", path) -> None:
    """Raise :class:`DataFormatError` when ``shape`` declares more than ``limit`` elements.

    ``setting`` names the module constant that holds ``limit`` (the message tells how to raise it);
    ``why`` is put in front of that advice.
    """
    count = 1
    for size in shape:
        count *= int(size)
    if count > limit:
        raise DataFormatError(
            f"{what} declares {' x '.join(str(int(s)) for s in shape)} = {count:,} {unit}, more than the limit of "
            f"{limit:,} ({why}raise nodulekit.safety.{setting} if the file is trusted)",
            path=path,
        )


def contained(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path`` resolved (symbolic links and ``..`` followed), refused when it leaves ``root``.

    The data-set folder ``root`` may itself be (or lie below) a symbolic link: it is resolved
    first, and everything inside it must resolve to a place inside the resolved folder.

    Parameters
    ----------
    root : path
        The data-set folder.
    path : path
        A file or folder named by the data set (found in it, or named by one of its files);
        relative paths are taken relative to ``root``.

    Returns
    -------
    pathlib.Path
        The resolved path.

    Raises
    ------
    DataFormatError
        ``path`` resolves outside ``root``.

    Examples
    --------
    >>> contained("/data/set", "images/a.png").as_posix()
    '/data/set/images/a.png'
    >>> contained("/data/set", "../other/b.png")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    nodulekit.errors.DataFormatError: resolves to /data/other/b.png, outside the data-set folder /data/set
    """
    real_root = os.path.realpath(root)
    candidate = Path(path) if Path(path).is_absolute() else Path(root) / path
    real = os.path.realpath(candidate)
    if real != real_root and os.path.commonpath([real_root, real]) != real_root:
        raise DataFormatError(
            f"resolves to {real}, outside the data-set folder {real_root} (through '..' or a symbolic link); "
            "nodulekit reads only files inside the data-set folder: copy the file in, or point nodulekit at "
            "the folder that really holds it",
            path=candidate,
        )
    return Path(real)


def load_model(path: str | os.PathLike, *, compile: bool = False) -> Any:
    """Load a Keras model file with ``safe_mode=True``; refuse anything that is not one.

    Parameters
    ----------
    path : path
        A ``.keras`` file (Keras 3 zip archive) or a legacy ``.h5``/``.hdf5`` file.
    compile : bool
        Also restore the training configuration (loss, optimizer); inference does not need it.

    Returns
    -------
    keras.Model

    Raises
    ------
    MissingDataError
        ``path`` does not exist.
    ModelFileError
        ``path`` is a folder, has another ending, is not a zip/HDF5 archive, is damaged, holds no
        Keras model, or would run Python code on loading (``Lambda`` layers, classes from
        arbitrary modules: refused by Keras ``safe_mode``). The message names the file.

    References
    ----------
    Keras, "Saving and serialization" (``safe_mode``), https://keras.io/api/models/model_saving_apis/.
    """
    path = Path(path)
    if not path.exists():
        raise MissingDataError("model file not found", path=path)
    if path.is_dir():
        raise ModelFileError(f"is a folder, not a model file: give a {'/'.join(MODEL_SUFFIXES)} file", path=path)
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise ModelFileError(f"unsupported model file type {suffix or '(none)'!r}; expected {MODEL_SUFFIXES}", path=path)
    if path.stat().st_size == 0:
        raise ModelFileError("empty file (0 bytes), not a model", path=path)
    if suffix == ".keras" and not zipfile.is_zipfile(path):
        raise ModelFileError("not a Keras model: a .keras file is a zip archive and this one is not", path=path)
    if suffix != ".keras":
        with open(path, "rb") as handle:
            if handle.read(8) != b"\x89HDF\r\n\x1a\n":
                raise ModelFileError("not a Keras model: a .h5 model is an HDF5 file and this one is not", path=path)

    import keras

    # nodulekit's losses, metrics and layers register themselves with Keras on import, so a saved
    # nodulekit model loads without custom_objects (imported here: safety is below them).
    for module in ("losses", "metrics", "models"):
        try:
            __import__(f"{__package__}.{module}")
        except ImportError:  # pragma: no cover - a module still being written
            logger.debug("could not import nodulekit.%s to register its Keras objects", module)
    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for damaged or hostile files
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "safe_mode" in str(exc) or "arbitrary code" in str(exc):
            reason = f"refused by Keras safe_mode: loading it would run Python code ({text[:300]})"
        else:
            reason = f"not a loadable Keras model ({type(exc).__name__}: {text[:300]})"
        raise ModelFileError(reason, path=path) from exc
    if not isinstance(model, keras.Model):
        raise ModelFileError(f"holds a {type(model).__name__}, not a Keras model", path=path)
    return model


_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    getattr(errno, "EDQUOT", errno.ENOSPC): "disk quota exceeded",
    errno.ENOSPC: "disk full (no space left on device)",  # after EDQUOT: wins where EDQUOT is missing
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EEXIST: "exists and is not a folder",
}

#: Bytes the write probe of :func:`check_writable` writes (and syncs) to detect a full disk.
PROBE_BYTES = 64 * 1024


def check_writable(folder: str | os.PathLike, *, min_free_mb: float = 50.0) -> Path:
    """Create ``folder`` if needed and prove it can be written, before any long work starts.

    A probe file of :data:`PROBE_BYTES` bytes is written, synced to disk and removed, so permission
    problems, read-only file systems and full disks show up now rather than after hours of training;
    then the free space is compared with ``min_free_mb``.

    Parameters
    ----------
    folder : path
        The run or output folder (created with its parents when absent).
    min_free_mb : float
        Free space the folder's file system must have, in MiB (0 disables the check).

    Returns
    -------
    pathlib.Path
        ``folder``.

    Raises
    ------
    RunFolderError
        The folder cannot be created or written (permission denied, read-only file system, disk full,
        a file in the way) or has less than ``min_free_mb`` MiB free. Nothing is left behind.
    """
    folder = Path(folder)
    probe = None
    try:
        if folder.exists() and not folder.is_dir():
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        folder.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(dir=folder, prefix=".nodulekit-write-probe-")
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(b"\0" * PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        reason = _REASONS.get(exc.errno, exc.strerror or str(exc))
        raise RunFolderError(f"not writable: cannot write to this folder ({reason})", path=folder) from exc
    finally:
        if probe is not None:
            try:
                os.unlink(probe)
            except OSError:
                pass
    free_mb = shutil.disk_usage(folder).free / 2**20
    if free_mb < min_free_mb:
        raise RunFolderError(
            f"only {free_mb:.1f} MiB free on its disk; at least {min_free_mb:.0f} MiB are needed", path=folder
        )
    return folder
