"""Make the hostile-input corpus under ``tests/hostile/corpus/`` (run: ``python tests/hostile/make_corpus.py``).

Each file is a small bad checkpoint or map derived from a valid fixture or
written byte by byte; ``cases.py`` says which command reads it and what one-line
message it must give. Everything is deterministic; the files total a few MB.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import struct
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = pathlib.Path(__file__).resolve().parent / "corpus"
FIX = ROOT / "fixtures"
MARKER = "/tmp/surgery-hostile-marker"  # the malicious pickles would create it


def st(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file from a header (dict or raw bytes), its data, and an optional lying length."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def make_safetensors() -> None:
    good = {"l.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    files = {
        "st_truncated_data.safetensors": st(good, b"\0" * 8),
        "st_truncated_header.safetensors": st(good)[:20],
        "st_header_len_2_63.safetensors": st(good, b"\0" * 16, length=2**63),
        "st_header_not_json.safetensors": st(b"{not json at all" + b" " * 8, b""),
        "st_offsets_past_end.safetensors": st({"l.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 1 << 40]}}, b"\0" * 16),
        "st_overlap.safetensors": st({"a.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                                      "b.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]}}, b"\0" * 24),
        "st_shape_bytes_mismatch.safetensors": st({"l.weight": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 16]}}, b"\0" * 16),
        "st_unknown_dtype.safetensors": st({"l.weight": {"dtype": "F99", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 16),
        "st_duplicate_names.safetensors": st(b'{"l.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},'
                                             b'"l.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}', b"\0" * 16),
        "st_negative_shape.safetensors": st({"l.weight": {"dtype": "F32", "shape": [-2, -2], "data_offsets": [0, 16]}}, b"\0" * 16),
        "st_float_shape.safetensors": st({"l.weight": {"dtype": "F32", "shape": [2.5, 2], "data_offsets": [0, 16]}}, b"\0" * 16),
        "st_gigantic_shape.safetensors": st({"l.weight": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 16]}}, b"\0" * 16),
        "st_header_not_object.safetensors": st(b"[1, 2, 3]  ", b""),
        "st_empty.safetensors": b"",
        # Found by tests/fuzz: a dtype that is not a string raised TypeError; JSON true passed as a dimension.
        "st_dtype_not_string.safetensors": st({"l.weight": {"dtype": ["F32"], "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 16),
        "st_bool_shape.safetensors": st({"l.weight": {"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]}}, b"\0" * 16),
    }
    for name, data in files.items():
        (OUT / name).write_bytes(data)
    for name, shard in (("st_index_missing_shard", "model-00002.safetensors"), ("st_index_outside", "../../etc/passwd")):
        folder = OUT / name
        folder.mkdir()
        (folder / "model-00001.safetensors").write_bytes(st(good, b"\0" * 16))
        index = {"metadata": {}, "weight_map": {"l.weight": "model-00001.safetensors", "m.weight": shard}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))


class Evil:
    """Unpickling this runs ``touch MARKER``: the corpus proves it never happens."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def make_torch() -> None:
    import torch

    torch.save({"l.weight": torch.ones(2, 2), "evil": Evil()}, OUT / "pt_evil_zip.pt")
    torch.save({"l.weight": torch.ones(2, 2), "evil": Evil()}, OUT / "pt_evil_legacy.pt", _use_new_zipfile_serialization=False)
    src = FIX / "torch" / "cnn_source.pt"
    with zipfile.ZipFile(src) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    def rezip(name: str, edit) -> None:
        with zipfile.ZipFile(OUT / name, "w") as z:
            for member, data in members.items():
                data = edit(member, data)
                if data is not None:
                    z.writestr(member, data)
    rezip("pt_no_data_pkl.pt", lambda m, d: None if m.endswith("data.pkl") else d)
    rezip("pt_storage_short.pt", lambda m, d: d[:3] if "/data/" in m and not m.endswith(".pkl") else d)
    (OUT / "pt_truncated.pt").write_bytes(src.read_bytes()[:700])
    # Found by tests/fuzz: member names garbled in a local header made the unsafe-pickle refusal raise UnicodeDecodeError.
    garbled = bytearray((FIX / "torch" / "low_precision.pt").read_bytes())
    garbled[47:94] = b"\xff" * 47
    (OUT / "pt_garbled_member_name.pt").write_bytes(bytes(garbled))
    (OUT / "pt_legacy_truncated.pt").write_bytes((FIX / "torch" / "legacy.pt").read_bytes()[:100])
    script = FIX / "torchscript" / "tiny.ts"
    with zipfile.ZipFile(script) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    with zipfile.ZipFile(OUT / "ts_corrupt_code.ts", "w") as z:
        for member, data in members.items():
            z.writestr(member, b"def forward(self x):\n  return !!\n" if "/code/" in member and member.endswith(".py") else data)


def make_keras() -> None:
    weights = (FIX / "keras" / "vgg.weights.h5").read_bytes()
    (OUT / "h5_truncated.weights.h5").write_bytes(weights[: len(weights) // 2])
    (OUT / "h5_garbage.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\xff" * 600)
    # Found by tests/fuzz: one byte inserted mid-file shifts every address after it, and reading the
    # `layer_names` attribute then never returned from the HDF5 library.
    legacy = (FIX / "keras" / "vgg.h5").read_bytes()
    (OUT / "h5_inserted_byte.h5").write_bytes(legacy[:12899] + b"\x00" + legacy[12899:])
    make_h5_datasets()
    with zipfile.ZipFile(FIX / "keras" / "vgg.keras") as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    config = json.loads(members["config.json"])
    lam = json.loads(json.dumps(config))
    lam["config"]["layers"].append({"module": "keras.layers", "class_name": "Lambda", "name": "evil",
                                    "config": {"name": "evil", "function": {"class_name": "__lambda__",
                                               "config": {"code": "4wEAAAAAAAAA", "defaults": None, "closure": None}}}})
    custom = json.loads(json.dumps(config))
    custom["config"]["layers"][-1]["module"] = "mymodule.evil"
    custom["config"]["layers"][-1]["class_name"] = "Backdoor"
    for name, cfg in (("keras_lambda.keras", lam), ("keras_custom_object.keras", custom)):
        with zipfile.ZipFile(OUT / name, "w", zipfile.ZIP_DEFLATED) as z:
            for member, data in members.items():
                z.writestr(member, json.dumps(cfg) if member == "config.json" else data)
    with zipfile.ZipFile(OUT / "keras_zip_bomb.keras", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("metadata.json", members["metadata.json"])
        z.writestr("config.json", b" " * (1 << 30) + b"{}")  # 1 GB of spaces: ~1 MB compressed
        z.writestr("model.weights.h5", members["model.weights.h5"])
    with zipfile.ZipFile(OUT / "keras_config_not_json.keras", "w") as z:
        for member, data in members.items():
            z.writestr(member, b"{{{" if member == "config.json" else data)


def make_h5_datasets() -> None:
    """Weight datasets that are not what they claim (all but the external one found by tests/fuzz)."""
    import h5py
    import numpy as np

    keras3, legacy = "layers/conv2d/vars/0", "model_weights/{0}/{0}/kernel"
    cases = {
        "h5_dataset_is_group.weights.h5": (keras3, lambda f, at: f.create_group(at)),
        # 2 TB declared at the cost of a few bytes: chunked, no chunk ever written.
        "h5_huge_dataset.weights.h5": (keras3, lambda f, at: f.create_dataset(at, shape=(1, 1 << 40), dtype="f2",
                                                                            chunks=(1, 1))),
        # The bytes of the dataset live in another file: any file the user can read.
        "h5_external_storage.weights.h5": (keras3, lambda f, at: f.create_dataset(
            at, shape=(3, 3, 3, 4), dtype="f4", external=[("/etc/passwd", 0, 432)])),
        # A dense kernel of rank 1 (IndexError in the layout rule); a conv kernel of rank 1 (an error without the file).
        "h5_dense_kernel_rank1.h5": (legacy.format("fc1"), lambda f, at: f.create_dataset(at, data=np.zeros(3))),
        "h5_conv_kernel_rank1.h5": (legacy.format("block2_conv1"), lambda f, at: f.create_dataset(at, data=np.zeros(2))),
    }
    for name, (target, edit) in cases.items():
        source = "vgg.weights.h5" if target == keras3 else "vgg.h5"
        shutil.copy(FIX / "keras" / source, OUT / name)
        with h5py.File(OUT / name, "r+") as f:
            del f[target]
            edit(f, target)


def make_tf() -> None:
    for name, keep in (("tf_no_data", False), ("tf_short_data", True)):
        folder = OUT / name
        folder.mkdir()
        shutil.copy(FIX / "tf" / "tf2" / "ckpt.index", folder / "ckpt.index")
        if keep:
            data = (FIX / "tf" / "tf2" / "ckpt.data-00000-of-00001").read_bytes()
            (folder / "ckpt.data-00000-of-00001").write_bytes(data[: len(data) // 3])
    (OUT / "tf_index_garbage").mkdir()
    (OUT / "tf_index_garbage" / "ckpt.index").write_bytes(b"\x00garbage" * 40)
    make_tf_entries()


def make_tf_entries() -> None:
    """Indexes whose block checksums are right but whose entries lie, all found by tests/fuzz: TensorFlow
    aborted or crashed the process on a garbled entry, on slices (outside the shape, or listed twice) and on
    a string tensor of 2^62 elements or of more than 2^63, raised TypeError on an unknown dtype, and kept one of two entries of
    the same name."""
    from tensorflow.core.protobuf import tensor_bundle_pb2 as bundle

    sys.path.insert(0, str(ROOT))
    from tests.fuzz.tf_table import read_entries, write_table

    def edit_entry(edit):
        """An entry (the first variable's, unless named) edited: ``edit(BundleEntryProto)`` or its bytes replaced."""
        def apply(entries: list, key: bytes | None = None) -> list:
            key = key or next(k for k, _ in entries if k.endswith(b"VARIABLE_VALUE"))
            out = []
            for k, v in entries:
                if k == key:
                    entry = bundle.BundleEntryProto.FromString(v)
                    made = edit(entry)
                    v = made if isinstance(made, bytes) else entry.SerializeToString()
                out.append((k, v))
            return out
        return apply

    def dims(entry, sizes) -> None:
        del entry.shape.dim[:]
        for size in sizes:
            entry.shape.dim.add(size=size)

    def slices(entry, *extents) -> None:
        for start, length in extents:
            entry.slices.add().extent.add(start=start, length=length)

    cases = {
        "tf_entry_garbled": edit_entry(lambda e: b"\xff\xff\xff"),
        "tf_slice_outside": edit_entry(lambda e: slices(e, (0, 0))),
        "tf_slice_twice": edit_entry(lambda e: (dims(e, [8]), slices(e, (0, 8), (0, 8)))),
        "tf_dtype_invalid": edit_entry(lambda e: setattr(e, "dtype", -1)),
        "tf_huge_shape": edit_entry(lambda e: dims(e, [1 << 40, 1 << 40])),
        "tf_string_huge_shape": lambda entries: edit_entry(lambda e: dims(e, [2**31 - 1, 2**31 - 1]))(
            entries, b"_CHECKPOINTABLE_OBJECT_GRAPH"),
        "tf_shape_overflow": lambda entries: edit_entry(lambda e: dims(e, [2**31, 2**63 - 1, 146]))(
            entries, b"_CHECKPOINTABLE_OBJECT_GRAPH"),
        "tf_duplicate_key": lambda entries: entries + [entries[-1]],
    }
    for name, edit in cases.items():
        entries = edit(read_entries((FIX / "tf" / "tf2" / "ckpt.index").read_bytes()))
        (OUT / name).mkdir()
        (OUT / name / "ckpt.index").write_bytes(write_table(entries))
        shutil.copy(FIX / "tf" / "tf2" / "ckpt.data-00000-of-00001", OUT / name / "ckpt.data-00000-of-00001")


def make_onnx() -> None:
    import onnx
    import numpy as np

    raw = (FIX / "onnx" / "dense.onnx").read_bytes()
    (OUT / "onnx_truncated.onnx").write_bytes(raw[: len(raw) // 2])
    model = onnx.load(FIX / "onnx" / "dense.onnx")
    def external(name: str, location: str, offset: int | str = 0, length: int | None = None) -> None:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        init = m.graph.initializer[0]
        size = int(np.prod(init.dims)) * 4
        init.ClearField("raw_data"); init.ClearField("float_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(length or size))):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
        (OUT / name).mkdir(exist_ok=True)
        onnx.save(m, OUT / name / "model.onnx")
    external("onnx_ext_dotdot", "../../etc/passwd")
    external("onnx_ext_absolute", "/etc/passwd")
    external("onnx_ext_symlink", "weights.bin")
    os.symlink("/etc/passwd", OUT / "onnx_ext_symlink" / "weights.bin")
    external("onnx_ext_past_end", "weights.bin", offset=0, length=1 << 30)
    external("onnx_ext_offset_not_number", "weights.bin", offset="")   # found by tests/fuzz: ValueError
    external("onnx_ext_location_nul", "\0")   # found by tests/fuzz: ValueError (embedded null byte)
    (OUT / "onnx_ext_offset_not_number" / "weights.bin").write_bytes(b"\0" * 64)
    (OUT / "onnx_ext_past_end" / "weights.bin").write_bytes(b"\0" * 64)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    init = m.graph.initializer[0]
    init.dims[0] = init.dims[0] * 1000
    onnx.save(m, OUT / "onnx_dims_disagree.onnx")
    # Found by tests/fuzz: a data type ONNX does not define (KeyError), typed data short of its dims (ValueError),
    # a name that is not UTF-8 (UnicodeDecodeError: protobuf checks it only when the name is first read).
    for name, edit in (("onnx_unknown_data_type.onnx", lambda t: setattr(t, "data_type", 2**31 - 1)),
                       ("onnx_float_data_short.onnx", lambda t: (t.ClearField("raw_data"), t.float_data.append(1.0)))):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        edit(m.graph.initializer[0])
        onnx.save(m, OUT / name)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.node[0].op_type = "GRU"   # found by tests/fuzz: its weight (out, in) cut into gates, IndexError
    onnx.save(m, OUT / "onnx_gru_weight_rank2.onnx")
    name = model.graph.initializer[0].name.encode()
    (OUT / "onnx_name_not_utf8.onnx").write_bytes(raw.replace(name, b"\xff" + name[1:]))


MAPS = {
    "map_yaml_syntax.yaml": "rename:\n  a: [b\n",
    "map_yaml_tab.yaml": "rename:\n  a: b\n\t c: d\n",
    "map_python_object.yaml": f'rename: !!python/object/apply:os.system ["touch {MARKER}"]\n',
    "map_set_tag.yaml": "freeze: !!set {a: null}\n",
    "map_not_mapping.yaml": "- a\n- b\n",
    "map_unknown_key.yaml": "renames:\n  a: b\n",
    "map_bad_version.yaml": "version: 7\n",
    "map_bad_match.yaml": "match: telepathy\n",
    "map_bad_regex.yaml": "rename:\n  \"([\": x\n",
    "map_duplicate_key.yaml": "rename:\n  a: b\n  a: c\n",
    "map_twice_top.yaml": "freeze: [a]\nfreeze: [b]\n",
    "map_rename_not_mapping.yaml": "rename: [a, b]\n",
    "map_bad_on_mismatch.yaml": "on_mismatch: shrug\n",
    "map_layers_unknown_src.yaml": "layers:\n  nosuch.layer: l\n",
}


def make_maps() -> None:
    for name, text in MAPS.items():
        (OUT / name).write_text(text)


# HDF5 files that libhdf5 itself crashes on, loops in, or allocates gigabytes for (found by tests/fuzz):
# surgery reads an HDF5 file's structure in a limited child process first (surgery/sandbox.py).
# Byte edits of the fixtures: (fixture, [(offset, new bytes)]).
LIBHDF5 = {
    "h5_segfault.h5": ("vgg_legacy_weights.h5", [(6804, b"\xef"), (13152, b"\xe2"), (857, b"\x88")]),
    "h5_hang.weights.h5": ("vgg.weights.h5", [(2263, b"\0" * 18)]),
    "h5_grows_2gb.h5": ("vgg.h5", [(151, b"\x80"), (1915, b"\xa9")]),
    "h5_grows_1gb.h5": ("vgg.h5", [(1963, b"\x7f" * 36)]),
    "h5_grows_500mb.h5": ("vgg_legacy_weights.h5", [(59, b"H"), (764, b"a"), (97, b"\xe4"), (1051, b"B"),
                                                     (214, b"\xfb")]),
    "h5_grows_4gb.h5": ("vgg.h5", [(1034, b"\xff" * 36)]),
}


def make_libhdf5() -> None:
    for name, (fixture, edits) in LIBHDF5.items():
        data = bytearray((FIX / "keras" / fixture).read_bytes())
        for offset, new in edits:
            data[offset:offset + len(new)] = new
        (OUT / name).write_bytes(bytes(data))


def make_zero() -> None:
    """DeepSpeed ZeRO folders (a real 2-rank stage-2 checkpoint) with a rank missing, a partition cut short,
    a foreign class and a code-running object in an optimizer-states pickle."""
    import argparse

    import torch

    sys.path.insert(0, str(ROOT))
    from surgery.formats.torch.state_dict import load_pickle
    from surgery.formats.torch.zero import STAND_INS

    rank = "global_step2/zero_pp_rank_{}_mp_rank_00_optim_states.pt"

    def copy(name: str) -> pathlib.Path:
        shutil.copytree(FIX / "torch" / "zero" / "stage2_ws2", OUT / name)
        (OUT / name / "expected.safetensors").unlink()
        (OUT / name / "shared.json").unlink()
        return OUT / name

    def edited(folder: pathlib.Path, r: int, edit) -> None:
        path = folder / rank.format(r)
        state = load_pickle(str(path), False, stand_ins=STAND_INS)
        zero = state["optimizer_state_dict"]
        zero["zero_stage"] = int(zero["zero_stage"])
        for key in ("loss_scaler", "param_slice_mappings"):
            zero.pop(key, None)
        edit(state)
        torch.save(state, f"{path}.new")
        os.replace(f"{path}.new", path)

    (copy("zero_missing_rank") / rank.format(1)).unlink()

    def cut(state: dict) -> None:
        groups = state["optimizer_state_dict"]["single_partition_of_fp32_groups"]
        groups[0] = groups[0][: groups[0].numel() // 2].clone()

    edited(copy("zero_partition_short"), 1, cut)
    edited(copy("zero_foreign_global"), 0, lambda state: state.update(args=argparse.Namespace(lr=0.1)))
    edited(copy("zero_pickle_os_system"), 0, lambda state: state.update(boom=_Boom()))


def make_dcp() -> None:
    """DCP folders (the trainer checkpoint of fixtures/torch/dcp_trainer) whose metadata the fuzzer broke:
    a pickle storing into memo slot 688,482,452 (Python's unpickler would allocate gigabytes), a chunk
    placed outside its tensor's shape, and chunks whose data file is another folder's."""
    import dataclasses
    import pickle
    import struct

    def copy(name: str) -> pathlib.Path:
        shutil.copytree(FIX / "torch" / "dcp_trainer", OUT / name)
        return OUT / name

    bomb = copy("dcp_memo_bomb") / ".metadata"
    bomb.write_bytes(b"\x80\x04N" + b"r" + struct.pack("<I", 688_482_452) + b".")   # NONE, LONG_BINPUT, STOP

    meta_path = copy("dcp_chunk_outside") / ".metadata"
    meta = pickle.loads(meta_path.read_bytes())   # our own fixture, written by torch: trusted
    entry = meta.state_dict_metadata["model.classifier.1.weight"]
    first = entry.chunks[0]
    entry.chunks[0] = dataclasses.replace(first, sizes=type(first.sizes)([first.sizes[0] + 1, *first.sizes[1:]]))
    meta_path.write_bytes(pickle.dumps(meta))

    # every chunk's data file named through "..": another checkpoint's data file (the one beside it), whose
    # bytes a convert would otherwise copy file to file into its output
    meta_path = copy("dcp_data_outside") / ".metadata"
    meta = pickle.loads(meta_path.read_bytes())
    meta.storage_data = {index: dataclasses.replace(info, relative_path=f"../dcp_memo_bomb/{info.relative_path}")
                         for index, info in meta.storage_data.items()}
    meta_path.write_bytes(pickle.dumps(meta))


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    make_safetensors()
    make_maps()
    make_torch()
    make_keras()
    make_onnx()
    make_tf()
    make_libhdf5()
    make_zero()
    make_dcp()
    print(f"{sum(1 for _ in OUT.iterdir())} corpus entries in {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
