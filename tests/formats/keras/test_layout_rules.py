"""Layout rules 1-12 (issue 4): the Keras layer and the PyTorch layer, weights converted with surgery
in each direction, run on the same input; outputs agree within 1e-5 (1e-4 for recurrent layers)."""

from __future__ import annotations

import numpy as np
import pytest

import surgery
from surgery import adapters
from surgery.formats.keras import layers as K
from surgery.formats.keras.native import to_native
from surgery.errors import PlanError
from surgery.graph import Layer, LayerGraph, Param

from tests.conftest import assert_close


def canonical_of_keras(klayer) -> Layer:
    variables = {K.var_name(v.path): Param.from_array(np.asarray(v.numpy()), key=v.path) for v in klayer.weights}
    return K.to_layer(klayer.name, type(klayer).__name__, variables, klayer.get_config())


def canonical_of_torch(module, name="t") -> Layer:
    from surgery.kinds import infer_kind

    params = {k: Param.from_array(v.detach().numpy().copy(), key=k) for k, v in module.state_dict().items()}
    return Layer(name, infer_kind(name, params), params)


def keras_to_torch(klayer, module):
    import torch

    layer = canonical_of_keras(klayer)
    module.load_state_dict({k: torch.from_numpy(p.read().copy()) for k, p in layer.params.items()}, strict=True)
    return layer


def torch_to_keras(module, klayer):
    native = to_native(canonical_of_torch(module), type(klayer).__name__, klayer.get_config())
    for v in klayer.weights:
        v.assign(native[K.var_name(v.path)].read())


def both_ways(keras, torch, klayer, module, x_keras, to_torch_input, atol=1e-5, from_torch_output=lambda y: y):
    """Keras -> PyTorch, compare; scramble Keras, PyTorch -> Keras, compare again."""
    klayer(x_keras)  # build
    keras_to_torch(klayer, module)
    with torch.no_grad():
        out_t = from_torch_output(module(torch.from_numpy(to_torch_input(x_keras))))
    assert_close(np.asarray(klayer(x_keras)), out_t.numpy() if hasattr(out_t, "numpy") else out_t, atol, "keras->torch")
    for v in klayer.weights:
        v.assign(np.random.default_rng(7).standard_normal(v.shape).astype("float32"))
    torch_to_keras(module, klayer)
    with torch.no_grad():
        out_t = from_torch_output(module(torch.from_numpy(to_torch_input(x_keras))))
    assert_close(np.asarray(klayer(x_keras)), out_t.numpy() if hasattr(out_t, "numpy") else out_t, atol, "torch->keras")


def nchw(x):
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


def nhwc(y):
    return np.moveaxis(y.numpy(), 1, -1)


def test_rule1_dense(keras, torch, rng):
    x = rng.standard_normal((2, 7)).astype("float32")
    both_ways(keras, torch, keras.layers.Dense(5), torch.nn.Linear(7, 5), x, lambda a: a)


@pytest.mark.parametrize("rank,groups", [(1, 1), (2, 1), (2, 2), (3, 1)])
def test_rule2_conv(keras, torch, rng, rank, groups):
    klass = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}[rank]
    tclass = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[rank]
    x = rng.standard_normal((2, *([6] * rank), 4)).astype("float32")
    both_ways(keras, torch, klass(6, 3, groups=groups), tclass(4, 6, 3, groups=groups), x, nchw, from_torch_output=nhwc)


def test_rule3_depthwise(keras, torch, rng):
    x = rng.standard_normal((2, 6, 6, 3)).astype("float32")
    both_ways(keras, torch, keras.layers.DepthwiseConv2D(3, depth_multiplier=2),
              torch.nn.Conv2d(3, 6, 3, groups=3), x, nchw, from_torch_output=nhwc)


def test_rule4_separable_into_two_convs_and_back(keras, torch, rng):
    x = rng.standard_normal((2, 6, 6, 3)).astype("float32")
    sep = keras.layers.SeparableConv2D(5, 3, depth_multiplier=2)
    sep(x)
    dw, pw = torch.nn.Conv2d(3, 6, 3, groups=3, bias=True), torch.nn.Conv2d(6, 5, 1)
    src = canonical_of_keras(sep)
    feeds = adapters.feed(src, [canonical_of_torch(dw, "dw"), canonical_of_torch(pw, "pw")])
    for module, name in ((dw, "dw"), (pw, "pw")):
        module.load_state_dict({r: torch.from_numpy(feeds[(name, r)].param.read().copy()) for r in ("weight", "bias")})
    with torch.no_grad():
        out_t = nhwc(pw(dw(torch.from_numpy(nchw(x)))))
    assert_close(np.asarray(sep(x)), out_t, what="separable -> two convs")
    # Back, through the plan: the map merges the two torch convs into the separable layer.
    for v in sep.weights:
        v.assign(np.zeros(v.shape, "float32"))
    kmodel = keras.Sequential([keras.Input((6, 6, 3)), sep])
    src = LayerGraph([canonical_of_torch(dw, "dw"), canonical_of_torch(pw, "pw")])
    with pytest.raises(surgery.StrictError, match="source tensors with no destination: dw.bias"):
        surgery.load_into(kmodel, src, mapping={"merge": {sep.name: ["dw", "pw"]}})  # a depthwise bias: no place
    result = surgery.load_into(kmodel, src, mapping={"merge": {sep.name: ["dw", "pw"]}, "skip": ["dw.bias"]})
    assert result.plan.pairs[0].parts == ["dw", "pw"] and result.plan.unused == []
    assert "dw.bias" in result.plan.skipped and not result.plan.dropped  # zero here, so skipping it is harmless
    assert_close(np.asarray(sep(x)), out_t, what="two convs -> separable")


@pytest.mark.parametrize("rank", [1, 2])
def test_rule5_conv_transpose(keras, torch, rng, rank):
    klass = keras.layers.Conv1DTranspose if rank == 1 else keras.layers.Conv2DTranspose
    tclass = torch.nn.ConvTranspose1d if rank == 1 else torch.nn.ConvTranspose2d
    x = rng.standard_normal((2, *([5] * rank), 4)).astype("float32")
    both_ways(keras, torch, klass(3, 2, strides=2), tclass(4, 3, 2, stride=2), x, nchw, from_torch_output=nhwc)


@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False)])
def test_rule6_batch_norm(keras, torch, rng, center, scale):
    x = rng.standard_normal((4, 3, 3, 5)).astype("float32")
    bn = keras.layers.BatchNormalization(center=center, scale=scale, epsilon=1e-3)
    bn(x)
    for v in bn.weights:   # non-trivial statistics
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
    src = canonical_of_keras(bn)
    module = torch.nn.BatchNorm2d(5, eps=src.attrs["eps"]).eval()   # eps carried from the Keras config
    dst = canonical_of_torch(module, "bn")
    feeds = adapters.feed(src, [dst])
    module.load_state_dict({**module.state_dict(), **{r: torch.from_numpy(f.param.read().copy())
                                                      for (_, r), f in feeds.items()}})
    with torch.no_grad():
        out_t = nhwc(module(torch.from_numpy(nchw(x))))
    assert_close(np.asarray(bn(x, training=False)), out_t, what="batch norm")
    assert src.attrs["eps"] == 1e-3 and src.attrs["momentum"] == pytest.approx(0.01)


def test_rule7_layer_norm_and_embedding(keras, torch, rng):
    x = rng.standard_normal((2, 4, 6)).astype("float32")
    both_ways(keras, torch, keras.layers.LayerNormalization(epsilon=1e-5), torch.nn.LayerNorm(6, eps=1e-5), x, lambda a: a)
    ids = rng.integers(0, 10, (2, 5))
    emb, temb = keras.layers.Embedding(10, 4), torch.nn.Embedding(10, 4)
    emb(ids)
    keras_to_torch(emb, temb)
    assert_close(np.asarray(emb(ids)), temb(torch.from_numpy(ids)).detach().numpy(), what="embedding")


def test_rule8_lstm(keras, torch, rng):
    x = rng.standard_normal((2, 12, 3)).astype("float32")
    both_ways(keras, torch, keras.layers.LSTM(4, return_sequences=True), torch.nn.LSTM(3, 4, batch_first=True),
              x, lambda a: a, atol=1e-4, from_torch_output=lambda out: out[0])


def test_rule9_gru(keras, torch, rng):
    x = rng.standard_normal((2, 12, 3)).astype("float32")
    both_ways(keras, torch, keras.layers.GRU(4, return_sequences=True, reset_after=True),
              torch.nn.GRU(3, 4, batch_first=True), x, lambda a: a, atol=1e-4, from_torch_output=lambda out: out[0])


def test_rule9_gru_reset_after_false_refused(keras, torch, rng):
    gru = keras.layers.GRU(4, reset_after=False, name="old_gru")
    gru(rng.standard_normal((1, 3, 3)).astype("float32"))
    src = canonical_of_keras(gru)
    with pytest.raises(PlanError, match="'old_gru'.*reset_after"):
        adapters.feed(src, [canonical_of_torch(torch.nn.GRU(3, 4), "rnn")])


def _mha_pair(keras, torch, rng):
    x = rng.standard_normal((2, 5, 8)).astype("float32")
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    mha(x, x)
    return x, mha


def test_rule10_attention_fused(keras, torch, rng):
    x, mha = _mha_pair(keras, torch, rng)
    module = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    keras_to_torch(mha, module)
    t = torch.from_numpy(x)
    with torch.no_grad():
        out_t = module(t, t, t, need_weights=False)[0].numpy()
    assert_close(np.asarray(mha(x, x)), out_t, what="keras -> fused")
    for v in mha.weights:
        v.assign(np.zeros(v.shape, "float32"))
    torch_to_keras(module, mha)
    assert_close(np.asarray(mha(x, x)), out_t, what="fused -> keras")


def test_rule10_attention_separate_linears(keras, torch, rng):
    x, mha = _mha_pair(keras, torch, rng)
    linears = [torch.nn.Linear(8, 8) for _ in range(4)]
    names = ["q_proj", "k_proj", "v_proj", "o_proj"]
    feeds = adapters.feed(canonical_of_keras(mha), [canonical_of_torch(m, n) for m, n in zip(linears, names)])
    for m, n in zip(linears, names):
        m.load_state_dict({r: torch.from_numpy(feeds[(n, r)].param.read().copy()) for r in ("weight", "bias")})
    t = torch.from_numpy(x)
    split = lambda a: a.view(2, 5, 2, 4).transpose(1, 2)  # noqa: E731  (batch, heads, seq, head_dim)
    with torch.no_grad():
        att = torch.nn.functional.scaled_dot_product_attention(split(linears[0](t)), split(linears[1](t)), split(linears[2](t)))
        out_t = linears[3](att.transpose(1, 2).reshape(2, 5, 8)).numpy()
    assert_close(np.asarray(mha(x, x)), out_t, what="keras -> q/k/v/o linears")


def test_rule10_four_linears_into_keras_attention(keras, torch, rng):
    """q/k/v/o linears (a Hugging Face style block) merged into one Keras MultiHeadAttention by the map."""
    x, mha = _mha_pair(keras, torch, rng)
    linears = {n: torch.nn.Linear(8, 8) for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
    t = torch.from_numpy(x)
    split = lambda a: a.view(2, 5, 2, 4).transpose(1, 2)  # noqa: E731  (batch, heads, seq, head_dim)
    with torch.no_grad():
        q, k, v = (split(linears[n](t)) for n in ("q_proj", "k_proj", "v_proj"))
        att = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        out_t = linears["o_proj"](att.transpose(1, 2).reshape(2, 5, 8)).numpy()
    inp = keras.Input((5, 8))
    kmodel = keras.Model(inp, mha(inp, inp))
    src = LayerGraph([canonical_of_torch(m, f"attn.{n}") for n, m in linears.items()])
    merge = {mha.name: [f"attn.{n}" for n in linears]}
    result = surgery.load_into(kmodel, src, mapping={"merge": merge}, strict=True)
    transforms = {t.destination: t.transform for p in result.plan.pairs for t in p.tensors}
    assert transforms[f"{mha.name}.in_proj_weight"] == "q, k, v weights -> in_proj_weight"
    assert_close(np.asarray(kmodel(x)), out_t, what="q/k/v/o linears -> keras attention")


def _flatten_nets(keras, torch, permute: bool):
    inp = keras.Input((4, 3, 2))
    x = keras.layers.Conv2D(5, 1, name="conv")(inp)
    if permute:
        x = keras.layers.Permute((2, 1, 3), name="perm")(x)
    x = keras.layers.Flatten(name="flat")(x)
    out = keras.layers.Dense(6, name="fc1")(x)
    kmodel = keras.Model(inp, out)
    conv, fc = torch.nn.Conv2d(2, 5, 1), torch.nn.Linear(60, 6)

    def tnet(t):
        y = conv(t)
        return fc((y.permute(0, 1, 3, 2) if permute else y).flatten(1))

    return kmodel, conv, fc, tnet


@pytest.mark.parametrize("permute", [False, True])
def test_rule11_dense_after_flatten(keras, torch, rng, tmp_path, permute):
    from surgery.formats.keras import archive as keras_format

    kmodel, conv, fc, tnet = _flatten_nets(keras, torch, permute)
    kmodel.save(tmp_path / "m.keras")
    src = keras_format.read(str(tmp_path / "m.keras"))
    assert src["fc1"].attrs["flatten"]["order"] == ("WHC" if permute else "HWC")
    # The PyTorch network flattens NCHW as C,H,W (or C,W,H after its own permute): the map says which.
    options = {"flatten": {"dest_order": "CWH"}} if permute else {}
    for module, name in ((conv, "conv"), (fc, "fc1")):
        feeds = adapters.feed(src[name], [canonical_of_torch(module, name)], options)
        module.load_state_dict({r: torch.from_numpy(f.param.read().copy()) for (_, r), f in feeds.items()})
        if name == "fc1" and not permute:
            assert "assumed" in feeds[("fc1", "weight")].transform
    x = rng.standard_normal((2, 4, 3, 2)).astype("float32")
    with torch.no_grad():
        out_t = tnet(torch.from_numpy(nchw(x))).numpy()
    assert_close(np.asarray(kmodel(x)), out_t, what="flatten rows")


def test_rule11_torch_to_keras_flatten(keras, torch, rng, tmp_path):
    from surgery.formats.keras import archive as keras_format

    kmodel, conv, fc, tnet = _flatten_nets(keras, torch, False)
    kmodel.save(tmp_path / "m.keras")
    dst = keras_format.read(str(tmp_path / "m.keras"))
    for module, name in ((conv, "conv"), (fc, "fc1")):
        feeds = adapters.feed(canonical_of_torch(module, name), [dst[name]])
        params = {**dst[name].params, **{r: f.param for (_, r), f in feeds.items()}}
        native = to_native(Layer(name, dst[name].kind, params, dst[name].attrs), None)
        for v in kmodel.get_layer(name).weights:
            v.assign(native[K.var_name(v.path)].read())
    x = rng.standard_normal((2, 4, 3, 2)).astype("float32")
    with torch.no_grad():
        out_t = tnet(torch.from_numpy(nchw(x))).numpy()
    assert_close(np.asarray(kmodel(x)), out_t, what="torch -> keras flatten rows")


def test_rule12_prelu_and_unknown(keras, torch, rng):
    x = rng.standard_normal((2, 4, 4, 3)).astype("float32")
    both_ways(keras, torch, keras.layers.PReLU(shared_axes=[1, 2]), torch.nn.PReLU(3), x, nchw, from_torch_output=nhwc)
    unknown = Layer("u", "unknown", {"w": Param.from_array(np.arange(4.0))})
    feeds = adapters.feed(unknown, [Layer("u2", "unknown", {"w": Param.from_array(np.zeros(4))})])
    np.testing.assert_array_equal(feeds[("u2", "w")].param.read(), np.arange(4.0))
