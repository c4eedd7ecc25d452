"""Model export: .keras, TensorFlow SavedModel and ONNX give the Keras model's outputs (within 1e-4)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from nodulekit.errors import InvalidParameterError, ModelFileError
from nodulekit.export import check_export, export_model, load_exported

#: Only the ONNX tests need the `export` extra; the .keras and SavedModel ones run without it.
needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("onnxruntime", "tf2onnx")),
    reason="the `export` extra (tf2onnx, onnxruntime) is not installed",
)


@pytest.fixture(scope="module")
def attention_segmenter():
    import keras

    from nodulekit.inference import Segmenter
    from nodulekit.models import build_attention_unet
    from nodulekit.preprocessing import paper_pipeline

    keras.utils.set_random_seed(0)
    model = build_attention_unet((64, 64, 1), filters=(4, 8, 16, 32, 64))
    # random weights give ~0.5 everywhere; a non-zero final bias and larger kernels spread the outputs
    weights = [w * 3.0 if w.ndim == 4 else w for w in model.get_weights()]
    model.set_weights(weights)
    return Segmenter(model, paper_pipeline(), threshold=0.45)


def _inputs(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@needs_onnx
def test_every_format_matches_keras_and_onnx_runs_under_onnxruntime(tmp_path, attention_segmenter):
    import onnxruntime

    model = attention_segmenter.model
    report = export_model(attention_segmenter, tmp_path, check=True)
    assert set(report) == {"keras", "savedmodel", "onnx"}
    images = _inputs((4, 64, 64, 1))
    reference = np.asarray(model(images, training=False))
    assert reference.std() > 0.01  # the outputs vary, so agreement means something
    for name, path in (("keras", "model.keras"), ("savedmodel", "saved_model"), ("onnx", "model.onnx")):
        predicted = load_exported(tmp_path / path)(images)
        assert predicted.shape == reference.shape
        assert np.max(np.abs(predicted - reference)) <= 1e-4, name
        assert report[name]["max_abs_difference"] <= 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_input,) = session.get_inputs()
    assert onnx_input.shape[1:] == [64, 64, 1]
    (output,) = session.run(None, {onnx_input.name: images})
    np.testing.assert_allclose(output, reference, atol=1e-4)
    written = json.loads((tmp_path / "export.json").read_text())
    assert written["input_shape"] == [None, 64, 64, 1] and written["opset"] == 17


def test_export_folder_is_a_segmenter_with_the_training_preprocessing(tmp_path, attention_segmenter):
    from nodulekit.inference import load_segmenter

    export_model(attention_segmenter, tmp_path, formats=("keras",), check=False)
    loaded = load_segmenter(tmp_path)
    assert loaded.pipeline.get_config() == attention_segmenter.pipeline.get_config()
    assert loaded.threshold == 0.45 and loaded.window == 64
    slices = _inputs((1, 80, 96)) * 300 - 600
    np.testing.assert_allclose(
        loaded.predict(slices, progress=False), attention_segmenter.predict(slices, progress=False), atol=1e-5
    )


@needs_onnx
def test_whole_slice_export_at_a_fixed_size(tmp_path, attention_segmenter):
    export_model(attention_segmenter.model, tmp_path, formats=("savedmodel", "onnx"), spatial_shape=(96, 128), check=False)
    images = _inputs((2, 96, 128, 1))
    differences = check_export(tmp_path, model=_free(attention_segmenter.model), images=images)
    assert set(differences) == {"savedmodel", "onnx"} and max(differences.values()) <= 1e-4


def _free(model):
    from nodulekit.inference import without_fixed_size as _without_fixed_size

    return _without_fixed_size(model)


@needs_onnx
def test_free_size_export_of_the_unet_and_why_not_the_attention_unet(tmp_path, attention_segmenter):
    import keras

    from nodulekit.models import build_unet

    keras.utils.set_random_seed(0)
    unet = build_unet((64, 64, 1), filters=(4, 8, 16, 32, 64))
    report = export_model(unet, tmp_path / "unet", formats=("onnx",), spatial_shape="any", check=False)
    images = _inputs((1, 48, 80, 1))  # any multiple of 16
    predicted = load_exported(tmp_path / "unet" / report["onnx"]["path"])(images)
    np.testing.assert_allclose(predicted, np.asarray(_free(unet)(images)), atol=1e-4)
    # Keras 3's bilinear UpSampling2D cannot be traced with unknown sizes: the error says what to do
    with pytest.raises(ModelFileError, match="fixed spatial_shape"):
        export_model(attention_segmenter.model, tmp_path / "att", formats=("savedmodel",), spatial_shape="any", check=False)


def test_export_rejects_bad_requests(tmp_path, attention_segmenter):
    with pytest.raises(InvalidParameterError):
        export_model(attention_segmenter, tmp_path, formats=("tflite",))
    with pytest.raises(InvalidParameterError):
        export_model(attention_segmenter, tmp_path, spatial_shape=(100, 100))
    with pytest.raises(InvalidParameterError):
        export_model(attention_segmenter, tmp_path, opset=9)
    with pytest.raises(ModelFileError):
        export_model(lambda x: x, tmp_path)
