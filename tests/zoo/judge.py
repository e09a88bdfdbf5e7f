"""How a zoo row is judged: the destination network, loaded by its own framework, run on the source's input."""

from __future__ import annotations

import numpy as np

TOLERANCE = 1e-4


def judge(got: np.ndarray, expected: np.ndarray, row: str) -> float:
    """The max abs difference, printed for docs/zoo.md (``make zoo`` shows it) and held to the tolerance."""
    worst = float(np.abs(got - expected).max())
    print(f"zoo row {row}: max abs difference {worst:.3g}")
    assert worst <= TOLERANCE, f"{row}: max abs difference {worst:.3g}"
    return worst


def judge_torch_port(port, state: dict, x_nhwc: np.ndarray, expected: np.ndarray, row: str) -> float:
    """A PyTorch port of a Keras network: its state loaded, fed the NHWC input as NCHW."""
    import torch

    port.load_state_dict(state)
    with torch.no_grad():
        got = port.eval()(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()
    return judge(got, expected, row)
