"""One exception hierarchy for everything nodulekit refuses.

Every error nodulekit raises on bad input derives from :class:`NodulekitError`, so callers can catch
one class. Each subclass also derives from the closest built-in exception (``ValueError``,
``FileNotFoundError``, ...) so that generic handlers keep working. Errors about a file carry its
``path`` and put it first in the message: ``"<path>: <what is wrong>"``.
"""

from __future__ import annotations

import os

__all__ = [
    "NodulekitError",
    "InvalidParameterError",
    "DataFormatError",
    "MissingDataError",
    "ModelFileError",
    "TrainingError",
    "RunFolderError",
]


class NodulekitError(Exception):
    """Base class of every nodulekit error.

    Parameters
    ----------
    message : str
        What is wrong, in words a user can act on.
    path : str or os.PathLike, optional
        The file or folder the problem is in; prefixed to the message when given.
    """

    def __init__(self, message: str, *, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class InvalidParameterError(NodulekitError, ValueError):
    """A function argument is out of its allowed range or of the wrong kind."""


class DataFormatError(NodulekitError, ValueError):
    """A data file or array is unreadable, truncated, or inconsistent (sizes, values, UIDs)."""


class MissingDataError(NodulekitError, FileNotFoundError):
    """An expected file or folder is absent or empty (a mask, the RAW of an MHD, a series)."""


class ModelFileError(NodulekitError, ValueError):
    """A file given as a model is not a loadable nodulekit/Keras model."""


class TrainingError(NodulekitError, RuntimeError):
    """Training cannot go on (diverged, no usable trial, inconsistent run folder)."""


class RunFolderError(NodulekitError, OSError):
    """The run/output folder cannot be written (permission denied, disk full)."""
