"""Keras <-> PyTorch through surgery's own transplant / load_into, outputs compared with the frameworks."""

from __future__ import annotations

import numpy as np
import pytest

import surgery
from surgery.errors import PlanError

from tests.conftest import KERAS_FIXTURES, assert_close
from surgery.kinds import graph_of_params

pytestmark = pytest.mark.zoo  # a zoo row: make zoo runs every test so marked

VGG_MAP = {"version": 1, "layers": {
    "block1_conv1": "features.0", "block1_bn": "features.2", "block2_conv1": "features.4",
    "block2_bn": "features.6", "fc1": "classifier.1", "predictions": "classifier.3"},
    "flatten": {"fc1": {"shape": [4, 4, 16], "source_order": "HWC", "dest_order": "CHW"}}}


def torch_vgg(torch, eps=1e-3):
    nn = torch.nn
    net = nn.Module()
    net.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(8, eps=eps), nn.MaxPool2d(2),
                                 nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(16, eps=eps), nn.MaxPool2d(2))
    net.classifier = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10))
    net.forward = lambda x: net.classifier(net.features(x))
    return net.eval()


@pytest.mark.parametrize("file", ["vgg.h5", "vgg.keras"])
def test_headline_keras_cnn_into_pytorch(torch, file):
    net = torch_vgg(torch)
    result = surgery.load_into(net, KERAS_FIXTURES / file, mapping=VGG_MAP, freeze=["features.*"])
    transforms = {t.destination: t.transform for p in result.plan.pairs for t in p.tensors}
    assert "flatten rows HWC->CHW" in transforms["classifier.1.weight"]
    x = np.load(KERAS_FIXTURES / "input.npy")
    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    assert_close(out, np.load(KERAS_FIXTURES / "output.npy"), atol=1e-5, what=f"{file} -> torch")
    assert not any(p.requires_grad for p in net.features.parameters())


def test_load_into_sets_the_source_eps_on_a_live_module(torch):
    net = torch_vgg(torch, eps=1e-5)
    result = surgery.load_into(net, KERAS_FIXTURES / "vgg.h5", mapping=VGG_MAP)
    assert any("block1_bn -> features.2: eps is 0.001" in w for w in result.plan.warnings)
    assert net.features[2].eps == pytest.approx(1e-3) and net.features[6].eps == pytest.approx(1e-3)
    x = np.load(KERAS_FIXTURES / "input.npy")
    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    assert_close(out, np.load(KERAS_FIXTURES / "output.npy"), atol=1e-5, what="eps carried")


def test_headline_without_flatten_rule_differs(torch):
    """The check above can fail: with the rows left in Keras order the outputs differ."""
    net = torch_vgg(torch)
    surgery.load_into(net, KERAS_FIXTURES / "vgg.h5",
                      mapping={**VGG_MAP, "flatten": {"fc1": {"shape": [4, 4, 16], "source_order": "HWC",
                                                              "dest_order": "HWC"}}})
    x = np.load(KERAS_FIXTURES / "input.npy")
    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    assert np.max(np.abs(out - np.load(KERAS_FIXTURES / "output.npy"))) > 1e-3


def _keras_rnn(keras, reset_after=True):
    keras.utils.set_random_seed(3)
    inp = keras.Input((12, 3))
    x = keras.layers.LSTM(4, return_sequences=True, name="lstm")(inp)
    x = keras.layers.GRU(5, return_sequences=True, reset_after=reset_after, name="gru")(x)
    out = keras.layers.Dense(2, name="fc")(x)
    return keras.Model(inp, out)


class TorchRNN:
    def __init__(self, torch):
        nn = torch.nn
        self.net = nn.ModuleDict({"lstm": nn.LSTM(3, 4, batch_first=True), "gru": nn.GRU(4, 5, batch_first=True),
                                  "fc": nn.Linear(5, 2)})

    def __call__(self, x):
        y = self.net["lstm"](x)[0]
        return self.net["fc"](self.net["gru"](y)[0])


def test_keras_file_to_pytorch_state_dict_and_back(keras, torch, tmp_path, rng):
    kmodel = _keras_rnn(keras)
    kmodel.save(tmp_path / "src.keras")
    tnet = TorchRNN(torch)
    torch.save(tnet.net.state_dict(), tmp_path / "dst.pt")
    result = surgery.transplant(tmp_path / "src.keras", tmp_path / "dst.pt")
    surgery.save(result, tmp_path / "out.pt")
    tnet.net.load_state_dict(torch.load(tmp_path / "out.pt", weights_only=True))
    x = rng.standard_normal((2, 12, 3)).astype("float32")
    with torch.no_grad():
        out_t = tnet(torch.from_numpy(x)).numpy()
    assert_close(np.asarray(kmodel(x)), out_t, atol=1e-4, what="keras -> torch (LSTM, GRU, Dense)")
    # And back: the PyTorch weights into a fresh Keras file of the same architecture.
    _keras_rnn(keras).save(tmp_path / "blank.keras")
    back = surgery.transplant(tmp_path / "out.pt", tmp_path / "blank.keras")
    surgery.save(back, tmp_path / "back.keras")
    again = keras.saving.load_model(tmp_path / "back.keras")
    assert_close(np.asarray(again(x)), out_t, atol=1e-4, what="torch -> keras file")


def test_gru_reset_after_false_refused_by_transplant(keras, torch, tmp_path):
    _keras_rnn(keras, reset_after=False).save(tmp_path / "old.keras")
    torch.save(TorchRNN(torch).net.state_dict(), tmp_path / "dst.pt")
    with pytest.raises(PlanError, match="GRU 'gru'.*reset_after"):
        surgery.transplant(tmp_path / "old.keras", tmp_path / "dst.pt")


def test_load_into_live_keras_model(keras, torch, rng):
    tnet = TorchRNN(torch)
    kmodel = _keras_rnn(keras)
    from surgery.live import keras as live

    graph = live.graph_of(kmodel)
    assert [l.kind for l in graph] == ["lstm", "gru", "dense"]
    src = graph_of_params({k: surgery.Param.from_array(v.detach().numpy().copy(), key=k)
                                          for k, v in tnet.net.state_dict().items()})
    result = surgery.load_into(kmodel, src, freeze=["lstm"])
    assert result.plan.pairs
    x = rng.standard_normal((2, 12, 3)).astype("float32")
    with torch.no_grad():
        out_t = tnet(torch.from_numpy(x)).numpy()
    assert_close(np.asarray(kmodel(x)), out_t, atol=1e-4, what="torch -> live keras")
    assert not kmodel.get_layer("lstm").trainable and kmodel.get_layer("gru").trainable


def test_surgery_load_into_dispatches_to_keras(keras, tmp_path):
    kmodel = keras.saving.load_model(KERAS_FIXTURES / "vgg.keras")
    for v in kmodel.get_layer("fc1").weights:
        v.assign(np.zeros(v.shape, "float32"))
    surgery.load_into(kmodel, KERAS_FIXTURES / "vgg.h5", freeze=["block1_*"])
    x = np.load(KERAS_FIXTURES / "input.npy")
    assert_close(np.asarray(kmodel(x, training=False)), np.load(KERAS_FIXTURES / "output.npy"), what="h5 -> live keras")
    assert not kmodel.get_layer("block1_conv1").trainable
