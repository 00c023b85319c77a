"""What a falling loss cannot excuse: the two reasons a finding the loss made `info` is raised.

Most gradient oddities are harmless in a run that learns, so each detector first reads its
severity off the loss's course (docs/detectors.md, "How severity is decided"). Two things
a falling loss does not make harmless:

- **slow progress** (`LossView.slow`): the loss improves, but at a pace that needs over
  `Thresholds.slow_pace` times the steps run so far to converge. "Still improving" is
  then the textbook symptom of the fault, very slow convergence, not proof of health;
- **lost capacity**: the measurement itself says most of a layer does not work — nine
  units in ten dead or saturated (`Thresholds.lost_capacity_frac`), or a plain chain in
  the chaotic phase. The layer learns with a fraction of its width, or the net computes a
  chaotic function, whatever the loss does meanwhile.

Either raises an `info` to a `warning`; a run whose loss converged keeps its `info`.

A third thing is reported although it has passed: **lost time** (`lost_time`), a fault
that held for more than `Thresholds.lost_time_share` of the recorded steps before it
cleared. Whatever the loss does afterwards, the run had under half its steps to learn
what the fault blocked; a `warning`, unless the loss converged all the same.

And one thing lowers a finding to `info` however the loss stands: **escape** (`escaping`).
A run sitting on a plateau near a saddle of the loss (a symmetric start: every input
given the same output, a recurrent layer that carries nothing yet) leaves it along the one
direction that breaks the symmetry, and that direction grows exponentially: the
measurement that defines the finding (the outputs' spread, the gradient's reach through
time) rises by a steady factor per record. A stuck run's stays level. While it rises by
over `Thresholds.escape_decades` across the last `2 * persist` records, to that much above
anything it reached before, the run is leaving the plateau, and the finding says so at `info`; if the rise stops, the finding returns.
"""

from __future__ import annotations

import numpy as np

from gradwatch.detect._signals import quiet_numpy
from gradwatch.detect.loss import LossStatus, LossView
from gradwatch.detect.thresholds import Thresholds
from gradwatch.types import Severity


def raised(severity: Severity, loss: LossView, *, lost_capacity: bool = False) -> Severity:
    """`severity`, raised from `info` to `warning` by slow progress or lost capacity."""
    if severity > Severity.INFO or loss.status == LossStatus.CONVERGED:
        return severity
    if loss.slow or lost_capacity:
        return Severity.WARNING
    return severity


def lost_time(steps: np.ndarray, span: tuple[int, int] | None, loss: LossView, th: Thresholds) -> float | None:
    """The share of the recorded steps a cleared episode `span` (record indices) held, if it
    is over `th.lost_time_share` and the loss did not converge; None otherwise."""
    if span is None or len(steps) < 2 or loss.status in (LossStatus.CONVERGED, LossStatus.UNKNOWN):
        return None
    total = float(steps[-1] - steps[0])
    share = float(steps[span[1]] - steps[span[0]]) / total if total > 0 else 0.0
    return share if share > th.lost_time_share else None


def escaping(log_values: np.ndarray, th: Thresholds) -> float | None:
    """The decades a measurement (log10, one value per record) gained over its last
    `2 * th.persist` records, if it rose steadily (a later record above an earlier one in
    at least `th.depth_trend` of the pairs) by over `th.escape_decades`, to over that much
    above anything it reached before; None otherwise. A measurement that wanders within a
    band of decades (a tanh RNN's reach through time) rises that much now and then, but
    only back to where it had been."""
    w = 2 * th.persist
    allv = np.asarray(log_values, dtype=np.float64)
    v, before = allv[-w:], allv[:-w]
    if len(v) < w or not np.all(np.isfinite(v)):
        return None
    i, j = np.triu_indices(w, k=1)
    if float(np.mean(v[j] > v[i])) < th.depth_trend:
        return None
    gained = float(np.polyfit(np.arange(w), v, 1)[0]) * (w - 1)
    with quiet_numpy():
        high = float(np.nanmax(before)) if len(before) and np.isfinite(before).any() else -np.inf
    if not (gained > th.escape_decades and v[-1] - max(high, float(v[0])) > th.escape_decades):
        return None
    return gained
