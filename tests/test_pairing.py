import numpy as np
import pytest

import surgery
from surgery.errors import MapError, PlanError
from surgery.graph import Param
from surgery.kinds import graph_of_params


def graph(**tensors):
    """``graph(**{"a.weight": (2, 3)})`` with deterministic values."""
    rng = np.random.default_rng(len(tensors))
    params = {}
    for key, spec in tensors.items():
        shape, dtype = spec if isinstance(spec[0], tuple) else (spec, np.float32)
        params[key] = Param.from_array(rng.standard_normal(shape).astype(dtype), key=key)
    return graph_of_params(params, path="mem")


SRC = dict(**{"features.0.weight": (4, 3, 3, 3), "features.0.bias": (4,), "features.1.weight": (4,),
              "features.1.bias": (4,), "features.1.running_mean": (4,), "features.1.running_var": (4,),
              "fc.weight": (10, 16), "fc.bias": (10,)})


def test_name_after_rename_and_explicit_pairs():
    dst = graph(**{"backbone.0.weight": (4, 3, 3, 3), "backbone.0.bias": (4,), "backbone.1.weight": (4,),
                   "backbone.1.bias": (4,), "backbone.1.running_mean": (4,), "backbone.1.running_var": (4,),
                   "head.weight": (10, 16), "head.bias": (10,), "extra.weight": (2, 2)})
    plan = surgery.plan(graph(**SRC), dst, {"rename": {"^features\\.": "backbone."}, "layers": {"fc": "head"},
                                            "keep": ["extra"], "freeze": ["backbone.*"]})
    rules = {p.source: (p.destinations, p.rule) for p in plan.pairs}
    assert rules["features.0"] == (["backbone.0"], "name after rename `^features\\.`")
    assert rules["fc"] == (["head"], "explicit")
    assert plan.kept == ["extra"] and plan.uncovered == [] and plan.unused == []
    assert plan.frozen == ["backbone.0", "backbone.1"]
    assert plan.strict_ok


def test_transplant_copies_values_and_leaves_the_rest():
    src, dst = graph(**SRC), graph(**SRC, **{"new.weight": (2, 2)})
    with pytest.raises(surgery.StrictError, match="destination layers left as initialised: new"):
        surgery.transplant(src, dst)  # strict by default: `new` must be kept on purpose
    out = surgery.transplant(src, dst, {"keep": ["new"]}).graph.state()
    for key, param in src.state().items():
        assert np.array_equal(out[key].read(), param.read()), key
    assert np.array_equal(out["new.weight"].read(), dst.state()["new.weight"].read())


def test_unpaired_layers_are_reported_and_strict_refuses():
    src = graph(**SRC)
    dst = graph(**{"features.0.weight": (4, 3, 3, 3), "features.0.bias": (4,), "other.weight": (3, 3)})
    plan = surgery.plan(src, dst)
    assert plan.unused == ["features.1", "fc"] and plan.uncovered == ["other"]
    with pytest.raises(surgery.StrictError, match="destination layers left as initialised: other"):
        surgery.transplant(src, dst, strict=True)
    accepted = surgery.transplant(src, dst, {"skip": ["features.1", "fc"], "keep": ["other"]}, strict=True)
    assert accepted.plan.strict_ok and [p.source for p in accepted.plan.pairs] == ["features.0"]
    assert accepted.plan.skipped == ["features.1", "fc"] and accepted.plan.kept == ["other"]


def test_shape_mismatch_error_skip_and_slice():
    src = graph(**{"head.weight": (10, 16), "head.bias": (10,)})
    dst = graph(**{"head.weight": (5, 16), "head.bias": (5,)})
    with pytest.raises(PlanError, match=r"head.weight \[10, 16\] -> head.weight \[5, 16\]: shapes differ"):
        surgery.plan(src, dst)
    assert surgery.plan(src, dst, {"on_mismatch": "skip"}).pairs == []
    out = surgery.transplant(src, dst, {"on_mismatch": "slice"}).graph.state()
    assert np.array_equal(out["head.weight"].read(), src.state()["head.weight"].read()[:5])
    bigger = graph(**{"head.weight": (12, 16), "head.bias": (12,)})
    grown = surgery.transplant(src, bigger, {"on_mismatch": "slice"}).graph.state()["head.weight"].read()
    assert np.array_equal(grown[:10], src.state()["head.weight"].read())
    assert np.array_equal(grown[10:], bigger.state()["head.weight"].read()[10:])


def test_kind_mismatch_is_an_error():
    src = graph(**{"a.weight": (4, 3, 3, 3)})
    dst = graph(**{"a.weight": (4, 27)})
    with pytest.raises(PlanError, match=r"a \(conv2d\) -> a \(dense\): layer kinds differ"):
        surgery.plan(src, dst)


def test_dtype_cast_is_warned():
    src = graph(**{"fc.weight": (2, 2)})
    dst = graph(**{"fc.weight": ((2, 2), np.float16)})
    result = surgery.transplant(src, dst)
    assert "fc.weight: dtype cast float32 -> float16" in result.plan.warnings
    assert result.graph.state()["fc.weight"].read().dtype == np.float16


def test_shape_match_survives_an_inserted_layer():
    src = graph(**{"a.weight": (8, 3, 3, 3), "b.weight": (16, 8, 3, 3), "c.weight": (10, 16)})
    dst = graph(**{"x.weight": (8, 3, 3, 3), "new.weight": (8, 8, 1, 1), "y.weight": (16, 8, 3, 3), "z.weight": (10, 16)})
    plan = surgery.plan(src, dst, {"match": "shape"})
    assert {p.source: p.destinations[0] for p in plan.pairs} == {"a": "x", "b": "y", "c": "z"}
    assert plan.uncovered == ["new"]
    assert plan.pairs[0].rule.startswith("shape conv2d")


def test_ambiguous_shape_match_is_reported():
    src = graph(**{"a.weight": (4, 4), "b.weight": (4, 4), "c.weight": (4, 4)})
    dst = graph(**{"x.weight": (4, 4), "y.weight": (4, 4)})
    plan = surgery.plan(src, dst, {"match": "shape"})
    assert [d.message.split(":")[0] for d in plan.ambiguous] == ["a -> x", "b -> y"]
    assert all("among 3 source and 2 destination" in d.message for d in plan.ambiguous)
    assert not plan.strict_ok and plan.accept_lines().startswith("skip: [c]\nlayers:\n  a: x\n  b: y")


def test_the_printed_map_lines_accept_what_strict_refused(tmp_path):
    src = graph(**{"a.weight": (4, 4), "b.weight": (4, 4), "c.weight": (4, 4), "d.weight": (5, 5)})
    dst = graph(**{"x.weight": (4, 4), "y.weight": (4, 4), "z.weight": (3, 3)})
    with pytest.raises(surgery.StrictError) as refused:
        surgery.transplant(src, dst, {"match": "shape"})
    mapping = tmp_path / "map.yaml"
    mapping.write_text("version: 1\nmatch: shape\n" + refused.value.accept_lines)
    result = surgery.transplant(src, dst, str(mapping))  # the pasted lines settle every decision
    assert result.plan.strict_ok and not result.plan.allow_partial
    assert {p.source: p.destinations[0] for p in result.plan.pairs} == {"a": "x", "b": "y"}
    assert set(result.plan.skipped) == {"c", "d"} and result.plan.kept == ["z"]


def test_allow_partial_accepts_and_says_so():
    src, dst = graph(**SRC), graph(**SRC, **{"new.weight": (2, 2)})
    result = surgery.transplant(src, dst, strict=False)
    assert result.plan.allow_partial and result.plan.to_dict()["allow_partial"] is True
    assert "accepted with --allow-partial (1):" in str(result.plan)


def test_map_names_checked_before_any_data_is_read():
    src, dst = graph(**SRC), graph(**SRC)
    with pytest.raises(MapError, match="source layer 'fc9' does not exist"):
        surgery.plan(src, dst, {"layers": {"fc9": "fc"}})
    with pytest.raises(PlanError, match="--freeze 'nope' matches no destination layer"):
        surgery.plan(src, dst, freeze=["nope"])


def test_eps_difference_is_warned():
    src, dst = graph(**SRC), graph(**SRC)
    src["features.1"].attrs["eps"] = 1e-3
    plan = surgery.plan(src, dst)
    assert any("features.1 -> features.1: eps is 0.001 in the source but 1e-05 (PyTorch default)" in w
               for w in plan.warnings)


def test_nonfinite_values_are_reported(tmp_path):
    src = graph(**{"fc.weight": (2, 2)})
    bad = np.array([[np.nan, 1], [np.inf, 0]], dtype=np.float32)
    src["fc"].params["weight"] = Param.from_array(bad, key="fc.weight")
    result = surgery.transplant(src, graph(**{"fc.weight": (2, 2)}))
    surgery.save(result, tmp_path / "out.safetensors")
    assert "fc.weight: 2 NaN/Inf values copied" in result.warnings


def test_plan_to_yaml_round_trips_through_the_map_loader(tmp_path):
    plan = surgery.plan(graph(**SRC), graph(**SRC))
    path = tmp_path / "proposed.yaml"
    path.write_text(plan.to_yaml())
    again = surgery.plan(graph(**SRC), graph(**SRC), path)
    assert [(p.source, p.destinations) for p in again.pairs] == [(p.source, p.destinations) for p in plan.pairs]
    assert "# name" in plan.to_yaml()


def test_merge_pairs_several_sources_with_one_destination():
    src = graph(**{"q.weight": (4, 4), "k.weight": (4, 4), "v.weight": (4, 4), "o.weight": (4, 4), "o.bias": (4,),
                   "extra.weight": (2, 2)})
    dst = graph(**{"mha.in_proj_weight": (12, 4), "mha.out_proj.weight": (4, 4), "mha.out_proj.bias": (4,)})
    result = surgery.transplant(src, dst, {"merge": {"mha": ["q", "k", "v", "o"]}, "skip": ["extra"]}, strict=True)
    pair = result.plan.pairs[0]
    assert pair.source == "q+k+v+o" and pair.parts == ["q", "k", "v", "o"] and pair.rule == "merged"
    fused = result.graph.state()["mha.in_proj_weight"].read()
    state = src.state()
    assert np.array_equal(fused, np.concatenate([state[f"{n}.weight"].read() for n in "qkv"]))
    assert {t.destination: t.sources for t in pair.tensors}["mha.in_proj_weight"] == ("q.weight", "k.weight", "v.weight")


def test_a_layer_whose_layout_is_not_known_is_never_copied():
    src, dst = graph(**SRC), graph(**SRC)
    src["fc"].attrs.update(layout_known=False, layout_note="EinsumDense 'ab,bcd->acd' has no canonical layout")
    plan = surgery.plan(src, dst)
    assert "fc" not in [p.source for p in plan.pairs]
    assert plan.unused == ["fc"] and plan.uncovered == ["fc"] and not plan.strict_ok
    assert any("has no canonical layout; not copied" in w for w in plan.warnings)
    assert "skip: [fc]" in plan.accept_lines() and "keep: [fc]" in plan.accept_lines()


def test_freeze_up_to_a_layer_in_graph_order():
    src, dst = graph(**SRC), graph(**SRC)
    assert surgery.plan(src, dst, {"freeze": ["..features.1"]}).frozen == ["features.0", "features.1"]
    assert surgery.plan(src, dst, freeze=["..features.0", "fc"]).frozen == ["features.0", "fc"]
    with pytest.raises(MapError, match="freeze: '..nope': no destination layer 'nope'"):
        surgery.plan(src, dst, {"freeze": ["..nope"]})
    with pytest.raises(PlanError, match="freeze '..nope': no destination layer"):
        surgery.plan(src, dst, freeze=["..nope"])


def test_tensor_pairs_say_what_layer_pairs_cannot():
    src = graph(**{"stft.forward_basis_buffer": (8, 1, 4), "fc.weight": (2, 2)})
    dst = graph(**{"conv.weight": (8, 1, 4), "conv.bias": (8,), "fc.weight": (2, 2)})
    with pytest.raises(surgery.StrictError, match="source layers unused: stft"):
        surgery.transplant(src, dst)
    result = surgery.transplant(src, dst, {"tensors": {"stft.forward_basis_buffer": "conv.weight"}, "keep": ["conv.bias"]})
    assert result.plan.strict_ok and {p.rule.split(" (")[0] for p in result.plan.pairs} == {"name", "tensor pair"}
    np.testing.assert_array_equal(result.graph["conv"].params["weight"].read(),
                                  src["stft"].params["forward_basis_buffer"].read())
    plan = surgery.plan(src, dst, {"tensors": {"stft.forward_basis_buffer": "conv.weight"}})
    assert plan.unfilled == ["conv.bias"]  # the rest of the destination layer is still a decision
    with pytest.raises(MapError, match="tensors: destination tensor 'conv.wieght' does not exist"):
        surgery.plan(src, dst, {"tensors": {"stft.forward_basis_buffer": "conv.wieght"}})


def test_one_tensor_each_side_of_one_shape_pairs_whatever_the_role_names():
    src = graph(**{"basis.forward_basis_buffer": (8, 1, 4)})
    dst = graph(**{"basis.weight": (8, 1, 4)})
    plan = surgery.plan(src, dst)
    assert plan.strict_ok and "the only tensor on each side: forward_basis_buffer -> weight" in plan.pairs[0].tensors[0].transform


def test_label_maps_copy_the_rows_of_shared_classes_in_the_destination_order(tmp_path):
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    src = graph_of_params({"fc.weight": Param.from_array(w, key="fc.weight"), "fc.bias": Param.from_array(b, key="fc.bias")})
    dst = graph_of_params({"head.weight": Param.from_array(np.zeros((4, 4), np.float32), key="head.weight"),
                           "head.bias": Param.from_array(np.zeros(4, np.float32), key="head.bias")})
    (tmp_path / "src.txt").write_text("cat\ndog\nbird\n")
    (tmp_path / "dst.txt").write_text("dog\nfish\ncat\nbird\n")
    (tmp_path / "map.yaml").write_text("version: 1\nlayers: {fc: head}\n"
                                       "labels: {layer: head, source: src.txt, dest: dst.txt}\n")
    result = surgery.transplant(src, dst, str(tmp_path / "map.yaml"))
    out_w, out_b = (result.graph["head"].params[r].read() for r in ("weight", "bias"))
    np.testing.assert_array_equal(out_w, np.stack([w[1], np.zeros(4), w[0], w[2]]))
    np.testing.assert_array_equal(out_b, [b[1], 0, b[0], b[2]])
    assert any("1 classes the source does not know are left as initialised: fish" in x for x in result.plan.warnings)
    (tmp_path / "map.yaml").write_text("version: 1\nlabels: {layer: head, source: nope.txt, dest: dst.txt}\n")
    with pytest.raises(MapError, match=r"map.yaml:2: labels: cannot read the source class list"):
        surgery.plan(src, dst, str(tmp_path / "map.yaml"))
