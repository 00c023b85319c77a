"""Exploding gradients: the gradient grows on its way back, through depth or through time.

Through depth: an earlier layer's gradient, relative to its weights, is more than
`th.explode_ratio` times the last weight layer's (the chaotic phase of mean-field theory,
chi > 1). Through time: a recurrent layer's gradient at the first time steps is that many
times the gradient at the last ones. Gradients that are merely large everywhere, or that
grow because the weights blew up under a too-large step, are the diverging-loss
detector's business, not this one's. Severity: `error` while the loss is not improving,
`warning` while it improves, `info` once the run has converged.
"""

from __future__ import annotations

import math

import numpy as np

from gradwatch.anatomy import Anatomy
from gradwatch.detect._signals import (
    LossView,
    depth_log_ratio,
    episode,
    latched_episode,
    loss_view,
    nanmedian,
    num,
    quiet_numpy,
    recent_rows,
    step_at,
    tied,
    time_profiles,
)
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import Finding, Kind, Severity


def _severity(loss: LossView) -> Severity:
    # Unlike a weak early gradient (those layers merely learn slowly while the rest of the
    # net carries on), an amplified one makes the early layers overshoot under SGD and marks
    # a chaotic forward map, which generalises badly: worth a warning while the loss still
    # falls, and harmless only once the run has converged.
    if loss.failing:
        return Severity.ERROR
    if loss.status == "converged":
        return Severity.INFO
    return Severity.WARNING


def exploding_gradient(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[Finding]:
    """Gradient amplified more than `th.explode_ratio` across depth or across time."""
    limit = math.log10(th.explode_ratio)
    findings: list[Finding] = []
    loss: LossView | None = None

    chain, ratio = depth_log_ratio(timeline, anatomy)
    if chain:
        # a layer tied to the output head gets the head's gradient too: no evidence of growth
        ratio = np.where(tied(timeline, anatomy, chain[:-1]), np.nan, ratio)
        with quiet_numpy():
            top = np.nanmax(ratio, axis=1)
        release = limit - th.release_decades
        start = latched_episode(top > limit, top > release, th.persist)
        if start is not None:
            now = nanmedian(recent_rows(ratio, th.persist), axis=0)
            big = [j for j in range(len(now)) if np.isfinite(now[j]) and now[j] > limit]
            big = big or [j for j in range(len(now)) if np.isfinite(now[j]) and now[j] > release]
            if big:
                loss = loss_view(timeline, anatomy, th)
                j_max = big[int(np.argmax(now[big]))]
                highest = float(now[j_max])
                names = [timeline.layers[chain[j]] for j in big]
                findings.append(
                    Finding(
                        kind=Kind.EXPLODING_GRADIENT,
                        severity=_severity(loss),
                        layers=names,
                        step=step_at(timeline, start),
                        evidence={"ratio_max": float(10**highest), "layers_above": float(len(names)), **loss.evidence()},
                        message=(
                            f"layer `{timeline.layers[chain[j_max]]}` receives {num(10**highest)} times the "
                            f"last layer's (`{timeline.layers[chain[-1]]}`) gradient, relative to its weights: "
                            f"the gradient grows on its way back through depth; {loss.describe()}"
                        ),
                    )
                )

    for module, (steps, reach) in time_profiles(timeline, th).items():
        start = episode(reach > limit, th.persist)
        if start is None:
            continue
        loss = loss or loss_view(timeline, anatomy, th)
        now = float(nanmedian(recent_rows(reach, th.persist)))
        findings.append(
            Finding(
                kind=Kind.EXPLODING_GRADIENT,
                severity=_severity(loss),
                layers=[module],
                step=int(steps[start]),
                evidence={"time_reach": float(10**now), **loss.evidence()},
                message=(
                    f"`{module}`: the gradient at the first time steps is {num(10**now)} times the "
                    f"gradient at the last: it grows on its way back through time; {loss.describe()}"
                ),
            )
        )
    return findings
