"""TensorBoard: per-layer scalars and new findings, written at recording steps only.

`gw.watch(model, tensorboard=writer_or_logdir)` makes a `TensorBoardSink` that the watcher
calls after every training step; it writes only when the Timeline gained a record:

- scalars ``gradwatch.grad_norm/<layer>``, ``gradwatch.update_ratio/<layer>`` (layers),
  ``gradwatch.dead_frac/<site>``, ``gradwatch.saturated_frac/<site>`` (activation sites),
  each at the record's training step; non-finite values are skipped;
- text ``gradwatch/findings``: each finding the first time it is judged (by kind and layers),
  as it prints, at the step of the record that raised it.

A writer is anything with ``add_scalar(tag, value, step)`` and ``add_text(tag, text, step)``
(``torch.utils.tensorboard.SummaryWriter``, tensorboardX's); given a folder, a
``SummaryWriter`` is made there (it needs the ``tensorboard`` package) and closed with the
watcher. A failure to write stops the writing with one warning; training goes on.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from typing import Any

from gradwatch._errors import GradwatchTypeError
from gradwatch.record import Timeline
from gradwatch.types import Diagnosis

#: (Timeline metric, tag prefix) for per-layer metrics, then for per-site ones.
LAYER_SCALARS = (("grad_norm", "gradwatch.grad_norm"), ("update_ratio", "gradwatch.update_ratio"))
SITE_SCALARS = (("act_dead_frac", "gradwatch.dead_frac"), ("act_sat_frac", "gradwatch.saturated_frac"))
FINDINGS_TAG = "gradwatch/findings"


def open_writer(target: Any) -> tuple[Any, bool]:
    """The writer for `target` and whether it is ours to close."""
    if isinstance(target, str | os.PathLike):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                f"tensorboard={os.fspath(target)!r} needs the tensorboard package: pip install tensorboard "
                "(or pip install 'gradwatch[tensorboard]'), or pass a writer of your own"
            ) from e
        return SummaryWriter(log_dir=os.fspath(target)), True
    if callable(getattr(target, "add_scalar", None)) and callable(getattr(target, "add_text", None)):
        return target, False
    raise GradwatchTypeError(
        "tensorboard= takes a log folder or a writer with add_scalar and add_text "
        f"(torch.utils.tensorboard.SummaryWriter), got {type(target).__module__}.{type(target).__qualname__}"
    )


class TensorBoardSink:
    """Writes each new record of a Timeline, and each new finding, to a TensorBoard writer."""

    def __init__(self, target: Any, timeline: Timeline, diagnose: Callable[[], Diagnosis]) -> None:
        self.writer, self._owned = open_writer(target)
        self.timeline = timeline
        self._diagnose = diagnose
        self._written = timeline.recorded  # records already there (a resumed watcher) are not rewritten
        self._seen: set[tuple[str, tuple[str, ...]]] = set()
        self.stopped: str | None = None

    def sync(self) -> None:
        """Write what was recorded since the last call (nothing on a step that recorded nothing)."""
        new = self.timeline.recorded - self._written
        if new <= 0 or self.stopped is not None:
            return
        self._written = self.timeline.recorded
        try:
            self._write(min(new, len(self.timeline)))
        except Exception as e:  # a dashboard must never break the training step it watches
            self.stopped = f"{type(e).__name__}: {e}"
            warnings.warn(
                f"gradwatch stopped writing to TensorBoard ({self.stopped}); training and recording go on",
                RuntimeWarning,
                stacklevel=3,
            )

    def _write(self, rows: int) -> None:
        t = self.timeline
        steps = t.steps[-rows:]
        add = self.writer.add_scalar
        for metric, prefix in LAYER_SCALARS:
            values = t.layer_metric(metric)[-rows:]
            for j, layer in enumerate(t.layers):
                for i, step in enumerate(steps):
                    v = float(values[i, j])
                    if math.isfinite(v):
                        add(f"{prefix}/{layer}", v, int(step))
        for metric, prefix in SITE_SCALARS:
            sites, values = t.metric(metric)
            values = values[-rows:]
            for j, site in enumerate(sites):
                for i, step in enumerate(steps):
                    v = float(values[i, j])
                    if math.isfinite(v):
                        add(f"{prefix}/{site}", v, int(step))
        step = int(steps[-1])
        for f in self._diagnose().findings:
            key = (str(f.kind), tuple(f.layers))
            if key not in self._seen:
                self._seen.add(key)
                self.writer.add_text(FINDINGS_TAG, str(f), step)

    def close(self) -> None:
        """Write what is pending; close the writer if it was made here, else flush it."""
        self.sync()
        try:
            if self._owned:
                self.writer.close()
            elif callable(getattr(self.writer, "flush", None)):
                self.writer.flush()
        except Exception as e:
            warnings.warn(f"gradwatch could not close its TensorBoard writer ({type(e).__name__}: {e})", RuntimeWarning, stacklevel=2)
