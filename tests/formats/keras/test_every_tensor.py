"""Every tensor of every Keras fixture file is a layer param of the graph or named in ``graph.left_out``.

Counted with h5py itself: the datasets of the file (of ``model.weights.h5`` inside a
``.keras``). "In the graph" means read: every param of the graph is read through an
HDF5 opener that records the datasets it opens, so a tensor the reader grouped but
no param reads does not count.
"""

from __future__ import annotations

import io
import zipfile

import pytest

from tests.conftest import FIXTURES

h5py = pytest.importorskip("h5py")

from surgery.formats.keras import archive, h5  # noqa: E402

FILES = sorted(p for folder in ("keras", "keras_nested") for p in (FIXTURES / folder).iterdir()
               if p.suffix in (".h5", ".keras"))


class _Recording:
    """An ``h5py.File`` that remembers every path read through ``f[path]`` once ``on`` is set."""

    def __init__(self, f, seen: set[str], on: list[bool]) -> None:
        self.f, self.seen, self.on = f, seen, on

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def __getitem__(self, path: str):
        if self.on[0]:
            self.seen.add(path.strip("/"))
        return self.f[path]

    def __contains__(self, path: str) -> bool:
        return path in self.f

    def __iter__(self):
        return iter(self.f)

    def __getattr__(self, name: str):
        return getattr(self.f, name)


def _datasets(f) -> set[str]:
    found: set[str] = set()
    f.visititems(lambda name, obj: found.add(name) if isinstance(obj, h5py.Dataset) else None)
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_tensors_in_file_are_graph_plus_left_out(path):
    data = zipfile.ZipFile(path).read("model.weights.h5") if path.suffix == ".keras" else path.read_bytes()
    config = archive.read_config(str(path))[0] if path.suffix == ".keras" else None
    seen: set[str] = set()
    on = [False]
    graph = h5.read(str(path), config=config,
                    opener=lambda: _Recording(h5py.File(io.BytesIO(data), "r"), seen, on))
    on[0] = True
    for name, param in graph.tensors():
        param.read()
    with h5py.File(io.BytesIO(data), "r") as f:
        in_file = _datasets(f)
    left_out = set(graph.left_out)
    assert not seen & left_out, f"{path.name}: read and also left out: {sorted(seen & left_out)}"
    assert not (seen | left_out) - in_file, f"{path.name}: not in the file: {sorted((seen | left_out) - in_file)}"
    dropped = in_file - seen - left_out
    assert not dropped, f"{path.name}: tensors neither in the graph nor left out: {sorted(dropped)}"


def test_optimizer_state_of_a_keras_archive_is_named_as_such():
    graph = archive.read(str(FIXTURES / "keras_nested" / "functional.keras"))
    assert graph.left_out and set(graph.left_out.values()) == {"optimizer state"}
    assert all(name.startswith("optimizer/") for name in graph.left_out)


def test_legacy_h5_with_optimizer_state_accounts_for_it(tmp_path):
    keras = pytest.importorskip("keras")
    import numpy as np

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc"), keras.layers.Dense(2, name="out")])
    model.compile("adam", "mse")
    model.fit(np.ones((4, 4), "float32"), np.ones((4, 2), "float32"), verbose=0)
    path = tmp_path / "trained.h5"
    model.save(path)
    graph = h5.read(str(path))
    with h5py.File(path, "r") as f:
        in_file = _datasets(f)
    optimizer = {name for name in in_file if name.startswith("optimizer_weights/")}
    assert optimizer, "Keras wrote no optimizer state: the test would prove nothing"
    assert {name: graph.left_out.get(name) for name in optimizer} == {name: "optimizer state" for name in optimizer}
    assert len(in_file) == len(optimizer) + sum(1 for _ in graph.tensors())
