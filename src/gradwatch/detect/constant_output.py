"""Constant output: the model gives (nearly) the same output for every input of a batch.

From `output_spread` (the across-batch standard deviation of the output over its mean
magnitude). What dead ReLU nets, inputs that never reach the model and deep nets in the
ordered phase (inputs forgotten on the way forward) have in common. An error when the
loss is not improving — or when a classifier's loss, begun at chance, now sits well above
chance: a constant output's loss is at least the entropy of the label frequencies, which
is at most chance, so a loss falling from far above chance with a constant output is only
the constant shrinking toward those frequencies, not learning (a blow-up that left every
input the same answer). A spread that rises steadily by over a decade is a run leaving its
plateau (`severity.escaping`): `info`.
"""

from __future__ import annotations

import numpy as np

from gradwatch.anatomy import Anatomy
from gradwatch.detect._signals import episode, nanmedian, num, recent_rows, site_series, step_at
from gradwatch.detect.loss import LossStatus, loss_view
from gradwatch.detect.severity import escaping, raised
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import Finding, Kind, Severity


def constant_output(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[Finding]:
    """Output spread below `th.output_spread`, persistently."""
    spread = site_series(timeline, "output_spread", "output")
    if spread is None:
        return []
    with np.errstate(invalid="ignore"):
        start = episode(spread < th.output_spread, th.persist)
    if start is None:
        return []
    now = float(nanmedian(recent_rows(spread, th.persist)))
    loss = loss_view(timeline, anatomy, th)
    wrong = loss.blew_past_chance(th)
    if loss.status in (LossStatus.STUCK, LossStatus.PLATEAU) or wrong:
        severity = Severity.ERROR
    elif loss.learning or loss.status == LossStatus.UNCLEAR:
        severity = Severity.INFO
    else:
        severity = Severity.WARNING
    severity = raised(severity, loss)
    what = "exactly the same output" if now == 0 else f"outputs that differ by {num(now)} of their size"
    how = loss.describe()
    with np.errstate(divide="ignore", invalid="ignore"):
        rising = escaping(np.log10(spread), th)
    if rising is not None:
        severity = Severity.INFO
        how += (
            f"; but the spread grew {num(10**rising)}x over the last {2 * th.persist} records, steadily: "
            "the model is leaving a plateau"
        )
    if wrong:
        assert loss.chance is not None
        how = (
            f"its loss went from {num(loss.first)} (chance {num(loss.chance)}) to {num(loss.recent)}: "
            "worse than a uniform guess, and a constant output can fall no lower than the label "
            "frequencies' entropy (at most chance) — it is not learning, whatever the trend"
        )
    return [
        Finding(
            kind=Kind.CONSTANT_OUTPUT,
            severity=severity,
            layers=[],
            step=step_at(timeline, start),
            evidence={
                "output_spread": now,
                **loss.evidence(),
                **({"blew_past_chance": 1.0} if wrong else {}),
                **({"escape_decades": rising} if rising is not None else {}),
            },
            message=f"the model gives every input of a batch {what}: it ignores its input; {how}",
        )
    ]
