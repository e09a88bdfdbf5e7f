"""Shared tiny models for the verify tests, built once per session in a temporary folder."""

from __future__ import annotations

import pathlib

import pytest
import torch

from . import nets

FACTORY = "tests.verify.nets:build"


@pytest.fixture(scope="session")
def small_pt(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The state_dict of ``nets.build()``."""
    path = tmp_path_factory.mktemp("small") / "small.pt"
    torch.save(nets.build().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def small_onnx(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """``nets.build()`` exported by the TorchScript exporter (fast; node names carry module paths)."""
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    torch.onnx.export(nets.build(), (torch.zeros(nets.INPUT_SHAPE),), str(path), dynamo=False,
                      input_names=["x"], output_names=["logits"])
    return path
