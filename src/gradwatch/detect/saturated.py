"""Saturated units: sigmoid/tanh outputs pinned where their derivative is ~0.

From the activations: `act_sat_frac`, the share of outputs where phi' is under 1% of its
maximum, or at a hidden site `passed_share`, the mean phi' over its maximum (units spread
over the shoulders, none in the tails, pass little gradient too). An error when the loss is not improving. LSTM/GRU gates are meant to saturate
(a forget gate at 1 is memory), so they only ever get an `info`. While the loss improves
a hidden site gets an `info`, unless the run learns too slowly to finish or a hidden
site has nine outputs in ten saturated (`severity.raised`): it then passes at most a
tenth of the gradient to everything below it. A site whose output the model returns (a
sigmoid output under BCELoss) is meant to grow confident, so it never counts as lost
capacity, and on a plateau after real progress (confident outputs, or outputs pinned
beyond the targets' reach: the loss does not tell which) it is a `warning`, not an error.

Hidden units saturated from the first record on (and still) count as lost capacity too, by
either measure: training saturates units as it grows confident, gradually; units
saturated before any step was taken were put there by the initialisation (weights drawn
too large) or by the inputs' scale, and their gradient has been cut since the start.
"""

from __future__ import annotations

import numpy as np

from gradwatch.anatomy import Anatomy
from gradwatch.anatomy.activations import parse_spec, peak_derivative
from gradwatch.detect._signals import (
    cleared_span,
    is_gate,
    nanmedian,
    pct,
    per_site_episodes,
    recent_rows,
    site_info,
    site_module,
    site_values,
    step_at,
)
from gradwatch.detect.loss import LossStatus, LossView, loss_view
from gradwatch.detect.severity import lost_time, raised
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import Finding, Kind, Severity


def saturated_units(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[Finding]:
    """Sites where at least `th.saturated_frac` of the outputs sit in the flat tails, or hidden
    sites that pass under `th.saturated_deriv_share` of the gradient (`passed_share`), persistently."""
    names, frac = site_values(timeline, "act_sat_frac")
    if not names:
        return []
    share = passed_share(timeline, names)
    with np.errstate(invalid="ignore"):
        weak_mask = share < th.saturated_deriv_share
        mask = (frac >= th.saturated_frac) | weak_mask
        hits = per_site_episodes(timeline, names, frac, mask, th.persist)
    # site -> its recent share, for the sites that still pass under the bar
    weak = {
        h[0]: now
        for h in hits
        if (now := float(nanmedian(recent_rows(share[:, names.index(h[0])], th.persist)))) < th.saturated_deriv_share
    }
    loss = loss_view(timeline, anatomy, th)
    if not hits:
        return _cleared(timeline, names, frac, share, mask, loss, th)
    findings = []
    for gates in (False, True):
        group = sorted((h for h in hits if is_gate(timeline, h[0]) == gates), key=lambda h: -h[2])
        if not group:
            continue
        site, _, worst = group[0]
        if gates or loss.learning or loss.status == LossStatus.UNCLEAR:
            severity = Severity.INFO
        elif loss.status in (LossStatus.STUCK, LossStatus.PLATEAU):
            severity = Severity.ERROR
        else:
            severity = Severity.WARNING
        # an output the model returns is meant to grow confident: only hidden sites are raised
        hidden = [h for h in group if is_hidden(timeline, h[0])]
        lost = [h for h in hidden if h[2] >= th.lost_capacity_frac]
        born = [h for h in hidden if h[1] == 0]  # from the first record on, and still
        if hidden:
            severity = raised(severity, loss, lost_capacity=bool(lost or born))
        elif not gates and loss.status == LossStatus.PLATEAU and not loss.constant:
            # Only outputs saturated, after real progress: confident predictions look the same
            # as outputs pinned out of reach, and the loss cannot tell which; a warning.
            severity = min(severity, Severity.WARNING)
        tail = (
            "gates are meant to saturate, so this alone is no fault"
            if gates
            else "their derivative is under 1% of its peak, so little gradient passes"
        )
        if lost:
            site, _, worst = max(lost, key=lambda h: h[2])
            through = f"at most {pct(1 - worst)} of its outputs" if worst < 0.995 else "almost none of its outputs"
            tail = (
                f"their derivative is under 1% of its peak, so `{site_module(timeline, site)}` passes the "
                f"gradient on through {through}"
            )
        elif born:
            site, _, worst = max(born, key=lambda h: (h[0] in weak, h[2]))
            cause = (
                "before training moved them: put there by the initialisation (weights too large for the "
                "activation) or by inputs far from unit scale"
            )
            if site in weak:
                tail = (
                    f"on average its units pass on {pct(weak[site])} of the gradient a unit at its centre "
                    f"would, and have done so from the first record, {cause}; the layers below get that share"
                )
            else:
                tail = (
                    f"they have been saturated from the first record, {cause}, and their derivative, under 1% of "
                    "its peak, has held back the gradient ever since"
                )
        elif weak_hidden := [h for h in hidden if h[0] in weak]:
            site, _, worst = min(weak_hidden, key=lambda h: weak[h[0]])
            tail = (
                f"on average its units pass on {pct(weak[site])} of the gradient a unit at its centre would; "
                "the layers below get that share"
            )
        fn = site_info(timeline, site).get("fn", "gate" if gates else "saturating")
        head = (
            f"{pct(worst)} of the outputs at `{site}` ({fn}) are saturated"
            if worst >= th.saturated_frac
            else f"the units at `{site}` ({fn}) sit on the shoulders of their activation ({pct(worst)} of the outputs in its flat tails)"
        )
        like = "like it" if any(h[0] in weak for h in group) else f"above {pct(th.saturated_frac)}"
        more = f"; {len(group) - 1} more site{'s' if len(group) > 2 else ''} {like}" if len(group) > 1 else ""
        findings.append(
            Finding(
                kind=Kind.SATURATED_UNITS,
                severity=severity,
                layers=list(dict.fromkeys(site_module(timeline, h[0]) for h in group)),
                step=step_at(timeline, min(h[1] for h in group)),
                evidence={
                    "saturated_frac_max": worst,
                    "sites": float(len(group)),
                    **({"deriv_share": weak[site]} if site in weak else {}),
                    **loss.evidence(),
                },
                message=f"{head}: {tail}{more}; {loss.describe()}",
            )
        )
    return findings


def is_hidden(timeline: Timeline, site: str) -> bool:
    """A site inside the model: not an LSTM/GRU gate, not the output the model returns."""
    return not is_gate(timeline, site) and not site_info(timeline, site).get("output")


def passed_share(timeline: Timeline, names: list[str]) -> np.ndarray:
    """Records x `names`: the outputs' mean derivative over the activation's peak (sigmoid'(0) =
    1/4, tanh'(0) = 1) at each hidden site; NaN at gates and at the model's output.

    The share of the gradient a site passes on, against units at their centre: 0.6 (tanh)
    and 0.83 (sigmoid) for pre-activations at unit scale. Training lowers it as hidden units
    grow confident; below `Thresholds.saturated_deriv_share` before any step was taken, the
    initialisation or the inputs' scale put the units on their tails.
    """
    have, deriv = site_values(timeline, "act_mean_deriv")
    out = np.full((len(timeline.steps), len(names)), np.nan)
    for j, site in enumerate(names):
        info = site_info(timeline, site)
        if site not in have or not is_hidden(timeline, site) or not info.get("fn"):
            continue
        out[:, j] = deriv[:, have.index(site)] / peak_derivative(parse_spec(str(info["fn"]))[0])
    return out


def _cleared(
    timeline: Timeline, names: list[str], frac: np.ndarray, share: np.ndarray, mask: np.ndarray, loss: LossView, th: Thresholds
) -> list[Finding]:
    """A hidden site saturated from the first record on for most of the run, then freed
    (`severity.lost_time`): the layers below it had under half the run to learn."""
    worst: tuple[float, str, tuple[int, int]] | None = None
    for j, site in enumerate(names):
        if not is_hidden(timeline, site):
            continue
        span = cleared_span(mask[:, j], th.persist)
        if span is None or span[0] != 0:
            continue  # saturated by training, then freed: nothing was lost from the start
        span = (0, int(np.flatnonzero(mask[: span[1] + 1, j])[-1]))  # to the last record it held
        lost = lost_time(timeline.steps, span, loss, th)
        if lost is not None and (worst is None or lost > worst[0]):
            worst = (lost, site, span)
    if worst is None:
        return []
    lost, site, (a, b) = worst
    j = names.index(site)
    with np.errstate(invalid="ignore"):
        during_frac = float(nanmedian(frac[a : b + 1, j]))
        during_share = float(nanmedian(share[a : b + 1, j]))
    fn = site_info(timeline, site).get("fn", "saturating")
    steps = timeline.steps
    what = (
        f"{pct(during_frac)} of its outputs saturated"
        if during_frac >= th.saturated_frac
        else f"its units passing on {pct(during_share)} of the gradient a unit at its centre would"
    )
    return [
        Finding(
            kind=Kind.SATURATED_UNITS,
            severity=Severity.WARNING,
            layers=[site_module(timeline, site)],
            step=int(steps[a]),
            evidence={
                "saturated_frac_max": during_frac,
                **({"deriv_share": during_share} if np.isfinite(during_share) else {}),
                "lost_share": lost,
                **loss.evidence(),
            },
            message=(
                f"`{site}` ({fn}) was saturated from the first record to step {int(steps[b])} ({lost:.0%} of the "
                f"run), {what}, before its units left the tails: put there by the initialisation or by inputs "
                f"far from unit scale, they held back the gradient of the layers below for most of the run; "
                f"{loss.describe()}"
            ),
        )
    ]
