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

The remedies themselves, their order and which causes each addresses are in
`fix.remedies`; applying a plan is `fix.apply`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from gradwatch.anatomy.modules import is_dense
from gradwatch.anatomy.order import Order, order_of
from gradwatch.detect.thresholds import Thresholds
from gradwatch.explain.causes import PLAIN_DEPTH_LIMIT
from gradwatch.explain.link import RELATED
from gradwatch.fix import activations as _activations
from gradwatch.fix import data as _data
from gradwatch.fix import init as _init
from gradwatch.fix import manual as _manual
from gradwatch.fix._infer import EXPLODING_KINDS, infer_causes, relu_like, scale_mismatch
from gradwatch.fix.advice import what_to_try
from gradwatch.fix.apply import RESTART_NOTE
from gradwatch.fix.remedies import TRANSFORMS, Plan, Remedy, remedies_for
from gradwatch.record import Timeline
from gradwatch.types import Cause, CauseKind, Diagnosis, Finding, Kind, Severity

__all__ = ["GENERIC_CAUSES", "LEAKY_RISK", "PREDICTED_CAUSES", "choose", "layer_death_risk", "ranked_causes"]


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


def _applies(remedy: Remedy, model: nn.Module, example_input: Any) -> bool:
    if remedy == Remedy.LR:
        return True
    probe = copy.deepcopy(model)
    _, changes = TRANSFORMS[remedy](probe, example_input=example_input, inplace=True)
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
    applies_cache: dict[Remedy, bool] = {}

    def applies(remedy: Remedy) -> bool:
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
        gains = next((c for c in ranked if c.kind == CauseKind.NORM_GAIN_TOO_SMALL and c.layers), None)
        if gains is not None and (not kinds or kinds[0] == gains.kind or Remedy.INIT in plan.remedies):
            # the gains it names go to 1 (`init` re-draws them): a change a dry run of
            # `init` without them would not see; the weights only if another cause asks
            if Remedy.INIT in plan.remedies:
                norms = plan.options.setdefault(Remedy.INIT, {}).setdefault("norms", [])
                norms.extend(n for n in gains.layers if n not in norms)
            else:
                plan.add(Remedy.INIT, f"{finding.kind}: {gains.message}", norms=list(gains.layers), layers=[])
            continue
        if any(r in plan.remedies for k in kinds for r in remedies_for(k, order)):
            if finding.kind in (Kind.EXPLODING_GRADIENT, Kind.NONFINITE_GRADIENT) and Remedy.LR in plan.remedies:
                plan.clip = True
            _revive(plan, finding, model, order, example_input)
            continue
        for k in kinds:
            picked = next((r for r in remedies_for(k, order) if applies(r)), None)
            if k == CauseKind.SATURATING_ACTIVATIONS and functional and picked in (None, Remedy.ACTIVATIONS):
                # surgery swaps modules only: calls in forward() need a person (unless the
                # remedy is re-initialising, which reaches them too)
                plan.manual.extend(_manual.activation_advice(model, functional))
            if picked is None:
                continue
            why = messages.get(k) or str(k).replace("_", " ")
            reason = f"{finding.kind}: {why}"
            options: dict[str, Any] = _data.options(picked, diagnosis, timeline) if picked in _data.REMEDIES else {}
            if picked == Remedy.ACTIVATIONS and any(f.kind == Kind.DEAD_UNITS for f in problems):
                options["to"] = "leaky_relu"
            plan.add(picked, reason, **options)
            if picked == Remedy.LR and finding.kind in EXPLODING_KINDS:
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
                plan.add(Remedy.LR, f"{finding.kind}: updates too small for the weights", up=True)
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
    if dead is None or Remedy.ACTIVATIONS in plan.remedies:
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
        Remedy.ACTIVATIONS,
        f"{dead.kind}: hidden ReLU layers of widths {widths}: a re-draw leaves a {risk:.0%} chance per input that "
        f"a whole layer is off (each unit off with probability 1/2; Lu et al. 2019), so re-drawn weights cannot "
        "be relied on to revive it: a leaky slope keeps a gradient through units that are off",
        to="leaky_relu",
        dying=True,
    )


def _depth_beyond_plain(plan: Plan, problems: list[Finding], diagnosis: Diagnosis, applies: Callable[[Remedy], bool]) -> None:
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
    if cause is None or cause.evidence.get("depth", 0.0) <= PLAIN_DEPTH_LIMIT or Remedy.RESIDUAL in plan.remedies:
        return
    finding = next((f for f in problems if CauseKind.DEPTH_WITHOUT_SKIP in RELATED.get(Kind.parse(f.kind), ())), None)
    # only beside a fix of the gradient's path (a step size blamed alone is no such fix)
    if finding is None or not set(plan.remedies) & {Remedy.INIT, Remedy.ACTIVATIONS, Remedy.NORM} or not applies(Remedy.RESIDUAL):
        return
    plan.add(
        Remedy.RESIDUAL,
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
    applies: Callable[[Remedy], bool],
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
        only = plan.options.get(Remedy.INIT, {}).get("layers")
        if Remedy.INIT in remedies and only is not None and cause.layers:
            # `init` already chosen for a few layers (dead units' feeders): reach these too
            only[:] = list(dict.fromkeys([*only, *cause.layers]))
            continue
        if any(r in plan.remedies for r in remedies):
            continue
        picked = next((r for r in remedies if applies(r)), None)
        if picked is None:
            continue
        options: dict[str, Any] = {"layers": list(cause.layers)} if picked == Remedy.INIT and cause.layers else {}
        plan.add(
            picked,
            f"{cause.kind}: {cause.message} (predicted from the model as built: the run diverged at step "
            f"{step} after {records} finite record{'s' if records != 1 else ''}, too few to measure it)",
            **options,
        )


def _restart_advice(plan: Plan, problems: list[Finding], model: nn.Module, order: Order) -> None:
    """A run that diverged after its first step, with weights now off their initial scale:
    those weights are the divergence's product, and a smaller step starting from them
    starts from a blown-up model. Say so (what to restart from) — `fix` re-draws only what
    is non-finite, since a finite weight may hold training worth keeping."""
    late = [f for f in problems if f.kind in (Kind.DIVERGING_LOSS, Kind.NONFINITE_GRADIENT) and (f.step or 0) > 0]
    if not late or Remedy.LR not in plan.remedies or Remedy.INIT in plan.remedies:
        return
    if not scale_mismatch(model, order)[1]:
        return
    step = min(int(f.step or 0) for f in late)
    plan.manual.append(
        f"{RESTART_NOTE} {step}, and some layers' weights are now above the scale their "
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
    if finding.kind != Kind.DEAD_UNITS or Remedy.LR not in plan.remedies or Remedy.INIT in plan.remedies:
        return
    feeding = [
        op.name
        for op in order.modules()
        if is_dense(op.module) and relu_like(order.next_activation(op.name))
    ]
    if not feeding:
        return
    _, changes = _init.transform(copy.deepcopy(model), example_input=example_input, layers=feeding, inplace=True)
    if changes:
        plan.add(
            Remedy.INIT,
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
