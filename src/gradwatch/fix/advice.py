"""Training advice for what cannot live in the model: a gradient-clipping threshold and a step-size scale.

``clip_grad_norm``: the total gradient norm of a record is
``sqrt(sum over layers of grad_norm^2)`` (the norm `torch.nn.utils.clip_grad_norm_`
clips). The advice is the median of that total over the records *before the trouble
began* (the first step of an exploding, non-finite or diverging finding; every record
when there is none), non-finite records left out. Clipping at the typical size of a
healthy step leaves half the steps untouched and cuts a spike down to that size; the
early records are used because once a run explodes, its own percentiles describe the
explosion. For the same reason the early records stop at the run-up: the first record
whose total is over `RUNUP_FACTOR` (a decade) above the median of the records before it
already belongs to the blow-up — a run under SGD at lr 20 reads 2 at step 0 and 4e10 at
step 5, and the median of those two, 2e10, would clip nothing.

``lr_scale`` for stalled weights (no structural cause, updates far too small): the same
target, ``1e-3 / r``, between 10 and 1000 — at least a decade up, at most three.

``lr_scale``: a factor for the learning rate. The update ratio ``||dW|| / ||W||``
scales linearly with the learning rate (for SGD and, up to its normalisation, Adam),
and steps around 1e-3 of the weights per update are the usual healthy size
(TheDeepChecker's band is 1e-4 .. 1e-1 in log10 terms, centred near it). With r the
*largest* per-record median ratio (over layers) before the trouble began — a step size
does its damage with its big early steps (units knocked dead, a jump out of the basin),
after which the updates may be tiny — the advice is ``min(0.1, 1e-2 / r)``: the largest
typical step brought to the upper part of the healthy band (1e-2; the typical steps then
sit below it, around the 1e-3 centre) — at least one decade down,
since it is only given when the step size is blamed — and never below 1e-3.

Two cases in which the recorded steps understate the one that did the damage:

- *The damage came before the first measured update* (the first exploding, non-finite,
  diverging or dead-unit finding is at or before the first record with a finite update
  ratio — Adam at lr 1 switches every ReLU off within a few steps, and the record after
  that sees the decaying steps of a dead network). The largest measured step is then only
  a lower bound of the damaging one, so it is brought to the healthy *centre*, 1e-3 —
  a decade more margin: ``min(0.1, 1e-3 / r)``.
- *No finite ratio at all* in a timeline of two records or more (every update was
  already non-finite when first measured: the step overflowed within one recording
  interval): read from the loss, recorded every step (`runup_growth`). A step beyond the
  curvature's stability limit multiplies the error along the sharpest direction by
  ``|1 - eta lambda|`` per step, the squared error by its square, so a loss that grows by G
  per step as the blow-up begins had ``eta lambda ~ 1 + sqrt(G)``. The advice puts
  ``eta lambda`` a decade under the edge of stability (2), at `EDGE_AIM` (0.2):
  ``0.2 / (1 + sqrt(G))``, between 1e-3 and 0.1 — room for the curvature to grow as the
  model trains (progressive sharpening; Cohen et al. 2021) and for the scatter of small
  batches. G is the growth from the start's level (the median of the losses before the
  run-up) to the first loss a decade above it, per step from the first: the onset, before a
  weight that has grown makes the next step's curvature larger still (a run-up fitted to
  the overflow itself reads that acceleration and advises a rate too small to train).
  Without that reading (no losses, or none that rose): ``1e-2``, two decades. One decade
  is what a step measured at the very top of the band (0.1 .. 1 of the weights) gets; a
  step too large to be measured at all is at least that bad, so it gets one more.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from gradwatch.explain.causes import (
    LARGEST_UPDATE_RATIO,
    SMALLEST_UPDATE_RATIO,
    TARGET_UPDATE_RATIO,
)
from gradwatch.record import Timeline
from gradwatch.types import Diagnosis, Kind

#: Smallest learning-rate change advised when the step size is blamed (one decade).
MAX_LR_SCALE = 0.1
#: Largest learning-rate reduction ever advised.
MIN_LR_SCALE = 1e-3
#: Advised when the step size is blamed and no finite update was ever measured (two decades).
NO_MEASURE_LR_SCALE = 1e-2
#: Where the run-up of the loss gives the step's excess (`runup_growth`), eta * lambda is
#: aimed here: a decade under the edge of stability, 2.
EDGE_AIM = 0.2
#: For stalled weights (updates far below 1e-3 of the weights): at least one decade up,
#: at most three — a larger jump would trade a stall for a blow-up.
MIN_UP_SCALE = 10.0
MAX_UP_SCALE = 1e3

#: A record's total gradient norm this far above the median of the records before it is
#: the run-up to the trouble, not a typical step (clipping advice).
RUNUP_FACTOR = 10.0

_TROUBLE = (Kind.EXPLODING_GRADIENT, Kind.NONFINITE_GRADIENT, Kind.DIVERGING_LOSS)
#: Findings that mark the damage a too-large step does (for the learning-rate advice):
#: units switched off for good are as much its work as an explosion.
_DAMAGE = (*_TROUBLE, Kind.DEAD_UNITS)


def total_grad_norm(timeline: Timeline) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, total)``: per record, sqrt(sum of squared layer gradient norms).

    A record with a non-finite gradient anywhere gives inf; one with no measured layer, NaN.
    """
    g = timeline.layer_metric("grad_norm")
    steps = timeline.steps
    if g.size == 0:
        return steps, np.full(len(steps), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        total = np.sqrt(np.nansum(g.astype(np.float64) ** 2, axis=1))
    total[np.all(np.isnan(g), axis=1)] = np.nan
    bad = timeline.layer_metric("grad_nonfinite")
    if bad.size:
        total[np.nansum(bad, axis=1) > 0] = np.inf
    total[np.any(np.isinf(g), axis=1)] = np.inf
    return steps, total


def trouble_step(diagnosis: Diagnosis | None, kinds: tuple[Kind, ...] = _TROUBLE) -> int | None:
    """The first step of a finding of `kinds` (exploding, non-finite or diverging by default), if any."""
    if diagnosis is None:
        return None
    steps = [f.step for f in diagnosis.findings if f.kind in kinds and f.step is not None]
    return min(steps) if steps else None


def _before_runup(total: np.ndarray) -> np.ndarray:
    """The finite totals up to the first one over `RUNUP_FACTOR` times the median of those before it."""
    kept: list[float] = []
    for v in total[np.isfinite(total) & (total > 0)]:
        if kept and v > RUNUP_FACTOR * float(np.median(kept)):
            break
        kept.append(float(v))
    return np.asarray(kept, dtype=np.float64)


def clip_grad_norm(timeline: Timeline | None, diagnosis: Diagnosis | None = None) -> tuple[float, str] | None:
    """The clipping threshold and why, or None when no finite gradient norm was recorded."""
    if timeline is not None and len(timeline):
        steps, total = total_grad_norm(timeline)
        until = trouble_step(diagnosis)
        if until is not None:
            early = total[steps <= until]
            if np.isfinite(early).any():
                total = _before_runup(early)
        finite = total[np.isfinite(total) & (total > 0)]
        if finite.size:
            p50, p90 = float(np.median(finite)), float(np.percentile(finite, 90))
            where = f"steps <= {until}" if until is not None else "all records"
            return _round(p50), (
                f"median total gradient norm over {finite.size} records ({where}) is {p50:.3g}, "
                f"90th percentile {p90:.3g}: clipping at the median caps spikes at a typical step's size"
            )
    if diagnosis is not None:
        norms = [r.measured_grad_norm for r in diagnosis.layers if r.measured_grad_norm is not None]
        norms = [n for n in norms if math.isfinite(n)]
        if norms:
            total_f = math.sqrt(sum(n * n for n in norms))
            if total_f > 0:
                return _round(total_f), (
                    f"total of the layers' recent median gradient norms is {total_f:.3g} (no timeline given)"
                )
    return None


def lr_scale(timeline: Timeline | None, diagnosis: Diagnosis | None = None, *, up: bool = False) -> tuple[float, str]:
    """The learning-rate factor and why (see the module docstring); `up` for stalled weights."""
    typical: list[float] = []  # per record: the median update ratio over its layers
    aftermath = False  # the damage came before the first measured update
    if timeline is not None and len(timeline):
        r = timeline.layer_metric("update_ratio")
        steps = timeline.steps
        until = trouble_step(diagnosis, _DAMAGE)
        if until is not None and r.size:
            keep = steps <= until
            keep[:2] = True  # the first update is only measured at the second record
            r, steps = r[keep], steps[keep]
        for row, step in zip(r, steps, strict=True):
            ok = row[np.isfinite(row) & (row > 0)]
            if ok.size:
                if not typical and until is not None and step >= until:
                    aftermath = True
                typical.append(float(np.median(ok)))
    elif diagnosis is not None:
        ok_list = [x.update_ratio for x in diagnosis.layers if x.update_ratio is not None]
        ok_list = [x for x in ok_list if math.isfinite(x) and x > 0]
        if ok_list:
            typical.append(float(np.median(ok_list)))
    if up:
        if not typical:
            return MIN_UP_SCALE, "no update was measured: one decade up"
        med = float(np.median(typical))
        scale = min(MAX_UP_SCALE, max(MIN_UP_SCALE, TARGET_UPDATE_RATIO / med))
        return _round(scale), (
            f"median update ratio ||dW||/||W|| is {med:.2g}; about {TARGET_UPDATE_RATIO:g} is a healthy step"
        )
    if not typical and (timeline is None or len(timeline) < 2):
        return MAX_LR_SCALE, "no update ratio is known (pass the run's timeline): one decade down"
    growth = runup_growth(timeline) if not typical and timeline is not None else None
    if growth is not None:
        g, start, peak, span = growth
        scale = min(MAX_LR_SCALE, max(MIN_LR_SCALE, EDGE_AIM / (1.0 + math.sqrt(g))))
        return _round(scale), (
            f"no finite update ratio was measured, but the loss rose from {start:.3g} to {peak:.3g} in {span} "
            f"step{'s' if span != 1 else ''}, x{g:.3g} per step: a step that far beyond the curvature's limit has "
            f"eta * lambda ~ 1 + sqrt({g:.3g}); brought to {EDGE_AIM:g}, a decade under the edge of stability (2)"
        )
    if not typical:
        return NO_MEASURE_LR_SCALE, (
            "no finite update ratio was measured (the updates overflowed before the first record "
            "that could measure one): two decades down"
        )
    # A step size is too large when its largest typical step is: damage (dead units, a
    # jump out of the basin) is done by the big early steps, after which updates may be tiny.
    # Bring that largest step to the top of the healthy band, not its centre: the typical
    # steps then sit below it. When the damage came before any update was measured, the
    # largest measured step understates the damaging one: aim it at the centre instead.
    top = max(typical)
    aim = TARGET_UPDATE_RATIO if aftermath else LARGEST_UPDATE_RATIO
    scale = min(MAX_LR_SCALE, max(MIN_LR_SCALE, aim / top))
    if aftermath:
        return _round(scale), (
            f"the damage came before the first measured update, whose median ratio ||dW||/||W|| "
            f"({top:.2g}) understates the steps that did it: brought to the healthy centre, {aim:g}"
        )
    return _round(scale), (
        f"largest per-record median update ratio ||dW||/||W|| is {top:.2g}; "
        f"steps up to about {aim:g} are healthy"
    )


def runup_growth(timeline: Timeline) -> tuple[float, float, float, int] | None:
    """``(growth per step, start, first loss of the run-up, steps)`` of the loss at the onset of a
    blow-up: the start's level is the median of the finite losses before the first one over
    `RUNUP_FACTOR` times the median of those before it; the growth is per step from the first
    loss to that one. None without such a rise (or with fewer than two finite losses)."""
    steps, loss = timeline.loss()
    finite = np.isfinite(loss)
    if finite.sum() < 2:
        return None
    stop = int(np.argmin(finite)) if not finite.all() else len(loss)  # up to the first non-finite
    kept: list[float] = []
    for i in range(stop):
        v = float(loss[i])
        if v <= 0:
            return None  # not a squared error (a log-likelihood can be negative)
        if kept and v > RUNUP_FACTOR * float(np.median(kept)):
            span = int(steps[i] - steps[0])
            start = float(np.median(kept))
            return (v / start) ** (1.0 / max(span, 1)), start, v, span
        kept.append(v)
    return None


def _round(x: float) -> float:
    """Two significant digits: advice a person can type."""
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.2g}")


# -- the rate for the model `fix` returns ----------------------------------------------------


def fixed_model_lr_scale(
    original: Any,
    fixed: Any,
    timeline: Timeline | None,
    diagnosis: Diagnosis | None,
    example_input: Any,
    *,
    blamed: str | None = None,
    deeper_path: bool = True,
    found: list[Any] | None = None,
) -> tuple[float, str] | None:
    """The learning-rate factor for the model `fix` returns, from its predicted first update
    (`fix.first_update.predict`), and why; None when it cannot be predicted (no timeline, no
    example input, no step measured).

    The predicted typical update ratio is brought into the healthy band
    ``[SMALLEST_UPDATE_RATIO, LARGEST_UPDATE_RATIO]`` (kept inside it). `blamed` is the
    step-size verdict on the run: ``"down"`` when the step size did damage — the advice then
    stays at least `MAX_LR_SCALE` down, one direction with its reason (a divergence may grow
    from steps that start in the band: the first update is a lower bound of what the rate
    does later) — or None.
    """
    from gradwatch.fix.first_update import predict  # the probe runs the model: import only here

    until = trouble_step(diagnosis, _DAMAGE)
    # After a step-size divergence the re-drawn model's first steps are its largest (its
    # gradient shrinks as it fits): brought to the top of the band, as `lr_scale` brings the
    # largest recorded step. A fix that changed the gradient's path makes every layer learn,
    # and its steps grow from the first (the loss sharpens as it trains; Cohen et al. 2021):
    # that first step is a typical one, brought to the healthy centre — unless the optimizer
    # normalises the gradient away (Adam, RMSprop): then its steps do not grow with it, and
    # only a step over the top of the band is brought down.
    # (`deeper_path`: the fix opened the path through depth — new activations, norms, skips;
    # a gated cell swapped in for a vanilla one carries its gradient through gates instead.)
    aim = LARGEST_UPDATE_RATIO if blamed == "down" or not deeper_path else TARGET_UPDATE_RATIO
    pred = predict(
        original, fixed, timeline, example_input, until=until, top=aim, bottom=SMALLEST_UPDATE_RATIO,
        adaptive_top=LARGEST_UPDATE_RATIO,
    )
    if pred is None:
        return None
    if found is not None:
        found.append(pred)  # the caller reads the predicted gradient too (`overflow_clip`)
    scale = pred.scale
    said = (
        f"the fixed model's first update is predicted at {pred.ratio:.2g} of its weights at the recipe's rate "
        f"({pred.why}); aimed at {SMALLEST_UPDATE_RATIO:g} .. {pred.top:g}"
    )
    if blamed == "down" and scale > MAX_LR_SCALE:
        scale = MAX_LR_SCALE
        return _round(scale), (
            f"{said}; the step size did damage at the recipe's rate, and a divergence grows from steps that "
            f"start in the band: at least one decade down"
        )
    if scale > 1.0:
        # Below the band: kept, never raised. The probe calibrates on the run, and a run
        # whose gradient a defect starved (dead or saturated units) reads too small a loss
        # scale; a rate raised on that reading is the step that diverges.
        return 1.0, f"{said}: below it, but a prediction never raises the rate: keep it (try x3 if it trains slowly)"
    if scale == 1.0:
        return 1.0, f"{said}: keep the rate"
    return _round(scale), f"{said}: the rate is scaled down to bring it into the band"


#: A predicted gradient norm within this factor of the square root of the float type's
#: largest number counts as overflowing (`overflow`): the prediction is an estimate.
OVERFLOW_MARGIN = 10.0


def overflow(grad: float, dtype: Any) -> bool:
    """Whether a gradient of total norm `grad` overflows an adaptive optimizer in `dtype`.

    Adam and RMSprop keep a running mean of the squared gradient, element by element, and
    `clip_grad_norm_` squares it to take its norm: past ``sqrt(finfo(dtype).max)`` (1.8e19 in
    float32) both turn inf, the step's denominator is inf and the parameter stops (and a clip
    scales every gradient to 0). A model ending in a large `ScaleOutput` (targets at 1e10 send
    gradients of order 1e20 through it under a squared error) gets there."""
    import torch  # only here: the advice module itself needs no torch

    try:
        bound = math.sqrt(float(torch.finfo(dtype).max)) / OVERFLOW_MARGIN
    except TypeError:
        return False
    return (math.isfinite(grad) and grad > bound) or grad == math.inf


#: What to try, and why, for a finding no remedy addressed (fix never leaves a sick run silent).
WHAT_TO_TRY: dict[str, str] = {
    Kind.DEAD_UNITS: (
        "units that output 0 for every input pass no gradient, and no step size moves them. Try: "
        "standardise the inputs (all-positive inputs against negative weights switch a ReLU off for every "
        "example), re-draw the layer feeding them, or a leaky activation (`nn.LeakyReLU(0.01)`; Keras "
        "`LeakyReLU`) so a unit that is off still passes a gradient"
    ),
    Kind.SATURATED_UNITS: (
        "saturated units pass next to no gradient. Try: standardise the inputs, a normalisation before the "
        "activation (`nn.BatchNorm1d`/`nn.LayerNorm`; Keras `BatchNormalization`), or a ReLU-family activation"
    ),
    Kind.VANISHING_GRADIENT: (
        "the early layers get too little gradient to learn. Try: an initialisation matched to the activation "
        "(He for ReLU, Xavier for tanh), ReLU-family activations, normalisation, or skip connections"
    ),
    Kind.EXPLODING_GRADIENT: (
        "the gradient grows through depth. Try: a smaller learning rate, gradient clipping "
        "(`torch.nn.utils.clip_grad_norm_`; Keras `clipnorm`), an initialisation matched to the activation"
    ),
    Kind.NONFINITE_GRADIENT: (
        "the gradient went inf/NaN. Try: a smaller learning rate and gradient clipping, standardised inputs "
        "and targets, and restarting from fresh weights"
    ),
    Kind.DIVERGING_LOSS: (
        "the loss rose. Try: a smaller learning rate (a third, then a tenth), gradient clipping, and "
        "standardised inputs and targets"
    ),
    Kind.TEMPORAL_VANISHING: (
        "the gradient does not reach the early time steps. Try: a gated cell (`nn.GRU`/`nn.LSTM`; Keras "
        "`GRU`/`LSTM`), orthogonal recurrent weights, or shorter sequences (truncated backpropagation)"
    ),
    Kind.STALLED_WEIGHTS: (
        "the weights barely move. Check that the optimizer holds this model's parameters and that the loss "
        "depends on them; if the gradients are healthy, a larger learning rate"
    ),
    Kind.FLAT_LOSS: (
        "the loss does not fall. Check the labels against the inputs and the loss against the output "
        "(raw logits for CrossEntropyLoss), standardise inputs and targets, then try another learning rate"
    ),
    Kind.CONSTANT_OUTPUT: (
        "the model ignores its input. Check the labels and the inputs (scale, a constant column), then the "
        "output activation's range against the targets"
    ),
}


def what_to_try(kind: str, message: str = "") -> str:
    """One line for a finding that no remedy addressed: the finding, what to try and why."""
    k = Kind.parse(kind)
    head = f"{k}: " + (message.split(";")[0] + ". " if message else "")
    return head + "No change to the model applies here; " + WHAT_TO_TRY.get(k, "see `gradwatch explain " + str(k) + "`") + "."
