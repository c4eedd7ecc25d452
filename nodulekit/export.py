"""Model export: native ``.keras``, TensorFlow SavedModel (TF Serving) and ONNX (tf2onnx).

An export folder is also a segmenter folder (:func:`nodulekit.inference.load_segmenter` reads it):
it holds the preprocessing the model was trained with, because an exported network without its
normalisation gives wrong answers silently.

::

    out/
      model.keras          Keras 3 native format (keras.saving.load_model)
      saved_model/         model.export(..., format="tf_saved_model"): signature "serve"/"serving_default",
                           input (batch, rows, columns, 1) float32 -> (batch, rows, columns, 1) probabilities
      model.onnx           tf2onnx (opset 17 by default), same input/output; runs under onnxruntime
      preprocessing.json   the training Pipeline (apply it before the model: gray -> median -> z-score)
      segmenter.json       window, threshold, units, mode
      export.json          formats, input shape, opset, versions, and the check results

The ``export`` extra installs tf2onnx, onnx and onnxruntime (``pip install nodulekit[export]``).

Input size
----------
A model trained on 64x64 crops has a fixed 64x64 input; that is what is exported by default. The
fully convolutional networks also run on whole slices: ``spatial_shape=(512, 512)`` exports a
512x512 graph, ``spatial_shape="any"`` a graph with free height and width (multiples of 16). The
Attention U-Net cannot be traced with free height and width under Keras 3.15: its gates resize with
``UpSampling2D(interpolation="bilinear")``, and ``keras.ops.image.resize`` compares the symbolic
target size with 0 in Python (``if size[0] <= 0``), which TensorFlow graph tracing refuses. Give it
a fixed size instead (the plain U-Net, with transposed-convolution up-sampling, has no such limit).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InvalidParameterError, MissingDataError, ModelFileError
from .inference import Segmenter, load_segmenter, without_fixed_size
from .postprocess import first_output
from .safety import load_model
from .utils import save_atomic, write_json

__all__ = ["FORMATS", "export_model", "load_exported", "check_export"]

logger = logging.getLogger(__name__)

#: Export formats and the file or folder each writes.
FORMATS = {"keras": "model.keras", "savedmodel": "saved_model", "onnx": "model.onnx"}


def export_model(
    model: Any,
    folder: str | os.PathLike,
    *,
    formats: Sequence[str] = ("keras", "savedmodel", "onnx"),
    spatial_shape: str | tuple[int, int] = "model",
    opset: int = 17,
    check: bool = True,
    atol: float = 1e-4,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Export a model (with its preprocessing) in the requested formats.

    Parameters
    ----------
    model : keras.Model, Segmenter, or path
        The model; a :class:`~nodulekit.inference.Segmenter` or a path that
        :func:`~nodulekit.inference.load_segmenter` reads (run folder, ``.keras``, segmenter folder)
        also exports its preprocessing pipeline and settings.
    folder : path
        Output folder (created; existing files of the same names are replaced).
    formats : sequence of {"keras", "savedmodel", "onnx"}
        What to write.
    spatial_shape : "model", "any" or (rows, columns)
        Input height and width of the exported graphs: as the model was built (``"model"``), free
        (``"any"``), or fixed, e.g. ``(512, 512)`` for whole slices (multiples of 16).
    opset : int
        ONNX opset (>= 13).
    check : bool
        Run every exported model on random inputs and compare with Keras (see :func:`check_export`);
        raise when the difference exceeds ``atol``.
    atol : float
        Largest allowed absolute difference of the probabilities.
    seed : int
        Seed of the check inputs.

    Returns
    -------
    dict
        Per format: ``{"path": relative path, "max_abs_difference": float or None}``.

    Raises
    ------
    InvalidParameterError
        On an unknown format, a bad shape or opset.
    ModelFileError
        When a format cannot be produced (the message says why) or fails the check.
    """
    import keras

    formats = tuple(str(f).lower() for f in formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise InvalidParameterError(f"formats must be a non-empty subset of {sorted(FORMATS)}, got {list(formats)}")
    if int(opset) < 13:
        raise InvalidParameterError(f"opset must be >= 13, got {opset!r}")
    segmenter = None
    if isinstance(model, (str, os.PathLike)):
        segmenter = load_segmenter(model)
    elif isinstance(model, Segmenter):
        segmenter = model
    if segmenter is not None:
        model = segmenter.model
    if not isinstance(model, keras.Model):
        raise ModelFileError(f"can only export a Keras model, got {type(model).__name__}")
    graph_model = _resized(model, spatial_shape, without_fixed_size)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report: dict[str, dict[str, Any]] = {}
    if "keras" in formats:
        save_atomic(graph_model.save, folder / FORMATS["keras"])
        report["keras"] = {"path": FORMATS["keras"]}
    signature = _signature(graph_model)
    if "savedmodel" in formats:
        target = folder / FORMATS["savedmodel"]
        try:
            graph_model.export(str(target), format="tf_saved_model", verbose=False, input_signature=[signature])
        except Exception as exc:  # noqa: BLE001 - tracing errors come in many types
            raise ModelFileError(_trace_failure("SavedModel", graph_model, exc)) from exc
        report["savedmodel"] = {"path": FORMATS["savedmodel"]}
    if "onnx" in formats:
        _export_onnx(graph_model, folder / FORMATS["onnx"], signature, int(opset), folder / FORMATS["savedmodel"] if "savedmodel" in formats else None)
        report["onnx"] = {"path": FORMATS["onnx"]}
    if segmenter is not None:
        exported = Segmenter(
            graph_model,
            segmenter.pipeline,
            window=segmenter.window,
            units=segmenter.units,
            threshold=segmenter.threshold,
            mode=segmenter.mode,
            overlap=segmenter.overlap,
            metadata=segmenter.metadata,
        )
        exported.save_settings(folder)
    if check:
        differences = check_export(folder, model=graph_model, formats=formats, seed=seed)
        for name, difference in differences.items():
            report[name]["max_abs_difference"] = difference
            if difference > atol:
                raise ModelFileError(f"exported {name} model differs from Keras by {difference:.3g} > {atol:g}", path=folder / FORMATS[name])
    write_json(
        folder / "export.json",
        {
            "formats": report,
            "input_shape": [None if v is None else int(v) for v in graph_model.input_shape],
            "opset": int(opset) if "onnx" in formats else None,
            "keras_version": keras.__version__,
            **_versions(),
        },
    )
    return report


def _resized(model: Any, spatial_shape: Any, free: Callable[[Any], Any]) -> Any:
    """The model with the requested input height and width (same weights)."""
    import keras

    if spatial_shape == "model":
        return model
    if spatial_shape == "any":
        return free(model)
    try:
        rows, columns = (int(v) for v in spatial_shape)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"spatial_shape must be 'model', 'any' or (rows, columns), got {spatial_shape!r}") from None
    if rows < 16 or columns < 16 or rows % 16 or columns % 16:
        raise InvalidParameterError(f"spatial_shape sides must be multiples of 16, got {(rows, columns)}")
    if tuple(model.input_shape[1:3]) == (rows, columns):
        return model
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            shape = list(layer["config"]["batch_shape"])
            layer["config"]["batch_shape"] = [shape[0], rows, columns, shape[-1]]
    try:
        rebuilt = keras.Model.from_config(config)
        rebuilt.set_weights(model.get_weights())
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(f"cannot rebuild {model.name!r} for a {rows}x{columns} input ({exc})") from exc
    return rebuilt


def _signature(model: Any):
    import tensorflow as tf

    shape = list(model.input_shape)
    shape[0] = None
    return tf.TensorSpec(shape, tf.float32, name="image")


def _trace_failure(what: str, model: Any, exc: Exception) -> str:
    text = f"{what} export of {model.name!r} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if model.input_shape[1] is None and "bool" in str(exc):
        text += (
            " — the model has free height/width and a bilinear UpSampling2D (the Attention U-Net's gates), which "
            "Keras 3 cannot trace with unknown sizes; export with a fixed spatial_shape, e.g. (512, 512)"
        )
    return text


def _export_onnx(model: Any, target: Path, signature: Any, opset: int, saved_model: Path | None) -> None:
    """tf2onnx from the Keras model; if that fails, from the SavedModel's serving function."""
    try:
        import tf2onnx
    except ImportError as exc:
        raise ModelFileError("ONNX export needs tf2onnx: pip install 'nodulekit[export]'") from exc
    temporary = target.with_name(".model.tmp.onnx")
    first_error: Exception | None = None
    try:
        tf2onnx.convert.from_keras(model, input_signature=(signature,), opset=opset, output_path=str(temporary))
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises many kinds
        first_error = exc
        logger.info("tf2onnx.convert.from_keras failed (%s); converting the SavedModel signature instead", exc)
    if first_error is not None:
        import tensorflow as tf

        try:
            if saved_model is not None and saved_model.is_dir():
                function = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
            else:
                function = tf.function(lambda image: model(image, training=False), input_signature=[signature])
            tf2onnx.convert.from_function(function, input_signature=[signature], opset=opset, output_path=str(temporary))
        except Exception as exc:  # noqa: BLE001
            temporary.unlink(missing_ok=True)
            raise ModelFileError(_trace_failure("ONNX", model, exc) + f" (from_keras first failed with {first_error})") from exc
    os.replace(temporary, target)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("tensorflow", "tf2onnx", "onnx", "onnxruntime"):
        try:
            module = __import__(name)
            out[f"{name}_version"] = getattr(module, "__version__", None)
        except ImportError:
            out[f"{name}_version"] = None
    return out


def load_exported(path: str | os.PathLike) -> Callable[[np.ndarray], np.ndarray]:
    """A predictor ``f(batch (n, rows, columns, 1) float32) -> probabilities`` for an exported file.

    Parameters
    ----------
    path : path
        ``model.keras``, a ``saved_model`` folder, or ``model.onnx`` (needs onnxruntime).

    Returns
    -------
    callable

    Raises
    ------
    MissingDataError, ModelFileError
        When the file is absent or not a loadable model.
    """
    path = Path(path)
    if not path.exists():
        raise MissingDataError("no such exported model", path=path)
    if path.suffix == ".onnx":
        try:
            import onnxruntime
        except ImportError as exc:
            raise ModelFileError("running ONNX models needs onnxruntime: pip install 'nodulekit[export]'", path=path) from exc
        try:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001
            raise ModelFileError(f"onnxruntime cannot load this model ({exc})", path=path) from exc
        name = session.get_inputs()[0].name
        return lambda batch: session.run(None, {name: np.asarray(batch, np.float32)})[0]
    if path.is_dir():
        import tensorflow as tf

        try:
            function = tf.saved_model.load(str(path)).signatures["serving_default"]
        except Exception as exc:  # noqa: BLE001
            raise ModelFileError(f"not a TensorFlow SavedModel with a serving_default signature ({exc})", path=path) from exc
        return lambda batch: next(iter(function(tf.constant(np.asarray(batch, np.float32))).values())).numpy()
    model = load_model(path)
    return lambda batch: np.asarray(first_output(model(np.asarray(batch, np.float32), training=False)))


def check_export(
    folder: str | os.PathLike,
    *,
    model: Any = None,
    formats: Sequence[str] | None = None,
    images: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Largest absolute difference between each exported model and Keras on the same inputs.

    Parameters
    ----------
    folder : path
        An export folder.
    model : keras.Model, optional
        The reference; default the folder's ``model.keras``.
    formats : sequence of str, optional
        Which exports to check (default: all present).
    images : ndarray, shape (n, rows, columns) or (n, rows, columns, 1), optional
        Inputs (already preprocessed); default 3 random standard-normal images of the model's size
        (64x64 when the size is free).
    seed : int
        Seed of the random inputs.

    Returns
    -------
    dict
        ``{format: max |p_format - p_keras|}`` for every checked format.
    """
    folder = Path(folder)
    if model is None:
        model = load_model(folder / FORMATS["keras"])
    formats = [f for f in (formats or FORMATS) if (folder / FORMATS[f]).exists()]
    if images is None:
        rows, columns = (side or 64 for side in model.input_shape[1:3])
        images = np.random.default_rng(seed).standard_normal((3, rows, columns, 1)).astype(np.float32)
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[..., None]
    reference = np.asarray(first_output(model(images, training=False)))
    out = {}
    for name in formats:
        predicted = load_exported(folder / FORMATS[name])(images)
        out[name] = float(np.max(np.abs(np.asarray(predicted).reshape(reference.shape) - reference)))
        logger.info("%s export: max |difference| vs Keras %.2e", name, out[name])
    return out
