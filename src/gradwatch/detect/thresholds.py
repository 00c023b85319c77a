"""Every number the detectors decide by, in one place (documented in docs/detectors.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    #: How many of the most recent recording steps summarise a layer in its report.
    report_window: int = 10
