"""Predict the first update of the model `fix` returns, and the learning-rate factor that keeps it healthy.

Why: a fix that lets the gradient reach every layer again (saturating activations swapped
for ReLU with He weights, a vanilla RNN swapped for a GRU, fresh weights for a model a
divergence wrecked) makes every layer move about as fast as the head did. The recipe's
rate was tuned — or failed — on the broken model; on the fixed one it can diverge (a
4 x 500 sigmoid net made ReLU + He under SGD 0.1 is NaN within a few steps, and trains
at a third of it). The advice must be for the model `fix` returns, not the one it replaced.

How: one optimizer step moves a layer by ``||dW|| = eta * ||g||`` under SGD-like
optimizers (``eta`` the step size, momentum included) and by about ``rms(dW) * sqrt(n)``,
whatever the gradient, under adaptive ones (Adam, RMSprop divide by the gradient's own
scale). Both are measured on the run the watcher recorded (`step_size`), so two things
are needed about the fixed model:

- its gradient, per layer: one backward pass on a batch the watcher saw (the example
  input) through a *surrogate* loss, since the run's own loss and targets are not known to
  `fix`: ``L = (1/B) sum_i <r_i, f(x_i)>`` with ``r_i ~ N(0, I)`` drawn with a fixed seed —
  the gradient a mean-reduced loss sends into each output when every example's error is
  of unit size per output (MSE on standardised targets, cross-entropy at its start). The
  surrogate's scale is then *calibrated* against the run: the same probe on a model whose
  real gradients the timeline holds (the original as the last record saw it, or — when
  `fix` only re-drew weights — the fresh model against the first record, taken at the
  initialisation), and the median ratio of measured to surrogate gradient over the layers
  is the factor by which the real loss differs (targets in the thousands, a summed loss);
- its weights' norms, read directly.

A fixed model that ends in a `fix.data.ScaleOutput` layer (targets far beyond the output's
scale) is probed with the layer — the surrogate's gradient passes back through it, one
factor of the scale — and calibrated without it, against the run that had none: the
calibration factor carries the other (the run's errors were at the targets' scale).

The predicted update ratio ``||dW|| / ||W||`` of a layer is brought into the healthy band:
the median over layers (the typical step) at most `explain.causes.LARGEST_UPDATE_RATIO` — the
top of the band the step-size rule also aims the largest typical step at — and at least
``explain.causes.TARGET_UPDATE_RATIO / 10``; inside the band the rate is kept.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwatch.anatomy._call import call_model
from gradwatch.fix.advice import RUNUP_FACTOR
from gradwatch.fix.data import without_output_scale
from gradwatch.probes.output import first_tensor
from gradwatch.record import Timeline

#: The surrogate's random projection is drawn from this seed, so `fix` is deterministic.
SURROGATE_SEED = 0
#: A log-log slope of update against gradient (over layers and records) below this means
#: the optimizer normalises the gradient away (Adam, RMSprop): its step does not follow it.
ADAPTIVE_SLOPE = 0.5
#: Gradients must spread over at least this many decades (standard deviation of log10) for
#: that slope to be read; with less the optimizer is taken to follow the gradient.
SLOPE_SPREAD = 0.15
#: Weights whose norms differ from a record's by more than this factor are not the weights
#: that record measured (calibration needs the same weights).
SAME_WEIGHTS = 1.5


@dataclass
class StepSize:
    """What the run's optimizer did with a gradient: ``eta`` (update / gradient, SGD-like) or,
    when `adaptive`, ``rms`` (the typical per-parameter update, whatever the gradient)."""

    adaptive: bool
    eta: float
    rms: float
    points: int


def _own(m: nn.Module) -> list[torch.Tensor]:
    return [p for p in m.parameters(recurse=False) if p.requires_grad]


def layer_numels(model: nn.Module, names: list[str]) -> dict[str, int]:
    mods = dict(model.named_modules())
    return {n: sum(p.numel() for p in _own(mods[n])) for n in names if n in mods}


def step_size(timeline: Timeline | None, model: nn.Module, until: int | None = None) -> StepSize | None:
    """The step size the recorded run's optimizer took, from records up to step `until`.

    Each (record, layer) with a finite, positive gradient and update gives a point. Under
    SGD (with or without momentum) the update follows the gradient, ``u = eta g``; under an
    adaptive optimizer the per-parameter update stays near the rate whatever the gradient.
    The slope of log(update rms) against log(gradient rms) tells them apart: across the layers'
    medians over the records where the layers' gradients differ, else over all points.
    """
    if timeline is None or len(timeline) < 2:
        return None
    g = timeline.layer_metric("grad_norm")
    u = timeline.layer_metric("update_norm")
    if g.size == 0 or u.size == 0:
        return None
    steps = timeline.steps
    numel = layer_numels(model, list(timeline.layers))
    n = np.asarray([float(numel.get(name, 0)) for name in timeline.layers])
    keep = np.ones(len(steps), dtype=bool) if until is None else steps <= until
    keep[:2] = True  # the first update is measured at the second record
    # A record's update was made by the previous step's gradient, its gradient is this step's
    # (see below). In the run-up to a blow-up the gradient grows by orders of magnitude in that
    # one step, and their ratio says nothing of the step size (a record at the first diverging
    # step read 6e-25 for SGD at 0.01): records whose loss grew over `RUNUP_FACTOR`^2 in the
    # step before them (a squared error's gradient grows like its square root), or went
    # non-finite in it, are left out, in a run that had trouble (`until`).
    if until is not None:
        keep &= _after_one_step_runup(timeline)
    g, u = g[keep].astype(np.float64), u[keep].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = np.isfinite(g) & np.isfinite(u) & (g > 0) & (u > 0) & (n[None, :] > 0)
        g_rms = (g / np.sqrt(np.maximum(n, 1.0))[None, :])[ok]
        u_rms = (u / np.sqrt(np.maximum(n, 1.0))[None, :])[ok]
    if g_rms.size == 0:
        return None
    # A record's update is the previous step's (the watcher snapshots the weights before it
    # and measures after), its gradient this step's: one minibatch apart. A ratio of medians
    # over the records, per layer, averages most of that noise out; what is left scatters the
    # layers' estimates, and the largest is taken: a rate too small costs speed, one too large
    # diverges.
    etas = [
        float(np.median(u[ok[:, j], j]) / np.median(g[ok[:, j], j])) for j in range(g.shape[1]) if ok[:, j].any()
    ]
    lg, lu = np.log10(g_rms), np.log10(u_rms)
    # The slope is read across layers, from each layer's medians over the records, where the
    # layers' gradients differ: a record's update and gradient come from two minibatches, and
    # with small batches (one example) their sizes scatter independently from record to
    # record, which flattens a slope read over (record, layer) points toward 0 (an SGD run
    # read as adaptive). Without two layers whose gradients differ, the points are used.
    cols = [j for j in range(g.shape[1]) if ok[:, j].any()]
    root = np.sqrt(np.maximum(n, 1.0))
    mg = np.log10([float(np.median(g[ok[:, j], j])) / root[j] for j in cols]) if cols else np.zeros(0)
    mu = np.log10([float(np.median(u[ok[:, j], j])) / root[j] for j in cols]) if cols else np.zeros(0)
    if mg.size >= 2 and float(np.std(mg)) >= SLOPE_SPREAD:
        lg, lu = mg, mu
    adaptive = False
    if lg.size >= 2 and float(np.std(lg)) >= SLOPE_SPREAD and (lg.size >= 3 or lg is mg):
        slope = float(np.cov(lg, lu, bias=True)[0, 1] / np.var(lg))
        adaptive = slope < ADAPTIVE_SLOPE
    return StepSize(
        adaptive=adaptive,
        eta=float(max(etas)),
        rms=float(np.median(u_rms)),
        points=int(g_rms.size),
    )


def _after_one_step_runup(timeline: Timeline) -> np.ndarray:
    """Per record: False when the loss grew over `RUNUP_FACTOR` squared in the one step before
    it, or turned non-finite in it (True where the losses are not known)."""
    steps, loss = timeline.loss()
    at = dict(zip(steps.tolist(), loss.tolist(), strict=True))
    ok = np.ones(len(timeline), dtype=bool)
    for i, s in enumerate(timeline.steps.tolist()):
        now, before = at.get(int(s)), at.get(int(s) - 1)
        if now is None or before is None or not (math.isfinite(before) and before > 0):
            continue
        ok[i] = math.isfinite(now) and now <= RUNUP_FACTOR**2 * before
    return ok


def surrogate_gradients(model: nn.Module, example_input: Any) -> dict[str, tuple[float, float]] | None:
    """Per module with trainable parameters of its own: ``(gradient norm, weight norm)`` under
    the surrogate loss (module docstring), on a copy of `model` in training mode; None when
    the model gives no floating-point output or the gradient is not finite."""
    probe = copy.deepcopy(model)
    probe.train()
    for p in probe.parameters():
        p.grad = None
    state = torch.random.get_rng_state()
    try:
        with torch.enable_grad():
            out = first_tensor(call_model(probe, example_input))
            if out is None or not out.is_floating_point() or out.numel() == 0 or not out.requires_grad:
                return None
            gen = torch.Generator(device="cpu").manual_seed(SURROGATE_SEED)
            r = torch.randn(out.shape, generator=gen, dtype=torch.float32).to(out.device, out.dtype)
            batch = out.shape[0] if out.dim() > 1 else 1
            (out * r).sum().div(batch).backward()
    finally:
        torch.random.set_rng_state(state)
    found: dict[str, tuple[float, float]] = {}
    for name, m in probe.named_modules():
        own = _own(m)
        grads = [p.grad for p in own if p.grad is not None]
        if not grads:
            continue
        gn = math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in grads))
        wn = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in own))
        if not (math.isfinite(gn) and math.isfinite(wn)):
            return None
        found[name] = (gn, wn)
    return found


def _record_row(timeline: Timeline, metric: str, index: int) -> dict[str, float]:
    row = timeline.layer_metric(metric)[index]
    return {name: float(v) for name, v in zip(timeline.layers, row, strict=True)}


def _finite_rows(timeline: Timeline) -> list[int]:
    g = timeline.layer_metric("grad_norm")
    w = timeline.layer_metric("weight_norm")
    return [
        i for i in range(len(timeline)) if np.isfinite(g[i]).any() and bool(np.isfinite(w[i][np.isfinite(g[i])]).all())
    ]


def _ratio(measured: dict[str, tuple[float, float]], grads: dict[str, float], weights: dict[str, float]) -> float | None:
    """Median over layers of recorded / surrogate gradient, for layers whose weight norms match."""
    ratios = []
    for name, (gs, ws) in measured.items():
        gr, wr = grads.get(name), weights.get(name)
        if gr is None or wr is None or not (math.isfinite(gr) and math.isfinite(wr)) or gs <= 0 or gr <= 0:
            continue
        if ws > 0 and wr > 0 and max(ws / wr, wr / ws) > SAME_WEIGHTS:
            return None  # other weights than the record measured
        ratios.append(gr / gs)
    return float(np.median(ratios)) if ratios else None


def calibration(
    original: nn.Module, fixed_probe: dict[str, tuple[float, float]], timeline: Timeline, example_input: Any,
    *, same_architecture: bool,
) -> tuple[float, str]:
    """The factor from the surrogate's gradient to the run's, and where it was read."""
    rows = _finite_rows(timeline)
    if rows:
        first, last = rows[0], rows[-1]
        probe = surrogate_gradients(original, example_input) or {}
        # the original as a record measured it: as the last record saw it (the model a user
        # holds after the run), or as the first did (the model built afresh, as the run began)
        for row in dict.fromkeys((last, first)) if probe else ():
            c = _ratio(probe, _record_row(timeline, "grad_norm", row), _record_row(timeline, "weight_norm", row))
            if c is not None:
                return c, f"the run's gradient is {c:.2g} x the surrogate's (the original model at step {int(timeline.steps[row])})"
        if same_architecture and int(timeline.steps[first]) == int(timeline.steps[0]):
            grads = _record_row(timeline, "grad_norm", first)
            ratios = [grads[n] / gs for n, (gs, _) in fixed_probe.items() if n in grads and gs > 0 and grads[n] > 0 and math.isfinite(grads[n])]
            if ratios:
                c = float(np.median(ratios))
                return c, f"the run's gradient is {c:.2g} x the surrogate's (fresh weights against the first record, step {int(timeline.steps[first])})"
    return 1.0, "the run's gradient taken to be the surrogate's (nothing to calibrate it on)"


@dataclass
class Prediction:
    """The fixed model's predicted first update ratio (median over its layers) and the factor
    that brings it into the healthy band."""

    ratio: float
    scale: float
    why: str
    top: float = 0.0
    #: The fixed model's predicted total gradient norm under the run's loss (the calibrated
    #: surrogate's; NaN when it could not be calibrated), and whether the optimizer normalises it.
    grad: float = math.nan
    adaptive: bool = False


def predict(
    original: nn.Module,
    fixed: nn.Module,
    timeline: Timeline | None,
    example_input: Any,
    *,
    until: int | None = None,
    top: float,
    bottom: float,
    adaptive_top: float | None = None,
) -> Prediction | None:
    """Predict the first update ratio of `fixed` under the recorded run's optimizer, and the
    learning-rate factor that puts its median over layers into ``[bottom, top]`` (1 inside)."""
    if example_input is None or timeline is None:
        return None
    step = step_size(timeline, original, until)
    if step is None:
        return None
    try:
        probe = surrogate_gradients(fixed, example_input)
    except Exception:  # a model that cannot run its example input here gets no prediction
        return None
    if not probe:
        return None
    numel = layer_numels(fixed, list(probe))
    recorded = set(timeline.layers)
    same = recorded == set(probe) and all(
        numel.get(n) == v for n, v in layer_numels(original, list(recorded)).items()
    )
    try:
        # Calibrating fresh weights against the first record compares them with the model as
        # the run built it: without a `ScaleOutput` layer `fix` appended. The layer's factor
        # then enters once, through `probe` (the gradient it sends back), while `c` carries
        # the run's error size; under a squared error the two make the scale^2 the layer
        # puts on every gradient (`fix.data`).
        plain = without_output_scale(fixed)
        base = probe if plain is None else surrogate_gradients(plain, example_input) or probe
        c, where = calibration(original, base, timeline, example_input, same_architecture=same)
        calibrated = not where.startswith("the run's gradient taken")
    except Exception:
        c, where, calibrated = 1.0, "the run's gradient taken to be the surrogate's", False
    grad = c * math.sqrt(sum(gs * gs for gs, _ in probe.values())) if calibrated else math.nan
    if step.adaptive:
        updates = {n: step.rms * math.sqrt(max(numel.get(n, 0), 1)) for n in probe}
        how = f"the run's optimizer normalises its steps (typical per-parameter update {step.rms:.2g})"
        top = adaptive_top if adaptive_top is not None else top
    else:
        updates = {n: step.eta * c * gs for n, (gs, _) in probe.items()}
        how = f"the run's step was {step.eta:.2g} x its gradient; {where}"
    ratios = [updates[n] / ws for n, (_, ws) in probe.items() if ws > 0 and math.isfinite(updates[n])]
    if not ratios:
        return None
    ratio = float(np.median(ratios))
    if not (math.isfinite(ratio) and ratio > 0):
        return None
    scale = 1.0
    if ratio > top:
        scale = top / ratio
    elif ratio < bottom:
        scale = bottom / ratio
    return Prediction(ratio=ratio, scale=scale, why=how, top=top, grad=grad, adaptive=step.adaptive)
