"""The model as a batch predictor: traced once per input shape, free input size, inference precision."""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ModelFileError
from ..postprocess import first_output
from ..precision import resolve_precision

__all__ = ["make_forward", "without_fixed_size"]

logger = logging.getLogger(__name__)


def make_forward(model: Any, *, fully_convolutional: bool, precision: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A fast batch predictor: a traced ``tf.function`` for Keras models (one trace per input shape)."""
    try:
        import keras
    except ImportError:  # pragma: no cover - TensorFlow is a hard dependency
        keras = None
    if keras is None or not isinstance(model, keras.Model):
        return lambda batch: first_output(model(batch))
    import tensorflow as tf

    policy = resolve_precision(precision, inference=True)
    both = _rebuilt(model, policy) if fully_convolutional else None  # one rebuild instead of two (0.5 s on the shipped model)
    if both is not None:
        model = both
    else:
        if fully_convolutional:
            model = without_fixed_size(model)
        model = _with_policy(model, policy)

    @tf.function(jit_compile=False)
    def forward(batch):
        return first_output(model(batch, training=False))

    # One trace per image size and dtype, any batch size: a scan's last, shorter batch is not traced
    # again (0.3-0.5 s each; the same values, checked bit for bit).
    traced: dict[tuple, Callable] = {}

    def run(batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        key = (batch.shape[1:], batch.dtype.str)
        if key not in traced:
            traced[key] = forward.get_concrete_function(tf.TensorSpec((None, *batch.shape[1:]), tf.as_dtype(batch.dtype)))
        return traced[key](tf.constant(batch)).numpy()

    return run


def without_fixed_size(model: Any) -> Any:
    """The same Functional model (same weights) with free height and width, so it takes whole slices."""
    import keras

    shape = tuple(model.input_shape)
    if len(shape) != 4 or (shape[1] is None and shape[2] is None):
        return model
    try:
        config = model.get_config()
        _free_size_config(config)
        rebuilt = keras.Model.from_config(config)
        rebuilt.set_weights(model.get_weights())
    except Exception as exc:  # noqa: BLE001 - any failure means the model cannot go fully convolutional
        raise ModelFileError(
            f"model {model.name!r} has a fixed input size {shape[1:3]} and could not be rebuilt without one ({exc}); "
            "use mode='sliding'"
        ) from exc
    return rebuilt


def _free_size_config(config: dict) -> bool:
    """Make the InputLayer of a Functional model's config take any height and width; False when it has none."""
    found = False
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            batch_shape = list(layer["config"]["batch_shape"])
            layer["config"]["batch_shape"] = [batch_shape[0], None, None, batch_shape[-1]]
            found = True
    return found


def _rebuilt(model: Any, policy: str, *, keep_float32: Sequence[str] = ("mask",)) -> Any | None:
    """:func:`without_fixed_size` and :func:`_with_policy` in one rebuild of a float32 Functional model with a fixed size.

    The same model (config, weights) as the two steps one after the other, built once. None when
    the two steps would not both rebuild it (free size already, float32, mixed already, not
    Functional) or the rebuild fails: the caller then takes them one by one.
    """
    import keras

    shape = tuple(getattr(model, "input_shape", ()))
    if policy == "float32" or not isinstance(model, keras.Model) or len(shape) != 4 or (shape[1] is None and shape[2] is None):
        return None
    try:
        config = model.get_config()
        layers = config["layers"]
        if any(_policy_name(layer["config"].get("dtype")) not in (None, "float32") for layer in layers) or not _free_size_config(config):
            return None
        for layer in layers:
            if layer["class_name"] != "InputLayer" and layer["config"].get("name") not in keep_float32:
                layer["config"]["dtype"] = policy
        clone = model.__class__.from_config(config)
        clone.set_weights(model.get_weights())
    except Exception:  # noqa: BLE001 - the two steps then say what fails
        return None
    return clone


def _with_policy(model: Any, policy: str, *, keep_float32: Sequence[str] = ("mask",)) -> Any:
    """The same Functional model (same weights) with every layer but the final sigmoid in ``policy``.

    A model that is not a float32 Functional model (already mixed, subclassed, ...) is returned
    unchanged.
    """
    import keras

    if policy == "float32" or not isinstance(model, keras.Model) or not hasattr(model, "get_config"):
        return model
    try:
        config = model.get_config()
        layers = config["layers"]
        if any(_policy_name(layer["config"].get("dtype")) not in (None, "float32") for layer in layers):
            return model  # trained in mixed precision already: run it as it is
        for layer in layers:
            if layer["class_name"] != "InputLayer" and layer["config"].get("name") not in keep_float32:
                layer["config"]["dtype"] = policy
        clone = model.__class__.from_config(config)
        clone.set_weights(model.get_weights())
    except Exception as exc:  # noqa: BLE001 - any model Keras cannot rebuild runs in float32
        logger.info("model %r runs in float32 (cannot rebuild it in %s: %s)", getattr(model, "name", "?"), policy, exc)
        return model
    return clone


def _policy_name(dtype: Any) -> str | None:
    if dtype is None or isinstance(dtype, str):
        return dtype
    if isinstance(dtype, dict):  # Keras 3 serialises a DTypePolicy as {"class_name": ..., "config": {"name": ...}}
        return dtype.get("config", {}).get("name")
    return getattr(dtype, "name", None)
