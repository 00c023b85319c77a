"""What one backward pass at initialisation can tell (`gw.inspect`): no loss, no timeline.

Before any optimizer has had a say, only a first-to-last gap in gradient norm of
`Thresholds.vanish_ratio_blind` (1e-6, about float32's relative precision of 1.2e-7) or
its inverse means the first layers cannot move at a learning rate the last ones survive;
the 1e-3 of a training run (`vanish_ratio`) would flag ordinary nets at initialisation.
A `warning` (there is no loss to judge by); non-finite gradients, or a first and last
layer both at exactly 0, are warnings too.
"""

from __future__ import annotations

import math

from gradwatch.detect.thresholds import Thresholds
from gradwatch.types import Finding, Kind, Severity

__all__ = ["probing_pass"]


def probing_pass(
    measured: dict[str, float], names: list[str], predicted_ratio: float | None, th: Thresholds
) -> list[Finding]:
    """Findings from one backward pass at initialisation: `measured` gradient norms per layer,
    `names` the weight layers in execution order, `predicted_ratio` theory's first-to-last
    ratio if there is one."""
    bad = [n for n, v in measured.items() if not math.isnan(v) and not math.isfinite(v)]
    if bad:
        message = f"the probing pass gave non-finite gradients in {len(bad)} layer(s), first '{bad[0]}'"
        return [_warning(Kind.NONFINITE_GRADIENT, bad, {"layers": float(len(bad))}, message)]
    if len(names) < 2:
        return []
    first, last = measured[names[0]], measured[names[-1]]
    evidence = {"first_grad_norm": first, "last_grad_norm": last}
    if predicted_ratio is not None:
        evidence["predicted_ratio"] = predicted_ratio
    if last == 0.0:
        if first == 0.0:
            message = "the probing pass gave an all-zero gradient to the first and last weight layers"
            return [_warning(Kind.VANISHING_GRADIENT, names, evidence, message)]
        return []
    ratio = first / last
    evidence["ratio"] = ratio
    where = f"at initialisation the first weight layer ('{names[0]}') gets {ratio:.1e}"
    if ratio < th.vanish_ratio_blind:
        low = [n for n in names if measured[n] < th.vanish_ratio_blind * last]
        message = f"{where} of the gradient norm of the last ('{names[-1]}')"
        return [_warning(Kind.VANISHING_GRADIENT, low, evidence, message)]
    if ratio > 1.0 / th.vanish_ratio_blind:
        high = [n for n in names if measured[n] > last / th.vanish_ratio_blind]
        message = f"{where} times the gradient norm of the last ('{names[-1]}')"
        return [_warning(Kind.EXPLODING_GRADIENT, high, evidence, message)]
    return []


def _warning(kind: Kind, layers: list[str], evidence: dict[str, float], message: str) -> Finding:
    """A finding of the probing pass: a `warning` at step 0 (nothing has trained yet)."""
    return Finding(kind=kind, severity=Severity.WARNING, layers=layers, step=0, evidence=evidence, message=message)
