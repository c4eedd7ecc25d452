"""Numeric precision: which Keras dtype policy training and inference run in, decided in one place.

``"auto"`` asks the hardware: TensorFlow is imported only then (and only to look for a GPU), so
this module is light to import.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from .errors import InvalidParameterError

__all__ = ["cpu_supports_bfloat16", "resolve_precision", "precision_policy"]


def cpu_supports_bfloat16() -> bool:
    """True when this CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX-BF16; Linux only)."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_precision(name: str | None, *, inference: bool = False) -> str:
    """The Keras dtype policy for a precision setting.

    Parameters
    ----------
    name : {None, "float32", "mixed_bfloat16", "mixed_float16", "auto"}
        ``TrainConfig.mixed_precision`` or ``Segmenter.precision``. ``None`` means float32.
    inference : bool
        False (training): ``"auto"`` is ``"mixed_float16"`` when TensorFlow sees a GPU, else
        ``"mixed_bfloat16"`` on CPUs with native bfloat16, else ``"float32"``. True (prediction):
        ``"auto"`` is ``"mixed_bfloat16"`` only on a bfloat16 CPU without a GPU, else ``"float32"``
        (a GPU predicts fast enough in float32, and float16 would need loss-free rescaling).

    Returns
    -------
    str
        ``"float32"``, ``"mixed_bfloat16"`` or ``"mixed_float16"``.

    Raises
    ------
    InvalidParameterError
        On any other ``name``.
    """
    if name in (None, "float32"):
        return "float32"
    if name in ("mixed_bfloat16", "mixed_float16"):
        return name
    if name == "auto":
        if inference:
            return "mixed_bfloat16" if cpu_supports_bfloat16() and not _has_gpu() else "float32"
        if _has_gpu():
            return "mixed_float16"
        return "mixed_bfloat16" if cpu_supports_bfloat16() else "float32"
    raise InvalidParameterError(
        f"mixed_precision must be None, 'float32', 'mixed_bfloat16', 'mixed_float16' or 'auto', got {name!r}"
    )


@contextlib.contextmanager
def precision_policy(name: str | None) -> Iterator[str]:
    """Set Keras's global dtype policy inside the block and restore the previous one after.

    The nodulekit models keep their final sigmoid in float32 and the losses compute in float32,
    so only the convolutions run in reduced precision. Under ``mixed_float16`` Keras wraps the
    optimizer in a ``LossScaleOptimizer`` by itself at ``compile``.
    """
    import keras

    policy = resolve_precision(name)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy(previous)
