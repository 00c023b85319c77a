"""Training advice for what cannot live in the model: a gradient-clipping threshold and a step-size scale.

``clip_grad_norm``: the total gradient norm of a record is
``sqrt(sum over layers of grad_norm^2)`` (the norm `torch.nn.utils.clip_grad_norm_`
clips). The advice is the median of that total over the records *before the trouble
began* (the first step of an exploding, non-finite or diverging finding; every record
when there is none), non-finite records left out. Clipping at the typical size of a
healthy step leaves half the steps untouched and cuts a spike down to that size; the
early records are used because once a run explodes, its own percentiles describe the
explosion. For the same reason the early records stop at the run-up: the first record
whose total is over `RUNUP_FACTOR` (a decade) above the median of the records before it
already belongs to the blow-up — a run under SGD at lr 20 reads 2 at step 0 and 4e10 at
step 5, and the median of those two, 2e10, would clip nothing.

``lr_scale`` for stalled weights (no structural cause, updates far too small): the same
target, ``1e-3 / r``, between 10 and 1000 — at least a decade up, at most three.

``lr_scale``: a factor for the learning rate. The update ratio ``||dW|| / ||W||``
scales linearly with the learning rate (for SGD and, up to its normalisation, Adam),
and steps around 1e-3 of the weights per update are the usual healthy size
(TheDeepChecker's band is 1e-4 .. 1e-1 in log10 terms, centred near it). With r the
*largest* per-record median ratio (over layers) before the trouble began — a step size
does its damage with its big early steps (units knocked dead, a jump out of the basin),
after which the updates may be tiny — the advice is ``min(0.1, 1e-2 / r)``: the largest
typical step brought to the upper part of the healthy band (1e-2; the typical steps then
sit below it, around the 1e-3 centre) — at least one decade down,
since it is only given when the step size is blamed — and never below 1e-3.

Two cases in which the recorded steps understate the one that did the damage:

- *The damage came before the first measured update* (the first exploding, non-finite,
  diverging or dead-unit finding is at or before the first record with a finite update
  ratio — Adam at lr 1 switches every ReLU off within a few steps, and the record after
  that sees the decaying steps of a dead network). The largest measured step is then only
  a lower bound of the damaging one, so it is brought to the healthy *centre*, 1e-3 —
  a decade more margin: ``min(0.1, 1e-3 / r)``.
- *No finite ratio at all* in a timeline of two records or more (every update was
  already non-finite when first measured: the step overflowed within one recording
  interval): ``1e-2``, two decades. One decade
  is what a step measured at the very top of the band (0.1 .. 1 of the weights) gets; a
  step too large to be measured at all is at least that bad, so it gets one more.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from gradwatch.record import Timeline
from gradwatch.types import Diagnosis, Kind

#: The typical healthy update ratio (aimed at when scaling a stalled run's rate up).
TARGET_UPDATE_RATIO = 1e-3
#: The top of the healthy band for the largest typical step (aimed at when scaling down).
LARGEST_UPDATE_RATIO = 1e-2
#: Smallest learning-rate change advised when the step size is blamed (one decade).
MAX_LR_SCALE = 0.1
#: Largest learning-rate reduction ever advised.
MIN_LR_SCALE = 1e-3
#: Advised when the step size is blamed and no finite update was ever measured (two decades).
NO_MEASURE_LR_SCALE = 1e-2
#: For stalled weights (updates far below 1e-3 of the weights): at least one decade up,
#: at most three — a larger jump would trade a stall for a blow-up.
MIN_UP_SCALE = 10.0
MAX_UP_SCALE = 1e3

#: A record's total gradient norm this far above the median of the records before it is
#: the run-up to the trouble, not a typical step (clipping advice).
RUNUP_FACTOR = 10.0

_TROUBLE = (Kind.EXPLODING_GRADIENT, Kind.NONFINITE_GRADIENT, Kind.DIVERGING_LOSS)
#: Findings that mark the damage a too-large step does (for the learning-rate advice):
#: units switched off for good are as much its work as an explosion.
_DAMAGE = (*_TROUBLE, Kind.DEAD_UNITS)


def total_grad_norm(timeline: Timeline) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, total)``: per record, sqrt(sum of squared layer gradient norms).

    A record with a non-finite gradient anywhere gives inf; one with no measured layer, NaN.
    """
    g = timeline.layer_metric("grad_norm")
    steps = timeline.steps
    if g.size == 0:
        return steps, np.full(len(steps), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        total = np.sqrt(np.nansum(g.astype(np.float64) ** 2, axis=1))
    total[np.all(np.isnan(g), axis=1)] = np.nan
    bad = timeline.layer_metric("grad_nonfinite")
    if bad.size:
        total[np.nansum(bad, axis=1) > 0] = np.inf
    total[np.any(np.isinf(g), axis=1)] = np.inf
    return steps, total


def trouble_step(diagnosis: Diagnosis | None, kinds: tuple[Kind, ...] = _TROUBLE) -> int | None:
    """The first step of a finding of `kinds` (exploding, non-finite or diverging by default), if any."""
    if diagnosis is None:
        return None
    steps = [f.step for f in diagnosis.findings if f.kind in kinds and f.step is not None]
    return min(steps) if steps else None


def _before_runup(total: np.ndarray) -> np.ndarray:
    """The finite totals up to the first one over `RUNUP_FACTOR` times the median of those before it."""
    kept: list[float] = []
    for v in total[np.isfinite(total) & (total > 0)]:
        if kept and v > RUNUP_FACTOR * float(np.median(kept)):
            break
        kept.append(float(v))
    return np.asarray(kept, dtype=np.float64)


def clip_grad_norm(timeline: Timeline | None, diagnosis: Diagnosis | None = None) -> tuple[float, str] | None:
    """The clipping threshold and why, or None when no finite gradient norm was recorded."""
    if timeline is not None and len(timeline):
        steps, total = total_grad_norm(timeline)
        until = trouble_step(diagnosis)
        if until is not None:
            early = total[steps <= until]
            if np.isfinite(early).any():
                total = _before_runup(early)
        finite = total[np.isfinite(total) & (total > 0)]
        if finite.size:
            p50, p90 = float(np.median(finite)), float(np.percentile(finite, 90))
            where = f"steps <= {until}" if until is not None else "all records"
            return _round(p50), (
                f"median total gradient norm over {finite.size} records ({where}) is {p50:.3g}, "
                f"90th percentile {p90:.3g}: clipping at the median caps spikes at a typical step's size"
            )
    if diagnosis is not None:
        norms = [r.measured_grad_norm for r in diagnosis.layers if r.measured_grad_norm is not None]
        norms = [n for n in norms if math.isfinite(n)]
        if norms:
            total_f = math.sqrt(sum(n * n for n in norms))
            if total_f > 0:
                return _round(total_f), (
                    f"total of the layers' recent median gradient norms is {total_f:.3g} (no timeline given)"
                )
    return None


def lr_scale(timeline: Timeline | None, diagnosis: Diagnosis | None = None, *, up: bool = False) -> tuple[float, str]:
    """The learning-rate factor and why (see the module docstring); `up` for stalled weights."""
    typical: list[float] = []  # per record: the median update ratio over its layers
    aftermath = False  # the damage came before the first measured update
    if timeline is not None and len(timeline):
        r = timeline.layer_metric("update_ratio")
        steps = timeline.steps
        until = trouble_step(diagnosis, _DAMAGE)
        if until is not None and r.size:
            keep = steps <= until
            keep[:2] = True  # the first update is only measured at the second record
            r, steps = r[keep], steps[keep]
        for row, step in zip(r, steps, strict=True):
            ok = row[np.isfinite(row) & (row > 0)]
            if ok.size:
                if not typical and until is not None and step >= until:
                    aftermath = True
                typical.append(float(np.median(ok)))
    elif diagnosis is not None:
        ok_list = [x.update_ratio for x in diagnosis.layers if x.update_ratio is not None]
        ok_list = [x for x in ok_list if math.isfinite(x) and x > 0]
        if ok_list:
            typical.append(float(np.median(ok_list)))
    if up:
        if not typical:
            return MIN_UP_SCALE, "no update was measured: one decade up"
        med = float(np.median(typical))
        scale = min(MAX_UP_SCALE, max(MIN_UP_SCALE, TARGET_UPDATE_RATIO / med))
        return _round(scale), (
            f"median update ratio ||dW||/||W|| is {med:.2g}; about {TARGET_UPDATE_RATIO:g} is a healthy step"
        )
    if not typical and (timeline is None or len(timeline) < 2):
        return MAX_LR_SCALE, "no update ratio is known (pass the run's timeline): one decade down"
    if not typical:
        return NO_MEASURE_LR_SCALE, (
            "no finite update ratio was measured (the updates overflowed before the first record "
            "that could measure one): two decades down"
        )
    # A step size is too large when its largest typical step is: damage (dead units, a
    # jump out of the basin) is done by the big early steps, after which updates may be tiny.
    # Bring that largest step to the top of the healthy band, not its centre: the typical
    # steps then sit below it. When the damage came before any update was measured, the
    # largest measured step understates the damaging one: aim it at the centre instead.
    top = max(typical)
    aim = TARGET_UPDATE_RATIO if aftermath else LARGEST_UPDATE_RATIO
    scale = min(MAX_LR_SCALE, max(MIN_LR_SCALE, aim / top))
    if aftermath:
        return _round(scale), (
            f"the damage came before the first measured update, whose median ratio ||dW||/||W|| "
            f"({top:.2g}) understates the steps that did it: brought to the healthy centre, {aim:g}"
        )
    return _round(scale), (
        f"largest per-record median update ratio ||dW||/||W|| is {top:.2g}; "
        f"steps up to about {aim:g} are healthy"
    )


def _round(x: float) -> float:
    """Two significant digits: advice a person can type."""
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.2g}")
