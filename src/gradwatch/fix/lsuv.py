"""Layer-sequential unit-variance initialisation (LSUV; Mishkin & Matas 2016): an initialisation calibrated by measurement.

Why: `init`'s closed forms (He, Xavier, the critical scale) hold for the activations the
map can name. A stack written with functional calls and a constant scale —
``h = 0.5 * torch.tanh(layer(h))`` — is seen as tanh (or as nothing) and drawn Xavier,
and the factor 0.5 multiplies the signal by 0.5 per layer forward and the gradient by 0.5
backward: over ten layers, a thousandth of it. No formula knows the factor; a
measurement does. LSUV runs the model on a batch, and for each Linear/convolution in
the order the forward pass uses them rescales its weight until the variance of its
output on that batch is 1 (biases set to 0). With every layer's output at unit variance
the forward gain of each layer-plus-activation is 1 whatever the activation, scaled,
custom or functional, and the backward gain follows it for activations whose slope is
their gain (odd and piecewise-linear ones, scaled or not).

Used by `gw.fix` where the closed form does not apply: after `init`, when the measured
output variances of the hidden layers still drift by more than `DRIFT` (a decade) from
the first to the last (`drift`); otherwise a transform of its own, like the others.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import torch
from torch import nn

from gradwatch.anatomy._call import call_model
from gradwatch.anatomy._guard import Preserved
from gradwatch.anatomy.modules import has_frozen_parameter, is_dense, shared_parameters
from gradwatch.anatomy.order import order_of
from gradwatch.fix._surgery import copy_model
from gradwatch.types import Change

#: Output variance within this fraction of 1 counts as calibrated.
TOLERANCE = 0.05
#: Rescaling rounds per layer (a layer's output variance is not linear in its scale once
#: the bias or a saturating activation of the layer below enter: a few rounds converge).
ROUNDS = 5
#: Hidden-layer output variances spreading over more than this factor from the first hidden
#: layer to the last mean the closed-form initialisation did not hold (`drift`).
DRIFT = 10.0

REASON = (
    "the activation is not one the closed-form initialisations know (a scaled or custom function): each layer "
    "is rescaled on a batch until its output has unit variance, so the signal and its gradient keep their size"
)


def _output_variances(model: nn.Module, example_input: Any, modules: list[tuple[str, nn.Module]]) -> dict[str, float]:
    seen: dict[str, float] = {}
    handles = []

    def hook(name: str) -> Any:
        def record(m: nn.Module, args: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.is_floating_point() and name not in seen:
                seen[name] = float(out.detach().double().var())

        return record

    for name, m in modules:
        handles.append(m.register_forward_hook(hook(name)))
    try:
        with torch.no_grad(), Preserved(model):
            model.eval()
            call_model(model, example_input)
    finally:
        for h in handles:
            h.remove()
    return seen


def _layers(model: nn.Module, example_input: Any, only: Collection[str] | None) -> list[tuple[str, nn.Module]]:
    order = order_of(model, example_input)
    tied = shared_parameters(model)
    out, seen = [], set()
    for op in order.modules():
        m = op.module
        if m is None or id(m) in seen or not is_dense(m) or not isinstance(getattr(m, "weight", None), nn.Parameter):
            continue
        seen.add(id(m))
        if has_frozen_parameter(m) or any(id(p) in tied for p in m.parameters(recurse=False)):
            continue
        if only is not None and op.name not in only:
            continue
        out.append((op.name, m))
    return out


def drift(model: nn.Module, example_input: Any) -> float | None:
    """Largest over smallest output variance among the hidden layers (all but the last), or
    None with fewer than two of them."""
    layers = _layers(model, example_input, None)[:-1]
    if len(layers) < 2:
        return None
    var = _output_variances(model, example_input, layers)
    values = [v for v in var.values() if math.isfinite(v) and v > 0]
    if len(values) < 2:
        return None
    return max(values) / min(values)


def transform(
    model: nn.Module,
    *,
    example_input: Any = None,
    layers: Collection[str] | None = None,
    reason: str = REASON,
    inplace: bool = False,
    **_: Any,
) -> tuple[nn.Module, list[Change]]:
    """Rescale each Linear/convolution, in forward order, until its output variance on
    `example_input` is 1; biases 0. Without an example input nothing can be measured and
    the model is returned unchanged. The last layer (the head) is left: its output's scale
    is the prediction's, not a gain through depth. Idempotent: a calibrated layer is left.
    """
    new = copy_model(model, inplace)
    if example_input is None:
        return new, []
    found = _layers(new, example_input, None)[:-1]
    if layers is not None:
        found = [(n, m) for n, m in found if n in layers]
    changes: list[Change] = []
    for name, m in found:
        w = m.weight
        assert isinstance(w, torch.Tensor)
        b = getattr(m, "bias", None)
        before: float | None = None
        for _attempt in range(ROUNDS):
            var = _output_variances(new, example_input, [(name, m)]).get(name)
            if var is None or not math.isfinite(var) or var <= 0:
                break
            if before is None:
                before = var
            if abs(var - 1.0) <= TOLERANCE and (b is None or float(b.detach().abs().max()) == 0.0):
                break
            with torch.no_grad():
                if b is not None:
                    b.zero_()
                w.mul_(1.0 / math.sqrt(var))
        if before is not None and abs(before - 1.0) > TOLERANCE:
            changes.append(
                Change(
                    kind="init",
                    target=name,
                    description=f"{name}: rescaled on the batch (LSUV) so its output variance is 1 (was {before:.3g})",
                    reason=reason,
                )
            )
    return new, changes
