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
from gradwatch.probes.sharded import world_size


def agree(diagnosis: Diagnosis) -> Diagnosis:
    """Rank zero's diagnosis, on every rank (one broadcast; every rank must call it)."""
    if world_size() == 1:
        return diagnosis
    box: list[Diagnosis | None] = [diagnosis]
    torch.distributed.broadcast_object_list(box, src=0)
    assert box[0] is not None
    return box[0]
