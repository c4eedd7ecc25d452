"""Small shared helpers: seeding, random generators, QUICK mode, atomic writes, logging."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .errors import InvalidParameterError

__all__ = [
    "available_cores",
    "set_seed",
    "as_rng",
    "is_quick",
    "atomic_write",
    "copy_atomic",
    "save_atomic",
    "write_json",
    "read_json",
    "configure_logging",
]

logger = logging.getLogger(__name__)


def set_seed(seed: int = 0, *, deterministic_ops: bool = False) -> None:
    """Seed Python, NumPy and TensorFlow/Keras in one call.

    Parameters
    ----------
    seed : int
        The seed. The same seed on the same machine gives the same splits, weights and shuffles.
    deterministic_ops : bool
        Also ask TensorFlow for deterministic kernels (slower; bit-identical reruns on one machine).
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidParameterError(f"seed must be a non-negative integer, got {seed!r}")
    os.environ["PYTHONHASHSEED"] = str(int(seed))
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    try:
        import keras
        import tensorflow as tf
    except ImportError:  # pragma: no cover - TensorFlow is a hard dependency
        return
    keras.utils.set_random_seed(int(seed))
    if deterministic_ops:
        tf.config.experimental.enable_op_determinism()


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS and Windows have no affinity mask
        return max(1, os.cpu_count() or 1)


def as_rng(rng: int | np.random.Generator | None) -> np.random.Generator:
    """Return a NumPy Generator from an int seed, a Generator (returned as is) or None."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def is_quick() -> bool:
    """True when the environment asks for QUICK mode (``NODULEKIT_QUICK=1``): tiny data, few epochs."""
    return os.environ.get("NODULEKIT_QUICK", "0").strip().lower() in {"1", "true", "yes", "on"}


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``path`` and rename it onto ``path`` only when the block succeeds.

    A crash or kill inside the block leaves ``path`` as it was (absent or the previous version),
    never half-written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_atomic(save: Callable[[str], Any], path: str | os.PathLike) -> str:
    """Let ``save`` (e.g. a Keras ``model.save`` / ``save_weights``) write a temporary file beside
    ``path``, flush it to disk, then rename it to ``path``: the file is whole or untouched, and no
    temporary file is left behind on an error. Returns ``path``'s name."""
    path = Path(path)
    suffix = ".weights.h5" if path.name.endswith(".weights.h5") else path.suffix
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        os.unlink(tmp)
        save(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path.name


def copy_atomic(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy a file's bytes to ``target`` through :func:`atomic_write` (``target`` is whole or untouched)."""
    with atomic_write(target, "wb") as handle, open(source, "rb") as original:
        shutil.copyfileobj(original, handle)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=True, default=_json_default)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file."""
    with open(path) as handle:
        return json.load(handle)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def configure_logging(level: int | str = logging.INFO) -> None:
    """Print log records on stderr, each once, through one handler (for scripts and the CLI).

    Importing nodulekit configures nothing (its logger has only a ``NullHandler``); an application
    calls this once. It puts one handler on the root logger (replacing the one an earlier call put
    there), so records from nodulekit and warnings from other libraries share one format. With a
    handler on the root logger, a library that logs through the ``logging`` module's functions
    (TensorFlow's SavedModel export does) no longer makes Python add a second, bare handler.

    Parameters
    ----------
    level : int or str
        Level of nodulekit's own records (``logging.INFO``, ``"DEBUG"``, ...). Other libraries'
        records are shown from ``WARNING`` up.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_nodulekit", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler._nodulekit = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("nodulekit").setLevel(level)
