"""verify cases a review found failing."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import surgery


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # mask unused: the exporter drops it
        return self.fc(x)


def test_an_input_the_exported_graph_drops_is_not_fed_to_it(tmp_path):
    torch.jit.save(torch.jit.script(Unused()), str(tmp_path / "m.ts"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in.npz", x=rng.standard_normal((3, 4)).astype("float32"),
             mask=rng.standard_normal((3, 4)).astype("float32"))
    report = surgery.verify(tmp_path / "m.ts", inputs=tmp_path / "in.npz")
    assert report.ok, report
