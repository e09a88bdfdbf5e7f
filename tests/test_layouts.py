import numpy as np
import pytest

from surgery import layouts


@pytest.mark.parametrize("pair", sorted(layouts.PERMUTATIONS))
def test_every_permutation_round_trips(pair):
    native, canonical = pair
    forward = layouts.permute(native, canonical)
    back = layouts.permute(canonical, native)
    shape = tuple(range(2, 2 + len(native)))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y = forward(x)
    assert y.shape == forward.shape(shape)
    assert np.array_equal(back(y), x)


def test_hwio_to_oihw_moves_the_right_axes():
    kernel = np.zeros((3, 5, 7, 11))  # H, W, I, O
    assert layouts.permute("HWIO", "OIHW")(kernel).shape == (11, 7, 3, 5)
    kernel[1, 2, 3, 4] = 1
    assert layouts.permute("HWIO", "OIHW")(kernel)[4, 3, 1, 2] == 1


def test_identity_and_composition():
    t = layouts.IDENTITY.then(layouts.permute("IO", "OI"))
    assert t.name == "IO->OI"
    x = np.arange(6).reshape(2, 3)
    both = layouts.permute("IO", "OI").then(layouts.permute("OI", "IO"))
    assert np.array_equal(both(x), x) and both.shape((2, 3)) == (2, 3)


def test_unknown_rule_is_an_error():
    from surgery.errors import SurgeryError

    with pytest.raises(SurgeryError, match="no layout rule from ABC to CBA"):
        layouts.permute("ABC", "CBA")


def test_kernel_axes_agree_with_the_permutation_table():
    from surgery.layouts import PERMUTATIONS, kernel_axes

    for ndim, entry in {2: ("IO", "OI"), 3: ("WIO", "OIW"), 4: ("HWIO", "OIHW"), 5: ("DHWIO", "OIDHW")}.items():
        assert kernel_axes(ndim) == PERMUTATIONS[entry], entry


def test_data_formats_move_channels_and_back():
    from surgery.layouts import data_format_shape, to_data_format

    nchw = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    nhwc = to_data_format(nchw, "channels_first", "channels_last")
    assert nhwc.shape == (2, 4, 5, 3) == data_format_shape(nchw.shape, "channels_first", "channels_last")
    assert nhwc[1, 2, 3, 0] == nchw[1, 0, 2, 3]
    assert np.array_equal(to_data_format(nhwc, "channels_last", "channels_first"), nchw)
    assert to_data_format(nchw, "channels_first", None) is nchw  # an unknown side: nothing moves


def test_input_channel_adaptation_as_timm_does_it():
    torch = pytest.importorskip("torch")
    from surgery.layouts import input_channels

    rgb = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    grey_image = np.random.default_rng(1).standard_normal((1, 1, 8, 8)).astype(np.float32)
    conv = lambda w, x: torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w)).numpy()  # noqa: E731
    # a grey image through the summed weights = the same image as R = G = B through the RGB weights
    np.testing.assert_allclose(conv(input_channels(1)(rgb), grey_image), conv(rgb, np.repeat(grey_image, 3, 1)),
                               rtol=1e-5, atol=1e-5)
    four = input_channels(4)(rgb)
    assert four.shape == (4, 4, 3, 3) == input_channels(4).shape(rgb.shape)
    np.testing.assert_allclose(four[:, 3], rgb[:, 0] * 3 / 4)   # repeated cyclically, rescaled


def test_adapt_input_in_the_map():
    import surgery
    from surgery.graph import LayerGraph, Param
    from surgery.kinds import graph_of_params

    rgb = np.random.default_rng(2).standard_normal((4, 3, 3, 3)).astype(np.float32)
    src = graph_of_params({"conv1.weight": Param.from_array(rgb, key="conv1.weight")})
    dst = graph_of_params({"conv1.weight": Param.from_array(np.zeros((4, 1, 3, 3), np.float32), key="conv1.weight")})
    with pytest.raises(surgery.PlanError, match="shapes differ"):
        surgery.plan(src, dst)
    out = surgery.transplant(src, dst, {"adapt_input": ["conv1"]})
    np.testing.assert_allclose(out.graph["conv1"].params["weight"].read(), rgb.sum(1, keepdims=True))
    assert "input channels -> 1 (adapted)" in out.plan.pairs[0].tensors[0].transform
    assert isinstance(src, LayerGraph)
