"""DeepSpeed ZeRO checkpoints, read without DeepSpeed, against what DeepSpeed itself reconstructs.

The fixtures (``fixtures/deepspeed_fixtures.py``) are real DeepSpeed 0.19.8 checkpoints of a tiny
transformers GPT-2 trained two steps on CPU/gloo: stages 1, 2 and 3, one and two ranks. Each holds
``expected.safetensors``: the fp32 weights ``deepspeed.utils.zero_to_fp32`` returned for it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil

import numpy as np
import pytest
import torch

import surgery
from surgery.errors import FormatError, UnsafePickleError
from tests.conftest import TORCH

ZERO = TORCH / "zero"
CASES = sorted(p.name for p in ZERO.iterdir())


def _expected(case: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(ZERO / case / "expected.safetensors"))


def test_every_stage_and_world_size_is_a_fixture():
    assert CASES == [f"stage{s}_ws{n}" for s in (1, 2, 3) for n in (1, 2)]
    assert importlib.util.find_spec("deepspeed") is None, "these tests prove the reader needs no DeepSpeed"


@pytest.mark.parametrize("case", CASES)
def test_the_fp32_weights_equal_deepspeeds_own_key_by_key(case):
    expected = _expected(case)
    graph = surgery.load(ZERO / case)   # the parent folder: its `latest` names global_step2
    got = dict(graph.tensors())
    assert sorted(got) == sorted(expected), f"keys read {sorted(set(got) ^ set(expected))} differ from DeepSpeed's"
    for key, want in expected.items():
        arr = got[key].read()
        assert got[key].dtype == "float32" and arr.shape == want.shape, key
        assert np.array_equal(arr, want), f"{key}: differs from DeepSpeed's reconstruction"
    assert graph.format == "zero" and any("ZeRO stage" in n for n in graph.notes)


def test_the_step_folder_reads_as_its_parent():
    a = dict(surgery.load(ZERO / "stage3_ws2").tensors())
    b = dict(surgery.load(ZERO / "stage3_ws2" / "global_step2").tensors())
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k].read(), b[k].read()) for k in a)


def test_tied_weights_stay_one_storage():
    graph = surgery.load(ZERO / "stage2_ws2")
    assert any("lm_head.weight is tied to transformer.wte.weight" in n for n in graph.notes)


def test_convert_to_safetensors_through_the_cli(run, tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "model.safetensors"
    result = run("convert", ZERO / "stage3_ws2", out, "-q")
    assert result.exit_code == 0, result.stderr
    written = load_file(str(out))
    for key, want in _expected("stage3_ws2").items():
        if key in written:
            assert np.array_equal(written[key], want), key
    assert set(_expected("stage3_ws2")) - set(written) <= {"lm_head.weight"}   # a tied alias is stored once
    assert "ZeRO stage 3, 2 ranks" in run("inspect", ZERO / "stage3_ws2").stdout


def _copy(tmp_path, case: str):
    shutil.copytree(ZERO / case, tmp_path / case)
    return tmp_path / case, tmp_path / case / "global_step2"


def _save(state: dict, path) -> None:
    """``torch.save`` beside, then renamed over: the old file is memory-mapped by the state being saved."""
    torch.save(state, f"{path}.new")
    os.replace(f"{path}.new", path)


def _plain(path) -> dict:
    """An optimizer-states file loaded with the reader's stand-ins, its DeepSpeed objects made plain values."""
    from surgery.formats.torch.state_dict import load_pickle
    from surgery.formats.torch.zero import STAND_INS

    state = load_pickle(str(path), False, stand_ins=STAND_INS)
    zero = state["optimizer_state_dict"]
    zero["zero_stage"] = int(zero["zero_stage"])
    zero.pop("loss_scaler", None)
    zero.pop("param_slice_mappings", None)
    state.pop("ds_config", None)
    return state


def test_a_missing_rank_is_refused(tmp_path):
    root, step = _copy(tmp_path, "stage2_ws2")
    os.unlink(step / "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    with pytest.raises(FormatError, match=r"saved by 2 ranks, but 1 optimizer files are here"):
        surgery.load(root)


@pytest.mark.parametrize("case", ["stage2_ws2", "stage3_ws2"])
def test_a_partition_cut_short_is_refused(tmp_path, case):
    root, step = _copy(tmp_path, case)
    name = step / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    state = _plain(name)
    key = "fp32_flat_groups" if case.startswith("stage3") else "single_partition_of_fp32_groups"
    groups = state["optimizer_state_dict"][key]
    groups[0] = groups[0][: groups[0].numel() // 2].clone()
    _save(state, name)
    with pytest.raises(FormatError, match=r"cut short|disagree"):
        surgery.load(root)


def test_a_pickle_naming_another_class_is_refused_naming_it(tmp_path):
    root, step = _copy(tmp_path, "stage2_ws1")
    name = step / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    state = _plain(name)
    state["args"] = argparse.Namespace(lr=0.1)
    _save(state, name)
    with pytest.raises(UnsafePickleError, match=r"argparse.Namespace"):
        surgery.load(root)
    graph = surgery.load(root, allow_globals=["argparse.Namespace"])   # admitted by name, as for any .pt
    assert sorted(k for k, _ in graph.tensors()) == sorted(_expected("stage2_ws1"))


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['SURGERY_TEST_MARKER']}",))


def test_a_malicious_pickle_does_not_run(tmp_path, monkeypatch):
    root, step = _copy(tmp_path, "stage1_ws1")
    marker = tmp_path / "ran"
    monkeypatch.setenv("SURGERY_TEST_MARKER", str(marker))
    name = step / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    state = _plain(name)
    state["boom"] = _Boom()
    _save(state, name)
    with pytest.raises(UnsafePickleError, match=r"posix.system|os.system"):
        surgery.load(root)
    assert not marker.exists()


def test_a_tensor_parallel_checkpoint_is_refused(tmp_path):
    root, step = _copy(tmp_path, "stage2_ws1")
    shutil.copy(step / "mp_rank_00_model_states.pt", step / "mp_rank_01_model_states.pt")
    shutil.copy(step / "zero_pp_rank_0_mp_rank_00_optim_states.pt", step / "zero_pp_rank_0_mp_rank_01_optim_states.pt")
    with pytest.raises(FormatError, match=r"tensor-parallel"):
        surgery.load(root)
