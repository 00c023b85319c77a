"""Dead units: ReLU units that never switch on, so nothing flows back through them.

Read from the activations (`act_dead_frac`: the share of a site's units that are never
positive over a batch), not from zero gradients: a large embedding's untouched rows have
zero gradients too and are perfectly alive. An error when the loss is not improving;
a net that learns with part of its units dead gets an `info`, unless it learns too slowly
to finish or a site has lost nearly all its units (`severity.raised`): a layer that works
with a tenth of its width has lost it whatever the loss does.

At the model's *output* (a site whose output the model returns, marked by the probes:
a ReLU after the logits) a single dead unit is a fault: it is an output held at 0 for
every input and no gradient can move it — a class the model can never predict. There
the bar is any unit, and the finding is at least a `warning` whatever the loss does.
"""

from __future__ import annotations

import numpy as np

from gradwatch.anatomy import Anatomy
from gradwatch.anatomy.activations import LEAKY
from gradwatch.detect._signals import (
    fill_pooled,
    pct,
    per_site_episodes,
    site_info,
    site_module,
    site_values,
    step_at,
)
from gradwatch.detect.loss import LossStatus, loss_view
from gradwatch.detect.severity import raised
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import Finding, Kind, Severity


def dead_units(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[Finding]:
    """Sites where at least `th.dead_frac` of the units stay off, persistently."""
    names, frac = site_values(timeline, "act_dead_frac")
    frac = fill_pooled(frac)  # steps with one output per unit are judged pooled (probes.activations)
    keep = [j for j, n in enumerate(names) if site_info(timeline, n).get("fn") not in LEAKY]
    if not keep:
        return []
    names = [names[j] for j in keep]
    frac = frac[:, keep]
    at_output = np.array([bool(site_info(timeline, n).get("output")) for n in names], dtype=bool)
    findings = _dead_outputs(timeline, anatomy, th, [n for n, o in zip(names, at_output, strict=True) if o], frac[:, at_output])
    names, frac = [n for n, o in zip(names, at_output, strict=True) if not o], frac[:, ~at_output]
    with np.errstate(invalid="ignore"):
        hits = per_site_episodes(timeline, names, frac, frac >= th.dead_frac, th.persist)
    if not hits:
        return findings
    hits.sort(key=lambda h: -h[2])
    site, _, worst = hits[0]
    first = min(h[1] for h in hits)
    loss = loss_view(timeline, anatomy, th)
    if loss.status in (LossStatus.STUCK, LossStatus.PLATEAU):
        severity = Severity.ERROR
    elif loss.learning or loss.status == LossStatus.UNCLEAR:
        severity = Severity.INFO
    else:
        severity = Severity.WARNING
    lost = worst >= th.lost_capacity_frac
    severity = raised(severity, loss, lost_capacity=lost)
    fn = site_info(timeline, site).get("fn", "relu")
    more = f"; {len(hits) - 1} more site{'s' if len(hits) > 2 else ''} above {pct(th.dead_frac)}" if len(hits) > 1 else ""
    share = f"{pct(worst)} of the units at `{site}` ({fn})"
    if lost:
        share = f"{_working(timeline, site, worst)}: {share}"
    message = f"{share} never switch on over a batch, so no gradient flows back through them{more}; {loss.describe()}"
    layers = list(dict.fromkeys(site_module(timeline, h[0]) for h in hits))
    return [
        *findings,
        Finding(
            kind=Kind.DEAD_UNITS,
            severity=severity,
            layers=layers,
            step=step_at(timeline, first),
            evidence={"dead_frac_max": worst, "sites": float(len(hits)), **loss.evidence()},
            message=message,
        ),
    ]


def _working(timeline: Timeline, site: str, dead: float) -> str:
    """"`3` works with 2 of its 128 units" (the count where the log has the site's width)."""
    module, units = site_module(timeline, site), site_info(timeline, site).get("units")
    if isinstance(units, (int, float)) and units > 0:
        return f"`{module}` works with {round((1 - dead) * units) or 'none'} of its {int(units)} units"
    return f"`{module}` has lost nearly all its width"


def _dead_outputs(
    timeline: Timeline, anatomy: Anatomy, th: Thresholds, names: list[str], frac: np.ndarray
) -> list[Finding]:
    """Output sites with any unit that never switches on, persistently (module docstring)."""
    if not names:
        return []
    with np.errstate(invalid="ignore"):
        hits = per_site_episodes(timeline, names, frac, frac > 0, th.persist)
    if not hits:
        return []
    site, first, worst = max(hits, key=lambda h: h[2])
    loss = loss_view(timeline, anatomy, th)
    severity = Severity.ERROR if loss.status in (LossStatus.STUCK, LossStatus.PLATEAU) else Severity.WARNING
    fn = site_info(timeline, site).get("fn", "relu")
    return [
        Finding(
            kind=Kind.DEAD_UNITS,
            severity=severity,
            layers=[site_module(timeline, site)],
            step=step_at(timeline, first),
            evidence={"dead_frac_max": worst, "output_site": 1.0, **loss.evidence()},
            message=(
                f"`{site}` ({fn}) is applied to the model's output, and {pct(worst)} of its units never "
                "switch on over a batch: those outputs are 0 for every input and no gradient can move "
                "them (for a classifier, classes it can never predict). Remove the activation after the "
                f"last layer — CrossEntropyLoss and BCEWithLogitsLoss take raw logits; {loss.describe()}"
            ),
        )
    ]
