"""Choose the smallest set of remedies that addresses a diagnosis, and apply them.

How a remedy is picked, finding by finding (errors first, then warnings; `info`
findings never lead to a change):

1. The finding's causes (`ranked_causes`): those its ``causes`` list names; if it names
   none, the Diagnosis's causes that can produce its kind (`RELATED`); if there are none
   (or no explainer ran), causes read from the model's structure by `infer_causes` —
   the mechanism behind each kind of finding, checked against what the model contains.
   Specific causes (a faulty part) before generic ones (what the architecture lacks),
   by score within each; a vanilla RNN the gradient cannot cross first, for any finding.
2. If a remedy already chosen addresses one of those causes, the finding is covered.
3. Otherwise the first remedy, in `remedies_for` order, for the best-ranked cause that
   has one which applies to this model (a dry run changes something, or there is
   manual advice to give).
4. Dead units blamed on the step size also get fresh weights in the layers feeding a
   ReLU (`_revive`): a smaller step cannot move a unit whose gradient is zero.
5. A model that holds inf/NaN parameters or NaN buffers (what a divergence leaves) gets
   finite ones back in `apply`: modules with their own ``reset_parameters()`` reset,
   layers re-drawn by `init`, the rest named in the manual advice with the optimizer's
   state (`fix.nonfinite`).
6. A divergence found after the first step blames the step size before a large weight
   scale, and says to retrain from fresh weights when the scale is off (`_restart_advice`).
7. A divergence that came before the detectors could read the run (fewer finite records
   than `Thresholds.persist`): the explainer's predictions from the model as built
   (`PREDICTED_CAUSES`) choose their remedies too (`_predicted_causes`).
8. A plain chain deeper than `PLAIN_DEPTH_LIMIT` gets `residual` beside the remedies chosen
   for a finding depth can produce (`_depth_beyond_plain`).

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
front) and ``targets`` (a fixed `ScaleOutput` layer after the model, applied last); any of
them brings fresh weights, and their advice is added whatever finding chose them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from gradwatch.anatomy.activations import RELU_FAMILY, SATURATING_FUNCTIONS, is_saturating
from gradwatch.anatomy.modules import is_dense, shared_parameters
from gradwatch.anatomy.order import Order, order_of
from gradwatch.detect.thresholds import Thresholds
from gradwatch.explain.causes import PLAIN_DEPTH_LIMIT
from gradwatch.explain.link import RELATED
from gradwatch.fix import activations as _activations
from gradwatch.fix import data as _data
from gradwatch.fix import init as _init
from gradwatch.fix import lsuv as _lsuv
from gradwatch.fix import manual as _manual
from gradwatch.fix import norm as _norm
from gradwatch.fix import recurrent as _recurrent
from gradwatch.fix import residual as _residual
from gradwatch.fix import restart as _restart
from gradwatch.fix._surgery import copy_model
from gradwatch.fix.advice import (
    MAX_LR_SCALE,
    clip_grad_norm,
    fixed_model_lr_scale,
    lr_scale,
    overflow,
    trouble_step,
    what_to_try,
)
from gradwatch.fix.nonfinite import (
    OPTIMIZER_STATE_ADVICE,
    nonfinite_modules,
    redraw_nonfinite_layers,
    reset_nonfinite_others,
)
from gradwatch.record import Timeline
from gradwatch.types import Cause, CauseKind, Change, Diagnosis, Finding, FixResult, Kind, Severity

#: Remedies by preference (see the module docstring).
PREFERENCE = ("lr", "init", "activations", "recurrent", "norm", "residual", "output", "inputs", "targets")
#: The order remedies are applied in.
APPLY_ORDER = ("output", "recurrent", "activations", "norm", "residual", "init", "inputs", "targets")
#: Remedies that bring re-initialisation with them.
BRINGS_INIT = frozenset({"activations", "recurrent"})

#: For each cause, the remedies that address it, best first.
CAUSE_REMEDIES: dict[CauseKind, tuple[str, ...]] = {
    CauseKind.SATURATING_ACTIVATIONS: ("activations", "norm", "residual"),
    CauseKind.INIT_MISMATCH: ("init", "norm"),
    CauseKind.DEAD_RELU_BIAS: ("init", "norm"),
    CauseKind.VANILLA_RNN_LONG_SEQUENCE: ("recurrent", "init"),
    CauseKind.KEEP_GATE_CLOSED: ("init",),
    CauseKind.STEP_SIZE_TOO_LARGE: ("lr",),
    CauseKind.NO_NORMALIZATION: ("norm",),
    CauseKind.DEPTH_WITHOUT_SKIP: ("residual", "norm"),
    # causes the data holds (`fix.data`): a layer in front, a linear output, advice on targets
    CauseKind.INPUT_NOT_STANDARDISED: ("inputs",),
    CauseKind.TARGET_OUT_OF_RANGE: ("output",),
    CauseKind.TARGET_SCALE: ("targets",),
}

_TRANSFORMS: dict[str, Callable[..., tuple[nn.Module, list[Change]]]] = {
    "activations": _activations.transform,
    "init": _init.transform,
    "norm": _norm.transform,
    "residual": _residual.transform,
    "recurrent": _recurrent.transform,
    "inputs": _data.standardise_inputs,
    "output": _data.linear_output,
    "targets": _data.scale_output,
}

_GRADIENT_KINDS = (Kind.VANISHING_GRADIENT, Kind.SATURATED_UNITS, Kind.STALLED_WEIGHTS)
_EXPLODING_KINDS = (Kind.EXPLODING_GRADIENT, Kind.NONFINITE_GRADIENT, Kind.DIVERGING_LOSS)
_SYMPTOM_KINDS = (Kind.FLAT_LOSS, Kind.CONSTANT_OUTPUT)


@dataclass
class Plan:
    """The remedies chosen, why, and the manual advice that goes with them."""

    remedies: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    manual: list[str] = field(default_factory=list)
    clip: bool = False

    def add(self, remedy: str, reason: str, **options: Any) -> None:
        if remedy == "lr" and remedy in self.remedies:
            # One direction: a step blamed for damage (down) is not also too small (up).
            # Down wins — it rests on damage done; an update too small for dead or
            # saturated units is their zero gradient, which no rate moves.
            if bool(options.get("up")) == bool(self.options.get("lr", {}).get("up")) or options.get("up"):
                return
            self.reasons["lr"] = reason
            self.options["lr"] = dict(options)
            return
        if remedy not in self.remedies:
            self.remedies.append(remedy)
            self.reasons[remedy] = reason
        elif "layers" not in options:
            self.options.get(remedy, {}).pop("layers", None)  # wanted everywhere now, not in a few layers
        self.options.setdefault(remedy, {}).update(options)
        if remedy in BRINGS_INIT:
            if "init" not in self.remedies:
                self.remedies.append("init")
                self.reasons["init"] = f"the new {'activations' if remedy == 'activations' else 'layers'} need a matching initialisation"
            self.options.get("init", {}).pop("layers", None)
            # weights trained for the old activation carry its structure, not only its scale
            self.options.setdefault("init", {})["force"] = True


# -- causes read from the model when the diagnosis carries none ---------------------------------


def infer_causes(model: nn.Module, order: Order, kind: Kind, step: int | None = None) -> list[CauseKind]:
    """The structural causes that can produce a finding of `kind` in this model, most specific first.

    Used only when no explainer supplied causes. Each check follows the mechanism:
    saturating activations and too-small weight scales shrink the gradient per layer; an
    `nn.RNN` shrinks it per time step; negative biases switch ReLUs off; a too-large
    weight scale or step size makes it grow. Units found dead after the first step (`step`,
    the finding's first step, > 0) were alive at the initialisation: training steps killed
    them, so the step size comes first even if the biases they left behind now look dead.
    Likewise a loss that diverged, or gradients that went non-finite, after the first step:
    the step size before a weight scale that may be the divergence's own doing.
    """
    has_rnn = any(type(m) in (nn.RNN, nn.RNNCell) for m in model.modules())
    kept = order.beside_frozen() | order.output_modules()  # what `activations` leaves alone
    saturating = any(
        is_saturating(op.module) and not op.gate and id(op.module) not in kept
        for op in order.modules()
        if op.module is not None
    ) or bool(
        _manual.hidden_functional_activations(model, order)
    )
    small, large, rnn_large = _scale_mismatch(model, order)
    causes: list[CauseKind] = []
    if kind == Kind.TEMPORAL_VANISHING:
        causes += [CauseKind.VANILLA_RNN_LONG_SEQUENCE] if has_rnn else [CauseKind.INIT_MISMATCH]
    elif kind in _GRADIENT_KINDS or kind in _SYMPTOM_KINDS:
        if saturating:
            causes.append(CauseKind.SATURATING_ACTIVATIONS)
        if has_rnn and kind == Kind.VANISHING_GRADIENT:
            causes.append(CauseKind.VANILLA_RNN_LONG_SEQUENCE)
        if small:
            causes.append(CauseKind.INIT_MISMATCH)
        if _dead_biases(model, order):
            causes.append(CauseKind.DEAD_RELU_BIAS)
        if not causes and kind == Kind.VANISHING_GRADIENT:
            # Nothing in the layers themselves explains it: the chain's length does.
            causes += [CauseKind.DEPTH_WITHOUT_SKIP, CauseKind.NO_NORMALIZATION]
    elif kind == Kind.DEAD_UNITS:
        if step is not None and step > 0:
            causes.append(CauseKind.STEP_SIZE_TOO_LARGE)
        if _dead_biases(model, order):
            causes.append(CauseKind.DEAD_RELU_BIAS)
        if small:
            causes.append(CauseKind.INIT_MISMATCH)
        if CauseKind.STEP_SIZE_TOO_LARGE not in causes and step is None:
            causes.append(CauseKind.STEP_SIZE_TOO_LARGE)  # large steps knock units off for good
        # found at step 0 (before any update): dead at the initialisation, no step did it
    elif kind in _EXPLODING_KINDS:
        if rnn_large:
            # A vanilla RNN whose recurrent matrix can grow the gradient through time: an
            # orthogonal re-initialisation only trades the explosion for vanishing, a gated
            # cell removes both (Pascanu et al. 2013).
            causes.append(CauseKind.VANILLA_RNN_LONG_SEQUENCE)
        if large and kind != Kind.EXPLODING_GRADIENT and step is not None and step > 0:
            # A loss that rose or blew up after training began: the steps did it, and weights
            # read now may be what they left (a diverged model's are huge); the scale can
            # still be the cause, second.
            causes += [CauseKind.STEP_SIZE_TOO_LARGE, CauseKind.INIT_MISMATCH]
        else:
            if large:
                causes.append(CauseKind.INIT_MISMATCH)
            causes.append(CauseKind.STEP_SIZE_TOO_LARGE)
    return causes


def _scale_mismatch(model: nn.Module, order: Order) -> tuple[bool, bool, bool]:
    """(some feed-forward layer's weight scale is too small for its activation, some is too
    large, some vanilla RNN's recurrent matrix is too large).

    A vanilla recurrent layer counts as too large when its recurrent matrix has a singular
    value above 1 + tolerance: then the gradient through time can grow (Pascanu et al. 2013).
    """
    small = large = rnn_large = False
    depth = _init.chain_depth(order)  # the chain length `init` solves a smooth activation's scale for
    tied = shared_parameters(model)
    for op in order.modules():
        m = op.module
        if m is None or not _init.redrawable(m, tied):
            continue  # what `init` would not re-draw cannot be the reason to re-draw anything
        if isinstance(m, nn.RNNBase | nn.RNNCellBase):
            # Only a vanilla cell's gradient through time is W_hh^T diag(phi') alone; a
            # gated cell's passes through its gates (sigmoid' <= 1/4), so its W_hh norm
            # says little (PyTorch's default LSTM init already has one near 1.15).
            if type(m) in (nn.RNN, nn.RNNCell):
                for name, p in m.named_parameters(recurse=False):
                    if name.startswith("weight_hh"):
                        sigma = float(torch.linalg.matrix_norm(p.detach().double(), ord=2))
                        rnn_large |= sigma > 1 + _init.SCALE_TOLERANCE
            continue
        if not is_dense(m):
            continue
        act = order.next_activation(op.name)
        if act is None:
            continue  # a head or a layer feeding another: its scale is not a gain through depth
        w = m.weight
        assert isinstance(w, torch.Tensor)
        _, _, target, _ = _init.feedforward_target(m, act, depth)
        ratio = float(w.detach().double().pow(2).mean()) / target
        small |= ratio < 1 - _init.SCALE_TOLERANCE
        large |= ratio > 1 + _init.SCALE_TOLERANCE
    return small, large, rnn_large


def _relu_like(act: Any) -> bool:
    return act is not None and (
        (act.module is not None and isinstance(act.module, RELU_FAMILY)) or act.fn in ("relu", "relu6")
    )


def _dead_biases(model: nn.Module, order: Order) -> bool:
    for op in order.modules():
        m = op.module
        b = getattr(m, "bias", None) if is_dense(m) else None
        if not isinstance(b, torch.Tensor):
            continue
        relu_like = _relu_like(order.next_activation(op.name))
        b = b.detach().double()
        if relu_like and float(b.mean()) < -_init.BIAS_RMS_LIMIT:
            return True
    return False


# -- choosing ------------------------------------------------------------------------------


def remedies_for(cause: CauseKind, order: Order) -> tuple[str, ...]:
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
            return ("init", *remedies)
    return remedies



#: Causes that describe what the architecture lacks (a skip path, a normalisation) rather
#: than a faulty part of it. The explainer scores both from the mean-field gains of the
#: model *as initialised* (the depth limit 6 xi, the predicted drift), so a faulty part —
#: an initialisation off its critical scale, saturating units — inflates them. The faulty
#: part is addressed first; these follow when nothing more specific is blamed.
GENERIC_CAUSES = frozenset({CauseKind.DEPTH_WITHOUT_SKIP, CauseKind.NO_NORMALIZATION})


def ranked_causes(finding: Finding, diagnosis: Diagnosis) -> list[Cause]:
    """The causes that may explain `finding`, in the order the chooser tries them.

    The causes the finding names (the explainer links them by mechanism and by layer); if
    it names none, the diagnosis's causes that can produce its kind (`RELATED`) — a cause
    that cannot produce a finding must not choose its remedy. Specific causes come before
    the generic ones (`GENERIC_CAUSES`), by score within each group. A vanilla RNN over a
    sequence its gradient cannot cross (`vanilla_rnn_long_sequence`) comes first for every
    finding: whatever else is changed, its gradient through time still grows or shrinks
    like rho(W_hh)^T (Pascanu et al. 2013), so no run of it is healthy until the cell is gated.
    """
    by_kind = {c.kind: c for c in diagnosis.causes}
    named = [by_kind.get(CauseKind.parse(k)) or Cause(CauseKind.parse(k), 0.0, [], {}, "") for k in finding.causes]
    if not named:
        related = RELATED.get(Kind.parse(finding.kind), ())
        named = [c for c in diagnosis.causes if c.kind in related]
    rnn = by_kind.get(CauseKind.VANILLA_RNN_LONG_SEQUENCE)
    if rnn is not None and all(c.kind != rnn.kind for c in named):
        named.append(rnn)
    return sorted(
        named,
        key=lambda c: (c.kind != CauseKind.VANILLA_RNN_LONG_SEQUENCE, c.kind in GENERIC_CAUSES, -c.score),
    )


def _applies(remedy: str, model: nn.Module, example_input: Any) -> bool:
    if remedy == "lr":
        return True
    probe = copy.deepcopy(model)
    _, changes = _TRANSFORMS[remedy](probe, example_input=example_input, inplace=True)
    return bool(changes)


def choose(
    model: nn.Module,
    diagnosis: Diagnosis,
    *,
    example_input: Any = None,
    order: Order | None = None,
    timeline: Timeline | None = None,
) -> Plan:
    """Decide which remedies to apply (see the module docstring); changes nothing.

    `timeline` (optional) tells how many records the run made before it diverged
    (`_unread_divergence`)."""
    plan = Plan()
    problems = sorted(
        (f for f in diagnosis.findings if f.severity > Severity.INFO), key=lambda f: -f.severity.rank
    )
    if not problems:
        return plan
    order = order or order_of(model, example_input)
    applies_cache: dict[str, bool] = {}

    def applies(remedy: str) -> bool:
        if remedy not in applies_cache:
            applies_cache[remedy] = (
                _data.applies(remedy, model, diagnosis, timeline) if remedy in _data.REMEDIES
                else _applies(remedy, model, example_input)
            )
        return applies_cache[remedy]

    functional = _manual.hidden_functional_activations(model, order)
    for finding in problems:
        if finding.evidence.get("no_gradient") or finding.evidence.get("output_site") or finding.evidence.get("cut_steps"):
            # Layers cut off from the loss by the code, a recurrence cut through time, or an
            # activation clamping the outputs: what to change is in the finding's message; no
            # surgery or step size does it.
            plan.manual.append(f"{finding.kind}: {finding.message}")
            continue
        ranked = ranked_causes(finding, diagnosis)
        kinds = [c.kind for c in ranked] or infer_causes(model, order, finding.kind, finding.step)
        if finding.evidence.get("blew_past_chance") and kinds[:1] != [CauseKind.STEP_SIZE_TOO_LARGE]:
            # A classifier's loss driven from chance to far above it: the steps did that
            # (no initialisation starts a model confidently wrong about every input).
            kinds = [CauseKind.STEP_SIZE_TOO_LARGE, *(k for k in kinds if k != CauseKind.STEP_SIZE_TOO_LARGE)]
        messages = {c.kind: c.message for c in ranked}
        if any(r in plan.remedies for k in kinds for r in remedies_for(k, order)):
            if finding.kind in (Kind.EXPLODING_GRADIENT, Kind.NONFINITE_GRADIENT) and "lr" in plan.remedies:
                plan.clip = True
            _revive(plan, finding, model, order, example_input)
            continue
        for k in kinds:
            picked = next((r for r in remedies_for(k, order) if applies(r)), None)
            if k == CauseKind.SATURATING_ACTIVATIONS and functional and picked in (None, "activations"):
                # surgery swaps modules only: calls in forward() need a person (unless the
                # remedy is re-initialising, which reaches them too)
                plan.manual.extend(_manual.activation_advice(model, functional))
            if picked is None:
                continue
            why = messages.get(k) or str(k).replace("_", " ")
            reason = f"{finding.kind}: {why}"
            options: dict[str, Any] = _data.options(picked, diagnosis, timeline) if picked in _data.REMEDIES else {}
            if picked == "activations" and any(f.kind == Kind.DEAD_UNITS for f in problems):
                options["to"] = "leaky_relu"
            plan.add(picked, reason, **options)
            if picked == "lr" and finding.kind in _EXPLODING_KINDS:
                plan.clip = True
            _revive(plan, finding, model, order, example_input)
            break
        else:
            if kinds and not (kinds[0] == CauseKind.SATURATING_ACTIVATIONS and functional):
                plan.manual.append(_no_remedy(finding, kinds))
            elif finding.kind == Kind.STALLED_WEIGHTS and any(
                f.kind in (Kind.DEAD_UNITS, Kind.SATURATED_UNITS) for f in problems
            ):
                # zero gradients from dead or saturated units: no rate moves them (one
                # direction: never "too large" and "x10" at once); say what to try instead
                plan.manual.append(what_to_try(finding.kind, finding.message))
            elif finding.kind == Kind.STALLED_WEIGHTS:
                # Weights that barely move, with nothing in the model to blame: the step is
                # too small for the gradients it gets.
                plan.add("lr", f"{finding.kind}: updates too small for the weights", up=True)
    plan.manual.extend(_data.complete(plan, diagnosis, timeline, model))
    _narrow_relu(plan, problems, model, order, example_input)
    _depth_beyond_plain(plan, problems, diagnosis, applies)
    _predicted_causes(plan, problems, diagnosis, timeline, order, applies)
    _restart_advice(plan, problems, model, order)
    plan.manual = list(dict.fromkeys(plan.manual))
    return plan


#: A ReLU net in which a re-draw leaves more than this chance that some hidden layer is off
#: as a whole for an input (`layer_death_risk`) gets a leaky activation for its dead units.
LEAKY_RISK = 0.05


def layer_death_risk(widths: list[int]) -> float:
    """The chance, per input, that some hidden ReLU layer of these widths has every unit off
    at a symmetric initialisation: each unit is off with probability 1/2, a layer of N with
    ``2^-N``, and one such layer cuts every path (Lu et al. 2019: the probability that a ReLU
    net is born dead grows with depth and falls with width)."""
    alive = 1.0
    for n in widths:
        alive *= 1.0 - 0.5 ** max(int(n), 1)
    return 1.0 - alive


def _narrow_relu(plan: Plan, problems: list[Finding], model: nn.Module, order: Order, example_input: Any) -> None:
    """Dead units in a net narrow and deep enough that re-drawn weights re-draw the same risk
    (`layer_death_risk` over `LEAKY_RISK`): a leaky activation, chosen from the architecture
    (widths and depth), not from the run — He's weights give every re-draw the same odds."""
    dead = next((f for f in problems if f.kind == Kind.DEAD_UNITS), None)
    if dead is None or "activations" in plan.remedies:
        return
    kept = order.output_modules() | order.beside_frozen()
    widths = []
    for op in order.modules():
        m = op.module
        act = order.next_activation(op.name) if isinstance(m, nn.Linear) else None
        if isinstance(m, nn.Linear) and act is not None and act.module is not None and _activations.dies(act.module) and id(act.module) not in kept:
            widths.append(int(m.out_features))
    risk = layer_death_risk(widths)
    if risk <= LEAKY_RISK:
        return
    _, changes = _activations.transform(
        copy.deepcopy(model), to="leaky_relu", dying=True, example_input=example_input, inplace=True
    )
    if not changes:
        return
    plan.add(
        "activations",
        f"{dead.kind}: hidden ReLU layers of widths {widths}: a re-draw leaves a {risk:.0%} chance per input that "
        f"a whole layer is off (each unit off with probability 1/2; Lu et al. 2019), so re-drawn weights cannot "
        "be relied on to revive it: a leaky slope keeps a gradient through units that are off",
        to="leaky_relu",
        dying=True,
    )


def _depth_beyond_plain(plan: Plan, problems: list[Finding], diagnosis: Diagnosis, applies: Callable[[str], bool]) -> None:
    """A plain chain deeper than `PLAIN_DEPTH_LIMIT` still wants skip connections after the
    faulty part is fixed.

    `depth_without_skip` is ranked after the specific causes because the explainer scores
    it from the model as initialised: past `6 xi`, a depth scale a bad initialisation
    shrinks, so re-drawing the weights removes that reason. Past `PLAIN_DEPTH_LIMIT` (20)
    weight layers it is no artefact of the initialisation: plain nets that deep train worse
    than shallower ones even at a critical one (He et al. 2016; Balduzzi et al. 2017), so
    `residual` joins the remedies chosen for a finding depth can produce — when they fix the
    gradient's path (init, activations, norm), not when the step size alone is blamed.
    """
    cause = next((c for c in diagnosis.causes if c.kind == CauseKind.DEPTH_WITHOUT_SKIP), None)
    if cause is None or cause.evidence.get("depth", 0.0) <= PLAIN_DEPTH_LIMIT or "residual" in plan.remedies:
        return
    finding = next((f for f in problems if CauseKind.DEPTH_WITHOUT_SKIP in RELATED.get(Kind.parse(f.kind), ())), None)
    # only beside a fix of the gradient's path (a step size blamed alone is no such fix)
    if finding is None or not set(plan.remedies) & {"init", "activations", "norm"} or not applies("residual"):
        return
    plan.add(
        "residual",
        f"{finding.kind}: {cause.message}; more than {PLAIN_DEPTH_LIMIT} plain layers train worse than fewer even "
        "at a critical initialisation (He et al. 2016), so skip connections go with the other remedies",
    )


#: Causes the explainer predicts from the model as built — its weights and structure,
#: before any step — that stop the gradient crossing layers or time steps. Not the
#: generic ones (`GENERIC_CAUSES`: what the architecture lacks) nor the step size.
PREDICTED_CAUSES = frozenset(
    {
        CauseKind.SATURATING_ACTIVATIONS,
        CauseKind.INIT_MISMATCH,
        CauseKind.DEAD_RELU_BIAS,
        CauseKind.VANILLA_RNN_LONG_SEQUENCE,
        CauseKind.KEEP_GATE_CLOSED,
    }
)


def _unread_divergence(problems: list[Finding], timeline: Timeline | None) -> tuple[int, int] | None:
    """(step, records) when the run diverged after fewer finite records than a detector needs
    to call anything (`Thresholds.persist`), else None.

    Records are counted before the first step of a divergence finding, from the timeline, or
    without one from the non-finite finding's own count of its records.
    """
    blown = [f for f in problems if f.kind in (Kind.DIVERGING_LOSS, Kind.NONFINITE_GRADIENT) and f.step is not None]
    if not blown:
        return None
    step = min(int(f.step or 0) for f in blown)
    if timeline is not None and len(timeline):
        records = sum(1 for s in timeline.steps if int(s) < step)
    else:
        counted = [f.evidence for f in blown if "records" in f.evidence and "nonfinite_records" in f.evidence]
        if not counted:
            return None
        records = int(counted[0]["records"] - counted[0]["nonfinite_records"])
    return (step, records) if records < Thresholds().persist else None


def _predicted_causes(
    plan: Plan,
    problems: list[Finding],
    diagnosis: Diagnosis,
    timeline: Timeline | None,
    order: Order,
    applies: Callable[[str], bool],
) -> None:
    """A run that diverged before the detectors could read its gradients: theory stands in.

    The detectors need `Thresholds.persist` records to call vanishing gradients, saturated
    units or a gradient that cannot cross time; a run that blew up sooner has told nothing
    about them, and once its step size is right it meets whatever its initialisation holds.
    The explainer's predictions from the model as built (`PREDICTED_CAUSES`) then choose
    their remedies as a finding would. A run that lasted long enough to be read is judged by
    what it showed: a default LSTM whose gradient starts far from the first steps and then
    learns to reach them is left alone.
    """
    unread = _unread_divergence(problems, timeline)
    if unread is None:
        return
    step, records = unread
    for cause in diagnosis.causes:
        if cause.kind not in PREDICTED_CAUSES:
            continue
        remedies = remedies_for(cause.kind, order)
        only = plan.options.get("init", {}).get("layers")
        if "init" in remedies and only is not None and cause.layers:
            # `init` already chosen for a few layers (dead units' feeders): reach these too
            only[:] = list(dict.fromkeys([*only, *cause.layers]))
            continue
        if any(r in plan.remedies for r in remedies):
            continue
        picked = next((r for r in remedies if applies(r)), None)
        if picked is None:
            continue
        options: dict[str, Any] = {"layers": list(cause.layers)} if picked == "init" and cause.layers else {}
        plan.add(
            picked,
            f"{cause.kind}: {cause.message} (predicted from the model as built: the run diverged at step "
            f"{step} after {records} finite record{'s' if records != 1 else ''}, too few to measure it)",
            **options,
        )


#: How `_restart_advice`'s note starts (dropped when `restart` re-draws the weights itself).
_RESTART_NOTE = "The run diverged at step"


def _restart_advice(plan: Plan, problems: list[Finding], model: nn.Module, order: Order) -> None:
    """A run that diverged after its first step, with weights now off their initial scale:
    those weights are the divergence's product, and a smaller step starting from them
    starts from a blown-up model. Say so (what to restart from) — `fix` re-draws only what
    is non-finite, since a finite weight may hold training worth keeping."""
    late = [f for f in problems if f.kind in (Kind.DIVERGING_LOSS, Kind.NONFINITE_GRADIENT) and (f.step or 0) > 0]
    if not late or "lr" not in plan.remedies or "init" in plan.remedies:
        return
    if not _scale_mismatch(model, order)[1]:
        return
    step = min(int(f.step or 0) for f in late)
    plan.manual.append(
        f"{_RESTART_NOTE} {step}, and some layers' weights are now above the scale their "
        "activations want: they carry the divergence. Retrain from a fresh model (build it again and call "
        "gw.fix on it with the same diagnosis) or from a checkpoint saved before that step, with the advised "
        "step size — not from these weights."
    )


def _revive(plan: Plan, finding: Finding, model: nn.Module, order: Order, example_input: Any) -> None:
    """Dead units blamed on the step size also need fresh weights.

    A lower learning rate stops more units dying but cannot revive the dead ones: their
    gradient is zero, so no step of any size moves them. Re-initialising does. Only the
    layers feeding a ReLU-family activation (the ones whose units can die) are candidates,
    and of those only the ones whose scale or biases the large steps moved off: a model
    that has not trained yet is left as it is.
    """
    if finding.kind != Kind.DEAD_UNITS or "lr" not in plan.remedies or "init" in plan.remedies:
        return
    feeding = [
        op.name
        for op in order.modules()
        if is_dense(op.module) and _relu_like(order.next_activation(op.name))
    ]
    if not feeding:
        return
    _, changes = _init.transform(copy.deepcopy(model), example_input=example_input, layers=feeding, inplace=True)
    if changes:
        plan.add(
            "init",
            f"{finding.kind}: units a too-large step switched off get no gradient; fresh weights revive them",
            layers=feeding,
        )


def _no_remedy(finding: Finding, kinds: list[CauseKind]) -> str:
    k = kinds[0]
    cause = f"{finding.kind}, cause {k}"
    if k in (CauseKind.NO_NORMALIZATION,):
        return _manual.norm_advice(cause)
    if k == CauseKind.DEPTH_WITHOUT_SKIP:
        return _manual.residual_advice(cause)
    if k == CauseKind.VANILLA_RNN_LONG_SEQUENCE:
        return _manual.recurrent_advice(cause)
    return _manual.init_advice(cause)


def apply(
    model: nn.Module,
    plan: Plan,
    diagnosis: Diagnosis,
    *,
    example_input: Any = None,
    timeline: Timeline | None = None,
    inplace: bool = False,
) -> FixResult:
    """Apply a plan: the transforms in `APPLY_ORDER`, then the training advice.

    A model with inf/NaN in its parameters (NaN in its buffers) — the state a divergence
    leaves — is given finite ones as well when the diagnosis found a problem
    (`reset_nonfinite_others` before the transforms, `redraw_nonfinite_layers` after).
    """
    # the model as the run left it: the first-update prediction calibrates its probe on it
    original = copy.deepcopy(model) if inplace and timeline is not None and example_input is not None else model
    new = copy_model(model, inplace)
    changes: list[Change] = []
    broken = any(f.severity > Severity.INFO for f in diagnosis.findings) and bool(nonfinite_modules(new))
    if broken:
        changes.extend(reset_nonfinite_others(new))
    for remedy in APPLY_ORDER:
        if remedy not in plan.remedies:
            continue
        opts = plan.options.get(remedy, {})
        new, done = _TRANSFORMS[remedy](
            new, example_input=example_input, reason=plan.reasons[remedy], inplace=True, **opts
        )
        changes.extend(done)
    if "init" in plan.remedies and example_input is not None:
        changes.extend(_calibrate(new, example_input))
    manual = list(plan.manual)  # the plan is the caller's: not extended in place
    if broken:
        more, left = redraw_nonfinite_layers(new, example_input)
        changes.extend(more)
        manual += [*left, OPTIMIZER_STATE_ADVICE]
    if _restart.diverged(diagnosis):
        _, restarted = _restart.transform(new, example_input=example_input, inplace=True)
        if restarted:
            changes.extend(restarted)
            # the weights are re-drawn: the note to retrain from fresh ones is done
            manual = [m for m in manual if not m.startswith(_RESTART_NOTE)]
            if not broken:
                manual.append(_restart.OPTIMIZER_ADVICE)
    advice: dict[str, Any] = {}
    why: dict[str, str] = {}
    up = bool(plan.options.get("lr", {}).get("up"))
    # A run that blew up did so at the recipe's rate: whatever the cause blamed, that rate
    # is not advised again for the model returned (one direction: down).
    down = ("lr" in plan.remedies and not up) or _restart.blew_up(diagnosis)
    blame = plan.reasons["lr"] if "lr" in plan.remedies and not up else "the run diverged at the recipe's rate"
    predicted = None
    found: list[Any] = []  # the fixed model's first-update prediction, when one was made
    if changes:
        # the advice is for the model returned, not the one it replaced (fix/first_update.py)
        predicted = fixed_model_lr_scale(
            original, new, timeline, diagnosis, example_input, blamed="down" if down else None,
            deeper_path=bool({"activations", "norm", "residual"} & set(plan.remedies)), found=found,
        )
    scaled = _data.output_scale(new) / _data.output_scale(model) if any(c.kind == "targets" for c in changes) else 1.0
    dtype = next((p.dtype for p in new.parameters() if p.is_floating_point()), None)
    normalised = scaled > 1.0 and bool(found) and found[0].adaptive and dtype is not None and overflow(found[0].grad, dtype)
    if normalised:
        # The exact gradient through the layer would overflow the parameters' float type in an
        # adaptive optimizer's squared-gradient state (and in a clipping norm): every step would
        # stop. The layer passes the gradient of loss / scale^2 back instead, whose size the
        # optimizer divides out anyway: its rate stands.
        _data.normalise_output_gradient(new)
        note = _data.NORMALISED_ADVICE.format(grad=found[0].grad, dtype=dtype)
        manual = [m + note if "`scale_output`" in m else m for m in manual]
        changes = [
            replace(c, description=c.description + "; its backward pass divides the gradient by the scale "
                    "(the gradient of loss / scale^2), since the exact one would overflow " + str(dtype))
            if c.kind == "targets" else c
            for c in changes
        ]
    if predicted is not None and ("lr" in plan.remedies or down or predicted[0] != 1.0):
        scale, because = predicted
        advice["lr_scale"], why["lr_scale"] = scale, (f"{blame}; " if down else "") + because
    elif scaled > 1.0 and predicted is None:
        # No step size to predict from (the run overflowed before a second record, or a
        # saturated output left every update 0): the rate that makes the layer and targets
        # divided by its scale one training — the recipe's rate on targets it can reach.
        scale = _data.standardised_rate(scaled)
        why["lr_scale"] = (
            f"no step size was measured to predict the fixed model's first update from; the squared error through "
            f"`scale_output` ({scaled:.3g}) is {scaled:.3g}^2 times the one on targets divided by it, so under SGD "
            f"the recipe's rate times {scale:.2g} takes the steps those targets would take at the recipe's rate "
            "(an adaptive optimizer such as Adam divides the factor out: keep its rate)"
        )
        late = trouble_step(diagnosis)
        if down and timeline is not None and len(timeline) > 1 and late is not None and late > int(timeline.steps[1]):
            # The run trained past its first recording interval before it diverged: not the
            # targets' scale throwing fresh weights at once, but the recipe's step, too large
            # for the model as it trained. One decade down from there, as for any divergence.
            scale *= MAX_LR_SCALE
            why["lr_scale"] += (
                f"; the run diverged at step {late}, after it had trained: the recipe's rate itself was too large, "
                "so one decade down from that"
            )
        advice["lr_scale"] = float(f"{scale:.2g}")
    elif "lr" in plan.remedies or down:
        scale, because = lr_scale(timeline, diagnosis, up=up and not down)
        advice["lr_scale"], why["lr_scale"] = scale, f"{blame if down else plan.reasons['lr']}; {because}"
    if _data.TARGET_ADVICE in "\n".join(manual) and "lr_scale" in advice:
        # The targets are left to the user to standardise: a rate sized for them as they are
        # does not carry over (standardised targets shrink every gradient of a squared error by
        # their scale squared), and advising both would contradict itself. The data step is
        # the remedy, at the recipe's rate.
        del advice["lr_scale"]
        why["lr_scale"] = (
            "no rate advised: the targets are to be standardised as advised, and a rate sized for them as they "
            "are does not carry over; start from the recipe's rate"
        )
    elif predicted is not None:
        why["lr_scale"] = predicted[1]
    if plan.clip:
        clip = clip_grad_norm(timeline, diagnosis)
        if clip is not None:
            advice["clip_grad_norm"], why["clip_grad_norm"] = clip
            if any(c.kind == "output" for c in changes):
                # The recorded gradients passed through the bounded output's derivative, which
                # a saturated output drives toward 0 and the fix removed: they say nothing of
                # the size of the fixed model's, and a threshold read from them can cut every
                # step of it to nothing.
                del advice["clip_grad_norm"]
                why["clip_grad_norm"] = (
                    "no clipping advised: the recorded gradients passed through the output activation the fix "
                    "removed, and do not measure the fixed model's"
                )
            elif scaled > 1.0:
                # measured on the model without `scale_output`: the same error sends gradients
                # `scaled` times larger back through it (the chain rule through a product), or
                # `scaled` times smaller where the layer normalises them
                factor = 1.0 / scaled if normalised else scaled
                advice["clip_grad_norm"] = float(f"{clip[0] * factor:.2g}")
                why["clip_grad_norm"] += (
                    f"; times {factor:.3g} for `scale_output`, which "
                    + ("divides every gradient by its scale" if normalised else "multiplies every gradient by its scale")
                )
    if not changes and not manual and "lr_scale" not in advice and "clip_grad_norm" not in advice:
        # A sick run with nothing to change still hears what to try, and why (never silence).
        for f in diagnosis.findings:
            if f.severity > Severity.INFO and not any(m.startswith(f"{f.kind}:") for m in manual):
                manual.append(what_to_try(f.kind, f.message))
        manual = list(dict.fromkeys(manual))
    if manual:
        advice["manual"] = manual
    if why:
        advice["why"] = why
    return FixResult(model=new, changes=changes, advice=advice)


def _calibrate(model: nn.Module, example_input: Any) -> list[Change]:
    """LSUV (`fix.lsuv`) where `init`'s closed form cannot hold: a hidden layer followed by a
    functional activation (its scale or shape is code the map cannot read: ``0.5 *
    torch.tanh(h)``) and hidden-layer output variances that still drift over `lsuv.DRIFT`."""
    try:
        order = order_of(model, example_input)
        functional = any(
            is_dense(op.module) and (act := order.next_activation(op.name)) is not None and act.module is None
            for op in order.modules()
        )
        spread = _lsuv.drift(model, example_input) if functional else None
    except Exception:  # a measurement that fails leaves the closed form in place
        return []
    if spread is None or spread <= _lsuv.DRIFT:
        return []
    _, done = _lsuv.transform(model, example_input=example_input, inplace=True)
    return done
