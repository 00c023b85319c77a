"""Vanishing gradients through time: a recurrent layer cannot learn from early inputs.

From the ``grad_t/<module>`` profiles (the gradient of the loss with respect to the
layer's input at each time step). The reach is the gradient at the first time steps over
the gradient at the last. Told apart: an LSTM whose reach starts tiny but rises as it
learns to carry the signal (`info`) from a tanh RNN whose reach stays tiny while the
loss stays put (`error`). When the loss is taken at every step the reach is ~1 and
nothing is reported.
"""

from __future__ import annotations

import math

import numpy as np

from gradwatch.anatomy import Anatomy
from gradwatch.detect._signals import episode, loss_view, nanmedian, num, recent_rows, time_profiles
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import Finding, Kind, Severity


def temporal_vanishing(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[Finding]:
    """Profiles whose early/late gradient ratio stays below `th.time_reach`."""
    limit = math.log10(th.time_reach)
    findings = []
    for module, (steps, reach) in time_profiles(timeline, th).items():
        with np.errstate(invalid="ignore"):
            start = episode(reach < limit, th.persist)
        if start is None:
            continue
        now = float(nanmedian(recent_rows(reach, th.persist)))
        third = max(1, len(reach) // 3)
        early, late = float(nanmedian(reach[:third])), float(nanmedian(reach[-third:]))
        rise = late - early if np.isfinite(late) and np.isfinite(early) else 0.0
        rising = len(reach) >= 3 * th.persist and rise >= th.time_rise_decades
        loss = loss_view(timeline, anatomy, th)
        if rising or loss.learning or loss.status in ("unclear", "diverging", "nonfinite"):
            severity = Severity.INFO
        elif loss.status in ("stuck", "plateau"):
            severity = Severity.ERROR
        else:
            severity = Severity.WARNING
        trend = (
            f"rising by {rise:.1f} decades over the run, so it is learning to carry the signal back"
            if rising
            else "not rising"
        )
        findings.append(
            Finding(
                kind=Kind.TEMPORAL_VANISHING,
                severity=severity,
                layers=[module],
                step=int(steps[start]),
                evidence={"time_reach": float(10**now), "reach_rise_decades": float(rise), **loss.evidence()},
                message=(
                    f"`{module}`: the gradient reaching the first time steps is {num(10**now)} of the "
                    f"gradient at the last ({trend}); {loss.describe()}"
                ),
            )
        )
    return findings
