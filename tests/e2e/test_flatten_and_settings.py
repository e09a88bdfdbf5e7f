"""Cases a review of the Keras paths found: each was silently wrong or wrongly warned before."""

from __future__ import annotations

import json

import numpy as np
import yaml

import surgery
from surgery.graph import LayerGraph, Param
from tests.conftest import TORCH

from tests.conftest import KERAS_FIXTURES, assert_close
from surgery.kinds import graph_of_params

REVERSE = {"layers": {"features.0": "block1_conv1", "features.2": "block1_bn", "features.4": "block2_conv1",
                      "features.6": "block2_bn", "classifier.1": "fc1", "classifier.3": "predictions"},
           # the .pt records no architecture: say how the port flattened (C, H, W) and Keras does (H, W, C)
           "flatten": {"classifier.1": {"shape": [16, 4, 4], "source_order": "CHW", "dest_order": "HWC"}}}


def test_pytorch_into_a_live_keras_model_reorders_the_flatten_rows(keras, tmp_path):
    port = tmp_path / "port.pt"
    surgery.save(surgery.transplant(KERAS_FIXTURES / "vgg.h5", TORCH / "vgg_port10.pt", TORCH / "keras_full_map.yaml"), port)
    model = keras.saving.load_model(KERAS_FIXTURES / "vgg.keras")
    expected = np.asarray(model(np.load(KERAS_FIXTURES / "input.npy")))
    for v in model.weights:
        v.assign(np.zeros(v.shape, v.dtype))
    result = surgery.load_into(model, port, mapping=REVERSE)
    transforms = {t.destination: t.transform for p in result.plan.pairs for t in p.tensors}
    assert "flatten rows CHW->HWC" in transforms["fc1.weight"]
    assert_close(np.asarray(model(np.load(KERAS_FIXTURES / "input.npy"))), expected, atol=1e-5, what="torch -> live keras")


def test_a_file_without_architecture_asks_for_the_flatten_order():
    mapping = yaml.safe_load((TORCH / "keras_full_map.yaml").read_text())
    del mapping["flatten"]  # the map says nothing of the Flatten: the plan must ask
    plan = surgery.plan(KERAS_FIXTURES / "vgg.weights.h5", TORCH / "vgg_port10.pt", mapping)
    flagged = [d.message for d in plan.assumed if "whether a Flatten" in d.message]
    assert not plan.strict_ok
    assert len(flagged) == 1 and flagged[0].startswith("fc1 -> classifier.1")  # not `predictions`, fed by fc1
    assert any("block1_bn: the source file records no config" in w for w in plan.warnings)


def test_no_activation_warning_for_recurrent_layers_and_no_groups_warning_for_separable_splits(keras, torch):
    from tests.formats.keras.test_layout_rules import canonical_of_keras

    lstm = keras.layers.LSTM(3)
    lstm(np.zeros((1, 2, 4), "float32"))
    dst = graph_of_params({f"lstm.{k}": Param.from_array(v.detach().numpy()) for k, v in
                                  torch.nn.LSTM(4, 3).state_dict().items()})
    src = LayerGraph([canonical_of_keras(lstm)])
    plan = surgery.plan(src, dst, {"rename": {"^.*$": "lstm"}})
    assert plan.pairs, plan
    assert not any("activation" in w for w in plan.warnings), plan.warnings
    sep = keras.layers.SeparableConv2D(5, 3, depth_multiplier=2)
    sep(np.zeros((1, 6, 6, 3), "float32"))
    convs = {"dw": torch.nn.Conv2d(3, 6, 3, groups=3, bias=False), "pw": torch.nn.Conv2d(6, 5, 1)}
    dst = graph_of_params({f"{n}.{k}": Param.from_array(v.detach().numpy())
                                  for n, m in convs.items() for k, v in m.state_dict().items()})
    plan = surgery.plan(LayerGraph([canonical_of_keras(sep)]), dst, {"layers": {sep.name: ["dw", "pw"]}})
    assert not any("groups" in w for w in plan.warnings), plan.warnings


def test_an_assumed_eps_is_reported_but_not_written(tmp_path):
    out = tmp_path / "back.keras"
    surgery.save(surgery.transplant(TORCH / "vgg_port10.pt", KERAS_FIXTURES / "vgg.keras", REVERSE), out)
    config = json.loads(__import__("zipfile").ZipFile(out).read("config.json"))
    eps = [l["config"]["epsilon"] for l in config["config"]["layers"] if l["class_name"] == "BatchNormalization"]
    assert eps == [0.001, 0.001]  # the .pt records no eps: PyTorch's default is only assumed, so it is not imposed
