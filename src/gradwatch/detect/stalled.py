"""Stalled weights: the optimizer's steps barely change the model, anywhere, or one part of it — or a part of it gets no gradient at all.

Everywhere: every layer's update is below `th.small_update_ratio` of its weights per step
(the bottom of the healthy band), or below `th.stall_update_ratio` (a learning rate far
too small, an optimizer that holds other tensors than the model's, gradients that vanished
everywhere at once). If any layer still moves, the optimizer works and a weak gradient in
some layers is the vanishing detector's finding instead. Below the band but above the
stall, the steps are small, not absent: reported when the loss is not converging either.

Set apart: a layer whose update is `th.set_apart_decades` below the median of the other
layers' while its gradient, relative to its weights, is like theirs (within
`th.set_apart_grad_decades`). A weak gradient gives a small step under SGD and a normal
one under Adam; a normal gradient with a tiny step means the optimizer treats that layer
apart: a parameter group whose learning rate is far below the rest (a typo, a freeze by
learning rate). The layer stays near its initial weights, a random projection the rest
must learn around.

Cut off: the layers that run first have had *no* gradient on any record (autograd left
their ``.grad`` at None) while a layer that runs after them has one. A small gradient is
a matter of degree; an absent one is structural: nothing connects those layers' output
to the loss by autograd — a ``.detach()``, a ``torch.no_grad()`` block, ``.data``, a
round trip through ``.item()``/NumPy or an integer cast. Only a leading run of layers
(in execution order) counts: a layer whose predecessors do get a gradient is more
likely an unused branch (a pooler whose output the loss ignores) than a cut; so is a
layer whose module contains a layer that gets a gradient (the root's or a block's own
parameters, such as XLNet's ``mask_emb``): its computation reaches the loss, only those
parameters take no part in it. Exactly
zero gradients are not counted here: a layer of dead ReLUs zeroes everything below it,
which is the dead-unit detector's finding.
"""

from __future__ import annotations

import numpy as np

from gradwatch.anatomy import Anatomy
from gradwatch.anatomy.map import encloses
from gradwatch.detect._signals import episode, nanmedian, num, quiet_numpy, recent_rows, step_at
from gradwatch.detect.loss import LossStatus, loss_view
from gradwatch.detect.severity import raised
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import Finding, Kind, Severity


def stalled_weights(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[Finding]:
    """Every layer's update ratio below `th.stall_update_ratio`, persistently; or leading layers with no gradient."""
    if len(timeline) == 0 or not timeline.layers:
        return []
    return _everywhere(timeline, anatomy, th) or _set_apart(timeline, anatomy, th) + _cut_off(timeline, anatomy, th)


def _set_apart(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[Finding]:
    """Layers moved `th.set_apart_decades` less than the others for a gradient like theirs (module docstring)."""
    n = len(timeline.layers)
    if len(timeline) < th.persist or n < 2:
        return []
    with quiet_numpy():
        upd = np.log10(timeline.layer_metric("update_ratio"))
        rel = np.log10(timeline.layer_metric("grad_norm") / timeline.layer_metric("weight_norm"))
    found: list[tuple[int, int, float, float]] = []  # layer, first record, its ratio, the others'
    for j in range(n):
        others = np.delete(np.arange(n), j)
        with quiet_numpy():
            u_rest, g_rest = nanmedian(upd[:, others], axis=1), nanmedian(rel[:, others], axis=1)
            apart = (
                np.isfinite(rel[:, j])
                & ~np.isnan(upd[:, j])
                & (upd[:, j] < u_rest - th.set_apart_decades)
                & (rel[:, j] > g_rest - th.set_apart_grad_decades)
            )
        start = episode(apart, th.persist)
        if start is not None:
            recent = recent_rows(np.column_stack([upd[:, j], u_rest]), th.persist)
            mine, rest = (float(10 ** nanmedian(recent[:, i])) for i in range(2))
            found.append((j, start, mine, rest))
    if not found:
        return []
    loss = loss_view(timeline, anatomy, th)
    severity = Severity.INFO if loss.status == LossStatus.CONVERGED else Severity.WARNING
    names = [timeline.layers[j] for j, *_ in found]
    j, start, mine, rest = min(found, key=lambda f: f[2])
    moves = "does not move at all" if mine == 0 else f"moves by {num(mine)} of its size per step"
    more = f" ({len(names) - 1} more layer{'s' if len(names) > 2 else ''} like it)" if len(names) > 1 else ""
    return [
        Finding(
            kind=Kind.STALLED_WEIGHTS,
            severity=severity,
            layers=names,
            step=step_at(timeline, min(f[1] for f in found)),
            evidence={"update_ratio": mine, "update_ratio_others": rest, **loss.evidence()},
            message=(
                f"`{timeline.layers[j]}` {moves}{more}, the other layers by {num(rest)}, although its gradient, "
                "relative to its weights, is like theirs: the optimizer gives it a far smaller step. Look for a "
                "parameter group with its own learning rate (a typo such as 1e-8 for 1e-3); if it is meant to "
                f"stay fixed, freeze it with requires_grad_(False). Until then it stays a random projection; "
                f"{loss.describe()}"
            ),
        )
    ]


def _cut_off(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[Finding]:
    """The leading layers never had a gradient while a later one has (module docstring)."""
    if len(timeline) < th.persist:
        return []
    g = timeline.layer_metric("grad_norm")
    # None is recorded as NaN in every gradient column; a NaN *gradient* has a count of
    # non-finite entries (the non-finite detector's finding), an absent one has none.
    counted = timeline.layer_metric("grad_nonfinite")
    absent = np.all(np.isnan(g) & (np.isnan(counted) if counted.shape == g.shape else True), axis=0)
    received = np.any(np.isfinite(g) & (g > 0), axis=0)
    # a container whose children's computation reaches the loss is not cut off from it:
    # its own parameters are unused (module docstring); it is left out of the order
    reached = [n for n, r in zip(timeline.layers, received, strict=True) if r]
    keep = [i for i, n in enumerate(timeline.layers) if not any(encloses(n, r) for r in reached)]
    absent, received = absent[keep], received[keep]
    lead = 0
    while lead < len(absent) and absent[lead]:
        lead += 1
    if lead == 0 or not received[lead:].any():
        return []
    names = [timeline.layers[i] for i in keep[:lead]]
    loss = loss_view(timeline, anatomy, th)
    severity = Severity.INFO if loss.status == LossStatus.CONVERGED else Severity.WARNING
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    first = "the first layer to run" if lead == 1 else f"the first {lead} layers to run"
    return [
        Finding(
            kind=Kind.STALLED_WEIGHTS,
            severity=severity,
            layers=names,
            step=int(timeline.steps[0]),
            evidence={"no_gradient": 1.0, "layers_cut_off": float(lead), "records": float(len(timeline)), **loss.evidence()},
            message=(
                f"{shown} ({first}) never received a gradient in {len(timeline)} records, while the "
                "layers after them did: nothing connects their output to the loss by autograd — look "
                "for a .detach(), a torch.no_grad() block, .data, or a round trip through .item(), "
                "NumPy or an integer cast between them and the rest. If they are meant to stay "
                f"fixed, freeze them (requires_grad_(False)); {loss.describe()}"
            ),
        )
    ]


def _everywhere(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[Finding]:
    """Every layer's update ratio below `th.stall_update_ratio`, persistently."""
    ratio = timeline.layer_metric("update_ratio")
    with quiet_numpy():
        top = np.nanmax(ratio, axis=1)  # the layer that moves most, per record
    start = episode(top < th.small_update_ratio, th.persist)
    if start is None:
        return []
    now = float(nanmedian(recent_rows(top, th.persist)))
    stalled = episode(top < th.stall_update_ratio, th.persist) is not None
    loss = loss_view(timeline, anatomy, th)
    if loss.status == LossStatus.STUCK:
        severity = Severity.ERROR if stalled else Severity.WARNING
    elif loss.status == LossStatus.PLATEAU or (stalled and loss.status in (LossStatus.UNKNOWN, LossStatus.UNCLEAR)):
        severity = Severity.WARNING
    else:
        severity = Severity.INFO
    severity = raised(severity, loss)
    with quiet_numpy():
        grads = np.nanmax(recent_rows(timeline.layer_metric("grad_norm"), th.persist))
    if now == 0 and grads == 0:
        what = (
            "the weights do not change at all, and neither does anything else: every layer's "
            "gradient is exactly 0, so no optimizer could move them. Units dead or saturated "
            "across the whole net zero the gradient like this (see the dead and saturated "
            "findings), as does a loss that does not depend on the parameters"
        )
    elif now == 0:
        what = (
            "the optimizer's steps do not change the weights at all (update 0) although their "
            "gradients are not 0: does it hold this model's parameters, with a learning rate above 0?"
        )
    elif stalled:
        what = (
            f"no layer's weights change by more than {num(now)} of their size per step "
            f"(at that rate they need {num(1 / now)} steps to change by their own size)"
        )
    else:
        what = (
            f"no layer's weights change by more than {num(now)} of their size per step, below the healthy "
            f"band's bottom ({num(th.small_update_ratio)}): at that rate they need {num(1 / now)} steps to "
            "change by their own size. The learning rate is too small for this model (or a schedule has "
            "taken it down)"
        )
    return [
        Finding(
            kind=Kind.STALLED_WEIGHTS,
            severity=severity,
            layers=list(timeline.layers),
            step=step_at(timeline, start),
            evidence={"update_ratio_max": now, **loss.evidence()},
            message=f"{what}; {loss.describe()}",
        )
    ]
