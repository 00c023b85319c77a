"""Vanishing gradients across depth: early layers get a tiny share of the gradient.

Evidence is scale-free: each layer's gradient relative to its own weights (what an SGD
step changes, per unit of learning rate), compared with the last weight layer's. The
finding is an error only when the loss is stuck as well; a net that learns despite a
weak early gradient (a shallow sigmoid net, an Adam-trained one) gets an `info` — a
`warning` if it learns too slowly to finish (`severity.raised`).

A vanishing that held for most of the run and then cleared (an adaptive optimizer, or the
weights, slowly lifting the early layers' share) is reported as lost time
(`severity.lost_time`): the early layers had under half the run to learn.
"""

from __future__ import annotations

import math

import numpy as np

from gradwatch.anatomy import Anatomy
from gradwatch.detect._signals import (
    cleared_span,
    depth_log_ratio,
    input_groups,
    latched_episode,
    nanmedian,
    num,
    peer_max,
    quiet_numpy,
    recent_rows,
    step_at,
    tied,
)
from gradwatch.detect.loss import LossStatus, loss_view
from gradwatch.detect.severity import lost_time, raised
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import Finding, Kind, Severity


def vanishing_gradient(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[Finding]:
    """Layers whose gradient, relative to their weights, is below `th.vanish_ratio` of the last layer's."""
    chain, ratio = depth_log_ratio(timeline, anatomy)
    if not chain:
        return []
    limit = math.log10(th.vanish_ratio)
    # A gradient that vanishes on its way back starves every layer behind the point where
    # it was lost: a layer is starved *by depth* only if no layer executed before it
    # (nearer the input) still gets a healthy share — the gradient demonstrably got past
    # such a layer. A weak layer with a healthy one before it is weak for a local reason:
    # the query and key projections of attention at initialisation, whose gradient is
    # proportional to the other's small output. A layer whose parameters are tied to a
    # later use (an input embedding shared with the output head) gets gradient from both
    # ends, so it vouches for nothing.
    # Layers that read the same tensor sit at one depth: a healthy one among them (the value
    # projection beside a query's and key's) shows that the gradient got there.
    vouch = ~tied(timeline, anatomy, chain[:-1])
    groups = np.where(vouch, input_groups(timeline, anatomy, chain[:-1]), -1)

    def starved(values: np.ndarray, bar: float) -> np.ndarray:
        with quiet_numpy():
            upstream = np.fmax.accumulate(np.where(vouch, values, np.nan), axis=-1)
            beside = peer_max(values, groups)
            return np.isfinite(values) & (values < bar) & ~(upstream >= bar) & ~(beside >= bar)

    release = limit + th.release_decades
    enter = np.asarray(starved(ratio, limit).any(axis=1))
    hold = np.asarray(starved(ratio, release).any(axis=1))
    start = latched_episode(enter, hold, th.persist)
    if start is None:
        return _cleared(timeline, anatomy, th, chain, ratio, starved(ratio, limit))
    now = nanmedian(recent_rows(ratio, th.persist), axis=0)  # per layer, over the recent window
    weak = [int(j) for j in np.flatnonzero(starved(now, limit))]
    bar = th.vanish_ratio
    if not weak:  # still inside the dead band: the ratio has not yet clearly recovered
        weak = [int(j) for j in np.flatnonzero(starved(now, release))]
        bar = 10**release
    if not weak:
        return []
    names = [timeline.layers[chain[j]] for j in weak]
    j_min = weak[int(np.argmin(now[weak]))]
    lowest = float(now[j_min])
    finite = np.isfinite(now)
    slope = math.nan
    if finite.sum() >= 2:
        # Decades the gradient loses per layer on its way back to the input (the reference
        # layer sits at 0, one position after the last compared layer).
        x = np.append(np.arange(len(now))[finite], len(now))
        slope = float(np.polyfit(x, np.append(now[finite], 0.0), 1)[0])
    loss = loss_view(timeline, anatomy, th)

    if loss.status == LossStatus.STUCK:
        severity = Severity.ERROR
    elif loss.status == LossStatus.PLATEAU or (
        loss.status in (LossStatus.UNKNOWN, LossStatus.UNCLEAR) and lowest < math.log10(th.vanish_ratio_blind)
    ):
        severity = Severity.WARNING
    else:
        severity = Severity.INFO
    severity = raised(severity, loss)

    reference = timeline.layers[chain[-1]]
    many = f"; {len(names)} layers are below {num(bar)}" if len(names) > 1 else ""
    message = (
        f"layer `{timeline.layers[chain[j_min]]}` receives {num(10**lowest)} of the last layer's "
        f"(`{reference}`) gradient, relative to its weights{many}; {loss.describe()}"
    )
    if severity == Severity.INFO and loss.learning:
        message += ", so the later layers carry the learning"
    evidence = {
        "ratio_min": 10**lowest,
        "decades_per_layer": slope,
        "layers_below": float(len(names)),
        **loss.evidence(),
    }
    return [
        Finding(
            kind=Kind.VANISHING_GRADIENT,
            severity=severity,
            layers=names,
            step=step_at(timeline, start),
            evidence={k: float(v) for k, v in evidence.items()},
            message=message,
        )
    ]


def _cleared(
    timeline: Timeline, anatomy: Anatomy, th: Thresholds, chain: list[int], ratio: np.ndarray, low: np.ndarray
) -> list[Finding]:
    """Layers starved for most of the run before their share recovered (`severity.lost_time`)."""
    span = cleared_span(np.asarray(low.any(axis=1)), th.persist)
    loss = loss_view(timeline, anatomy, th)
    share = lost_time(timeline.steps, span, loss, th)
    if span is None or share is None:
        return []
    a, b = span
    weak = [int(j) for j in np.flatnonzero(low[a : b + 1].mean(axis=0) >= 0.5)] or [int(np.argmax(low[a : b + 1].sum(axis=0)))]
    during = nanmedian(ratio[a : b + 1], axis=0)
    j_min = weak[int(np.argmin(during[weak]))]
    now = nanmedian(recent_rows(ratio, th.persist), axis=0)
    names = [timeline.layers[chain[j]] for j in weak]
    steps = timeline.steps
    many = f" ({len(names) - 1} more layer{'s' if len(names) > 2 else ''} with it)" if len(names) > 1 else ""
    return [
        Finding(
            kind=Kind.VANISHING_GRADIENT,
            severity=Severity.WARNING,
            layers=names,
            step=int(steps[a]),
            evidence={
                "ratio_min": float(10 ** now[j_min]),
                "ratio_first_now": float(10 ** now[0]),
                "ratio_during": float(10 ** during[j_min]),
                "lost_share": share,
                **loss.evidence(),
            },
            message=(
                f"layer `{timeline.layers[chain[j_min]]}`{many} received {num(10 ** during[j_min])} of the last "
                f"layer's (`{timeline.layers[chain[-1]]}`) gradient, relative to its weights, from step "
                f"{int(steps[a])} to {int(steps[b])} ({share:.0%} of the run) before the gradient got through "
                f"again (`{timeline.layers[chain[0]]}` now receives {num(10 ** now[0])}): for most of its steps "
                f"the run could not train its early layers; {loss.describe()}"
            ),
        )
    ]
