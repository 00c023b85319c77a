"""Saturated units: sigmoid/tanh outputs pinned where their derivative is ~0.

From the activations (`act_sat_frac`: the share of outputs where phi' is under 1% of its
maximum). An error when the loss is not improving. LSTM/GRU gates are meant to saturate
(a forget gate at 1 is memory), so they only ever get an `info`.
"""

from __future__ import annotations

import numpy as np

from gradwatch.anatomy import Anatomy
from gradwatch.detect._signals import (
    is_gate,
    loss_view,
    pct,
    per_site_episodes,
    site_info,
    site_module,
    site_values,
    step_at,
)
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import Finding, Kind, Severity


def saturated_units(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[Finding]:
    """Sites where at least `th.saturated_frac` of the outputs sit in the flat tails, persistently."""
    names, frac = site_values(timeline, "act_sat_frac")
    if not names:
        return []
    with np.errstate(invalid="ignore"):
        hits = per_site_episodes(timeline, names, frac, frac >= th.saturated_frac, th.persist)
    if not hits:
        return []
    loss = loss_view(timeline, anatomy, th)
    findings = []
    for gates in (False, True):
        group = sorted((h for h in hits if is_gate(timeline, h[0]) == gates), key=lambda h: -h[2])
        if not group:
            continue
        site, _, worst = group[0]
        if gates or loss.learning or loss.status == "unclear":
            severity = Severity.INFO
        elif loss.status in ("stuck", "plateau"):
            severity = Severity.ERROR
        else:
            severity = Severity.WARNING
        fn = site_info(timeline, site).get("fn", "gate" if gates else "saturating")
        more = f"; {len(group) - 1} more site{'s' if len(group) > 2 else ''} above {pct(th.saturated_frac)}" if len(group) > 1 else ""
        tail = (
            "gates are meant to saturate, so this alone is no fault"
            if gates
            else "their derivative is under 1% of its peak, so little gradient passes"
        )
        findings.append(
            Finding(
                kind=Kind.SATURATED_UNITS,
                severity=severity,
                layers=list(dict.fromkeys(site_module(timeline, h[0]) for h in group)),
                step=step_at(timeline, min(h[1] for h in group)),
                evidence={"saturated_frac_max": worst, "sites": float(len(group)), **loss.evidence()},
                message=f"{pct(worst)} of the outputs at `{site}` ({fn}) are saturated: {tail}{more}; {loss.describe()}",
            )
        )
    return findings
