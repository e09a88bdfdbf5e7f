"""Shared fixtures: paths to the committed fixture files, a CLI runner."""

from __future__ import annotations

import pathlib

import pytest
from click.testing import CliRunner

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
TORCH = FIXTURES / "torch"


@pytest.fixture
def run():
    """Run the CLI in-process: ``run("inspect", path)`` -> click Result (stdout, stderr, exit_code)."""
    from surgery.cli import cli

    def invoke(*args: object):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


def raw(arr):
    """The bytes of an array as uint8, for bit-exact comparisons of any dtype (0-d included)."""
    import numpy as np

    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


def assert_same_as_torch(state, tensors):
    """Every ``name -> Param`` equals the framework's ``name -> torch.Tensor``: names, shapes, dtypes, bits.

    The failing key is named in the assertion message.
    """
    import numpy as np

    from surgery.formats.torch.common import to_numpy

    assert set(state) == set(tensors), sorted(set(state) ^ set(tensors))
    for key, tensor in tensors.items():
        param = state[key]
        assert param.shape == tuple(tensor.shape), key
        assert param.dtype == str(tensor.dtype).removeprefix("torch."), key
        assert np.array_equal(raw(param.read()), raw(to_numpy(tensor))), key
