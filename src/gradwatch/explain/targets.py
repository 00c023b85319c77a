"""The regression targets, read back from the output's gradient (no data passed by the user).

Under a squared error ``L = sum_i (y_i - t_i)^2 / k`` — a sum (k = 1), a mean over the
batch (k = B) or over every element (k = N) — the gradient with respect to the output is
``dL/dy_i = 2 (y_i - t_i) / k``, so each target is ``t_i = y_i - k dL/dy_i / 2``, and the
loss itself is ``L = k ||dL/dy||^2 / 4``. The last identity names k, and is the test that
the loss *is* a squared error of the output: a cross-entropy, a squared error of a
transformed output (a log), a loss with a penalty added or scaled by hand satisfies it for
none of the three, and then nothing is read. The recorded samples (`probes.output.OutputSample`:
a few elements of the output and of its gradient per recording step, pooled over the first
records) turn into a sample of the targets, whose mean, spread and range the data causes
use (`gradwatch.explain.causes`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradwatch.record import Timeline

__all__ = ["EPS", "MATCH", "MIN_TARGETS", "PRECISION", "Targets", "read_targets"]

#: How close ``4 L / ||dL/dy||^2`` must come to 1, B or N (relative): float32 rounding of the
#: loss and the gradient stays near 1e-6; a loss that is not a squared error of the output
#: lands on one of three integers this closely only by coincidence.
MATCH = 1e-3
#: A target is kept when its float32 rounding error, about ``EPS (|y| + |k dL/dy / 2|)``, is
#: under this share of its size (or of the kept targets' root mean square): outputs thrown
#: to 1e12 by a blow-up leave none of the digits of a target at 1e5 in ``y - k dL/dy / 2``.
PRECISION = 1e-3
#: float32's relative rounding (6e-8), with a margin for the loss's own rounding.
EPS = 1e-6
#: Fewer targets than this are not read (the share of them beyond a range would be a guess):
#: the activation probes' bar for judging a unit from its outputs.
MIN_TARGETS = 8


@dataclass(frozen=True)
class Targets:
    """A sample of the targets, read from the output's gradient.

    `values`: the targets at the sampled positions, pooled over the records read;
    `divisor`: k (1: a summed loss; else the elements or the batch it is averaged over);
    `records`: how many recording steps were read; `start`: the sampled outputs at the
    first of them (what the model produced before training moved it).
    """

    values: np.ndarray
    divisor: float
    records: int
    start: np.ndarray

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values))

    @property
    def rms(self) -> float:
        return float(np.sqrt(np.mean(self.values**2)))

    def beyond(self, low: float, high: float) -> float:
        """The mean squared distance of the targets from the interval [low, high]: the least
        squared error any output inside it can reach, per output."""
        gap = np.maximum(low - self.values, 0.0) + np.maximum(self.values - high, 0.0)
        return float(np.mean(gap**2))

    def unreachable(self, low: float, high: float) -> float:
        """The share, 0..1, of the squared error the best constant inside [low, high] leaves
        that no output inside it can remove: ``beyond / (variance + distance of the mean
        from the interval squared)``. 0 when every target lies inside."""
        far = self.beyond(low, high)
        mean = self.mean
        offset = max(low - mean, 0.0) + max(mean - high, 0.0)
        constant = float(np.var(self.values)) + offset**2
        return far / constant if constant > 0 else 0.0


def _divisor(k: float, numel: float, batch: float) -> float | None:
    for d in (1.0, batch, numel):
        if math.isfinite(d) and d > 0 and abs(k - d) <= MATCH * d:
            return d
    return None


def read_targets(tl: Timeline | None) -> Targets | None:
    """The targets a squared-error loss holds, from the recorded output samples, or None
    (no samples, a loss that is not a squared error of the output, fewer than
    `MIN_TARGETS` targets). A record counts when its step's loss ``L`` and its
    ``||dL/dy||^2`` give ``4 L / ||dL/dy||^2`` within `MATCH` of 1, the batch or the element
    count; at least half the sampled records must agree, on the same divisor. Targets whose
    digits the subtraction cancelled (a blow-up's outputs: `PRECISION`) are left out."""
    if tl is None or "output_grad_sq" not in tl.records.metrics or "output_sample" not in tl.records.metrics:
        return None
    names = tl.records.names("output_sample")
    ys, gs = tl.records.get("output_sample", names), tl.records.get("output_grad_sample", names)
    sq = tl.records.column("output_grad_sq", "output")
    numel = tl.records.column("output_numel", "output") if "output_numel" in tl.records.metrics else np.full(len(sq), np.nan)
    batch = tl.records.column("output_batch", "output")
    steps, loss = tl.loss()
    at = dict(zip(steps.tolist(), loss.tolist(), strict=True))
    read: list[tuple[float, np.ndarray, np.ndarray]] = []
    sampled = 0
    for row, step in enumerate(tl.steps.tolist()):
        if not math.isfinite(sq[row]):
            continue
        sampled += 1
        value = at.get(step)
        if value is None or not (math.isfinite(value) and value >= 0) or not sq[row] > 0:
            continue
        d = _divisor(4.0 * value / float(sq[row]), float(numel[row]), float(batch[row]))
        keep = np.isfinite(ys[row]) & np.isfinite(gs[row])
        if d is None or not keep.any():
            continue
        read.append((d, ys[row][keep], gs[row][keep]))
    if not read:
        return None
    divisors = [d for d, _, _ in read]
    common = max(set(divisors), key=divisors.count)
    rows = [(y, g) for d, y, g in read if d == common]
    if 2 * len(rows) < sampled:
        return None
    values = np.concatenate([y - common * g / 2.0 for y, g in rows])
    error = EPS * np.concatenate([np.abs(y) + np.abs(common * g / 2.0) for y, g in rows])
    sure = error <= PRECISION * np.abs(values)
    if not sure.any():
        return None
    scale = float(np.sqrt(np.mean(values[sure] ** 2)))
    values = values[sure | (error <= PRECISION * scale)]
    if values.size < MIN_TARGETS or not np.isfinite(values).all():
        return None
    return Targets(values=values, divisor=common, records=len(rows), start=rows[0][0])
