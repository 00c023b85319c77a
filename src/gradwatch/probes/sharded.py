"""Tensors spread over processes: the rank, and statistics of sharded DTensors (FSDP2).

Under FSDP2 (`torch.distributed.fsdp.fully_shard`) each parameter and its gradient is a
`DTensor` of which every process holds one shard. The probes measure the local shards
(plain tensors) and combine the per-parameter numbers of all processes with **one**
collective per record (`gather`, called from `Transfer.fetch`): sums of squares and
counts are added, maxima taken, so the figures are those of the unsharded tensor. A
shard held by several processes (a replicated mesh dimension, as in HSDP) is weighted by
the share of processes holding it, so it counts once.

Nothing here imports `torch.distributed.tensor`: a DTensor can only exist once it has
been imported, so `sys.modules` is asked (as einops looks for frameworks).
"""

from __future__ import annotations

import math
import sys

import torch


def rank() -> int:
    """This process's rank in the default process group (0 when not distributed)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return 0


def world_size() -> int:
    """The number of processes in the default process group (1 when not distributed)."""
    dist = torch.distributed
    return int(dist.get_world_size()) if dist.is_available() and dist.is_initialized() else 1


def is_sharded(t: torch.Tensor | None) -> bool:
    """Whether `t` is a DTensor (its data spread over a device mesh)."""
    mod = sys.modules.get("torch.distributed.tensor")
    return t is not None and mod is not None and isinstance(t, mod.DTensor)


def local(t: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The shard of DTensor `t` this process holds, and the weight that makes a sum over all
    processes of (weight x a sum over the shard) the sum over the whole tensor.

    Raises `ValueError` for what cannot be combined that way: a placement still waiting
    for its reduction (`Partial`), or a mesh that does not span every process.
    """
    dist = torch.distributed
    mesh, placements = t.device_mesh, t.placements  # type: ignore[attr-defined]
    world = dist.get_world_size()
    if any(p.is_partial() for p in placements):
        raise ValueError(
            f"a DTensor with placements {tuple(placements)} holds partial sums still to be reduced; "
            "gradwatch measures only sharded or replicated tensors"
        )
    if mesh.size() != world:
        raise ValueError(
            f"a DTensor on a device mesh of {mesh.size()} processes out of {world}; gradwatch "
            "combines shards over every process and needs a mesh that spans them all"
        )
    shards = math.prod(mesh.size(d) for d, p in enumerate(placements) if p.is_shard())
    return t.to_local(), shards / world  # type: ignore[attr-defined]


def gather(sums: torch.Tensor, maxima: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's `sums` added and `maxima` taken elementwise: one `all_gather`.

    Every process must call it at the same point with vectors of the same lengths (the
    recording schedule and the model are the same on every rank, so they do).
    """
    n_proc = world_size()
    if n_proc == 1:
        return sums, maxima
    buf = torch.cat([sums, maxima])
    parts = [torch.empty_like(buf) for _ in range(n_proc)]
    torch.distributed.all_gather(parts, buf)
    table = torch.stack(parts)
    n = sums.numel()
    return table[:, :n].sum(0), table[:, n:].amax(0)
