"""Apply a `Plan`: the transforms in order, finite weights back, then the training advice.

`apply` runs the chosen transforms (`fix.remedies.APPLY_ORDER`), gives a model that holds
inf/NaN back finite weights (`fix.nonfinite`), re-draws what a divergence blew up
(`fix.restart`), calibrates by LSUV where `init`'s closed form cannot hold (`fix.lsuv`),
and sizes ``lr_scale`` and ``clip_grad_norm`` for the model returned (`fix.advice`).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from torch import nn

from gradwatch.anatomy.modules import is_dense
from gradwatch.anatomy.order import order_of
from gradwatch.fix import data as _data
from gradwatch.fix import lsuv as _lsuv
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
from gradwatch.fix.remedies import APPLY_ORDER, TRANSFORMS, Plan, Remedy
from gradwatch.record import Timeline
from gradwatch.types import Change, Diagnosis, FixResult, Severity

__all__ = ["RESTART_NOTE", "apply"]

#: How `fix.choose`'s note to retrain from fresh weights starts (dropped when `restart`
#: re-draws the weights itself).
RESTART_NOTE = "The run diverged at step"


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
        new, done = TRANSFORMS[remedy](
            new, example_input=example_input, reason=plan.reasons[remedy], inplace=True, **opts
        )
        changes.extend(done)
    if Remedy.INIT in plan.remedies and example_input is not None:
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
            manual = [m for m in manual if not m.startswith(RESTART_NOTE)]
            if not broken:
                manual.append(_restart.OPTIMIZER_ADVICE)
    advice: dict[str, Any] = {}
    why: dict[str, str] = {}
    up = bool(plan.options.get(Remedy.LR, {}).get("up"))
    # A run that blew up did so at the recipe's rate: whatever the cause blamed, that rate
    # is not advised again for the model returned (one direction: down).
    down = (Remedy.LR in plan.remedies and not up) or _restart.blew_up(diagnosis)
    blame = plan.reasons[Remedy.LR] if Remedy.LR in plan.remedies and not up else "the run diverged at the recipe's rate"
    predicted = None
    found: list[Any] = []  # the fixed model's first-update prediction, when one was made
    if changes:
        # the advice is for the model returned, not the one it replaced (fix/first_update.py)
        predicted = fixed_model_lr_scale(
            original, new, timeline, diagnosis, example_input, blamed="down" if down else None,
            deeper_path=bool({Remedy.ACTIVATIONS, Remedy.NORM, Remedy.RESIDUAL} & set(plan.remedies)), found=found,
        )
    scaled = _data.output_scale(new) / _data.output_scale(model) if any(c.kind == Remedy.TARGETS for c in changes) else 1.0
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
            if c.kind == Remedy.TARGETS else c
            for c in changes
        ]
    if predicted is not None and (Remedy.LR in plan.remedies or down or predicted[0] != 1.0):
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
    elif Remedy.LR in plan.remedies or down:
        scale, because = lr_scale(timeline, diagnosis, up=up and not down)
        advice["lr_scale"], why["lr_scale"] = scale, f"{blame if down else plan.reasons[Remedy.LR]}; {because}"
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
            if any(c.kind == Remedy.OUTPUT for c in changes):
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
