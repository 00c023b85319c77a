"""Run a model for a look without leaving a trace: modes, buffers, gradients and RNG state restored."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch
from torch import nn


class RandomStates:
    """Context manager that puts back, on exit (errors included), every global random generator
    a model's forward pass may draw from: torch's CPU generator and (if initialised) its CUDA
    ones, NumPy's global generator (Wav2Vec2's SpecAugment masks and LayerDrop, BigBird's
    random attention draw there) and Python's `random` (UDOP's position augmentation).

    A look at the model that draws from them would otherwise shift every later draw of the
    user's training run: the same seed would train differently with gradwatch than without.
    """

    def __enter__(self) -> RandomStates:
        self.torch_state = torch.get_rng_state()
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        self.cuda_states = torch.cuda.get_rng_state_all() if cuda else None
        self.numpy_state: dict[str, Any] = np.random.get_state(legacy=False)
        self.python_state = random.getstate()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        torch.set_rng_state(self.torch_state)
        if self.cuda_states is not None:
            torch.cuda.set_rng_state_all(self.cuda_states)
        np.random.set_state(self.numpy_state)
        random.setstate(self.python_state)


P = ParamSpec("P")
R = TypeVar("R")


def keeps_random_states(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a public entry point so that it returns the global random generators as it
    found them (`RandomStates`), whatever it runs inside."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with RandomStates():
            return fn(*args, **kwargs)

    return wrapper


class Preserved:
    """Context manager that restores, on exit (errors included), what running a model can change.

    Saved: every module's train/eval flag, every buffer's value (BatchNorm running
    statistics), the global random generators (`RandomStates`), and, with ``grads=True``,
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
        self.rng = RandomStates().__enter__()
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
        self.rng.__exit__(kind, exc, tb)
