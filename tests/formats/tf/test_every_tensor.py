"""Every tensor of every TensorFlow fixture is a layer param of the graph or named in ``graph.left_out``.

Counted with ``tf.train.list_variables``. "In the graph" means read: the
checkpoint reader surgery opens is wrapped to record every tensor fetched while
each param of the graph is read.
"""

from __future__ import annotations

import pytest

from tests.conftest import FIXTURES

tf_reader = pytest.importorskip("surgery.formats.tf.reader")

import surgery  # noqa: E402
from surgery.formats.tf import checkpoint  # noqa: E402

PREFIXES = {
    "tf1": FIXTURES / "tf" / "tf1" / "model.ckpt",
    "tf2": FIXTURES / "tf" / "tf2" / "ckpt",
    "saved_model": FIXTURES / "tf" / "saved_model",
}


class _Recording:
    def __init__(self, reader, seen: set[str], on: list[bool]) -> None:
        self.reader, self.seen, self.on = reader, seen, on

    def get_tensor(self, key: str):
        if self.on[0]:
            self.seen.add(key)
        return self.reader.get_tensor(key)

    def __getattr__(self, name: str):
        return getattr(self.reader, name)


def _read_recording(path, monkeypatch) -> tuple[object, set[str]]:
    seen: set[str] = set()
    on = [False]
    opened = tf_reader.open_reader
    monkeypatch.setattr(tf_reader, "open_reader", lambda prefix, shown: _Recording(opened(prefix, shown), seen, on))
    graph = surgery.load(str(path))
    on[0] = True
    for _, param in graph.tensors():
        param.read()
    return graph, seen


def _assert_accounted(name: str, graph, seen: set[str], in_file: set[str]) -> None:
    left_out = set(graph.left_out)
    assert not seen & left_out, f"{name}: read and also left out: {sorted(seen & left_out)}"
    assert not (seen | left_out) - in_file, f"{name}: not in the file: {sorted((seen | left_out) - in_file)}"
    dropped = in_file - seen - left_out
    assert not dropped, f"{name}: tensors neither in the graph nor left out: {sorted(dropped)}"


@pytest.mark.parametrize("name", sorted(PREFIXES))
def test_tensors_in_file_are_graph_plus_left_out(name, monkeypatch):
    tf = tf_reader.import_tf()
    path = PREFIXES[name]
    prefix = path / "variables" / "variables" if path.is_dir() else path
    in_file = {key for key, _ in tf.train.list_variables(str(prefix))}
    graph, seen = _read_recording(path, monkeypatch)
    _assert_accounted(name, graph, seen, in_file)


def test_tf1_rnn_cells_are_not_read_as_dense_layers(tmp_path, monkeypatch):
    """tf.nn.rnn_cell.LSTMCell / GRUCell keep one kernel over [input; state]: passed through, marked."""
    tf = tf_reader.import_tf()
    prefix = str(tmp_path / "rnn.ckpt")
    shapes = {"rnn/lstm_cell/kernel": (7, 16), "rnn/lstm_cell/bias": (16,),
              "rnn/multi_rnn_cell/cell_0/gru_cell/gates/kernel": (7, 8),
              "rnn/multi_rnn_cell/cell_0/gru_cell/gates/bias": (8,), "fc/kernel": (4, 2), "fc/bias": (2,)}
    graph_mode = tf.Graph()
    with graph_mode.as_default():
        made = [tf.compat.v1.get_variable(k, shape=s) for k, s in shapes.items()]
        saver = tf.compat.v1.train.Saver(made)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, prefix)
    graph = checkpoint.read(prefix)
    cells = [layer for layer in graph if layer.name != "fc"]
    assert cells and all(layer.kind == "unknown" and layer.attrs["layout_known"] is False for layer in cells)
    assert graph["fc"].kind == "dense"
    graph, seen = _read_recording(prefix + ".index", monkeypatch)
    _assert_accounted("rnn.ckpt", graph, seen, {key for key, _ in tf.train.list_variables(prefix)})
