"""Damaged files: whatever the damage, a reader either reads the file or raises one SurgeryError.

Deterministic mutations (truncations and byte flips) of real fixtures; no other
exception type may escape, since the CLI would then print a traceback.
"""

import random

import pytest

import surgery
from surgery.errors import SurgeryError
from tests.conftest import FIXTURES, TORCH


def _mutants(data: bytes, seed: int, count: int):
    rng = random.Random(seed)
    for i in range(count):
        if i % 3 == 0:
            yield data[: rng.randrange(len(data))]
        else:
            buf = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(min(len(buf), 4096) if i % 2 else len(buf))  # often the header
                buf[pos] = rng.randrange(256)
            yield bytes(buf)


FILES = [TORCH / "cnn_source.safetensors", TORCH / "low_precision.safetensors", TORCH / "cnn_source.pt",
         TORCH / "tied.pt", FIXTURES / "keras" / "vgg.keras", FIXTURES / "keras" / "vgg.h5",
         FIXTURES / "keras" / "vgg.weights.h5", FIXTURES / "onnx" / "cnn.onnx", FIXTURES / "torchscript" / "tiny.ts",
         FIXTURES / "torchscript" / "tiny.pt2"]


@pytest.mark.parametrize("source", FILES, ids=lambda p: p.name)
def test_damaged_checkpoints_raise_surgery_errors_only(tmp_path, source):
    name = source.name
    data = source.read_bytes()
    outcomes = {"read": 0, "refused": 0}
    for i, mutant in enumerate(_mutants(data, seed=len(name), count=60)):
        path = tmp_path / f"m{i}{source.suffix}"
        path.write_bytes(mutant)
        try:
            graph = surgery.load(path)
            for _, param in graph.tensors():
                param.read()
            outcomes["read"] += 1
        except SurgeryError as e:
            assert str(path) in str(e), e
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0, outcomes
