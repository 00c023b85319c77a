"""The remedies `fix` can choose, which causes each addresses, and the `Plan` that collects them.

Remedies, in order of preference (least invasive first — used to rank alternatives):
``lr`` (training advice only, the model is untouched) < ``init`` (same architecture,
new weights) < ``activations`` (same layers, another nonlinearity) < ``recurrent``
(another layer type, same interface) < ``norm`` (adds layers) < ``residual`` (rewires).
``activations`` and ``recurrent`` bring ``init`` with them: a ReLU at PyTorch's default
scale still loses 5/6 of the squared gradient per layer, and a fresh GRU wants
orthogonal recurrent weights. They are applied in the order recurrent, activations,
norm, residual, init, so the initialisation sees the final activations.

Causes the data holds have their own remedies (`fix.data`): ``output`` (a bounded output
activation becomes a linear one, applied first), ``inputs`` (a fixed standardisation layer in
front) and ``targets`` (a fixed `ScaleOutput` layer after the model, applied last).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from gradwatch.anatomy.activations import SATURATING_FUNCTIONS, is_saturating
from gradwatch.anatomy.order import Order
from gradwatch.fix import activations as _activations
from gradwatch.fix import data as _data
from gradwatch.fix import init as _init
from gradwatch.fix import norm as _norm
from gradwatch.fix import recurrent as _recurrent
from gradwatch.fix import residual as _residual
from gradwatch.types import CauseKind, Change, _StrEnum

__all__ = ["APPLY_ORDER", "BRINGS_INIT", "CAUSE_REMEDIES", "PREFERENCE", "TRANSFORMS", "Plan", "Remedy", "remedies_for"]


class Remedy(_StrEnum):
    """A remedy `fix` can choose; its value is the name that appears in plans and trial names."""

    LR = "lr"
    INIT = "init"
    ACTIVATIONS = "activations"
    RECURRENT = "recurrent"
    NORM = "norm"
    RESIDUAL = "residual"
    OUTPUT = "output"
    INPUTS = "inputs"
    TARGETS = "targets"


#: Remedies by preference (see the module docstring).
PREFERENCE: tuple[Remedy, ...] = (
    Remedy.LR, Remedy.INIT, Remedy.ACTIVATIONS, Remedy.RECURRENT, Remedy.NORM, Remedy.RESIDUAL,
    Remedy.OUTPUT, Remedy.INPUTS, Remedy.TARGETS,
)  # fmt: skip
#: The order remedies are applied in.
APPLY_ORDER: tuple[Remedy, ...] = (
    Remedy.OUTPUT, Remedy.RECURRENT, Remedy.ACTIVATIONS, Remedy.NORM, Remedy.RESIDUAL, Remedy.INIT,
    Remedy.INPUTS, Remedy.TARGETS,
)  # fmt: skip
#: Remedies that bring re-initialisation with them.
BRINGS_INIT = frozenset({Remedy.ACTIVATIONS, Remedy.RECURRENT})

#: For each cause, the remedies that address it, best first.
CAUSE_REMEDIES: dict[CauseKind, tuple[Remedy, ...]] = {
    CauseKind.SATURATING_ACTIVATIONS: (Remedy.ACTIVATIONS, Remedy.NORM, Remedy.RESIDUAL),
    CauseKind.INIT_MISMATCH: (Remedy.INIT, Remedy.NORM),
    CauseKind.DEAD_RELU_BIAS: (Remedy.INIT, Remedy.NORM),
    CauseKind.NORM_GAIN_TOO_SMALL: (Remedy.INIT,),  # the gains it names, at 1 (`init.transform(norms=...)`)
    CauseKind.VANILLA_RNN_LONG_SEQUENCE: (Remedy.RECURRENT, Remedy.INIT),
    CauseKind.KEEP_GATE_CLOSED: (Remedy.INIT,),
    CauseKind.STEP_SIZE_TOO_LARGE: (Remedy.LR,),
    CauseKind.NO_NORMALIZATION: (Remedy.NORM,),
    CauseKind.DEPTH_WITHOUT_SKIP: (Remedy.RESIDUAL, Remedy.NORM),
    # causes the data holds (`fix.data`): a layer in front, a linear output, advice on targets
    CauseKind.INPUT_NOT_STANDARDISED: (Remedy.INPUTS,),
    CauseKind.TARGET_OUT_OF_RANGE: (Remedy.OUTPUT,),
    CauseKind.TARGET_SCALE: (Remedy.TARGETS,),
}

#: The transform that applies each remedy to a model (``lr`` is advice only: it has none).
TRANSFORMS: dict[Remedy, Callable[..., tuple[nn.Module, list[Change]]]] = {
    Remedy.ACTIVATIONS: _activations.transform,
    Remedy.INIT: _init.transform,
    Remedy.NORM: _norm.transform,
    Remedy.RESIDUAL: _residual.transform,
    Remedy.RECURRENT: _recurrent.transform,
    Remedy.INPUTS: _data.standardise_inputs,
    Remedy.OUTPUT: _data.linear_output,
    Remedy.TARGETS: _data.scale_output,
}


def remedies_for(cause: CauseKind, order: Order) -> tuple[Remedy, ...]:
    """The remedies for `cause` in this model, best first.

    Saturating activations whose derivative peaks at 1 (tanh, hardtanh, softsign) have a
    critical initialisation — Xavier puts chi near 1 — so re-initialising is tried before
    swapping them. Sigmoid's derivative peaks at 0.25: no weight scale makes chi reach 1
    without pushing it into saturation, so its activations must go.
    """
    remedies = CAUSE_REMEDIES.get(cause, ())
    if cause == CauseKind.SATURATING_ACTIVATIONS:
        # the output activation does not count: after the last layer, or returned by the model
        hidden = [op for op in order.ops[: order.last_layer_index() + 1] if not op.returned]
        if not order.traced:  # functions read from source have no place in the order
            hidden = hidden + [f for f in order.functions if not f.fn.endswith("@output")]
        sat = [
            op
            for op in hidden
            if not op.gate and ((op.module is not None and is_saturating(op.module)) or op.fn in SATURATING_FUNCTIONS)
        ]
        sigmoid_like = any(
            isinstance(op.module, nn.Sigmoid | nn.Hardsigmoid) or op.fn in ("sigmoid", "hardsigmoid") for op in sat
        )
        if sat and not sigmoid_like:
            return (Remedy.INIT, *remedies)
    return remedies


@dataclass
class Plan:
    """The remedies chosen, why, and the manual advice that goes with them."""

    remedies: list[Remedy] = field(default_factory=list)
    reasons: dict[Remedy, str] = field(default_factory=dict)
    options: dict[Remedy, dict[str, Any]] = field(default_factory=dict)
    manual: list[str] = field(default_factory=list)
    clip: bool = False

    def add(self, name: Remedy | str, reason: str, **options: Any) -> None:
        """Choose the remedy `name` (a `Remedy` or its value) for `reason`, with options for its transform."""
        remedy: Remedy = Remedy.parse(name)  # a name that is no remedy raises, listing the valid ones
        if remedy == Remedy.LR and remedy in self.remedies:
            # One direction: a step blamed for damage (down) is not also too small (up).
            # Down wins — it rests on damage done; an update too small for dead or
            # saturated units is their zero gradient, which no rate moves.
            if bool(options.get("up")) == bool(self.options.get(Remedy.LR, {}).get("up")) or options.get("up"):
                return
            self.reasons[Remedy.LR] = reason
            self.options[Remedy.LR] = dict(options)
            return
        if remedy not in self.remedies:
            self.remedies.append(remedy)
            self.reasons[remedy] = reason
        elif "layers" not in options:
            self.options.get(remedy, {}).pop("layers", None)  # wanted everywhere now, not in a few layers
        self.options.setdefault(remedy, {}).update(options)
        if remedy in BRINGS_INIT:
            if Remedy.INIT not in self.remedies:
                self.remedies.append(Remedy.INIT)
                self.reasons[Remedy.INIT] = (
                    f"the new {'activations' if remedy == Remedy.ACTIVATIONS else 'layers'} need a matching initialisation"
                )
            self.options.get(Remedy.INIT, {}).pop("layers", None)
            # weights trained for the old activation carry its structure, not only its scale
            self.options.setdefault(Remedy.INIT, {})["force"] = True
