import pytest

from surgery.errors import MapError
from surgery.mapping import load_map


def _map(tmp_path, text):
    path = tmp_path / "map.yaml"
    path.write_text(text)
    return path


GOOD = """\
version: 1
match: name
rename:
  "^module\\\\.": ""
  "^features\\\\.(\\\\d+)": "backbone.\\\\1"
layers:
  fc1: classifier.0
  sep: [dw, pw]
skip: ["predictions"]
keep: ["classifier.6"]
freeze: ["features.*"]
on_mismatch: slice
flatten:
  fc1: {shape: [7, 7, 512], source_order: HWC, dest_order: CHW}
"""


def test_a_full_map_loads(tmp_path):
    m = load_map(_map(tmp_path, GOOD))
    assert m.match == "name" and m.on_mismatch == "slice"
    assert m.renamed("module.features.3") == ("backbone.3", ["^module\\.", "^features\\.(\\d+)"])
    assert m.layers["sep"].value == ["dw", "pw"] and m.layers["fc1"].line == 7
    assert [e.value for e in m.freeze] == ["features.*"]
    assert m.flatten["fc1"].value["dest_order"] == "CHW"


@pytest.mark.parametrize("text,problem", [
    ("version: 1\nmatch: name\ncolour: red\n", r"map.yaml:3: unknown key 'colour'"),
    ("version: 2\n", r"map.yaml:1: version 2 is not supported"),
    ("match: fuzzy\n", r"map.yaml:1: match: 'fuzzy' is not one of name, shape, auto, none"),
    ("on_mismatch: pad\n", r"map.yaml:1: on_mismatch: 'pad' is not one of"),
    ("rename:\n  \"(unclosed\": x\n", r"map.yaml:2: rename: bad regex '\(unclosed'"),
    ("rename:\n  \"^a\": \"b\\\\2\"\n", r"map.yaml:2: rename: replacement .* refers to group 2"),
    ("layers:\n  a: x\n  b: y\n  c: x\n", r"map.yaml:4: layers: destination 'x' is named twice"),
    ("layers:\n  a: x\n  a: y\n", r"map.yaml:3: layers: 'a' appears twice"),
    ("skip: 3\n", r"map.yaml:1: skip: must be a list"),
    ("flatten:\n  fc: {order: HWC}\n", r"map.yaml:2: flatten: 'fc' takes only"),
    ("- a\n- b\n", r"map.yaml:1: the map must be a mapping"),
    ("layers: [\n", r"map.yaml:2: not valid YAML"),
    ("merge:\n  mha: q_proj\n", r"map.yaml:2: merge: 'mha' needs a list of two or more source layers"),
    ("layers:\n  a: mha\nmerge:\n  mha: [q, k]\n", r"map.yaml:4: merge: destination 'mha' is also named under layers"),
    ("layers:\n  q: x\nmerge:\n  mha: [q, k]\n", r"map.yaml:4: merge: source 'q' is already paired \(layers\)"),
    ("merge:\n  a: [q, k]\n  b: [k, v]\n", r"map.yaml:3: merge: source 'k' is already paired \(a\)"),
])
def test_structural_errors_name_the_line(tmp_path, text, problem):
    with pytest.raises(MapError, match=problem):
        load_map(_map(tmp_path, text))


@pytest.mark.parametrize("text,problem", [
    ("layers:\n  fc9: head\n", r"map.yaml:2: layers: source layer 'fc9' does not exist \(did you mean 'fc1'"),
    ("layers:\n  fc1: tail\n", r"map.yaml:2: layers: destination layer 'tail' does not exist"),
    ("skip: [\"conv*\", \"nothing*\"]\n", r"map.yaml:1: skip: 'nothing\*' matches no source layer"),
    ("keep:\n  - nope\n", r"map.yaml:2: keep: 'nope' matches no destination layer"),
    ("freeze:\n  - head\n  - body.*\n", r"map.yaml:3: freeze: 'body.\*' matches no destination layer"),
    ("flatten:\n  fc2: {shape: [1, 2, 3]}\n", r"map.yaml:2: flatten: source layer 'fc2' does not exist"),
    ("merge:\n  head: [conv1, fc9]\n", r"map.yaml:2: merge: source layer 'fc9' does not exist"),
    ("merge:\n  tail: [conv1, fc1]\n", r"map.yaml:2: merge: destination layer 'tail' does not exist"),
])
def test_names_are_checked_against_the_graphs(tmp_path, text, problem):
    m = load_map(_map(tmp_path, text))
    with pytest.raises(MapError, match=problem):
        m.check_names(["conv1", "fc1"], ["head", "backbone.0"])


def test_dict_maps_are_validated_too():
    with pytest.raises(MapError, match="unknown key 'renames'"):
        load_map({"renames": {}})
    assert load_map({"freeze": "features.*"}).freeze[0].value == "features.*"


def test_layers_patterns_pair_a_whole_family_with_back_references():
    m = load_map({"layers": {r"encoder\.layer\.(\d+)\.attention\.self\.(query|key)": r"blocks.\1.attn.\2",
                             "pooler": "head"}})
    src = ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key",
           "encoder.layer.1.attention.self.query", "encoder.layer.1.attention.self.key", "pooler"]
    dst = ["blocks.0.attn.query", "blocks.0.attn.key", "blocks.1.attn.query", "blocks.1.attn.key", "head"]
    m.check_names(src, dst)
    assert {s: e.value for s, e in m.layers.items()} == {name: [d] for name, d in zip(src, dst)}


def test_merge_patterns_fill_every_matching_destination():
    m = load_map({"merge": {r"blocks\.(\d+)\.mha": [r"layer.\1.q", r"layer.\1.k", r"layer.\1.v", r"layer.\1.o"]}})
    src = [f"layer.{i}.{p}" for i in range(3) for p in "qkvo"]
    m.check_names(src, ["blocks.0.mha", "blocks.1.mha", "blocks.2.mha"])
    assert m.merge["blocks.2.mha"].value == ["layer.2.q", "layer.2.k", "layer.2.v", "layer.2.o"]


def test_pattern_errors_name_the_line(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("version: 1\nlayers:\n  'enc\\.(\\d+)': 'dec.\\2'\n")
    with pytest.raises(MapError, match=r"map.yaml:3: layers: .*refers to group 2 but .* has 1"):
        load_map(str(path))
    path.write_text("version: 1\nlayers:\n  'nothing\\.(\\d+)': 'dec.\\1'\n")
    with pytest.raises(MapError, match=r"map.yaml:3: layers: pattern .* matches no source layer"):
        load_map(str(path)).check_names(["enc.0"], ["dec.0"])
    path.write_text("version: 1\nlayers:\n  'enc\\.(\\d+)': 'dec.\\1'\n")
    with pytest.raises(MapError, match=r"map.yaml:3: layers: destination layer 'dec.1' does not exist"):
        load_map(str(path)).check_names(["enc.0", "enc.1"], ["dec.0"])
