"""Dead units: ReLU units that never switch on, so nothing flows back through them.

Read from the activations (`act_dead_frac`: the share of a site's units that are never
positive over a batch), not from zero gradients: a large embedding's untouched rows have
zero gradients too and are perfectly alive. An error when the loss is not improving;
a net that learns with part of its units dead gets an `info`.
"""

from __future__ import annotations

import numpy as np

from gradwatch.anatomy import Anatomy
from gradwatch.detect._signals import (
    LEAKY,
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


def dead_units(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[Finding]:
    """Sites where at least `th.dead_frac` of the units stay off, persistently."""
    names, frac = site_values(timeline, "act_dead_frac")
    keep = [j for j, n in enumerate(names) if site_info(timeline, n).get("fn") not in LEAKY]
    if not keep:
        return []
    names = [names[j] for j in keep]
    frac = frac[:, keep]
    with np.errstate(invalid="ignore"):
        hits = per_site_episodes(timeline, names, frac, frac >= th.dead_frac, th.persist)
    if not hits:
        return []
    hits.sort(key=lambda h: -h[2])
    site, _, worst = hits[0]
    first = min(h[1] for h in hits)
    loss = loss_view(timeline, anatomy, th)
    if loss.status in ("stuck", "plateau"):
        severity = Severity.ERROR
    elif loss.learning or loss.status == "unclear":
        severity = Severity.INFO
    else:
        severity = Severity.WARNING
    fn = site_info(timeline, site).get("fn", "relu")
    more = f"; {len(hits) - 1} more site{'s' if len(hits) > 2 else ''} above {pct(th.dead_frac)}" if len(hits) > 1 else ""
    message = (
        f"{pct(worst)} of the units at `{site}` ({fn}) never switch on over a batch, so no "
        f"gradient flows back through them{more}; {loss.describe()}"
    )
    layers = list(dict.fromkeys(site_module(timeline, h[0]) for h in hits))
    return [
        Finding(
            kind=Kind.DEAD_UNITS,
            severity=severity,
            layers=layers,
            step=step_at(timeline, first),
            evidence={"dead_frac_max": worst, "sites": float(len(hits)), **loss.evidence()},
            message=message,
        )
    ]
