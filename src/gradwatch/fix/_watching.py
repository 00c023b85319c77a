"""Watching the original's run inside the user's `train_fn`, for `repair`'s diagnosis.

`repair` cannot see the user's loop: the optimizer is built inside `train_fn`. It drives a
`gradwatch.Recorder` from a global optimizer-step hook (gradients read once per step, as
`gw.watch(optimizer=...)` reads them), keeps the first forward's input as the example input
for `gw.fix`, and catches the loss where ``loss.backward()`` is called (`_LossTap`).

The Recorder takes losses from whoever drives it and catches none itself; in a loop it does
not own, the loss is visible only where backward is called on it. `_LossTap` wraps
``torch.Tensor.backward`` for the watched run only, and keeps only the losses of the thread
that runs `repair`: one Python call per backward, where a `TorchFunctionMode` (thread-local)
would intercept every torch call of the forward pass as well.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from gradwatch._optim import has_closure
from gradwatch.record import Timeline
from gradwatch.types import Diagnosis

__all__ = ["Watching"]


class _LossTap:
    """Catches the tensor each ``loss.backward()`` is called on, in the thread that entered it.

    ``torch.Tensor.backward`` is wrapped while the original is watched (and restored on
    exit, errors included); a backward called from another thread passes through untouched.
    """

    #: at most this many losses wait for an optimizer step (a loop that never steps one)
    CAP = 1024

    def __init__(self) -> None:
        self.pending: list[torch.Tensor] = []
        self._original: Any = None

    def __enter__(self) -> _LossTap:
        original = torch.Tensor.backward
        pending = self.pending
        cap = self.CAP
        owner = threading.get_ident()

        @functools.wraps(original)
        def backward(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if tensor.numel() == 1 and threading.get_ident() == owner:
                if len(pending) >= cap:
                    del pending[: cap // 2]
                pending.append(tensor.detach().reshape(()))
            return original(tensor, *args, **kwargs)

        self._original = original
        torch.Tensor.backward = backward  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._original is not None:
            torch.Tensor.backward = self._original  # type: ignore[method-assign]
            self._original = None


class Watching:
    """Watches the original while `train_fn` trains it, over one or several calls.

    Gradients are read in a global optimizer-step pre-hook (the optimizer is the user's
    own, built inside `train_fn`) — in the post-hook for a step given a closure, which
    computes its gradients inside the step — the loss where ``loss.backward()`` is
    called, and the first forward's input is kept as the example input for `gw.fix`.
    """

    def __init__(self, model: nn.Module, diagnose: bool, every: int) -> None:
        self.model = model
        self.diagnose_it = diagnose
        self.every = every
        self.example_input: Any = None
        self.timeline: Timeline | None = None
        self.note = ""
        self._broken: list[str] = []
        self._handles: list[Any] = []
        self._tap = _LossTap()
        self._recorder: Any = None

    def __enter__(self) -> Watching:
        from gradwatch.recorder import Recorder  # fix sits above the recorder: imported where used

        self._handles.append(self.model.register_forward_pre_hook(self._keep_input, with_kwargs=True))
        if self.diagnose_it:
            self._recorder = Recorder(self.model, every=self.every)
            self.timeline = self._recorder.timeline
            own = {id(p) for p in self.model.parameters()}

            def record(opt: torch.optim.Optimizer) -> None:
                if self._broken or not any(id(p) in own for g in opt.param_groups for p in g["params"]):
                    return
                try:
                    if self._tap.pending:
                        self._recorder.add_loss(torch.stack(self._tap.pending).mean())
                        self._tap.pending.clear()
                    self._recorder.gradients_ready()
                except Exception as e:  # watching is best-effort: it must never break the user's run
                    self._broken.append(f"{type(e).__name__}: {e}")

            def before(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
                if not has_closure(args, kwargs):
                    record(opt)

            def after(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
                if has_closure(args, kwargs):  # its gradients were computed inside the step
                    record(opt)

            self._handles.append(register_optimizer_step_pre_hook(before))
            self._handles.append(register_optimizer_step_post_hook(after))
            self._tap.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.diagnose_it:
            self._tap.__exit__(None, None, None)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._recorder is not None:
            self._recorder.close()

    def _keep_input(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if self.example_input is None and not torch.compiler.is_compiling():
            if kwargs and not args:
                self.example_input = dict(kwargs)
            elif not kwargs:
                # a tuple, list or dict is spread into the call (`anatomy._call.split_input`):
                # one such argument travels inside a tuple, to be passed as it came
                one = len(args) == 1 and isinstance(args[0], torch.Tensor)
                self.example_input = args[0] if one else tuple(args)

    def diagnose(self) -> Diagnosis:
        if self._recorder is None:
            return Diagnosis()
        if self._broken:
            self.note = f"watching the original's run stopped early ({self._broken[0]}); the diagnosis covers the steps before"
        elif self._recorder.step_count == 0:
            self.note = (
                "no torch.optim optimizer step on the model's parameters was seen during the original's "
                "run, so it could not be diagnosed; pass diagnosis= (from gw.watch inside train_fn)"
            )
        return self._recorder.diagnose()
