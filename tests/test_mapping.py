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
    ("match: fuzzy\n", r"map.yaml:1: match: 'fuzzy' is not one of name, shape, none"),
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
