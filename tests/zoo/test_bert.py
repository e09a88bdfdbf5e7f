"""The zoo, BERT rows: transformers' own BertModel, saved every way users save it, transplanted through the CLI.

Each row is judged by running the source network natively and the destination,
loaded by its own framework from what ``surgery transplant`` wrote, on the same
input (max abs difference <= 1e-4); broken variants must exit non-zero.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from fixtures.zoo import bert  # noqa: E402
from tests.conftest import run_ort  # noqa: E402

pytestmark = pytest.mark.zoo
TOLERANCE = 1e-4
IDS = torch.randint(0, bert.VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The trained network: a Hugging Face folder (config.json + model.safetensors), and its outputs."""
    folder = tmp_path_factory.mktemp("hf") / "bert"
    model = bert.hf_bert(seed=1)
    model.save_pretrained(folder)
    with torch.no_grad():
        expected = model(input_ids=IDS).last_hidden_state.numpy()
    return folder, model, expected


def _judge(module: torch.nn.Module, out, expected: np.ndarray) -> float:
    module.load_state_dict(torch.load(out, weights_only=True))
    with torch.no_grad():
        got = module.eval()(IDS)
    got = got.last_hidden_state if hasattr(got, "last_hidden_state") else got
    worst = float(np.abs(got.numpy() - expected).max())
    print(f"zoo row: max abs difference {worst:.3g}")  # docs/zoo.md's figures (make zoo shows them)
    assert worst <= TOLERANCE, f"max abs difference {worst:.3g}"
    return worst


def _fresh_hf(tmp_path):
    path = tmp_path / "fresh.pt"
    model = bert.hf_bert(seed=2)
    torch.save(model.state_dict(), path)
    return model, path


def test_hf_folder_into_the_same_architecture(run, source, tmp_path):
    folder, _, expected = source
    fresh, dst = _fresh_hf(tmp_path)
    result = run("transplant", folder, dst, "-o", tmp_path / "out.pt", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    _judge(fresh, tmp_path / "out.pt", expected)


@pytest.mark.parametrize("mapping", ["rename rules", "layers patterns"])
def test_hf_folder_into_a_reimplementation_with_other_names(run, source, tmp_path, mapping):
    folder, _, expected = source
    torch.manual_seed(3)
    tiny = bert.TinyBert()
    torch.save(tiny.state_dict(), tmp_path / "tiny.pt")
    (tmp_path / "map.yaml").write_text(bert.TINY_MAP if mapping == "rename rules" else bert.TINY_PATTERN_MAP)
    result = run("transplant", folder, tmp_path / "tiny.pt", "--map", tmp_path / "map.yaml", "-o", tmp_path / "out.pt", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    _judge(tiny, tmp_path / "out.pt", expected)


def test_hf_folder_into_a_reimplementation_by_shape_alone_asks(run, source, tmp_path):
    """No name in common, a file stored in alphabetical order: q/k/v settle by name, the LayerNorms are asked about."""
    folder, _, _ = source
    torch.save(bert.TinyBert().state_dict(), tmp_path / "tiny.pt")
    result = run("transplant", folder, tmp_path / "tiny.pt", "--match", "shape", "-o", tmp_path / "out.pt", "-q")
    assert result.exit_code == 1 and not (tmp_path / "out.pt").exists()
    assert "blocks.0.ln1" in result.stderr and "pooler.dense" in result.stderr  # two ln per block: which is which?
    assert "blocks.0.attn.q" not in result.stderr  # settled by its name


@pytest.mark.parametrize("port", ["separate q/k/v", "nn.MultiheadAttention", "one qkv linear"])
def test_the_proposed_map_is_complete_and_correct(run, source, tmp_path, port):
    """`surgery map` into a re-implementation with other names: every pair says why; accepting it is right."""
    folder, _, expected = source
    torch.manual_seed(3)
    tiny = bert.TinyBert() if port == "separate q/k/v" else bert.FusedBert(mha=port == "nn.MultiheadAttention")
    torch.save(tiny.state_dict(), tmp_path / "tiny.pt")
    result = run("map", folder, tmp_path / "tiny.pt", "-o", tmp_path / "map.yaml")
    assert result.exit_code == 0, result.stderr
    text = (tmp_path / "map.yaml").read_text()
    for line in text.splitlines():
        if line.startswith("  ") and ":" in line:
            assert "  # " in line, f"a pair that does not say why: {line}"
    assert {"separate q/k/v": "encoder.layer.1.attention.self.key: blocks.1.attn.k  # ",
            "nn.MultiheadAttention": "  blocks.1.attn: [encoder.layer.1.attention.self.query, ",
            "one qkv linear": "  blocks.1.qkv: [encoder.layer.1.attention.self.query, "}[port] in text
    assert "#   - pooler.dense" in text  # TinyBert has no pooler: proposed, commented, for the user to accept
    accepted = text.replace("# skip:", "skip:").replace("#   - pooler.dense", "  - pooler.dense")
    (tmp_path / "map.yaml").write_text(accepted)
    result = run("transplant", folder, tmp_path / "tiny.pt", "--map", tmp_path / "map.yaml", "-o", tmp_path / "out.pt", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    _judge(tiny, tmp_path / "out.pt", expected)


@pytest.fixture(scope="module")
def onnx_exports(source, tmp_path_factory):
    _, model, _ = source
    folder = tmp_path_factory.mktemp("onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for dynamo in (False, True):
            torch.onnx.export(bert.Output(model), (IDS,), str(folder / f"bert_{dynamo}.onnx"), dynamo=dynamo,
                              input_names=["ids"])
    return folder


def test_onnx_from_the_torchscript_exporter_into_pytorch(run, onnx_exports, source, tmp_path):
    _, _, expected = source
    onnx_file = onnx_exports / "bert_False.onnx"
    assert np.abs(run_ort(onnx_file, {"ids": IDS.numpy()}) - expected).max() <= TOLERANCE  # the export is faithful
    fresh, dst = _fresh_hf(tmp_path)
    # the export traced the last hidden state only: the pooler is not in it, so it is kept on purpose
    (tmp_path / "map.yaml").write_text('version: 1\nrename: {"^model\\\\.": ""}\nkeep: ["pooler.dense"]\n')
    result = run("transplant", onnx_file, dst, "--map", tmp_path / "map.yaml", "-o", tmp_path / "out.pt", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    _judge(fresh, tmp_path / "out.pt", expected)


def test_onnx_from_the_dynamo_exporter_refuses_its_folded_position_embeddings(run, onnx_exports, tmp_path):
    """The dynamo exporter folds ``position_embeddings.weight[:7]`` into an anonymous constant: not the layer's
    own weights, so the transplant must ask rather than leave the position embeddings as initialised."""
    _, dst = _fresh_hf(tmp_path)
    (tmp_path / "map.yaml").write_text('version: 1\nrename: {"^model\\\\.": ""}\n')
    result = run("transplant", onnx_exports / "bert_True.onnx", dst, "--map", tmp_path / "map.yaml",
                 "-o", tmp_path / "out.pt", "-q")
    assert result.exit_code == 1 and not (tmp_path / "out.pt").exists()
    assert "embeddings.position_embeddings" in result.stderr


def test_torchscript_into_pytorch(run, source, tmp_path):
    _, model, expected = source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(bert.Output(model), (IDS,), strict=False)
    traced.save(str(tmp_path / "bert.ts"))
    fresh, dst = _fresh_hf(tmp_path)
    # TorchScript keeps BERT's integer buffers (position_ids...) that its state_dict leaves out
    (tmp_path / "map.yaml").write_text('version: 1\nrename: {"^model\\\\.": ""}\nskip: ["model.embeddings"]\n')
    result = run("transplant", tmp_path / "bert.ts", dst, "--map", tmp_path / "map.yaml", "-o", tmp_path / "out.pt", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    _judge(fresh, tmp_path / "out.pt", expected)


def test_broken_sources_exit_non_zero(run, source, tmp_path):
    folder, _, _ = source
    _, dst = _fresh_hf(tmp_path)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((folder / "model.safetensors").read_bytes()[:-100])
    result = run("transplant", truncated, dst, "-o", tmp_path / "a.pt", "-q")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["encoder.layer.1.output.dense.weight"]
    save_file(tensors, str(tmp_path / "missing.safetensors"))
    result = run("transplant", tmp_path / "missing.safetensors", dst, "-o", tmp_path / "b.pt", "-q")
    assert result.exit_code == 1 and "encoder.layer.1.output.dense.weight" in result.stderr
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()


def _accept(text: str) -> str:
    """The proposed map with its commented `skip:` proposals accepted, as a user would after reading them."""
    return text.replace("# skip:", "skip:").replace("#   - ", "  - ")


def _keras_inputs():
    ids = IDS.numpy().astype(np.int32)
    return [ids, np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape).copy(), np.zeros_like(ids)]


def test_hf_folder_into_a_keras_port(run, source, tmp_path, keras):
    """Into Keras: q/k/v/o merged into each block's MultiHeadAttention, written into the .keras file."""
    folder, _, expected = source
    bert.keras_bert(seed=4).save(tmp_path / "port.keras")
    assert run("map", folder, tmp_path / "port.keras", "-o", tmp_path / "map.yaml").exit_code == 0
    (tmp_path / "map.yaml").write_text(_accept((tmp_path / "map.yaml").read_text()))
    result = run("transplant", folder, tmp_path / "port.keras", "--map", tmp_path / "map.yaml",
                 "-o", tmp_path / "out.keras", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    got = np.asarray(keras.saving.load_model(tmp_path / "out.keras")(_keras_inputs()))
    worst = float(np.abs(got - expected).max())
    print(f"zoo row HF folder -> keras port: max abs difference {worst:.3g}")
    assert worst <= TOLERANCE


def test_a_keras_port_into_the_pytorch_reimplementation(run, tmp_path, keras):
    """From Keras: each MultiHeadAttention split into separate q/k/v/o linears."""
    model = bert.keras_bert(seed=5)
    model.save(tmp_path / "src.keras")
    expected = np.asarray(model(_keras_inputs()))
    torch.manual_seed(6)
    tiny = bert.TinyBert()
    torch.save(tiny.state_dict(), tmp_path / "tiny.pt")
    assert run("map", tmp_path / "src.keras", tmp_path / "tiny.pt", "-o", tmp_path / "map.yaml").exit_code == 0
    result = run("transplant", tmp_path / "src.keras", tmp_path / "tiny.pt", "--map", tmp_path / "map.yaml",
                 "-o", tmp_path / "out.pt", "-q")
    assert result.exit_code == 0, (tmp_path / "map.yaml").read_text() + result.stdout + result.stderr
    _judge(tiny, tmp_path / "out.pt", expected)
