"""Vanishing gradients through time: a recurrent layer cannot learn from early inputs.

From the ``grad_t/<module>`` profiles (the gradient of the loss with respect to the
layer's input at each time step). The reach is the gradient at the time steps farthest
from where the loss enters over the gradient there (`_signals.reach_from_peak`): the
first steps over the last for a sequence read out at its end; the weaker end over the
middle for one read out in the middle (a bidirectional layer must carry both ways). The loss decides the severity: an LSTM whose reach starts tiny
but which learns (its reach then jumps to ~1 and the finding goes away) is told from a
tanh RNN whose reach stays tiny while the loss stays put (`error`). While the loss is on
a plateau the two look alike; for gated layers (LSTM, GRU), which can still learn to
carry the signal, the finding is then a `warning`; so it is while the loss improves too
slowly to finish (`severity.raised`). A layer without gates whose reach stayed tiny for
most of the run and then recovered is a `warning` while the loss has not converged
(`severity.lost_time`): the run had under half its steps to learn from the early inputs.
A reach rising steadily by over a decade is a layer learning to carry the signal
(`severity.escaping`): `info`.
When the loss is taken at every time step the reach is ~1 and nothing is reported.
"""

from __future__ import annotations

import math

import numpy as np

from gradwatch.anatomy import Anatomy
from gradwatch.detect._signals import (
    cleared_span,
    cut_steps,
    episode,
    nanmedian,
    num,
    recent_rows,
    time_reach,
)
from gradwatch.detect.loss import LossStatus, loss_view
from gradwatch.detect.severity import escaping, lost_time, raised
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import Finding, Kind, Severity

#: Layer types with gates that can learn to hold a signal over many steps.
GATED = frozenset({"LSTM", "GRU", "LSTMCell", "GRUCell"})
#: Layers that run a whole sequence in one call (their profile is one tensor's gradient).
WHOLE_SEQUENCE = frozenset({"RNN", "LSTM", "GRU"})


def temporal_vanishing(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[Finding]:
    """Profiles whose reach (far end over where the loss enters) stays below `th.time_reach`."""
    limit = math.log10(th.time_reach)
    findings = []
    for module, (steps, reach) in time_reach(timeline, th).items():
        rows = timeline.profiles.get(f"grad_t/{module}")
        loop = module in anatomy and anatomy[module].type not in WHOLE_SEQUENCE
        # a cell loop's holes before its first gradient: cut through time, reach 0
        cuts = [cut_steps(vec) if loop else 0 for _, vec in rows]
        reach = np.where(np.asarray(cuts) > 0, -np.inf, reach)
        with np.errstate(invalid="ignore"):
            low = reach < limit
        start = episode(low, th.persist)
        if start is None:
            cleared = _cleared(module, steps, reach, low, timeline, anatomy, th)
            findings += [cleared] if cleared is not None else []
            continue
        now = float(nanmedian(recent_rows(reach, th.persist)))
        third = max(1, len(reach) // 3)
        early, late = float(nanmedian(reach[:third])), float(nanmedian(reach[-third:]))
        rise = late - early if np.isfinite(late) and np.isfinite(early) else 0.0
        gated = module in anatomy and anatomy[module].type in GATED
        loss = loss_view(timeline, anatomy, th)
        stalled = loss.status in (LossStatus.STUCK, LossStatus.PLATEAU)
        cut, total = cuts[-1], len(rows[-1][1])
        if cut:
            # No gradient at all reaches the first steps: not a gain too small, a cut. It
            # does not heal by learning, gated or not.
            severity = Severity.ERROR if stalled else Severity.INFO
            evidence = {"time_reach": 0.0, "cut_steps": float(cut), "profile_steps": float(total)}
            what = (
                f"no gradient at all reaches its first {cut} of {total} steps — the state is cut "
                "between calls (a `.detach()` of the hidden state inside the loop: truncated "
                f"backpropagation through time over {total - cut} step{'s' if total - cut != 1 else ''}), "
                "so nothing before the cut can be learned from"
            )
            hint = ""
        else:
            # Learning, diverging (another cause), or too early to judge by the loss: the
            # reach alone does not tell a failing layer from an LSTM at initialisation (info).
            severity = raised((Severity.WARNING if gated else Severity.ERROR) if stalled else Severity.INFO, loss)
            hint = "; gated layers often sit on such a plateau before they learn to carry the signal" if stalled and gated else ""
            evidence = {"time_reach": float(10**now), "reach_change_decades": float(rise)}
            rising = escaping(reach, th)
            if rising is not None:
                severity = Severity.INFO
                hint = (
                    f"; but the reach grew {num(10**rising)}x over the last {2 * th.persist} records, steadily: "
                    "the layer is learning to carry the signal"
                )
                evidence["escape_decades"] = rising
            trend = f", {'up' if rise >= 0 else 'down'} {abs(rise):.1f} decades over the run" if len(reach) >= 3 else ""
            what = (
                "the gradient reaching the time steps farthest from where the loss enters (the first, "
                f"for a sequence read out at its end) is {num(10**now)} of the gradient there{trend}"
            )
        findings.append(
            Finding(
                kind=Kind.TEMPORAL_VANISHING,
                severity=severity,
                layers=[module],
                step=int(steps[start]),
                evidence={**evidence, **loss.evidence()},
                message=f"`{module}`: {what}; {loss.describe()}{hint}",
            )
        )
    return findings


def _cleared(
    module: str, steps: np.ndarray, reach: np.ndarray, low: np.ndarray, timeline: Timeline, anatomy: Anatomy, th: Thresholds
) -> Finding | None:
    """A reach that stayed below the bar for most of the run, then recovered (`severity.lost_time`).

    Not for gated layers: a reach that starts tiny and jumps up once the gates learn to
    hold the signal is how an LSTM or GRU learns (module docstring).
    """
    if module in anatomy and anatomy[module].type in GATED:
        return None
    span = cleared_span(low, th.persist)
    loss = loss_view(timeline, anatomy, th)
    share = lost_time(steps, span, loss, th)
    if span is None or share is None:
        return None
    a, b = span
    during = float(nanmedian(reach[a : b + 1]))
    now = float(nanmedian(recent_rows(reach, th.persist)))
    return Finding(
        kind=Kind.TEMPORAL_VANISHING,
        severity=Severity.WARNING,
        layers=[module],
        step=int(steps[a]),
        evidence={
            "time_reach": float(10**now),
            "time_reach_during": float(10**during) if np.isfinite(during) else 0.0,
            "lost_share": share,
            **loss.evidence(),
        },
        message=(
            f"`{module}`: the gradient reaching the time steps farthest from where the loss enters "
            f"was {num(10**during)} of the gradient there from step {int(steps[a])} to {int(steps[b])} "
            f"({share:.0%} of the run) before it recovered to {num(10**now)}: for most of its steps the "
            f"run could not learn from its early inputs; {loss.describe()}"
        ),
    )
