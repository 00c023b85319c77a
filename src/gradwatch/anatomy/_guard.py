"""Run a model for a look without leaving a trace: modes, buffers, gradients and RNG state restored."""

from __future__ import annotations

from types import TracebackType

import torch
from torch import nn


class Preserved:
    """Context manager that restores, on exit (errors included), what running a model can change.

    Saved: every module's train/eval flag, every buffer's value (BatchNorm running
    statistics), the CPU and (if initialised) CUDA RNG states, and, with ``grads=True``,
    every parameter's ``.grad`` — which is set to None on entry so that a backward pass
    inside starts from zero and the user's accumulated gradients come back untouched.
    Parameters themselves are not copied: a forward and backward pass does not change them.
    """

    def __init__(self, model: nn.Module, *, grads: bool = False) -> None:
        self.model = model
        self.grads = grads

    def __enter__(self) -> Preserved:
        self.modes = [(m, m.training) for m in self.model.modules()]
        with torch.no_grad():
            self.buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        self.rng = torch.get_rng_state()
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        self.cuda_rng = torch.cuda.get_rng_state_all() if cuda else None
        self.saved_grads: list[tuple[nn.Parameter, torch.Tensor | None]] = []
        if self.grads:
            for p in self.model.parameters():
                self.saved_grads.append((p, p.grad))
                p.grad = None
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for m, mode in self.modes:
            m.training = mode
        with torch.no_grad():
            for b, saved in self.buffers:
                b.copy_(saved)
        for p, g in self.saved_grads:
            p.grad = g
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
