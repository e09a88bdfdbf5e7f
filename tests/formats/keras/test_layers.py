"""keras_layers: every Keras class to canonical and back, exactly; inference of classes; refusals."""

from __future__ import annotations

import numpy as np
import pytest

from surgery.formats.keras import layers as K
from surgery.formats.keras.native import to_native
from surgery.errors import SurgeryError
from surgery.graph import Layer, Param

rng = np.random.default_rng(0)


def P(*shape):
    return Param.from_array(rng.standard_normal(shape).astype(np.float32), key="v")


CASES = {
    "Dense": ({"kernel": P(3, 4), "bias": P(4)}, {"weight": (4, 3), "bias": (4,)}),
    "Conv1D": ({"kernel": P(3, 2, 5), "bias": P(5)}, {"weight": (5, 2, 3)}),
    "Conv2D": ({"kernel": P(3, 1, 2, 5), "bias": P(5)}, {"weight": (5, 2, 3, 1)}),
    "Conv3D": ({"kernel": P(1, 3, 3, 2, 5), "bias": P(5)}, {"weight": (5, 2, 1, 3, 3)}),
    "Conv2DTranspose": ({"kernel": P(3, 3, 2, 5), "bias": P(2)}, {"weight": (5, 2, 3, 3)}),
    "DepthwiseConv2D": ({"kernel": P(3, 3, 4, 2), "bias": P(8)}, {"weight": (8, 1, 3, 3)}),
    "SeparableConv2D": ({"depthwise_kernel": P(3, 3, 4, 2), "pointwise_kernel": P(1, 1, 8, 5), "bias": P(5)},
                        {"depthwise.weight": (8, 1, 3, 3), "pointwise.weight": (5, 8, 1, 1)}),
    "BatchNormalization": ({"gamma": P(3), "beta": P(3), "moving_mean": P(3), "moving_variance": P(3)},
                           {"weight": (3,), "running_var": (3,)}),
    "LayerNormalization": ({"gamma": P(3), "beta": P(3)}, {"weight": (3,), "bias": (3,)}),
    "Embedding": ({"embeddings": P(10, 3)}, {"weight": (10, 3)}),
    "LSTM": ({"kernel": P(3, 8), "recurrent_kernel": P(2, 8), "bias": P(8)},
             {"weight_ih_l0": (8, 3), "weight_hh_l0": (8, 2), "bias_ih_l0": (8,), "bias_hh_l0": (8,)}),
    "GRU": ({"kernel": P(3, 6), "recurrent_kernel": P(2, 6), "bias": P(2, 6)},
            {"weight_ih_l0": (6, 3), "bias_ih_l0": (6,), "bias_hh_l0": (6,)}),
    "MultiHeadAttention": ({**{f"{p}/kernel": P(6, 2, 3) for p in ("query", "key", "value")},
                            **{f"{p}/bias": P(2, 3) for p in ("query", "key", "value")},
                            "attention_output/kernel": P(2, 3, 6), "attention_output/bias": P(6)},
                           {"in_proj_weight": (18, 6), "in_proj_bias": (18,), "out_proj.weight": (6, 6)}),
    "PReLU": ({"alpha": P(1, 1, 3)}, {"weight": (3,)}),
}


@pytest.mark.parametrize("cls", CASES)
def test_round_trip_and_shapes(cls):
    variables, shapes = CASES[cls]
    layer = K.to_layer("x", cls, variables)
    for role, shape in shapes.items():
        assert layer.params[role].shape == shape, role
        assert layer.params[role].read().shape == shape, role   # shape known before read agrees with data
    back = to_native(layer, cls)
    for name, param in variables.items():
        assert name in back, f"{cls}: {name} not written back"
        np.testing.assert_array_equal(back[name].read(), param.read(), err_msg=f"{cls}: {name}")


@pytest.mark.parametrize("cls", ["Dense", "Conv2D", "SeparableConv2D", "BatchNormalization", "LSTM", "GRU",
                                 "MultiHeadAttention", "PReLU", "Embedding", "LayerNormalization"])
def test_class_inferred_from_names_and_ranks(cls):
    assert K.infer_class(CASES[cls][0]) == cls


def test_dense_is_a_transpose_and_lazy():
    kernel = P(3, 4)
    calls = []
    lazy = Param(kernel.shape, "float32", lambda: calls.append(1) or kernel.read(), key="fc/kernel")
    layer = K.to_layer("fc", "Dense", {"kernel": lazy})
    assert layer.params["weight"].layout == "IO->OI" and layer.params["weight"].key == "fc/kernel"
    assert not calls, "to_layer read data"
    np.testing.assert_array_equal(layer.params["weight"].read(), kernel.read().T)


def test_gru_gate_order_is_swapped():
    h = 2
    kernel = np.concatenate([np.full((3, h), g, np.float32) for g in (0, 1, 2)], axis=1)   # z, r, h blocks
    layer = K.to_layer("g", "GRU", {"kernel": Param.from_array(kernel), "recurrent_kernel": P(h, 3 * h)})
    rows = layer.params["weight_ih_l0"].read()[:, 0]
    assert rows.tolist() == [1, 1, 0, 0, 2, 2]     # PyTorch r, z, n


def test_lstm_bias_split_and_summed_back():
    bias = P(8)
    layer = K.to_layer("l", "LSTM", {"kernel": P(3, 8), "recurrent_kernel": P(2, 8), "bias": bias})
    assert not layer.params["bias_hh_l0"].read().any()
    torch_like = Layer("l", "lstm", {**layer.params, "bias_hh_l0": Param.from_array(np.ones(8, np.float32))})
    np.testing.assert_allclose(to_native(torch_like, "LSTM")["bias"].read(), bias.read() + 1)


def test_bn_attrs_in_pytorch_meaning():
    layer = K.to_layer("bn", "BatchNormalization", CASES["BatchNormalization"][0],
                       {"epsilon": 0.001, "momentum": 0.9, "trainable": False})
    assert layer.attrs["eps"] == 0.001 and layer.attrs["momentum"] == pytest.approx(0.1)
    assert layer.frozen and "assumed" not in layer.attrs


def test_gru_reset_after_false_refused_from_pytorch():
    torch_gru = Layer("rnn", "gru", {"weight_ih_l0": P(6, 3), "weight_hh_l0": P(6, 2),
                                     "bias_ih_l0": P(6), "bias_hh_l0": P(6)})
    with pytest.raises(SurgeryError, match="GRU layer 'rnn'.*reset_after=False"):
        to_native(torch_gru, "GRU", {"reset_after": False})


def test_mha_needs_heads():
    layer = Layer("att", "multi_head_attention", {"in_proj_weight": P(18, 6), "out_proj.weight": P(6, 6)})
    with pytest.raises(SurgeryError, match="'att'.*heads"):
        to_native(layer, "MultiHeadAttention")


def test_missing_variable_names_the_layer():
    with pytest.raises(SurgeryError, match="'fc1'.*kernel"):
        K.to_layer("fc1", "Dense", {"bias": P(3)})


def test_unknown_class_passes_through():
    v = {"w": P(2, 2)}
    layer = K.to_layer("custom", "MyLayer", v)
    assert layer.kind == "unknown" and layer.params["w"] is v["w"]
    assert to_native(layer, "MyLayer")["w"] is v["w"]


def test_var_name():
    assert K.var_name("seq/gru/gru_cell/kernel:0") == "kernel"
    assert K.var_name("mha/query/bias") == "query/bias"
