"""What a falling loss cannot excuse: the two reasons a finding the loss made `info` is raised.

Most gradient oddities are harmless in a run that learns, so each detector first reads its
severity off the loss's course (docs/detectors.md, "How severity is decided"). Two things
a falling loss does not make harmless:

- **slow progress** (`LossView.slow`): the loss improves, but at a pace that needs over
  `Thresholds.slow_pace` times the steps run so far to converge. "Still improving" is
  then the textbook symptom of the fault, very slow convergence, not proof of health;
- **lost capacity**: the measurement itself says most of a layer does not work — nine
  units in ten dead or saturated (`Thresholds.lost_capacity_frac`), or a plain chain in
  the chaotic phase. The layer learns with a fraction of its width, or the net computes a
  chaotic function, whatever the loss does meanwhile.

Either raises an `info` to a `warning`; a run whose loss converged keeps its `info`.
"""

from __future__ import annotations

from gradwatch.detect._signals import LossView
from gradwatch.types import Severity


def raised(severity: Severity, loss: LossView, *, lost_capacity: bool = False) -> Severity:
    """`severity`, raised from `info` to `warning` by slow progress or lost capacity."""
    if severity > Severity.INFO or loss.status == "converged":
        return severity
    if loss.slow or lost_capacity:
        return Severity.WARNING
    return severity
