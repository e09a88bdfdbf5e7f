"""TensorFlow is imported once per session, and only by the tests that ask for it."""

from __future__ import annotations

import os
import pathlib

import pytest

TF_FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "tf"
TF2 = TF_FIXTURES / "tf2" / "ckpt"
TF1 = TF_FIXTURES / "tf1" / "model.ckpt"
SAVED_MODEL = TF_FIXTURES / "saved_model"


@pytest.fixture(scope="session")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    return tensorflow
