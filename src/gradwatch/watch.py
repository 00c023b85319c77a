"""`gw.watch`: measure a model's gradients while it trains, cheaply enough to leave on.

How a step flows (without an optimizer passed in)::

    loss.backward()
    w.step(loss=loss)   # records the loss; on recording steps measures gradients,
                        # weights and the previous optimizer step's update, then makes
                        # one device-to-host copy and appends a record
    opt.step()

With ``optimizer=opt`` the gradients are read in the optimizer's own step hooks, once
per optimizer step, after `GradScaler` has unscaled them and after every micro-batch of
an accumulation has been summed; `step()` then only carries the loss.

The `Watcher` only wires a PyTorch loop to a `gradwatch.recorder.Recorder`, which does
the measuring and recording for every driver (framework callbacks and `repair` too).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradwatch._errors import GradwatchTypeError, UsageError
from gradwatch._optim import has_closure
from gradwatch.anatomy import Anatomy
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.recorder import Recorder
from gradwatch.schedule import DEFAULT_EVERY, Schedule, every_n
from gradwatch.types import Diagnosis

__all__ = ["DEFAULT_EVERY", "Schedule", "Watcher", "every_n", "watch"]


class Watcher:
    """Watches one model during training. Create it with `gradwatch.watch`.

    Attributes:
        anatomy: the model's layers, in execution order once the first forward pass ran.
        timeline: everything recorded so far (bounded memory).
        step_count: training steps seen (optimizer steps when an optimizer was given).
        recorder: the `Recorder` this watcher drives.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int | Schedule = DEFAULT_EVERY,
        optimizer: torch.optim.Optimizer | None = None,
        log: str | os.PathLike[str] | None = None,
        updates: bool = True,
        activations: bool = True,
        capacity: int = 1024,
        tensorboard: Any = None,
    ) -> None:
        self._handles: list[RemovableHandle] = []
        self._tensorboard: Any = None
        if not isinstance(model, nn.Module):
            raise GradwatchTypeError(
                "watch() expects a torch.nn.Module (the model being trained), got "
                f"{type(model).__module__}.{type(model).__qualname__}"
            )
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise GradwatchTypeError(
                f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__qualname__}"
            )
        self.recorder = Recorder(
            model,
            every=every,
            log=log,
            updates=updates,
            activations=activations,
            capacity=capacity,
            optimizer_name=type(optimizer).__name__ if optimizer else None,
            no_gradient_message=(
                "step() found no gradient on any trainable parameter: call w.step(loss=...) "
                "after loss.backward() and before optimizer.zero_grad()"
            ),
        )
        self.optimizer = optimizer
        try:
            if tensorboard is not None:
                from gradwatch.report.tensorboard import TensorBoardSink  # the report stage, on use

                self._tensorboard = TensorBoardSink(tensorboard, self.recorder.timeline, self.recorder.diagnose)
            if optimizer is not None:
                self._handles.append(optimizer.register_step_pre_hook(self._before_optimizer_step))
                self._handles.append(optimizer.register_step_post_hook(self._after_optimizer_step))
        except BaseException:
            self.close()
            raise

    # -- what the recorder holds ------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        return self.recorder.model

    @property
    def anatomy(self) -> Anatomy:
        return self.recorder.anatomy

    @property
    def timeline(self) -> Timeline:
        return self.recorder.timeline

    @property
    def schedule(self) -> Schedule:
        return self.recorder.schedule

    @property
    def every(self) -> int | None:
        return self.recorder.every

    @property
    def step_count(self) -> int:
        return self.recorder.step_count

    # -- context manager --------------------------------------------------------------
    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten watcher must not leave hooks on the model
        try:
            self._remove_hooks()
        except Exception:
            pass

    # -- the training-step API ----------------------------------------------------------
    def step(self, loss: torch.Tensor | float | None = None) -> None:
        """Call once per training step, after ``loss.backward()`` and before the optimizer step.

        `loss` may be a tensor (no host sync: it is copied to the host with the next record)
        or a number. With ``optimizer=`` given to `watch`, this only records the loss; call
        it once per micro-batch or once per optimizer step, as is convenient: the losses of
        one optimizer step are averaged.
        """
        if self.recorder.closed:
            raise UsageError("step() was called after the watcher was closed")
        if loss is not None:
            self.recorder.add_loss(loss)
        if self.optimizer is None:
            self.recorder.gradients_ready()
            if self._tensorboard is not None:
                self._tensorboard.sync()

    def _before_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        # `step(closure)` (L-BFGS, Lightning's automatic optimisation) computes this step's
        # gradients inside the step, after this hook: they are read after it instead, or the
        # record would hold the previous step's.
        self.recorder.optimizer_step_begins(grads_ready=not has_closure(args, kwargs))

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.recorder.optimizer_step_ends()
        if self._tensorboard is not None:
            self._tensorboard.sync()

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The step count and the Timeline, as plain data, for saving beside a model checkpoint."""
        return self.recorder.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`: steps continue from the saved count, history is kept.

        Layer names must match the model's (the same architecture).
        """
        self.recorder.load_state_dict(state)

    # -- results and teardown --------------------------------------------------------------
    def diagnose(self, thresholds: Thresholds | None = None) -> Diagnosis:
        """Judge the run so far: findings and per-layer reports (see `gradwatch.Diagnosis`),
        with the detectors' numbers from `thresholds` (`gw.Thresholds()` if None)."""
        return self.recorder.diagnose(thresholds)

    def close(self) -> None:
        """Remove every hook, write what is pending to the log and close it. Safe to call twice."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if getattr(self, "recorder", None) is not None:
            self.recorder.close()
        sink, self._tensorboard = getattr(self, "_tensorboard", None), None
        if sink is not None:
            sink.close()

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if getattr(self, "recorder", None) is not None:
            self.recorder.remove_hooks()

    @property
    def closed(self) -> bool:
        return self.recorder.closed

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Watcher {self.anatomy.model_type}: {self.step_count} steps, {len(self.timeline)} records, {state}>"


def watch(
    model: nn.Module,
    *,
    every: int | Schedule = DEFAULT_EVERY,
    optimizer: torch.optim.Optimizer | None = None,
    log: str | os.PathLike[str] | None = None,
    updates: bool = True,
    activations: bool = True,
    capacity: int = 1024,
    tensorboard: Any = None,
) -> Watcher:
    """Watch `model` while it trains.

    Args:
        model: the module being trained.
        every: take the full statistics every this many steps (or pass a callable
            ``step -> bool``). Losses are kept for every step regardless.
        optimizer: if given, gradients are read in its step hooks, once per optimizer
            step, so gradient accumulation and AMP loss scaling come out right.
        log: path of a JSONL file to write every record to (read it back with `gradwatch.load`).
        updates: measure the size of each recorded optimizer update; this keeps one copy
            of the trainable parameters on their device.
        activations: on recording steps, also measure activations (dead and saturated
            units, functional calls included), the output spread, and the gradient through
            time of recurrent layers (see docs/watch.md).
        capacity: recording steps kept at full resolution before older ones are thinned.
        tensorboard: a log folder or a ``SummaryWriter``: on recording steps, per-layer
            scalars (gradient norm, update ratio, dead/saturated share per activation site)
            and each new finding as text (see docs/report.md).

    Example::

        with gw.watch(model) as w:
            for x, y in loader:
                loss = loss_fn(model(x), y)
                opt.zero_grad(); loss.backward()
                w.step(loss=loss)
                opt.step()
        print(w.diagnose())
    """
    return Watcher(
        model,
        every=every,
        optimizer=optimizer,
        log=log,
        updates=updates,
        activations=activations,
        capacity=capacity,
        tensorboard=tensorboard,
    )
