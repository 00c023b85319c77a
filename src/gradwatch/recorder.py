"""`Recorder`: the framework-neutral core of watching a model train.

It owns the schedule (which steps are recorded), the probes (gradients, weights, updates,
and the forward probes armed only for recorded steps), the one transfer to the host per
record, the losses waiting on the device, the assembly of each record and the log's
header. It registers no optimizer hook and patches nothing: whoever drives it — `Watcher`
for a plain PyTorch loop, a framework callback, `repair` — tells it what happened, in one
of two ways per training step::

    rec.add_loss(loss)                    # any number of times per step (tensors stay put)
    rec.gradients_ready()                 # the .grads are final; the optimizer steps next

or, when the driver sees the optimizer step itself (gradients read inside it, so that
accumulation and AMP unscaling come out right)::

    rec.add_loss(loss)
    rec.optimizer_step_begins(grads_ready=True)   # False: a closure computes them inside
    optimizer.step()
    rec.optimizer_step_ends()

`step_count` counts the steps seen this way; `diagnose()` judges the Timeline so far.
See docs/watch.md ("Driving the recorder from another framework").
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwatch._compiled import unwrap
from gradwatch._errors import GradwatchError, GradwatchTypeError, GradwatchValueError, UsageError
from gradwatch.anatomy import Anatomy
from gradwatch.detect.thresholds import Thresholds
from gradwatch.probes import GradientProbe, Transfer
from gradwatch.probes.forward import ForwardProbe
from gradwatch.probes.grads import GradSnapshot
from gradwatch.probes.order import FirstForward
from gradwatch.probes.sharded import rank
from gradwatch.record import JsonlLog, Timeline, log_header
from gradwatch.schedule import DEFAULT_EVERY, Schedule, as_schedule
from gradwatch.types import Diagnosis

#: Losses wait on the device for the next record; a schedule that records more rarely than
#: this gets them copied over (one transfer) so they never pile up.
_MAX_PENDING_LOSSES = 1024


class Recorder:
    """Records one model's training steps into a `Timeline` (and a JSONL log), driven by events.

    Args:
        model: the module being trained (a `torch.compile` wrapper is unwrapped; its
            forward probes are then off).
        every: record every this many steps, or a callable ``step -> bool``.
        log: path of a JSONL file to append the header and every record to; in a
            distributed run (torch.distributed initialised), only rank zero writes it.
        updates: measure each recorded optimizer update (keeps one copy of the parameters).
        activations: arm the forward probes on recorded steps.
        capacity: recorded steps kept at full resolution before older ones are thinned.
        optimizer_name: written into the log header's settings (None: not known).
        no_gradient_message: the `UsageError` raised when `gradients_ready()` finds no
            gradient on any trainable parameter (say how the driver is to be called).

    Attributes:
        anatomy, timeline, schedule, step_count: as on `gradwatch.Watcher`.
        rank: this process's rank in a distributed run (0 otherwise).
    """

    _fprobe: ForwardProbe | None
    _order: FirstForward | None
    _log: JsonlLog | None

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int | Schedule = DEFAULT_EVERY,
        log: str | os.PathLike[str] | None = None,
        updates: bool = True,
        activations: bool = True,
        capacity: int = 1024,
        optimizer_name: str | None = None,
        no_gradient_message: str = (
            "found no gradient on any trainable parameter: call gradients_ready() after "
            "loss.backward() and before the gradients are zeroed"
        ),
    ) -> None:
        if not isinstance(model, nn.Module):
            raise GradwatchTypeError(
                "Recorder expects a torch.nn.Module (the model being trained), got "
                f"{type(model).__module__}.{type(model).__qualname__}"
            )
        # torch.compile(model) wraps it: watch the module it wraps (its names, without the
        # wrapper's `_orig_mod.` prefix). Forward probes would have to run inside the compiled
        # graph, so they are off; the gradient statistics are read outside it, as usual.
        inner = unwrap(model)
        if inner is not model:
            model = inner  # type: ignore[assignment]
            activations = False
        self.model = model
        self._setup(
            Anatomy.from_module(model),
            every=every,
            updates=updates,
            capacity=capacity,
            optimizer_name=optimizer_name,
            no_gradient_message=no_gradient_message,
        )
        self._fprobe = ForwardProbe(model) if activations else None
        # Every rank records (under FSDP2 the records are collective; under DDP every rank
        # holds the same gradients), but one file is written, by rank zero.
        self.rank = rank()
        try:
            if log is not None and self.rank == 0:
                self._log = JsonlLog(log)
            self._order = FirstForward(model)  # the layer order, from the first forward pass
            self.arm_for(0)
        except BaseException:
            self.close()
            raise

    def _setup(
        self,
        anatomy: Anatomy,
        *,
        every: int | Schedule,
        updates: bool,
        capacity: int,
        optimizer_name: str | None,
        no_gradient_message: str,
    ) -> None:
        """The framework-neutral state: schedule, Timeline, losses, log (opened by the caller).

        A driver for another framework (`gradwatch.integrations.keras`) subclasses Recorder,
        calls this with its own anatomy instead of `__init__`, and hands finished records to
        `_assemble`.
        """
        self.anatomy = anatomy
        if not self.anatomy.trainable:
            raise GradwatchValueError(
                f"every parameter of the model ({anatomy.model_type}) is frozen "
                "(requires_grad=False), so there are no gradients to watch"
            )
        self.schedule = as_schedule(every)
        self.every = every if isinstance(every, int) else None
        self.timeline = Timeline(capacity=capacity)
        self.step_count = 0
        self.updates = updates
        self.optimizer_name = optimizer_name
        self.no_gradient_message = no_gradient_message
        #: further header settings of a driver (the framework it watches), written with the rest
        self.settings_extra: dict[str, Any] = {}
        self.stopped: str | None = None  # why recording stopped (a measurement failed), if it did
        self._probe: GradientProbe | None = None
        # the record under way: its transfer, and its gradient snapshot once read
        self._transfer: Transfer | None = None
        self._snap: GradSnapshot | None = None
        self._grads_after = False  # this step's gradients are read after the optimizer step
        self._losses: list[tuple[int, torch.Tensor | float]] = []
        self._order = None
        self._fprobe = None
        self._closed = False
        self._started = False
        self._structure: dict[str, Any] | None = None  # the model's structure at the first record
        self._log = None

    # -- events: the driver calls these --------------------------------------------------
    def add_loss(self, loss: torch.Tensor | float, step: int | None = None) -> None:
        """Keep the loss of the current step, or of an earlier `step` (a framework that reports
        it after the optimizer step). A scalar tensor stays on its device until the next record."""
        self._losses.append((self.step_count if step is None else step, as_loss(loss)))
        if len(self._losses) >= _MAX_PENDING_LOSSES:  # a schedule that rarely records
            self.flush_losses()

    def gradients_ready(self) -> None:
        """The step's gradients are final and the optimizer steps next: record if due, then advance.

        The update of step n is the change the optimizer makes after this call; it is
        measured at the next recorded step from a copy of the parameters taken here.
        """
        n = self.step_count
        snapshot = self.updates and self.due(n + 1)  # of the parameters, for step n + 1's update
        if self.due(n):
            with self._guard(n):
                self._begin()
                self.read_gradients()
                if not self.seen_gradient:
                    raise UsageError(self.no_gradient_message)
                self._finish(n, snapshot=snapshot)
        elif snapshot:
            with self._guard(n):
                self._start().snapshot()
        self.step_count = n + 1
        self.arm_for(n + 1)

    def optimizer_step_begins(self, *, grads_ready: bool = True) -> None:
        """The optimizer is about to step. `grads_ready=False`: a closure computes them inside it.

        On a recorded step the gradients are read now (or after the step, for a closure)
        and the parameters copied aside, so the record holds this very step's update.
        """
        if not self.due(self.step_count):
            return
        with self._guard(self.step_count):
            self._begin()
            self._grads_after = not grads_ready
            if grads_ready:
                self.read_gradients()
            self._start().snapshot()

    def optimizer_step_ends(self) -> None:
        """The optimizer has stepped: finish the record begun in `optimizer_step_begins`, advance."""
        n = self.step_count
        self.step_count = n + 1
        if self._transfer is not None:  # a record was begun before this step
            with self._guard(n):
                if self._grads_after:
                    self.read_gradients()
                self._grads_after = False
                self._finish(n)
        self.arm_for(n + 1)

    def due(self, n: int) -> bool:
        """Whether step `n` is recorded (the schedule says so, and recording was not stopped)."""
        return self.stopped is None and self.schedule(n)

    @contextlib.contextmanager
    def _guard(self, n: int) -> Iterator[None]:
        """A failure of the measurement stops recording with one warning; the training step goes on.

        A `GradwatchError` (the driver called it wrongly) is the driver's to see and passes.
        """
        try:
            yield
        except GradwatchError:
            raise
        except Exception as e:
            self._transfer, self._snap, self._grads_after = None, None, False
            self.stopped = f"{type(e).__name__}: {e}"
            if self._fprobe is not None:
                self._fprobe.disarm()
            warnings.warn(
                f"gradwatch stopped recording at step {n} after an internal error ({self.stopped}); "
                "training goes on, and the records before it are kept",
                RuntimeWarning,
                stacklevel=4,
            )

    @property
    def seen_gradient(self) -> bool:
        """Whether any record so far found a gradient on a trainable parameter."""
        return self._probe is not None and self._probe.seen_gradient

    def arm_for(self, n: int) -> None:
        """Arm the forward probes if step `n` is a recording step (they see its forward pass)."""
        fp = self._fprobe
        if fp is None:
            return
        if self.due(n):
            fp.arm()
        elif fp.armed:
            fp.disarm()

    # -- one record ----------------------------------------------------------------------
    def _begin(self) -> None:
        self._start()
        self._transfer, self._snap = Transfer(), None

    def read_gradients(self) -> None:
        """Queue the statistics of the current `.grad`s into the record under way."""
        assert self._transfer is not None, "read_gradients() outside a record"
        self._snap = self._start().measure_grads(self._transfer)

    def _finish(self, n: int, *, snapshot: bool = False) -> None:
        """Complete the record of step `n`; `snapshot`: then copy the parameters aside."""
        transfer, snap = self._transfer, self._snap
        assert transfer is not None and snap is not None
        self._transfer, self._snap = None, None
        probe = self._start()
        probe.measure_params(transfer, snapshot=snapshot)  # the last update, the weights
        layout: list[tuple[str, str, str]] = []
        if self._fprobe is not None:
            layout = self._fprobe.measure(transfer)
            self._fprobe.disarm()
        losses = self._queue_losses(transfer, upto=n)
        host = transfer.fetch()  # the one device-to-host copy of this record
        layers = probe.summarise(host, snap)
        fields = self._fprobe.summarise(host, layout) if self._fprobe is not None else {}
        self._assemble(n, layers, losses, host, fields)

    def _assemble(
        self,
        n: int,
        layers: dict[str, np.ndarray],
        losses: list[tuple[int, str]],
        host: dict[str, np.ndarray],
        fields: dict[str, Any],
    ) -> None:
        """Write the record of step `n`: per-layer metrics (arrays over the Timeline's layers),
        the losses queued by `_queue_losses` and read back in `host`, and further record
        fields (``values``, ``profiles``, ``sites``: docs/log-format.md)."""
        record: dict[str, Any] = {
            "type": "record",
            "step": n,
            "losses": _mean_per_step(losses, host),
            "layers": {k: [float(x) for x in v] for k, v in layers.items()},
        }
        record.update(fields)
        self._emit(record)

    def _start(self) -> GradientProbe:
        """On the first recording step: fix the layer order from the first forward pass."""
        if self._probe is not None:
            return self._probe
        if self._order is not None:
            self._order.apply(self.anatomy)
        columns = [layer.name for layer in self.anatomy.trainable]
        self.timeline.layers = columns
        self._probe = GradientProbe(self.anatomy, columns, updates=self.updates)
        return self._probe

    # -- the log and the Timeline -----------------------------------------------------------
    def _structure_facts(self) -> dict[str, Any]:
        """The model's structure for the log header (`explain.structure_facts`, which also
        fills the anatomy's per-layer facts); a driver for another framework reads its own."""
        from gradwatch.explain import structure_facts

        return structure_facts(self.model, self.anatomy)

    def _write_header(self) -> None:
        self._started = True
        facts = self._structure_facts()
        if self._structure is None:  # a resumed run keeps the facts of the initial model
            self._structure = facts
        if self._log is None:
            return
        settings = {
            "every": self.every,
            "optimizer": self.optimizer_name,
            "updates": self.updates,
            "activations": self._fprobe is not None,
            "capacity": self.timeline.records.capacity,
            "loss_capacity": self.timeline.losses.capacity,
            **self.settings_extra,
        }
        self._log.write(log_header(settings, list(self.timeline.layers), self.anatomy.to_dict(), self._structure))

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

    def flush_losses(self) -> None:
        """Copy the waiting losses to the host (one transfer) and append them to the Timeline."""
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
        self.flush_losses()
        return {
            "step_count": self.step_count,
            "layers": [layer.name for layer in self.anatomy.trainable],
            "timeline": self.timeline.state_dict(),
            "structure": self._structure,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`: steps continue from the saved count, history is kept."""
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
        """Judge the steps recorded so far (see `gradwatch.Diagnosis`), with the detectors'
        numbers from `thresholds` (`gw.Thresholds()` if None): `explain.link.judge`."""
        if not self._closed:
            self.flush_losses()
        from gradwatch.explain.link import judge

        return judge(self.timeline, self.anatomy, facts=self._structure, thresholds=thresholds)

    def summary(self) -> dict[str, float]:
        """A few numbers of the latest record, for a framework's logger (cheap: no judging).

        ``grad_ratio_min``: the weakest layer's relative gradient over the last layer's, along
        the depth chain (what `vanishing_gradient` compares with 1e-3); ``dead_frac_max``:
        the largest share of dead units at any activation site. Absent when not measured.
        """
        from gradwatch.detect._signals import depth_log_ratio, quiet_numpy

        out: dict[str, float] = {}
        if not len(self.timeline):
            return out
        with quiet_numpy():
            _, ratio = depth_log_ratio(self.timeline, self.anatomy)
            if ratio.shape[1]:
                out["grad_ratio_min"] = float(10.0 ** np.nanmin(ratio[-1]))
            names, dead = self.timeline.metric("act_dead_frac")
            if names:
                out["dead_frac_max"] = float(np.nanmax(dead[-1]))
        return {k: v for k, v in out.items() if math.isfinite(v)}

    def close(self) -> None:
        """Remove every hook, write what is pending to the log and close it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self.remove_hooks()
            self.flush_losses()
        finally:
            if self._log is not None:
                self._log.close()

    def remove_hooks(self) -> None:
        if getattr(self, "_fprobe", None) is not None:
            self._fprobe.disarm()  # type: ignore[union-attr]
        if getattr(self, "_order", None) is not None:
            self._order.remove()  # type: ignore[union-attr]

    @property
    def closed(self) -> bool:
        return self._closed

    def __del__(self) -> None:  # a forgotten recorder must not leave hooks on the model
        try:
            self.remove_hooks()
        except Exception:
            pass


def as_loss(loss: Any) -> torch.Tensor | float:
    """A loss as a detached 0-d tensor or a float; anything else is refused with the reason."""
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
