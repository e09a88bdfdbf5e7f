"""Every verify backend provides what the Runner protocol promises."""

import inspect

import pytest

from surgery.proof import runner


def _members(protocol: type) -> set[str]:
    return {n for n, v in vars(protocol).items() if inspect.isfunction(v)} | set(protocol.__annotations__)


@pytest.mark.parametrize("module, cls, protocol", [
    ("surgery.proof.torch", "TorchRunner", runner.NativeRunner),
    ("surgery.proof.keras", "KerasRunner", runner.NativeRunner),
    ("surgery.proof.onnx", "OnnxRunner", runner.Runner),
])
def test_backend_has_every_member_of_its_protocol(module, cls, protocol):
    import importlib

    backend = getattr(importlib.import_module(module), cls)
    wanted = _members(runner.Runner) | _members(protocol)
    # attributes set in __init__ (label, data_format) are in the constructor's body
    source = inspect.getsource(backend)
    missing = [m for m in wanted if not hasattr(backend, m) and f"self.{m} =" not in source]
    assert not missing, f"{cls} lacks {missing}"
    assert wanted >= {"run", "trace", "input_specs", "label", "data_format", "framework"}
