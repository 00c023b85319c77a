"""Gather device tensors from several probes and bring them to the host in one copy per device.

Probes `put` 1-D tensors (or 0-d tensors, or Python numbers) under names while the step
runs; `fetch()` concatenates what is on each device, copies it to the host once, and
hands back numpy arrays under the same names. Nothing here calls `.item()`.

Values put with ``reduce="sum"`` or ``reduce="max"`` are statistics of local shards of a
sharded tensor (FSDP2): `fetch()` first combines them across processes, all of them in one
collective (`gradwatch.probes.sharded.gather`), so a record costs one collective at most.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from gradwatch.probes.sharded import gather


class Transfer:
    def __init__(self) -> None:
        self._parts: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
        self._host: dict[str, np.ndarray] = {}
        self._reduce: dict[str, list[tuple[str, torch.Tensor]]] = {"sum": [], "max": []}

    def put(
        self,
        name: str,
        value: torch.Tensor | Sequence[torch.Tensor] | np.ndarray | float,
        reduce: Literal["sum", "max"] | None = None,
    ) -> None:
        """Queue `value` under `name`; numbers and numpy arrays are already on the host.

        `reduce`: this process's part of a figure spread over processes, added to (or the
        maximum taken with) the other processes' parts when fetched; a tensor.
        """
        if reduce is not None:
            assert isinstance(value, torch.Tensor), "a value to reduce across processes is a tensor"
            self._reduce[reduce].append((name, value.detach().reshape(-1)))
            return
        if isinstance(value, int | float):
            self._host[name] = np.asarray([float(value)])
            return
        if isinstance(value, np.ndarray):
            self._host[name] = value.astype(np.float64).reshape(-1)
            return
        if not isinstance(value, torch.Tensor):
            value = torch.stack([v.reshape(()) for v in value]) if len(value) else torch.zeros(0)
        value = value.detach().reshape(-1)
        if not value.is_floating_point():
            value = value.double()
        self._parts.setdefault(value.device, []).append((name, value))

    def fetch(self) -> dict[str, np.ndarray]:
        self._combine()
        out = dict(self._host)
        for device, parts in self._parts.items():
            # float64 keeps integer counts exact past 2**24; MPS has no float64.
            dtype = torch.float32 if device.type == "mps" else torch.float64
            flat = torch.cat([t for _, t in parts]).to(dtype).cpu().numpy().astype(np.float64)
            offset = 0
            for name, t in parts:
                out[name] = flat[offset : offset + t.numel()]
                offset += t.numel()
        self._parts.clear()
        self._host.clear()
        return out

    def _combine(self) -> None:
        """Combine the values to reduce across processes (one collective) and queue the results."""
        sums, maxima = self._reduce["sum"], self._reduce["max"]
        if not (sums or maxima):
            return
        device = (sums or maxima)[0][1].device
        # float64 keeps counts exact; the collective runs on the shards' device (NCCL needs CUDA)
        total, peak = gather(_cat(sums, device), _cat(maxima, device))
        for part, combined in ((sums, total), (maxima, peak)):
            offset = 0
            for name, t in part:
                self._parts.setdefault(device, []).append((name, combined[offset : offset + t.numel()]))
                offset += t.numel()
        self._reduce = {"sum": [], "max": []}


def _cat(part: list[tuple[str, torch.Tensor]], device: torch.device) -> torch.Tensor:
    if not part:
        return torch.zeros(0, dtype=torch.float64, device=device)
    return torch.cat([t.to(device, torch.float64) for _, t in part])
