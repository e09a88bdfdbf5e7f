"""nn.LSTMCell / nn.GRUCell pair with single-layer, single-direction LSTM / GRU layers, both ways."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import surgery


@pytest.mark.parametrize("rnn, cell", [(nn.LSTM, nn.LSTMCell), (nn.GRU, nn.GRUCell)])
def test_a_one_layer_rnn_into_a_cell_and_back(tmp_path, rnn, cell):
    torch.manual_seed(0)
    layer, step = rnn(4, 3, batch_first=True), cell(4, 3)
    torch.save({f"enc.{k}": v for k, v in layer.state_dict().items()}, tmp_path / "rnn.pt")
    holder = nn.ModuleDict({"enc": step})
    result = surgery.load_into(holder, tmp_path / "rnn.pt")
    assert result.plan.strict_ok and result.plan.src["enc"].kind == rnn.__name__.lower()
    assert holder["enc"] is step and "weight_ih_l0 -> weight_ih" in result.plan.pairs[0].tensors[0].transform
    x = torch.randn(2, 1, 4)
    with torch.no_grad():
        out = layer(x)[0][:, 0]
        got = step(x[:, 0])
        got = got[0] if isinstance(got, tuple) else got
    assert torch.allclose(out, got, atol=1e-6)
    # back: the cell's weights into a fresh one-layer RNN
    torch.save({f"enc.{k}": v for k, v in step.state_dict().items()}, tmp_path / "cell.pt")
    fresh = nn.ModuleDict({"enc": rnn(4, 3, batch_first=True)})
    assert surgery.load_into(fresh, tmp_path / "cell.pt").plan.strict_ok
    with torch.no_grad():
        assert torch.allclose(fresh["enc"](x)[0][:, 0], out, atol=1e-6)


def test_a_stacked_rnn_is_not_a_cell(tmp_path):
    torch.save({f"enc.{k}": v for k, v in nn.LSTM(4, 3, num_layers=2).state_dict().items()}, tmp_path / "rnn.pt")
    with pytest.raises(surgery.PlanError, match="a cell matches only a single-layer, single-direction RNN"):
        surgery.load_into(nn.ModuleDict({"enc": nn.LSTMCell(4, 3)}), tmp_path / "rnn.pt")
