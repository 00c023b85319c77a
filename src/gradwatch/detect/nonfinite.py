"""Non-finite gradients: inf or NaN in a layer's gradient.

Told apart: an isolated overflow (a `GradScaler` step that was skipped, after which the
gradients and weights are finite again: `info`) from a broken run (non-finite gradients
that persist, or weights that have become non-finite: `error`). In optimizer mode the
skipped steps are simply absent from the Timeline, so they raise nothing at all.

The layer listed first is where the non-finite values start: gradients flow from the
output back, so the latest layer (in execution order) with a non-finite gradient is the
one nearest to the operation that produced it.
"""

from __future__ import annotations

import numpy as np

from gradwatch.anatomy import Anatomy
from gradwatch.detect._signals import episode, step_at
from gradwatch.detect.loss import loss_view
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import Finding, Kind, Severity


def nonfinite_gradient(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[Finding]:
    """inf/NaN gradients: an error when they persist or the weights went non-finite."""
    if len(timeline) == 0 or not timeline.layers:
        return []
    counts = timeline.layer_metric("grad_nonfinite")
    norms = timeline.layer_metric("grad_norm")
    weights = timeline.layer_metric("weight_norm")
    # A layer's gradient is non-finite if entries were counted, or (older logs) its norm is
    # inf; a NaN norm with no count means "no gradient", which is not this detector's case.
    bad = (np.nan_to_num(counts, nan=0.0) > 0) | np.isinf(norms)
    rows = bad.any(axis=1)
    if not rows.any():
        return []
    first = int(np.argmax(rows))
    n_bad = int(rows.sum())
    # Weights that were finite once and are not now (NaN alone may mean "not measured").
    measured = np.isfinite(weights).any(axis=0)
    weights_broken = bool((~np.isfinite(weights[-1]) & measured).any())
    persistent = episode(rows, th.persist) is not None
    layers_first = [timeline.layers[j] for j in np.nonzero(bad[first])[0]]
    # Layers never seen running sit at the end of the columns; their place is unknown.
    placed = [n for n in layers_first if n in anatomy and anatomy[n].order is not None]
    origin = (placed or layers_first)[-1]
    ordered = [origin, *[n for n in layers_first if n != origin]]
    loss = loss_view(timeline, anatomy, th)
    evidence = {
        "nonfinite_records": float(n_bad),
        "records": float(len(timeline)),
        "nonfinite_entries": float(np.nansum(counts[first])),
        "weights_nonfinite": float(weights_broken),
    }
    where = (
        f"inf/NaN gradients first at step {step_at(timeline, first)}, starting at layer `{origin}`"
        + (f" and reaching {len(ordered) - 1} earlier layer{'s' if len(ordered) > 2 else ''}" if len(ordered) > 1 else "")
    )
    if weights_broken or persistent:
        severity = Severity.ERROR
        then = (
            "; the weights are now non-finite too, so the model computes nothing useful"
            if weights_broken
            else f"; {n_bad} of {len(timeline)} recorded steps had them"
        )
        message = f"{where}{then}; {loss.describe()}"
    else:
        severity = Severity.INFO
        message = (
            f"{where}; {n_bad} of {len(timeline)} recorded steps had them, each followed by finite "
            "gradients and weights: an overflow whose step was skipped (as a GradScaler does), not a blow-up"
        )
    return [
        Finding(
            kind=Kind.NONFINITE_GRADIENT,
            severity=severity,
            layers=ordered,
            step=step_at(timeline, first),
            evidence={k: float(v) for k, v in evidence.items()},
            message=message,
        )
    ]
