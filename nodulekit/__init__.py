"""nodulekit: lung-nodule segmentation on CT (U-Net vs Attention U-Net, focal Tversky loss).

The few names a notebook needs are re-exported here; everything else lives in its module:
``phantom`` (synthetic chest CT), ``readers`` (real formats), ``preprocessing``, ``postprocess``,
``models``, ``losses``, ``metrics``, ``training``, ``inference``, ``risk``, ``plots``, ``cli``.

``import nodulekit`` is light: it does not import TensorFlow. The submodules load on first use
(``nodulekit.readers`` imports ``nodulekit/readers`` then, as scikit-image's ``lazy_loader`` does),
and nodulekit's Keras losses and metrics register themselves as soon as Keras is imported by
anyone, so a saved ``.keras`` model loads after ``import nodulekit`` without ``custom_objects``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from . import errors  # noqa: E402
from ._version import __version__  # noqa: E402
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
from .pretrained import load_pretrained  # noqa: E402  (light: the model loads when called)
from .utils import configure_logging, is_quick, set_seed  # noqa: E402

logging.getLogger(__name__).addHandler(logging.NullHandler())

#: Submodules reachable as ``nodulekit.<name>`` without importing them first.
SUBMODULES = frozenset(
    {
        "cli", "crops", "dataset", "errors", "evaluation", "export", "inference", "losses", "metrics",
        "models", "overlay", "phantom", "plots", "postprocess", "precision", "preprocessing", "pretrained",
        "readers", "reproduce", "risk", "safety", "splits", "study", "training", "utils",
    }
)  # fmt: skip

#: The modules whose import registers nodulekit's Keras objects (``package="nodulekit"``).
KERAS_MODULES = ("nodulekit.losses", "nodulekit.metrics")

__all__ = [
    "__version__",
    "CropSet",
    "Volume",
    "set_seed",
    "is_quick",
    "configure_logging",
    "load_pretrained",
]
__all__ += errors.__all__  # every error class, listed once in nodulekit.errors


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | SUBMODULES)


def _register_keras_objects() -> None:
    for module in KERAS_MODULES:
        importlib.import_module(module)


class _RegisterWhenKerasLoads(importlib.abc.MetaPathFinder):
    """Import hook: once ``keras`` has been imported (by anyone), import nodulekit's losses and metrics.

    It hands Keras's own module spec back with its loader's ``exec_module`` wrapped, and removes
    itself from ``sys.meta_path`` at the first ``import keras``.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            _register_keras_objects()

        spec.loader.exec_module = exec_module
        return spec


if "keras" in sys.modules:
    _register_keras_objects()
elif not any(isinstance(finder, _RegisterWhenKerasLoads) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenKerasLoads())
