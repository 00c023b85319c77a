"""Gather device tensors from several probes and bring them to the host in one copy per device.

Probes `put` 1-D tensors (or 0-d tensors, or Python numbers) under names while the step
runs; `fetch()` concatenates what is on each device, copies it to the host once, and
hands back numpy arrays under the same names. Nothing here calls `.item()`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class Transfer:
    def __init__(self) -> None:
        self._parts: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
        self._host: dict[str, np.ndarray] = {}

    def put(self, name: str, value: torch.Tensor | Sequence[torch.Tensor] | np.ndarray | float) -> None:
        """Queue `value` under `name`; numbers and numpy arrays are already on the host."""
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
