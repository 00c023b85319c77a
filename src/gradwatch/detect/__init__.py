"""Detectors: pure functions ``(Timeline, Anatomy, Thresholds) -> list[Finding]``.

`diagnose` runs every registered detector and assembles a `Diagnosis`. Detectors live
one per file; all thresholds live in `thresholds.py`; the rules are explained in
docs/detectors.md. A detector never sees the live model, so a watcher and a log read
back give the same Diagnosis; each tolerates missing metrics and returns [] rather
than raise.
"""

from __future__ import annotations

from collections.abc import Callable

from gradwatch.anatomy import Anatomy
from gradwatch.detect.constant_output import constant_output
from gradwatch.detect.dead import dead_units
from gradwatch.detect.diverging import diverging_loss
from gradwatch.detect.exploding import exploding_gradient
from gradwatch.detect.flat_loss import flat_loss
from gradwatch.detect.layers import layer_reports
from gradwatch.detect.nonfinite import nonfinite_gradient
from gradwatch.detect.saturated import saturated_units
from gradwatch.detect.stalled import stalled_weights
from gradwatch.detect.temporal import temporal_vanishing
from gradwatch.detect.thresholds import Thresholds
from gradwatch.detect.vanishing import vanishing_gradient
from gradwatch.record import Timeline
from gradwatch.types import Diagnosis, Finding

Detector = Callable[[Timeline, Anatomy, Thresholds], list[Finding]]

#: Every detector `diagnose` runs, in the order their findings are listed: what broke
#: the run outright first, then the gradient mechanisms, then the symptoms.
DETECTORS: list[Detector] = [
    nonfinite_gradient,
    diverging_loss,
    exploding_gradient,
    vanishing_gradient,
    temporal_vanishing,
    dead_units,
    saturated_units,
    constant_output,
    stalled_weights,
    flat_loss,
]


def diagnose(timeline: Timeline, anatomy: Anatomy, thresholds: Thresholds | None = None) -> Diagnosis:
    """Run every detector over a Timeline and return the Diagnosis.

    Args:
        timeline: what was recorded (`Watcher.timeline`, `Run.timeline`).
        anatomy: the model's layers (`Watcher.anatomy`, `Run.anatomy`).
        thresholds: the numbers the detectors decide by; `Thresholds()` if None.

    Returns:
        A `Diagnosis` whose findings come in `DETECTORS` order.
    """
    th = thresholds or Thresholds()
    findings: list[Finding] = []
    for detector in DETECTORS:
        findings.extend(detector(timeline, anatomy, th))
    steps = timeline.last_step
    return Diagnosis(
        findings=findings,
        layers=layer_reports(timeline, anatomy, th),
        steps=0 if steps is None else steps + 1,
    )


__all__ = [
    "DETECTORS",
    "Detector",
    "Thresholds",
    "constant_output",
    "dead_units",
    "diagnose",
    "diverging_loss",
    "exploding_gradient",
    "flat_loss",
    "layer_reports",
    "nonfinite_gradient",
    "saturated_units",
    "stalled_weights",
    "temporal_vanishing",
    "vanishing_gradient",
]
