"""The gradient through time: ||dL/dx_t|| at every time step of a recurrent layer's input.

How it works, on recording steps only:

- For ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` the input sequence is swapped, just before the
  layer runs, for a stand-in with the same values: a view of it when it already requires
  grad (so only the gradient that flows back through this layer is seen), or a detached
  copy that requires grad when it is plain data (it has no history to cut). A tensor hook
  on the stand-in takes the norm of its gradient over every dimension but time. The hook
  returns nothing, so the gradient that flows on is untouched; the parameters' gradients
  are the same bits as without gradwatch. The one extra cost is the input gradient of a
  first layer whose input is data, which autograd would otherwise skip.
- For a cell applied step by step (``nn.RNNCell``/``LSTMCell``/``GRUCell``, or any module
  with parameters called three or more times in one forward pass), each call's first
  input gets the same treatment, and the call index is the time step.

Norms stay on the device until the record's single transfer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def time_dim(module: nn.RNNBase, x: torch.Tensor) -> int:
    if x.dim() == 2:  # unbatched (T, features)
        return 0
    return 1 if module.batch_first else 0


def stand_in(x: torch.Tensor) -> torch.Tensor:
    """A tensor equal to `x` whose gradient is exactly the gradient through this use of it."""
    return x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)


class SequenceProfile:
    """Per-time-step gradient norms of one nn.RNN/LSTM/GRU, summed over backward passes."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.passes = 0

    def hook(self, dim: int) -> Any:
        def on_grad(g: torch.Tensor) -> None:
            dims = [d for d in range(g.dim()) if d != dim]
            norms = torch.linalg.vector_norm(g.detach().double(), dim=dims) if dims else g.detach().double().abs()
            if self.total is None or self.total.shape != norms.shape:
                self.total, self.passes = norms, 1
            else:
                self.total = self.total + norms
                self.passes += 1

        return on_grad

    def result(self) -> torch.Tensor | None:
        return None if self.total is None else self.total / self.passes


class CallProfile:
    """Per-call gradient norms of a cell applied in a loop; the call index is the time step."""

    def __init__(self) -> None:
        self.by_step: dict[int, list[torch.Tensor]] = {}

    def hook(self, t: int) -> Any:
        def on_grad(g: torch.Tensor) -> None:
            self.by_step.setdefault(t, []).append(torch.linalg.vector_norm(g.detach().double()))

        return on_grad

    def result(self) -> torch.Tensor | None:
        if not self.by_step:
            return None
        steps = range(max(self.by_step) + 1)
        per = [torch.stack(self.by_step[t]).mean() if t in self.by_step else None for t in steps]
        ref = next(p for p in per if p is not None)
        return torch.stack([p if p is not None else torch.full_like(ref, float("nan")) for p in per])
