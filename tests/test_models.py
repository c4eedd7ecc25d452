"""The paper's U-Net and Attention U-Net: parameter counts, shapes, options, gates, errors, round trips."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from nodulekit.errors import InvalidParameterError
from nodulekit.models import (
    attention_layer_names,
    attention_maps,
    build_attention_unet,
    build_model,
    build_unet,
)


def _layer_shapes(model, prefix):
    return {layer.name: tuple(layer.output.shape[1:]) for layer in model.layers if layer.name.startswith(prefix)}


def test_unet_parameter_count_matches_the_paper_architecture():
    # Hand count: encoder 1,178,480 (convs 160+2320, 4640+9248, 18496+36928, 73856+147584,
    # 295168+590080); decoder 762,320 (transposed 131200+32832+8224+2064, convs
    # 295040+147584, 73792+36928, 18464+9248, 4624+2320); final 1x1 conv 17.
    model = build_unet((64, 64, 1))
    assert model.count_params() == 1_940_817


def test_attention_unet_parameter_count():
    # Gates at widths 128, 64, 32, 16 with C//2 inner channels: theta 2x2 (4*C*C/2, no bias),
    # phi 1x1 from the 2C-wide gating signal (2C*C/2 + C/2) and psi (C/2 + 1):
    # 128: 32768+16448+65, 64: 8192+4128+33, 32: 2048+1040+17, 16: 512+264+9 = 65,524.
    model = build_attention_unet((64, 64, 1))
    assert model.count_params() == 1_940_817 + 65_524 == 2_006_341


def test_paper_shapes_bottom_is_4x4x256_and_output_is_64x64x1():
    model = build_unet((64, 64, 1))
    shapes = _layer_shapes(model, "bottom_2_relu")
    assert shapes == {"bottom_2_relu": (4, 4, 256)}
    assert tuple(model.output.shape[1:]) == (64, 64, 1)
    assert model.get_layer("mask").dtype_policy.compute_dtype == "float32"


def test_attention_gates_sit_on_every_skip_and_gate_1_is_8x8x128():
    model = build_attention_unet((64, 64, 1))
    names = attention_layer_names(model)
    assert names == [f"attention_gate_{k}_coefficients" for k in (1, 2, 3, 4)]
    assert tuple(model.get_layer("attention_gate_1_apply").output.shape[1:]) == (8, 8, 128)
    assert tuple(model.get_layer("attention_gate_4_apply").output.shape[1:]) == (64, 64, 16)


def test_fully_convolutional_model_runs_whole_512_slices():
    model = build_attention_unet((None, None, 1))
    out = model.predict(np.zeros((1, 512, 512, 1), np.float32), verbose=0)
    assert out.shape == (1, 512, 512, 1)
    # Probabilities: a sigmoid output is inside (0, 1).
    assert np.all((out > 0) & (out < 1))


@pytest.mark.parametrize("shape", [(60, 64, 1), (64, 72, 1), (8, 8, 1)])
def test_sides_not_divisible_by_16_are_refused_clearly(shape):
    with pytest.raises(InvalidParameterError, match="multiple of 16"):
        build_unet(shape)


def test_shallower_model_needs_a_smaller_multiple():
    model = build_unet((24, 24, 1), filters=(8, 16, 32, 64))  # 3 poolings: multiple of 8
    assert tuple(model.output.shape[1:]) == (24, 24, 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"l2": -1.0},
        {"upsampling": "deconv"},
        {"filters": (16,)},
        {"filters": (16, 0, 32)},
        {"output_bias": float("nan")},
    ],
)
def test_bad_options_raise_invalid_parameter(kwargs):
    with pytest.raises(InvalidParameterError):
        build_unet((64, 64, 1), **kwargs)


def test_bad_input_shapes_raise():
    with pytest.raises(InvalidParameterError, match="channels"):
        build_unet((64, 64, None))
    with pytest.raises(InvalidParameterError, match="input_shape"):
        build_unet((64, 64))


def test_options_add_the_expected_layers_and_parameters():
    base = build_unet((64, 64, 1))
    bn = build_unet((64, 64, 1), batch_norm=True)
    # BN: 4 parameters per channel for 18 convs; the convs drop their biases (1 per channel).
    channels = 2 * (16 + 32 + 64 + 128 + 256) + 2 * (128 + 64 + 32 + 16)
    assert bn.count_params() == base.count_params() + 3 * channels
    dropped = build_unet((64, 64, 1), dropout=0.2)
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in dropped.layers) == 9
    assert dropped.count_params() == base.count_params()
    reg = build_unet((64, 64, 1), l2=1e-4)
    assert len(reg.losses) == 18 + 4  # every 3x3 conv and every transposed conv
    resize = build_unet((64, 64, 1), upsampling="bilinear")
    assert not any(isinstance(layer, keras.layers.Conv2DTranspose) for layer in resize.layers)


def test_deep_supervision_gives_full_size_side_outputs():
    model = build_attention_unet((64, 64, 1), deep_supervision=True)
    assert len(model.outputs) == 4
    outputs = model.predict(np.zeros((2, 64, 64, 1), np.float32), verbose=0)
    assert [o.shape for o in outputs] == [(2, 64, 64, 1)] * 4
    assert model.output_names == ["mask", "aux_1", "aux_2", "aux_3"]


def test_output_bias_sets_the_initial_probability():
    model = build_unet((64, 64, 1), output_bias=-3.0)
    assert float(model.get_layer("output_logits").bias.numpy()[0]) == -3.0


def test_build_model_dispatches_and_checks_names():
    assert build_model("attention-unet").name == "attention_unet"
    assert build_model("unet", (32, 32, 1), filters=(8, 16, 32)).count_params() < 100_000
    with pytest.raises(InvalidParameterError, match="architecture"):
        build_model("resnet")
    with pytest.raises(InvalidParameterError, match="unknown model options"):
        build_model("unet", batchnorm=True)


def test_attention_maps_are_coefficients_in_unit_interval_at_skip_sizes():
    model = build_attention_unet((64, 64, 1))
    images = np.random.default_rng(0).normal(size=(3, 64, 64)).astype(np.float32)
    maps = attention_maps(model, images)
    assert {k: v.shape for k, v in maps.items()} == {
        "attention_gate_1_coefficients": (3, 8, 8),
        "attention_gate_2_coefficients": (3, 16, 16),
        "attention_gate_3_coefficients": (3, 32, 32),
        "attention_gate_4_coefficients": (3, 64, 64),
    }
    for values in maps.values():
        assert values.min() >= 0.0 and values.max() <= 1.0


def test_attention_maps_refuse_plain_unet_and_bad_sizes():
    with pytest.raises(InvalidParameterError, match="no attention gates"):
        attention_maps(build_unet((64, 64, 1)), np.zeros((1, 64, 64)))
    model = build_attention_unet((None, None, 1))
    with pytest.raises(InvalidParameterError, match="multiple of 16"):
        attention_maps(model, np.zeros((1, 50, 64)))


def test_saved_model_round_trip_gives_identical_predictions_and_readable_gates(tmp_path):
    model = build_attention_unet((64, 64, 1), batch_norm=True, dropout=0.1)
    images = np.random.default_rng(1).normal(size=(2, 64, 64, 1)).astype(np.float32)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)
    assert set(attention_maps(loaded, images)) == set(attention_layer_names(model))


def test_mixed_precision_keeps_float32_output():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_attention_unet((64, 64, 1))
        out = model(np.zeros((1, 64, 64, 1), np.float32))
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        assert model.get_layer("down_1_1_conv").dtype_policy.compute_dtype == "float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
