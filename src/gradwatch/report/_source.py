"""What a report draws from: a Timeline, a Diagnosis and, for a model inspected before
training, the `inspect` result (a Diagnosis without a Timeline).

`gather` turns whatever `gw.report` was given — a `Watcher`, a `Run`, a log path, an
`inspect` Diagnosis — into one `Material`, so a log read back with `gw.load` draws the
same pictures as the live watcher that wrote it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradwatch._errors import GradwatchTypeError
from gradwatch.anatomy import Anatomy
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import Diagnosis, FixResult


@dataclass
class Material:
    """Everything one report shows."""

    title: str
    diagnosis: Diagnosis
    timeline: Timeline | None = None
    #: The loss of guessing (ln C for a C-class classifier), drawn on the loss figure.
    chance: float | None = None
    fix: FixResult | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    notes: list[str] = field(default_factory=list)


def chance_level(timeline: Timeline, anatomy: Anatomy | None, diagnosis: Diagnosis) -> float | None:
    """The chance level the loss detectors judge by (`detect.loss`): from a finding's
    evidence when one carries it, else from the model's output classes."""
    for f in diagnosis.findings:
        c = f.evidence.get("loss_chance")
        if c is not None:
            return float(c)
    if anatomy is None:
        return None
    from gradwatch.detect.loss import loss_view

    return loss_view(timeline, anatomy, Thresholds()).chance


def _fix(watcher: Any, diagnosis: Diagnosis) -> FixResult | None:
    """What `gw.fix` proposes for the watched model; None (and the report goes on) if it fails."""
    from gradwatch.fix import fix

    try:
        return fix(watcher.model, diagnosis, timeline=watcher.timeline)
    except Exception as e:  # a report must show the findings even when no fix can be made
        diagnosis.notes.append(f"no fix proposed ({type(e).__name__}: {e})")
        return None


def gather(
    source: Any,
    *,
    thresholds: Thresholds | None = None,
    diagnosis: Diagnosis | None = None,
    fix: FixResult | None = None,
) -> Material:
    """A `Material` from a `Watcher`, a `Run`, a path of a JSONL log, or a `Diagnosis`
    (an `inspect` result: no Timeline, so only the per-layer and Jacobian figures).

    For a Watcher whose run is not healthy, and no `fix` given, the fix shown is what
    `gw.fix` proposes for the watched model; a log has no model, so a Run shows only the
    causes' remedies.
    """
    from gradwatch.run import Run, load
    from gradwatch.watch import Watcher

    if isinstance(source, Material):
        return source
    th = thresholds or Thresholds()
    if isinstance(source, str | os.PathLike):
        source = load(source)
    if isinstance(source, Diagnosis):
        return Material(
            title="gradwatch inspect", diagnosis=source, fix=fix, thresholds=th
        )
    if isinstance(source, Watcher):
        d = diagnosis or source.diagnose(th)
        if fix is None and not d.healthy:
            fix = _fix(source, d)
        title = f"gradwatch: {source.anatomy.model_type}, {source.step_count} steps watched"
        return Material(
            title=title,
            diagnosis=d,
            timeline=source.timeline,
            chance=chance_level(source.timeline, source.anatomy, d),
            fix=fix,
            thresholds=th,
        )
    if isinstance(source, Run):
        d = diagnosis or source.diagnose(th)
        return Material(
            title=f"gradwatch: {Path(source.path).name}, {source.anatomy.model_type}",
            diagnosis=d,
            timeline=source.timeline,
            chance=chance_level(source.timeline, source.anatomy, d),
            fix=fix,
            thresholds=th,
        )
    raise GradwatchTypeError(
        "report() takes a Watcher (gw.watch), a Run (gw.load), the path of a JSONL log or a "
        f"Diagnosis from gw.inspect, got {type(source).__module__}.{type(source).__qualname__}"
    )
