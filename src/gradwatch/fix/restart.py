"""Restart what a divergence left unusable: layers whose weights it inflated by orders of magnitude.

Why: a run that diverged leaves weights behind that are finite but far off any
initialisation — a Linear at 1e6 times the scale it started at. From there no step size
trains: every output is huge, so is every gradient, and the rate small enough for those
gradients is far too small for the model once its weights come back to a useful size
(the step-size rule then advises a rate hundreds of times below what a fresh model
trains at). Such a layer is as lost as one holding NaN (`fix.choose` re-draws those);
it gets fresh weights too, by `fix.init`'s rules, and the rate `fix` advises is the one
predicted for the fresh model (`fix.first_update`).

A layer counts as inflated when the root mean square of its weight is more than
`INFLATION` times the one its initialisation targets (`init.feedforward_target` for the
activation that follows it; Xavier per gate for a recurrent layer's weights): two orders
of magnitude, which no healthy training produces from a calibrated start in the runs a
divergence finding is drawn on, and which leaves outputs and gradients a hundred times
(per layer) off what the rate was chosen for. Only a diagnosis with a divergence (an
exploding, non-finite or diverging finding) leads here: a large trained weight is not
otherwise damage.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from gradwatch.anatomy.modules import is_dense, shared_parameters
from gradwatch.anatomy.order import Order, order_of
from gradwatch.fix import init as _init
from gradwatch.fix._surgery import copy_model
from gradwatch.types import Change, Diagnosis, Kind, Severity

#: A weight RMS this many times its initialisation's target is the divergence's doing.
INFLATION = 100.0

_DIVERGENCE = (Kind.EXPLODING_GRADIENT, Kind.NONFINITE_GRADIENT, Kind.DIVERGING_LOSS)


#: Said when layers are re-drawn: the optimizer's state was built on the inflated weights.
OPTIMIZER_ADVICE = (
    "Layers were re-drawn because the divergence inflated their weights: build a new optimizer for the fixed "
    "model (SGD momentum and Adam's moment estimates hold steps sized for the inflated weights), and restart "
    "any learning-rate schedule."
)


def diverged(diagnosis: Diagnosis) -> bool:
    """Whether the diagnosis holds a divergence finding above `info`."""
    return any(f.kind in _DIVERGENCE and f.severity > Severity.INFO for f in diagnosis.findings)


def blew_up(diagnosis: Diagnosis) -> bool:
    """Whether the steps taken at the recipe's rate blew the run up: a loss that diverged or
    went non-finite, or a gradient that grew into an explosion after the first record. A
    gradient that explodes from initialisation on while the loss holds (a recurrent weight
    of spectral radius 3, a chain in the chaotic phase) is the model's doing, not the rate's.
    """
    for f in diagnosis.findings:
        if f.severity <= Severity.INFO or f.kind not in _DIVERGENCE:
            continue
        if f.kind != Kind.EXPLODING_GRADIENT or (f.step or 0) > 0:
            return True
    return False


def _rms(t: torch.Tensor) -> float:
    return math.sqrt(float(t.detach().double().pow(2).mean()))


def inflation(m: nn.Module, order: Order, name: str, depth: int) -> float | None:
    """How many times its initialisation's RMS the weight of layer `m` is (None: not a layer
    gradwatch re-draws, or not finite — NaN is handled by the non-finite path)."""
    if is_dense(m) and isinstance(getattr(m, "weight", None), nn.Parameter):
        _, _, var, _ = _init.feedforward_target(m, order.next_activation(name), depth)
        w = m.weight
        assert isinstance(w, torch.Tensor)
        rms = _rms(w)
        return rms / math.sqrt(var) if math.isfinite(rms) and var > 0 else None
    if isinstance(m, nn.RNNBase | nn.RNNCellBase):
        worst = 0.0
        for pname, p in m.named_parameters(recurse=False):
            if not pname.startswith("weight"):
                continue
            fi, fo = p.shape[1], p.shape[0]
            rms = _rms(p)
            if not math.isfinite(rms):
                return None
            worst = max(worst, rms / math.sqrt(_init.target_variance("xavier", fi, fo)))
        return worst
    return None


def inflated_layers(model: nn.Module, order: Order) -> list[tuple[str, float]]:
    """``(name, factor)`` of every layer gradwatch may re-draw whose weight RMS is over
    `INFLATION` times its initialisation's."""
    depth = _init.chain_depth(order)
    tied = shared_parameters(model)
    found: list[tuple[str, float]] = []
    seen: set[int] = set()
    for op in order.modules():
        m = op.module
        if m is None or id(m) in seen or not _init.redrawable(m, tied):
            continue
        seen.add(id(m))
        factor = inflation(m, order, op.name, depth)
        if factor is not None and factor > INFLATION:
            found.append((op.name, factor))
    return found


def reason(name: str, factor: float) -> str:
    return (
        f"the divergence left the weights of {name} at {factor:.1g} times their initial scale: they are re-drawn "
        "(no step size trains from weights that far off; a smaller step would only be sized for them)"
    )


def transform(
    model: nn.Module,
    *,
    example_input: Any = None,
    inplace: bool = False,
) -> tuple[nn.Module, list[Change]]:
    """Re-draw every inflated layer (`inflated_layers`) by `init`'s rules, one `Change` each
    saying how far off it was. Idempotent: re-drawn layers are at their target scale."""
    new = copy_model(model, inplace)
    changes: list[Change] = []
    for name, factor in inflated_layers(new, order_of(new, example_input)):
        _, done = _init.transform(
            new, example_input=example_input, layers=[name], reason=reason(name, factor), inplace=True
        )
        changes.extend(done)
    return new, changes
