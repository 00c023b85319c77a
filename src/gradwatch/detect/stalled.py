"""Stalled weights: the optimizer's steps barely change the model, anywhere.

Every layer's update is below `th.stall_update_ratio` of its weights per step (a learning
rate far too small, an optimizer that holds other tensors than the model's, gradients
that vanished everywhere at once). If any layer still moves, the optimizer works and a
weak gradient in some layers is the vanishing detector's finding instead.
"""

from __future__ import annotations

import numpy as np

from gradwatch.anatomy import Anatomy
from gradwatch.detect._signals import (
    episode,
    loss_view,
    nanmedian,
    num,
    quiet_numpy,
    recent_rows,
    step_at,
)
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import Finding, Kind, Severity


def stalled_weights(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[Finding]:
    """Every layer's update ratio below `th.stall_update_ratio`, persistently."""
    if len(timeline) == 0 or not timeline.layers:
        return []
    ratio = timeline.layer_metric("update_ratio")
    with quiet_numpy():
        top = np.nanmax(ratio, axis=1)  # the layer that moves most, per record
    start = episode(top < th.stall_update_ratio, th.persist)
    if start is None:
        return []
    now = float(nanmedian(recent_rows(top, th.persist)))
    loss = loss_view(timeline, anatomy, th)
    if loss.status == "stuck":
        severity = Severity.ERROR
    elif loss.status in ("plateau", "unknown", "unclear"):
        severity = Severity.WARNING
    else:
        severity = Severity.INFO
    if now == 0:
        what = (
            "the optimizer's steps do not change the weights at all (update 0): does it hold "
            "this model's parameters, with a learning rate above 0?"
        )
    else:
        what = (
            f"no layer's weights change by more than {num(now)} of their size per step "
            f"(at that rate they need {num(1 / now)} steps to change by their own size)"
        )
    return [
        Finding(
            kind=Kind.STALLED_WEIGHTS,
            severity=severity,
            layers=list(timeline.layers),
            step=step_at(timeline, start),
            evidence={"update_ratio_max": now, **loss.evidence()},
            message=f"{what}; {loss.describe()}",
        )
    ]
