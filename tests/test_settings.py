import numpy as np

import surgery
from surgery import settings
from surgery.graph import Layer, LayerGraph, Param


def _layer(name, kind, attrs=None, **shapes):
    params = {r: Param.from_array(np.zeros(s, np.float32), key=f"{name}.{r}") for r, s in shapes.items()}
    return Layer(name, kind, params, dict(attrs or {}))


def test_fused_activation_is_reported_unless_the_destination_knows_its_own():
    src = _layer("fc1", "dense", {"activation": "relu"}, weight=(2, 3))
    assert "must apply it itself" in settings.setting_warnings(src, [_layer("fc", "dense", weight=(2, 3))])[0]
    assert settings.setting_warnings(src, [_layer("fc", "dense", {"activation": "relu"}, weight=(2, 3))]) == []
    linear = _layer("fc1", "dense", {"activation": "linear"}, weight=(2, 3))
    assert settings.setting_warnings(linear, [_layer("fc", "dense", weight=(2, 3))]) == []


def test_keras_same_padding_that_pads_asymmetrically_is_reported():
    conv = lambda k, s: _layer("c", "conv2d", {"padding": "same", "kernel_size": [k, k], "strides": [s, s]},
                               weight=(4, 3, k, k))  # noqa: E731
    dst = _layer("d", "conv2d", weight=(4, 3, 2, 2))
    assert "pads more at the end" in settings.setting_warnings(conv(2, 1), [dst])[0]
    assert "pads more at the end" in settings.setting_warnings(conv(3, 2), [dst])[0]
    assert settings.setting_warnings(conv(3, 1), [dst]) == []
    live = _layer("d", "conv2d", {"padding": [0, 0]}, weight=(4, 3, 3, 3))
    assert "Keras padding 'same' is [1, 1] for kernel [3, 3], the destination pads [0, 0]" in settings.setting_warnings(conv(3, 1), [live])[0]


def test_batch_norm_settings_against_pytorch_defaults():
    src = _layer("bn", "batch_norm", {"eps": 1e-3, "momentum": 0.01}, weight=(4,))
    found = settings.setting_warnings(src, [_layer("features.1", "batch_norm", weight=(4,))])
    assert found == ["bn -> features.1: eps is 0.001 in the source but 1e-05 (PyTorch default) in the destination",
                     "bn -> features.1: momentum is 0.01 in the source but 0.1 (PyTorch default) in the destination"]


def test_a_source_without_bias_fills_the_destination_bias_with_zeros():
    """A dense layer without a bias computes what one with a zero bias computes: exact, and said."""
    src = LayerGraph([_layer("fc1", "dense", {"use_bias": False}, weight=(2, 3))])
    dst = LayerGraph([_layer("fc1", "dense", weight=(2, 3), bias=(2,))])
    plan = surgery.plan(src, dst)
    assert plan.strict_ok and plan.copies()["fc1.bias"].transform == "zeros (the source layer has no bias)"
    assert not surgery.transplant(src, dst).graph.state()["fc1.bias"].read().any()
