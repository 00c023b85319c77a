"""A diverging loss: it rose, went non-finite, or swings without progress under large steps.

This is where a step size that is too large shows: the loss climbs above where it
started (or gives back most of what it had gained), becomes inf/NaN, or stays where it
was while every update changes the weights by percents. The update ratio (update norm /
weight norm, per step) is what tells it from vanishing gradients, which shrink updates.
"""

from __future__ import annotations

import numpy as np

from gradwatch.anatomy import Anatomy
from gradwatch.detect._signals import (
    episode,
    nanmedian,
    num,
    pct,
    quiet_numpy,
    recent_rows,
    step_at,
)
from gradwatch.detect.loss import LossStatus, loss_view
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import Finding, Kind, Severity


def diverging_loss(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[Finding]:
    """The loss rose, became non-finite, or does not improve under updates of >= `th.large_update_ratio`."""
    loss = loss_view(timeline, anatomy, th)
    with quiet_numpy():
        typical = np.nanmedian(timeline.layer_metric("update_ratio"), axis=1)  # median layer, per record
    finite_typical = typical[np.isfinite(typical)]
    peak = float(np.max(finite_typical)) if len(finite_typical) else float("nan")
    hint = (
        f"; updates changed the weights by up to {pct(peak)} per step: the step size is likely too large"
        if peak >= th.large_update_ratio
        else ""
    )
    evidence = {**loss.evidence(), "update_ratio_peak": peak}
    if loss.status == LossStatus.NONFINITE:
        return [
            Finding(
                kind=Kind.DIVERGING_LOSS,
                severity=Severity.ERROR,
                layers=[],
                step=loss.first_nonfinite,
                evidence={k: float(v) for k, v in evidence.items()},
                message=f"the loss became non-finite at step {loss.first_nonfinite} (it started at {num(loss.start)}){hint}",
            )
        ]
    if loss.status == LossStatus.DIVERGING:
        return [
            Finding(
                kind=Kind.DIVERGING_LOSS,
                severity=Severity.ERROR,
                layers=[],
                step=loss.best_step,
                evidence={**{k: float(v) for k, v in evidence.items()}, "loss_best": float(loss.best)},
                message=(
                    f"the loss has risen since step {loss.best_step}: now {num(loss.recent)}, "
                    f"from {num(loss.best)} at best and {num(loss.start)} at the start{hint}"
                ),
            )
        ]
    if loss.status in (LossStatus.STUCK, LossStatus.PLATEAU):
        start = episode(typical >= th.large_update_ratio, th.persist)
        if start is None:
            return []
        now = float(nanmedian(recent_rows(typical, th.persist)))
        evidence["update_ratio"] = now
        return [
            Finding(
                kind=Kind.DIVERGING_LOSS,
                severity=Severity.WARNING,
                layers=[],
                step=step_at(timeline, start),
                evidence={k: float(v) for k, v in evidence.items()},
                message=(
                    f"every update changes the weights by about {pct(now)}, yet {loss.describe()}: "
                    "the steps overshoot; the step size is likely too large"
                ),
            )
        ]
    return []
