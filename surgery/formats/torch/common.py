"""What the PyTorch formats (and live torch modules) share: tensors <-> numpy, and archive members.

torch is imported inside the functions: this module is imported by format
sniffing, which must never load a framework.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ... import dtypes
from ...graph import Param


def dtype_name(torch_dtype: Any) -> str:
    """surgery's name of a torch dtype (``torch.bfloat16`` -> ``"bfloat16"``): the names are torch's own."""
    return str(torch_dtype).removeprefix("torch.")


def torch_dtype(name: str) -> Any:
    """The torch dtype of surgery's dtype name (``"bfloat16"`` -> ``torch.bfloat16``)."""
    import torch

    return getattr(torch, name)


def to_numpy(tensor: Any) -> np.ndarray:
    """A CPU tensor as a numpy array of the same dtype (bfloat16/float8 as ml_dtypes), no copy when contiguous."""
    import torch

    np_dtype = dtypes.get(dtype_name(tensor.dtype)).numpy
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().view(np_dtype).reshape(tuple(tensor.shape))


def to_tensor(arr: np.ndarray) -> Any:
    """A numpy array (any surgery dtype) as a torch tensor, sharing memory where it can."""
    import torch

    name = dtypes.of_array(arr)
    flat = np.ascontiguousarray(arr).reshape(-1)
    if not flat.flags.writeable:
        flat = flat.copy()
    return torch.from_numpy(flat.view(np.uint8)).view(getattr(torch, name)).reshape(arr.shape)


def storage_ident(tensor: Any) -> tuple:
    """Equal for two tensors that are one view of one storage: how tied weights are recognised."""
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))


def tensor_param(key: str, tensor: Any) -> Param:
    """A Param over a live CPU tensor (converted to numpy on ``read``)."""
    tensor = tensor.detach()
    return Param(tensor.shape, dtype_name(tensor.dtype), lambda: to_numpy(tensor), key=key,
                 ident=storage_ident(tensor))


def is_code_member(member: str) -> bool:
    """``<archive>/code/...``: TorchScript's compiled source (a ``torch.save`` of ``code.pt`` has ``code/data.pkl``)."""
    parts = member.split("/")
    return len(parts) >= 3 and parts[1] == "code"
