import shutil
import zipfile

import pytest
import torch

import surgery
from surgery.errors import FormatError, UnsafePickleError
from surgery.formats.torch import state_dict as torch_format
from tests.conftest import TORCH, assert_same_as_torch, raw


@pytest.mark.parametrize("name", ["cnn_source.pt", "zoo.pt", "legacy.pt", "low_precision.pt", "tied.pt"])
def test_reader_matches_torch_load_key_by_key(name):
    graph = surgery.load(TORCH / name)
    assert_same_as_torch(graph.state(), torch.load(TORCH / name, weights_only=True))


def test_wrapped_checkpoint_is_unwrapped_and_reported():
    graph = surgery.load(TORCH / "wrapped.pt")
    assert_same_as_torch(graph.state(), torch.load(TORCH / "wrapped.pt", weights_only=True)["state_dict"])
    assert any("checkpoint['state_dict']" in n for n in graph.notes)


def test_ddp_prefix_is_stripped_and_reported():
    graph = surgery.load(TORCH / "ddp_prefix.pt")
    assert "features.0" in graph and not any(n.startswith("module.") for n in graph.layers)
    assert any("'module.'" in n for n in graph.notes)


def test_pickle_needing_code_is_refused_with_the_flag_named():
    with pytest.raises(UnsafePickleError, match="--unsafe-pickle") as info:
        surgery.load(TORCH / "needs_unsafe.pickle.pt")
    assert "needs_unsafe.pickle.pt" in str(info.value)
    graph = surgery.load(TORCH / "needs_unsafe.pickle.pt", unsafe_pickle=True)
    assert "features.0" in graph


def test_damaged_files_are_refused(tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes((TORCH / "cnn_source.pt").read_bytes()[:3000])
    with pytest.raises(FormatError, match="cut.pt"):
        surgery.load(cut).state()
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(FormatError, match="notes.pt"):
        surgery.load(text)
    scalar = tmp_path / "scalar.pt"
    torch.save(3, scalar)
    with pytest.raises(FormatError, match="no state_dict found"):
        surgery.load(scalar)


def test_sniff_tells_zip_and_legacy_pickles(tmp_path):
    # Names whose suffix says nothing: only the content can tell.
    for name in ("cnn_source.pt", "legacy.pt"):
        shutil.copy(TORCH / name, tmp_path / f"{name}.checkpoint")
        assert torch_format.sniff(str(tmp_path / f"{name}.checkpoint")), name
    (tmp_path / "notes.checkpoint").write_bytes(b"\x80\x04not a torch legacy pickle")
    assert not torch_format.sniff(str(tmp_path / "notes.checkpoint"))
    assert zipfile.is_zipfile(TORCH / "cnn_source.pt") and not zipfile.is_zipfile(TORCH / "legacy.pt")


def test_kinds_inferred_from_a_state_dict():
    graph = surgery.load(TORCH / "zoo.pt")
    kinds = {layer.name: layer.kind for layer in graph}
    assert kinds == {"embed": "embedding", "conv1": "conv1d", "conv3": "conv3d", "norm": "layer_norm",
                     "lstm": "lstm", "gru": "gru", "attn": "multi_head_attention", "bn": "batch_norm", "fc": "dense"}
    assert set(graph["attn"].params) == {"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"}
    assert "num_batches_tracked" in graph["bn"].params


def test_write_round_trip_read_by_torch(tmp_path):
    graph = surgery.load(TORCH / "low_precision.safetensors")
    out = tmp_path / "out.pt"
    surgery.save(graph, out)
    back = torch.load(out, weights_only=True)
    assert_same_as_torch(graph.state(), back)


def test_write_keeps_wrapper_and_prefix(tmp_path):
    for name, check in (("wrapped.pt", lambda o: o["epoch"] == 3 and "optimizer" in o and "features.0.weight" in o["state_dict"]),
                        ("ddp_prefix.pt", lambda o: "module.features.0.weight" in o)):
        out = tmp_path / name
        surgery.save(surgery.load(TORCH / name), out)
        assert check(torch.load(out, weights_only=True)), name


def test_tied_tensors_written_as_one_storage(tmp_path):
    out = tmp_path / "tied.pt"
    surgery.save(surgery.load(TORCH / "tied.safetensors"), out)
    back = torch.load(out, weights_only=True)
    assert back["lm_head.weight"].untyped_storage().data_ptr() == back["embed.weight"].untyped_storage().data_ptr()


def test_written_archive_is_a_valid_zip_with_crcs(tmp_path):
    import zipfile

    original = torch.load(TORCH / "cnn_source.pt", weights_only=True)
    wrapped = tmp_path / "wrapped.pt"  # the wrapper holds tensors of its own, which must be written too
    torch.save({"state_dict": original, "ema": {"decay": torch.tensor(0.999)}, "step": torch.arange(3)}, wrapped)
    out = tmp_path / "out.pt"
    surgery.save(surgery.load(wrapped), out)
    with zipfile.ZipFile(out) as z:
        assert z.testzip() is None  # every record's CRC-32 matches its bytes
    back = torch.load(out, weights_only=True, mmap=True)
    assert_same_as_torch(surgery.load(out).state(), original)
    assert torch.equal(back["ema"]["decay"], torch.tensor(0.999)) and torch.equal(back["step"], torch.arange(3))


@pytest.mark.parametrize("name", ["cnn_source.pt", "wrapped.pt", "tied.pt", "low_precision.pt"])
def test_zip_checkpoints_are_read_by_file_span_not_through_the_mapping(name):
    # Every tensor gets a file offset, so reading it never makes the memory-mapped pages resident.
    state, _ = torch_format._find_state(name, torch_format.load_pickle(str(TORCH / name), False))
    spans = torch_format._file_spans(str(TORCH / name), state)
    assert set(spans) == set(state)
    with open(TORCH / name, "rb") as f:
        for key, tensor in state.items():
            f.seek(spans[key])
            assert f.read(tensor.nbytes) == raw(torch_format.to_numpy(tensor)).tobytes(), key
