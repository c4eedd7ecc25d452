"""nodulekit: lung-nodule segmentation on CT (U-Net vs Attention U-Net, focal Tversky loss).

The few names a notebook needs are re-exported here; everything else lives in its module:
``phantom`` (synthetic chest CT), ``readers`` (real formats), ``preprocessing``, ``models``,
``losses``, ``metrics``, ``training``, ``inference``, ``risk``, ``plots``, ``cli``.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .dataset import CropSet, Volume  # noqa: E402
from .errors import (  # noqa: E402
    DataFormatError,
    InvalidParameterError,
    MissingDataError,
    ModelFileError,
    NodulekitError,
    RunFolderError,
    TrainingError,
)
from .utils import configure_logging, is_quick, set_seed  # noqa: E402

# Registers nodulekit's Keras losses and metrics, so a saved ``.keras`` model loads after
# ``import nodulekit`` without ``custom_objects`` (this imports Keras, hence TensorFlow).
from . import losses, metrics  # noqa: E402,F401
from .pretrained import load_pretrained  # noqa: E402

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "__version__",
    "CropSet",
    "Volume",
    "NodulekitError",
    "InvalidParameterError",
    "DataFormatError",
    "MissingDataError",
    "ModelFileError",
    "TrainingError",
    "RunFolderError",
    "set_seed",
    "is_quick",
    "configure_logging",
    "load_pretrained",
]
