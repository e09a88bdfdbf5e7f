"""Keras tests: Keras/TensorFlow imported once per session, quietly; tiny layers only."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

KERAS_FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "keras"


@pytest.fixture(scope="session")
def keras():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    return keras


@pytest.fixture(scope="session")
def torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def assert_close(a, b, atol=1e-5, what=""):
    """Outputs agree within ``atol`` (absolute), with the worst difference in the message."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    worst = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert worst <= atol, f"{what}: max abs diff {worst:.3g} > {atol}"
