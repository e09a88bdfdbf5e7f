"""The ``*.index.json`` of a sharded checkpoint (Hugging Face style): which shard holds which tensor.

Read by the safetensors and the sharded ``pytorch_model.bin`` readers alike. A
shard must be a file name inside the index's own folder: an index from the
internet must not make surgery read ``../../etc/passwd``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..errors import fail


@dataclass
class ShardIndex:
    path: str
    weight_map: dict[str, str]        # tensor name -> shard file name
    shards: dict[str, str]            # shard file name -> its path, in first-listed order
    metadata: dict                    # the index's own ``metadata`` (``total_size``, aliases...)


def read_shard_index(path: str, what: str = "shard index") -> ShardIndex:
    """Parse and check an index; every shard it names exists inside the index's folder.

    Raises:
        FormatError: not JSON, no ``weight_map``, a shard outside the folder or missing.
    """
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise fail(path, f"not a {what} ({type(e).__name__}: {e})") from None
    folder = os.path.dirname(os.path.abspath(path))
    shards = {name: shard_path(path, folder, name) for name in dict.fromkeys(weight_map.values())}
    metadata = index.get("metadata") if isinstance(index.get("metadata"), dict) else {}
    return ShardIndex(path, weight_map, shards, metadata)


def shard_path(index_path: str, folder: str, name: object) -> str:
    """The path of shard ``name``, refused unless it is a file inside ``folder``."""
    if not isinstance(name, str) or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise fail(index_path, f"shard {name!r} is not a file name inside the index's folder")
    shard = os.path.join(folder, name)
    if not os.path.isfile(shard):
        raise fail(index_path, f"shard {name!r} is missing")
    return shard
