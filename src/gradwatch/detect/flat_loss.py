"""A flat loss: the run is not learning, whatever the gradients say.

Told apart: a stuck run (flat at its starting value, or at chance for a classifier:
`warning`; so is one flat far below its start with the same output for every input, the
level a constant prediction reaches) from a converged one (flat far below its start:
`info`) and from a plateau
after real progress (`info`; detectors with gradient evidence judge those). A stuck loss
while the outputs' spread across the batch rises steadily by over a decade is a run
leaving its plateau (`severity.escaping`): `info` while the spread rises.
"""

from __future__ import annotations

import numpy as np

from gradwatch.anatomy import Anatomy
from gradwatch.detect._signals import num, site_series
from gradwatch.detect.loss import LossStatus, loss_view
from gradwatch.detect.severity import escaping
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import Finding, Kind, Severity


def flat_loss(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[Finding]:
    """The loss has stayed level for at least `th.flat_min_steps` steps."""
    loss = loss_view(timeline, anatomy, th)
    if loss.flat_steps < th.flat_min_steps:
        return []
    evidence = {k: float(v) for k, v in loss.evidence().items()}
    if loss.status == LossStatus.STUCK and loss.constant:
        severity = Severity.WARNING
        message = f"{loss.describe()}: the model is not learning"
    elif loss.status == LossStatus.STUCK:
        severity = Severity.WARNING
        message = (
            f"{loss.describe()}; it started at {num(loss.start)}: the model is not learning"
        )
    elif loss.status == LossStatus.CONVERGED:
        severity = Severity.INFO
        message = (
            f"the loss has been flat at {num(loss.recent)} for {loss.flat_steps} steps, far below its "
            f"start ({num(loss.start)}): the run has converged"
        )
    elif loss.status == LossStatus.PLATEAU:
        severity = Severity.INFO
        message = loss.describe()
    else:
        return []
    rising = _spread_rising(timeline, th) if severity > Severity.INFO else None
    if rising is not None:
        severity = Severity.INFO
        message += (
            f"; but the outputs' spread across the batch grew {num(10**rising)}x over the last "
            f"{2 * th.persist} records, steadily: the model is leaving its plateau"
        )
        evidence["escape_decades"] = rising
    return [
        Finding(
            kind=Kind.FLAT_LOSS,
            severity=severity,
            layers=[],
            step=loss.flat_since,
            evidence=evidence,
            message=message,
        )
    ]


def _spread_rising(timeline: Timeline, th: Thresholds) -> float | None:
    """`severity.escaping` of the output's spread across the batch, if it was recorded."""
    spread = site_series(timeline, "output_spread", "output")
    if spread is None:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        return escaping(np.log10(spread), th)
