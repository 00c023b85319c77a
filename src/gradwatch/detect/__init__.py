"""Detectors: pure functions ``(Timeline, Anatomy, Thresholds) -> list[Finding]``.

`diagnose` runs every registered detector and assembles a `Diagnosis`. Detectors live
one per file; all thresholds live in `thresholds.py`.
"""

from __future__ import annotations

from collections.abc import Callable

from gradwatch.anatomy import Anatomy
from gradwatch.detect.layers import layer_reports
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import Diagnosis, Finding

Detector = Callable[[Timeline, Anatomy, Thresholds], list[Finding]]

#: Every detector `diagnose` runs, in the order their findings are listed.
DETECTORS: list[Detector] = []


def diagnose(timeline: Timeline, anatomy: Anatomy, thresholds: Thresholds | None = None) -> Diagnosis:
    """Run every detector over a Timeline and return the Diagnosis."""
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


__all__ = ["DETECTORS", "Detector", "Thresholds", "diagnose", "layer_reports"]
