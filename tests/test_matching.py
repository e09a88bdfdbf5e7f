"""Shape matching by structure (``surgery/matching.py``): pairs that never rest on storage order."""

import numpy as np
import pytest

import surgery
from surgery.matching import words

from .test_pairing import graph


def _pairs(plan):
    return {p.source: p.destinations[0] for p in plan.pairs}


def _vgg_keras():
    """Keras' VGG names in Keras' order: ``blockB_convC``, then ``fc1``, ``fc2``, ``predictions``."""
    convs, c_in = {}, 3
    for b, (n, c) in enumerate([(2, 8), (2, 16), (3, 16)], start=1):
        for i in range(1, n + 1):
            convs[f"block{b}_conv{i}.weight"], convs[f"block{b}_conv{i}.bias"] = (c, c_in, 3, 3), (c,)
            c_in = c
    return {**convs, "fc1.weight": (32, 16 * 4), "fc1.bias": (32,), "fc2.weight": (32, 32), "fc2.bias": (32,),
            "predictions.weight": (10, 32), "predictions.bias": (10,)}


def _vgg_torch(head=10):
    """torchvision's VGG names: ``features.N`` (convs at their Sequential index), ``classifier.0/3/6``."""
    out, index, c_in = {}, 0, 3
    for n, c in [(2, 8), (2, 16), (3, 16)]:
        for _ in range(n):
            out[f"features.{index}.weight"], out[f"features.{index}.bias"] = (c, c_in, 3, 3), (c,)
            index, c_in = index + 2, c
        index += 1
    return {**out, "classifier.0.weight": (32, 64), "classifier.0.bias": (32,), "classifier.3.weight": (32, 32),
            "classifier.3.bias": (32,), "classifier.6.weight": (head, 32), "classifier.6.bias": (head,)}


EXPECTED_VGG = {"block1_conv1": "features.0", "block1_conv2": "features.2", "block2_conv1": "features.5",
                "block2_conv2": "features.7", "block3_conv1": "features.10", "block3_conv2": "features.12",
                "block3_conv3": "features.14", "fc1": "classifier.0", "fc2": "classifier.3",
                "predictions": "classifier.6"}


@pytest.mark.parametrize("stored", ["declared", "alphabetical"])
def test_vgg_pairs_whole_whatever_order_the_destination_file_stores(stored):
    spec = _vgg_torch()
    if stored == "alphabetical":  # what a safetensors header gives: classifier.* before features.*, 10 before 2
        spec = dict(sorted(spec.items()))
    plan = surgery.plan(graph(**_vgg_keras()), graph(**spec), {"match": "shape"})
    assert _pairs(plan) == EXPECTED_VGG
    assert plan.strict_ok, plan.decisions()


def test_numbered_blocks_and_names_pair_a_transformer_stored_alphabetically():
    """HF BERT names in a safetensors' order into a re-implementation: q/k/v by name, blocks by number."""
    h, ffn = 8, 16
    hf = {"embeddings.word_embeddings.weight": (50, h), "embeddings.position_embeddings.weight": (20, h),
          "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,), "pooler.dense.weight": (h, h)}
    mine = {"tok.weight": (50, h), "pos.weight": (20, h), "emb_norm.weight": (h,), "emb_norm.bias": (h,)}
    for i in range(3):
        for part in ("self.query", "self.key", "self.value", "output.dense"):
            hf[f"encoder.layer.{i}.attention.{part}.weight"] = (h, h)
        hf[f"encoder.layer.{i}.attention.output.LayerNorm.weight"] = (h,)
        hf[f"encoder.layer.{i}.intermediate.dense.weight"] = (ffn, h)
        hf[f"encoder.layer.{i}.output.dense.weight"] = (h, ffn)
        hf[f"encoder.layer.{i}.output.LayerNorm.weight"] = (h,)
        for part in ("o_proj", "v_proj", "k_proj", "q_proj"):   # declared in another order, on purpose
            mine[f"blocks.{i}.attn.{part}.weight"] = (h, h)
        mine[f"blocks.{i}.attn_norm.weight"] = (h,)
        mine[f"blocks.{i}.mlp.fc1.weight"] = (ffn, h)
        mine[f"blocks.{i}.mlp.fc2.weight"] = (h, ffn)
        mine[f"blocks.{i}.mlp_norm.weight"] = (h,)
    plan = surgery.plan(graph(**dict(sorted(hf.items()))), graph(**mine), {"match": "shape", "skip": ["pooler.dense"]})
    pairs = _pairs(plan)
    for i in range(3):
        for theirs, ours in (("self.query", "q_proj"), ("self.key", "k_proj"), ("self.value", "v_proj"),
                             ("output.dense", "o_proj")):
            assert pairs[f"encoder.layer.{i}.attention.{theirs}"] == f"blocks.{i}.attn.{ours}"
        assert pairs[f"encoder.layer.{i}.attention.output.LayerNorm"] == f"blocks.{i}.attn_norm"
        assert pairs[f"encoder.layer.{i}.output.LayerNorm"] == f"blocks.{i}.mlp_norm"
        assert pairs[f"encoder.layer.{i}.intermediate.dense"] == f"blocks.{i}.mlp.fc1"
    assert pairs["embeddings.LayerNorm"] == "emb_norm"
    assert plan.strict_ok, plan.decisions()


def test_layer_norms_no_name_tells_apart_are_asked_about_not_guessed():
    src = graph(**{f"encoder.layer.{i}.{p}.LayerNorm.weight": (4,) for i in range(2) for p in ("attention.output", "output")})
    dst = graph(**{f"blocks.{i}.ln{j}.weight": (4,) for i in range(2) for j in (1, 2)})
    plan = surgery.plan(src, dst, {"match": "shape"})
    assert len(plan.ambiguous) == 4 and not plan.strict_ok
    assert "neither their numbers nor their names tell apart" in plan.ambiguous[0].message


@pytest.mark.parametrize("shortcut", ["block.shortcut", "block.conv0"])
def test_equal_shapes_declared_in_another_order(shortcut):
    """A shortcut conv of the block convs' shape, declared first on one side and last on the other."""
    src = graph(**{"b1_conv1.weight": (8, 8, 3, 3), "b1_conv2.weight": (8, 8, 3, 3), "b1_short.weight": (8, 8, 3, 3)})
    dst = graph(**{f"{shortcut}.weight": (8, 8, 3, 3), "block.conv1.weight": (8, 8, 3, 3),
                   "block.conv2.weight": (8, 8, 3, 3)})
    plan = surgery.plan(src, dst, {"match": "shape"})
    if shortcut == "block.shortcut":  # the names say which is which
        assert _pairs(plan) == {"b1_conv1": "block.conv1", "b1_conv2": "block.conv2", "b1_short": "block.shortcut"}
        assert plan.strict_ok
    else:  # one family of three numbered convs against a family of two and a shortcut: no evidence
        assert not plan.strict_ok and len(plan.ambiguous) == 3


def test_a_shortcut_numbered_differently_on_each_side_is_not_paired_by_its_number():
    """``conv0`` is the shortcut on one side, ``conv3`` on the other: the numbers rank alike, slot by slot they do not."""
    src = graph(**{f"stage1.block1.conv{i}.weight": (8, 8, 1, 1) for i in (0, 1, 2)})
    dst = graph(**{f"layer1.0.conv{i}.weight": (8, 8, 1, 1) for i in (1, 2, 3)})
    plan = surgery.plan(src, dst, {"match": "shape"})
    assert len(plan.ambiguous) == 3


def test_an_inserted_and_a_removed_layer_shift_nothing():
    src = _vgg_keras()
    dst = _vgg_torch()
    dst["adapter.weight"] = (16, 16, 1, 1)           # inserted: a shape no source layer has
    del src["fc2.weight"], src["fc2.bias"]           # removed from the source
    plan = surgery.plan(graph(**src), graph(**dst), {"match": "shape"})
    expected = {k: v for k, v in EXPECTED_VGG.items() if k != "fc2"}
    assert _pairs(plan) == expected
    assert plan.uncovered == ["classifier.3", "adapter"] and plan.unused == []


def test_a_renamed_backbone_and_a_new_head():
    """``features`` renamed ``backbone.body``, and a 1000-class head replaced by a 10-class one."""
    src = _vgg_torch(head=1000)
    dst = {k.replace("features.", "backbone.body."): v for k, v in _vgg_torch(head=10).items()}
    plan = surgery.plan(graph(**src), graph(**dst), {"match": "shape"})
    pairs = _pairs(plan)
    convs = {k.rsplit(".", 1)[0] for k in src if k.startswith("features.")}
    assert all(pairs[k] == k.replace("features.", "backbone.body.") for k in convs)
    assert "classifier.6" not in pairs and plan.unused == ["classifier.6"] and plan.uncovered == ["classifier.6"]
    assert plan.accept_lines() == "skip: [classifier.6]\nkeep: [classifier.6]\n"


def test_identical_shape_families_pair_by_block_number_not_storage_order():
    """Blocks stored 0, 1, 10, 11, 2... (alphabetically) still pair block for block."""
    src = {f"encoder.layer.{i}.fc.weight": (4, 4) for i in range(12)}
    dst = {f"blocks.{i}.linear.weight": (4, 4) for i in range(12)}
    plan = surgery.plan(graph(**dict(sorted(src.items()))), graph(**dst), {"match": "shape"})
    assert _pairs(plan) == {f"encoder.layer.{i}.fc": f"blocks.{i}.linear" for i in range(12)}
    assert plan.strict_ok and "numbered alike" in plan.pairs[0].rule


def test_auto_pairs_names_first_then_structure():
    src = graph(**{"conv1.weight": (4, 3, 3, 3), "fc.weight": (10, 4)})
    dst = graph(**{"conv1.weight": (4, 3, 3, 3), "head.weight": (10, 4)})
    plan = surgery.plan(src, dst, {"match": "auto"})
    assert {p.source: p.rule.split(" ")[0] for p in plan.pairs} == {"conv1": "name", "fc": "shape"}


def test_words_speak_one_spelling():
    assert words("encoder.layer.3.attention.self.query") >= {"query", "attention"}
    assert words("blocks.3.attn.q_proj") == {"block", "attention", "query"}
    assert words("embeddings.LayerNorm") == words("emb_ln") == {"embed", "norm"}
    assert "shortcut" in words("layer1.0.downsample.0")


def test_values_land_where_the_structure_says():
    src, dst = graph(**_vgg_keras()), graph(**dict(sorted(_vgg_torch().items())))
    out = surgery.transplant(src, dst, {"match": "shape"}).graph.state()
    for s, d in EXPECTED_VGG.items():
        assert np.array_equal(out[f"{d}.weight"].read(), src.state()[f"{s}.weight"].read()), (s, d)


def test_separate_projections_merge_into_a_fused_one_block_for_block():
    src = {f"layers.{i}.self_attn.{p}_proj.weight": (4, 4) for i in range(2) for p in "qkv"}
    dst = {f"blocks.{i}.qkv.weight": (12, 4) for i in range(2)}
    plan = surgery.plan(graph(**src), graph(**dst), {"match": "shape"})
    assert {p.destinations[0]: p.parts for p in plan.pairs} == {
        f"blocks.{i}.qkv": [f"layers.{i}.self_attn.{p}_proj" for p in "qkv"] for i in range(2)}
    out = surgery.transplant(graph(**src), graph(**dst), {"match": "shape"}).graph.state()
    stacked = np.concatenate([graph(**src).state()[f"layers.1.self_attn.{p}_proj.weight"].read() for p in "qkv"])
    assert np.array_equal(out["blocks.1.qkv.weight"].read(), stacked)


def test_no_fused_merge_where_the_rows_do_not_add_up():
    src = {f"layers.0.self_attn.{p}_proj.weight": (4, 4) for p in "qkv"}
    plan = surgery.plan(graph(**src), graph(**{"blocks.0.qkv.weight": (9, 4)}), {"match": "shape"})
    assert plan.pairs == [] and plan.uncovered == ["blocks.0.qkv"]


def test_a_fused_projection_splits_into_separate_ones_block_for_block():
    src = {f"blocks.{i}.qkv.weight": (12, 4) for i in range(2)} | {f"blocks.{i}.qkv.bias": (12,) for i in range(2)}
    dst = {f"layers.{i}.self_attn.{p}_proj.{r}": s for i in range(2) for p in "qkv"
           for r, s in (("weight", (4, 4)), ("bias", (4,)))}
    source = graph(**src)
    plan = surgery.plan(source, graph(**dst), {"match": "shape"})
    assert {p.source: p.destinations for p in plan.pairs} == {
        f"blocks.{i}.qkv": [f"layers.{i}.self_attn.{p}_proj" for p in "qkv"] for i in range(2)}
    out = surgery.transplant(source, graph(**dst), {"match": "shape"}).graph.state()
    fused = source.state()["blocks.1.qkv.weight"].read()
    for j, p in enumerate("qkv"):
        assert np.array_equal(out[f"layers.1.self_attn.{p}_proj.weight"].read(), fused[4 * j:4 * j + 4]), p
