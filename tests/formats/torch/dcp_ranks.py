"""One rank of a 2-process gloo job on CPU, started by ``torch.multiprocessing.spawn`` from ``test_dcp_ranks``.

Each rank does what a trainer's rank does with a DCP checkpoint, with FSDP2's ``fully_shard`` on a
CPU ``DeviceMesh`` (rows of every parameter split across the ranks, unevenly where they do not divide):

1. loads a checkpoint surgery wrote into its own row shards (``get_model_state_dict`` -> ``dcp.load``
   -> ``set_model_state_dict``), and into a plain full state_dict, and saves what it got for the test;
2. trains one Adam step and saves ``{"model", "optim"}`` with ``dcp.save``, each rank writing its own
   shards, as a trainer's checkpoint is written; rank 0 also saves the full trained weights (gathered
   from the shards, not read back from DCP) for the test to compare surgery's reading with.

Module-level: a spawned process imports its function by name.
"""

from __future__ import annotations

import datetime
import os
import sys

WORLD = 2


def net():
    from torch import nn

    return nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))


def main(rank: int, written: str, saved: str, out: str, store: str, split: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if sys.platform.startswith("linux"):   # both ranks are on this machine: no need for the host's name to resolve
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        for folder, name in [(split, "loaded-split"), (written, "loaded")]:   # written by two processes, by one
            torch.manual_seed(1)   # not the weights written: a load that does nothing shows
            model = fully_shard(net(), mesh=mesh)
            state = get_model_state_dict(model)
            dcp.load(state, checkpoint_id=folder)
            set_model_state_dict(model, state)
            full = net().state_dict()
            dcp.load(full, checkpoint_id=folder)
            shards = {k: v.to_local().clone() for k, v in model.state_dict().items()}
            torch.save({"shards": shards, "full": full}, os.path.join(out, f"{name}-{rank}.pt"))

        optim = torch.optim.Adam(model.parameters(), lr=0.1)
        model(torch.randn(8, 4, generator=torch.Generator().manual_seed(2))).square().sum().backward()
        optim.step()
        model_state, optim_state = get_state_dict(model, optim)
        dcp.save({"model": model_state, "optim": optim_state, "step": 1}, checkpoint_id=saved)
        trained = {k: v.full_tensor() for k, v in model.state_dict().items()}
        if rank == 0:
            torch.save(trained, os.path.join(out, "trained.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # torch.distributed's C++ threads can abort a finished process at interpreter exit ("terminate called
    # without an active exception", seen once in about ten runs, as with surgery's own torchrun ranks):
    # everything is written, so leave without the interpreter's teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
