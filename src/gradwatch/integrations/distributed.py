"""What the adapters do across the processes of a distributed run (DDP, FSDP2).

Every rank records: under DDP each holds the same all-reduced gradients, under FSDP2 the
per-layer figures are combined from the shards in one collective per record (see
`gradwatch.probes.sharded`), so every rank's gradient figures are the same. Losses and
activation statistics are each rank's own batch. At the end of training the adapters make
the ranks agree on one diagnosis, rank zero's (`agree`), and only rank zero prints it and
writes the log.
"""

from __future__ import annotations

import torch

from gradwatch import Diagnosis


def world_size() -> int:
    """The number of processes (1 when torch.distributed is not initialised)."""
    dist = torch.distributed
    return int(dist.get_world_size()) if dist.is_available() and dist.is_initialized() else 1


def agree(diagnosis: Diagnosis) -> Diagnosis:
    """Rank zero's diagnosis, on every rank (one broadcast; every rank must call it)."""
    if world_size() == 1:
        return diagnosis
    box: list[Diagnosis | None] = [diagnosis]
    torch.distributed.broadcast_object_list(box, src=0)
    assert box[0] is not None
    return box[0]
