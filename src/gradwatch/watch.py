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
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradwatch._compiled import unwrap
from gradwatch._errors import GradwatchTypeError, GradwatchValueError, UsageError
from gradwatch._optim import has_closure
from gradwatch._version import __version__
from gradwatch.anatomy import Anatomy
from gradwatch.detect.thresholds import Thresholds
from gradwatch.probes import GradientProbe, Transfer
from gradwatch.probes.forward import ForwardProbe
from gradwatch.probes.grads import GradSnapshot
from gradwatch.record import LOG_FORMAT, LOG_VERSION, JsonlLog, Timeline
from gradwatch.types import Diagnosis

#: Record the full statistics every this many steps unless told otherwise. Chosen from
#: benchmarks/overhead.py (docs/performance.md): the cost stays within 2% of a step.
DEFAULT_EVERY = 32

Schedule = Callable[[int], bool]

#: Losses wait on the device for the next record; a schedule that records more rarely than
#: this gets them copied over (one transfer) so they never pile up.
_MAX_PENDING_LOSSES = 1024


def every_n(n: int) -> Schedule:
    """A schedule that records steps 0, n, 2n, ..."""
    return lambda step: step % n == 0


def _as_schedule(every: int | Schedule) -> Schedule:
    if callable(every):
        return every
    if isinstance(every, bool) or not isinstance(every, int):
        raise GradwatchTypeError(
            f"every must be a positive int (record every N steps) or a callable step -> bool, "
            f"got {every!r}"
        )
    if every < 1:
        raise GradwatchValueError(f"every must be at least 1, got {every}")
    return every_n(every)


class Watcher:
    """Watches one model during training. Create it with `gradwatch.watch`.

    Attributes:
        anatomy: the model's layers, in execution order once the first forward pass ran.
        timeline: everything recorded so far (bounded memory).
        step_count: training steps seen (optimizer steps when an optimizer was given).
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
    ) -> None:
        if not isinstance(model, nn.Module):
            raise GradwatchTypeError(
                "watch() expects a torch.nn.Module (the model being trained), got "
                f"{type(model).__module__}.{type(model).__qualname__}"
            )
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise GradwatchTypeError(
                f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__qualname__}"
            )
        # torch.compile(model) wraps it: watch the module it wraps (its names, without the
        # wrapper's `_orig_mod.` prefix). Forward probes would have to run inside the compiled
        # graph, so they are off; the gradient statistics are read outside it, as usual.
        inner = unwrap(model)
        if inner is not model:
            model = inner  # type: ignore[assignment]
            activations = False
        self.model = model
        self.anatomy = Anatomy.from_module(model)
        if not self.anatomy.trainable:
            raise GradwatchValueError(
                f"every parameter of the model ({type(model).__name__}) is frozen "
                "(requires_grad=False), so there are no gradients to watch"
            )
        self.schedule = _as_schedule(every)
        self.every = every if isinstance(every, int) else None
        self.optimizer = optimizer
        self.timeline = Timeline(capacity=capacity)
        self.step_count = 0
        self._updates = updates
        self._probe: GradientProbe | None = None
        self._pending: GradSnapshot | None = None
        self._pending_transfer = Transfer()
        self._grads_after = False  # optimizer mode: this step's gradients are read after it (a closure computes them)
        self._losses: list[tuple[int, torch.Tensor | float]] = []
        self._handles: list[RemovableHandle] = []
        self._order: list[str] = []
        # the first forward's modules and their first input tensor (held until the pass ends,
        # so that no id is reused): which layers read the same tensor (`Anatomy.reorder`)
        self._order_inputs: list[tuple[str, torch.Tensor]] = []
        self._input_groups: dict[str, int] = {}
        self._order_handles: list[RemovableHandle] = []
        self._closed = False
        self._started = False
        self._structure: dict[str, Any] | None = None  # the model's structure at the first record
        self._log_path = log
        self._log: JsonlLog | None = None
        self._fprobe = ForwardProbe(model) if activations else None
        try:
            if log is not None:
                self._log = JsonlLog(log)
            # Every module, not only layers: a layer whose parameters its parent uses directly
            # (nn.MultiheadAttention's out_proj) never runs itself, and is placed by its parent.
            for name, module in model.named_modules():
                self._order_handles.append(module.register_forward_pre_hook(self._order_hook(name or "(root)")))
            # One forward pass tells the order; the hooks go as soon as it is over.
            self._order_handles.append(model.register_forward_hook(self._order_done, always_call=True))
            if optimizer is not None:
                self._handles.append(optimizer.register_step_pre_hook(self._before_optimizer_step))
                self._handles.append(optimizer.register_step_post_hook(self._after_optimizer_step))
            self._arm_for(0)
        except BaseException:
            self.close()
            raise

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
        if self._closed:
            raise UsageError("step() was called after the watcher was closed")
        n = self.step_count
        if loss is not None:
            self._losses.append((n, _as_loss(loss)))
            if len(self._losses) >= _MAX_PENDING_LOSSES:  # a schedule that rarely records
                self._flush_losses()
        if self.optimizer is not None:
            return
        if self.schedule(n):
            transfer = Transfer()
            probe = self._start()
            snap = probe.measure_grads(transfer)
            if not probe.seen_gradient:
                raise UsageError(
                    "step() found no gradient on any trainable parameter: call w.step(loss=...) "
                    "after loss.backward() and before optimizer.zero_grad()"
                )
            probe.measure_update(transfer)
            self._finish_record(n, transfer, snap)
        if self._updates and self.schedule(n + 1):
            # The update of step n is the change the optimizer makes after this call; it is
            # measured at step n + 1, the next recording step, from this snapshot.
            self._start().snapshot()
        self.step_count = n + 1
        self._arm_for(n + 1)

    def _before_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        n = self.step_count
        if not self.schedule(n):
            return
        transfer = Transfer()
        probe = self._start()
        # `step(closure)` (L-BFGS, Lightning's automatic optimisation) computes this step's
        # gradients inside the step, after this hook: read them after it instead, or the
        # record would hold the previous step's.
        self._grads_after = has_closure(args, kwargs)
        self._pending = None if self._grads_after else probe.measure_grads(transfer)
        self._pending_transfer = transfer
        probe.snapshot()

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        n = self.step_count
        self.step_count = n + 1
        if self._pending is not None or self._grads_after:  # a record was begun before this step
            probe = self._start()
            transfer = self._pending_transfer
            snap = probe.measure_grads(transfer) if self._grads_after else self._pending
            assert snap is not None
            probe.measure_update(transfer)
            self._pending, self._grads_after = None, False
            self._finish_record(n, transfer, snap)
        self._arm_for(n + 1)

    def _arm_for(self, n: int) -> None:
        """Arm the forward probes if step `n` is a recording step (they see its forward pass)."""
        fp = self._fprobe
        if fp is None:
            return
        if self.schedule(n):
            fp.arm()
        elif fp.armed:
            fp.disarm()

    # -- recording -----------------------------------------------------------------------
    def _order_done(self, module: nn.Module, args: Any, output: Any) -> None:
        if torch.compiler.is_compiling():
            return
        for h in self._order_handles:
            h.remove()
        self._order_handles.clear()
        groups: dict[int, int] = {}
        for name, x in self._order_inputs:
            self._input_groups.setdefault(name, groups.setdefault(id(x), len(groups)))
        self._order_inputs.clear()

    def _order_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            if not torch.compiler.is_compiling():  # traced into a compiled graph: no order
                self._order.append(name)
                if args and isinstance(args[0], torch.Tensor):
                    self._order_inputs.append((name, args[0]))

        return hook

    def _start(self) -> GradientProbe:
        """On the first recording step: fix the layer order from the first forward pass."""
        if self._probe is not None:
            return self._probe
        for h in self._order_handles:
            h.remove()
        self._order_handles.clear()
        self._order_inputs.clear()
        if self._order:
            self.anatomy.reorder(self._order, self._input_groups)
        columns = [layer.name for layer in self.anatomy.trainable]
        self.timeline.layers = columns
        self._probe = GradientProbe(self.anatomy, columns, updates=self._updates)
        return self._probe

    def _write_header(self) -> None:
        self._started = True
        from gradwatch.explain import structure_facts

        facts = structure_facts(self.model, self.anatomy)  # also fills anatomy extras
        if self._structure is None:  # a resumed run keeps the facts of the initial model
            self._structure = facts
        if self._log is None:
            return
        self._log.write(
            {
                "type": "header",
                "format": LOG_FORMAT,
                "version": LOG_VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "versions": {
                    "gradwatch": __version__,
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                },
                "settings": {
                    "every": self.every,
                    "optimizer": type(self.optimizer).__name__ if self.optimizer else None,
                    "updates": self._updates,
                    "activations": self._fprobe is not None,
                    "capacity": self.timeline.records.capacity,
                    "loss_capacity": self.timeline.losses.capacity,
                },
                "columns": list(self.timeline.layers),
                "anatomy": self.anatomy.to_dict(),
                "structure": self._structure,
            }
        )

    def _queue_losses(self, transfer: Transfer, upto: int | None) -> list[tuple[int, str]]:
        """Put the losses of steps <= `upto` (all if None) into the transfer."""
        keep, taken = [], []
        for i, (s, value) in enumerate(self._losses):
            if upto is not None and s > upto:
                keep.append((s, value))
                continue
            name = f"loss.{i}"
            transfer.put(name, value)
            taken.append((s, name))
        self._losses = keep
        return taken

    def _finish_record(self, n: int, transfer: Transfer, snap: GradSnapshot) -> None:
        probe = self._start()
        probe.measure_weights(transfer)
        layout: list[tuple[str, str, str]] = []
        if self._fprobe is not None:
            layout = self._fprobe.measure(transfer)
            self._fprobe.disarm()
        losses = self._queue_losses(transfer, upto=n)
        host = transfer.fetch()  # the one device-to-host copy of this record
        layers = probe.summarise(host, snap)
        record: dict[str, Any] = {
            "type": "record",
            "step": n,
            "losses": _mean_per_step(losses, host),
            "layers": {k: [float(x) for x in v] for k, v in layers.items()},
        }
        if self._fprobe is not None:
            record.update(self._fprobe.summarise(host, layout))
        self._emit(record)

    def _flush_losses(self) -> None:
        if not self._losses:
            return
        self._start()
        transfer = Transfer()
        losses = self._queue_losses(transfer, upto=None)
        host = transfer.fetch()
        self._emit({"type": "losses", "losses": _mean_per_step(losses, host)})

    def _emit(self, record: dict[str, Any]) -> None:
        if not self._started:
            self._write_header()
        self.timeline.ingest(record)
        if self._log is not None:
            self._log.write(record)

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The step count and the Timeline, as plain data, for saving beside a model checkpoint."""
        self._flush_losses()
        return {
            "step_count": self.step_count,
            "layers": [layer.name for layer in self.anatomy.trainable],
            "timeline": self.timeline.state_dict(),
            "structure": self._structure,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`: steps continue from the saved count, history is kept.

        Layer names must match the model's (the same architecture).
        """
        layers = list(state["layers"])
        mine = [layer.name for layer in self.anatomy.trainable]
        if sorted(layers) != sorted(mine):
            raise GradwatchValueError(
                "the saved state is for a model with other layers: "
                f"saved {layers[:5]}{'...' if len(layers) > 5 else ''}, this model has {mine[:5]}"
                f"{'...' if len(mine) > 5 else ''}"
            )
        self.timeline.load_state_dict(state["timeline"])
        self.step_count = int(state["step_count"])
        self._structure = state.get("structure")
        if self._fprobe is not None and not self.schedule(self.step_count):
            self._fprobe.disarm()

    # -- results and teardown --------------------------------------------------------------
    def diagnose(self, thresholds: Thresholds | None = None) -> Diagnosis:
        """Judge the run so far: findings and per-layer reports (see `gradwatch.Diagnosis`),
        with the detectors' numbers from `thresholds` (`gw.Thresholds()` if None)."""
        if not self._closed:
            self._flush_losses()
        from gradwatch.explain.link import judge

        return judge(self.timeline, self.anatomy, facts=self._structure, thresholds=thresholds)

    def close(self) -> None:
        """Remove every hook, write what is pending to the log and close it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._remove_hooks()
            self._flush_losses()
        finally:
            if self._log is not None:
                self._log.close()

    def _remove_hooks(self) -> None:
        if getattr(self, "_fprobe", None) is not None:
            self._fprobe.disarm()  # type: ignore[union-attr]
        for h in self._order_handles + self._handles:
            h.remove()
        self._order_handles.clear()
        self._handles.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Watcher {self.anatomy.model_type}: {self.step_count} steps, {len(self.timeline)} records, {state}>"


def _as_loss(loss: Any) -> torch.Tensor | float:
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise GradwatchValueError(
                f"loss must be a single number (a scalar tensor); got a tensor of shape {tuple(loss.shape)}"
            )
        return loss.detach().reshape(())
    if isinstance(loss, int | float | np.floating | np.integer) and not isinstance(loss, bool):
        return float(loss)
    raise GradwatchTypeError(f"loss must be a tensor or a number, got {type(loss).__qualname__}")


def _mean_per_step(losses: list[tuple[int, str]], host: dict[str, np.ndarray]) -> list[list[float]]:
    sums: dict[int, list[float]] = {}
    for step, name in losses:
        sums.setdefault(step, []).append(float(host[name][0]))
    return [[s, math.fsum(v) / len(v)] for s, v in sorted(sums.items())]


def watch(
    model: nn.Module,
    *,
    every: int | Schedule = DEFAULT_EVERY,
    optimizer: torch.optim.Optimizer | None = None,
    log: str | os.PathLike[str] | None = None,
    updates: bool = True,
    activations: bool = True,
    capacity: int = 1024,
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
    )
