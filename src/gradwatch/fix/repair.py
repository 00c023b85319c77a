"""`repair`: diagnose a model from a short run of the user's own training, try candidate fixes in short A/B runs, keep one only when it measurably wins.

The user's ``train_fn(model, advice, steps) -> score`` trains `model` in place for
`steps` optimizer steps and returns a score where **higher is better** (a validation
accuracy, or minus a loss). ``advice`` is a dict the function should honour when it
holds these keys: ``lr_scale`` (multiply the learning rate) and ``clip_grad_norm``
(call ``torch.nn.utils.clip_grad_norm_(model.parameters(), value)`` before each
optimizer step); other keys (``manual``, ``why``) are for people.

The loop, with N = `steps` (one full training run) and B = `budget` (1.5):

1. the original trains for s steps watched by a `gradwatch.Recorder` (gradients read in a global
   optimizer-step hook, the loss caught where ``loss.backward()`` is called, the first
   forward's input kept as the example input for `gw.fix`) — unless a `diagnosis` is
   passed. While it looks healthy it is watched on in chunks of s steps, up to
   `DIAGNOSE_STEPS`, so the detectors have evidence (free if it stays healthy: those steps
   are part of its own run). If the diagnosis is healthy, nothing is tried;
2. the original trains once more for s steps from another seed, to see how much the
   score moves by chance; then up to four candidates — the fix `gw.fix` chooses, each
   of its remedies alone when it has several, the alternative remedies for the same
   causes — each train s steps from the same seed as the first original run.
   The learning-rate axis: a candidate that changes the architecture (a swapped
   activation or cell, inserted norms, residual wrapping) is not what the recipe's
   learning rate was chosen for, and nothing in the original's run measures the rate it
   wants. The one that screened best is also tried, s steps from the same seed, at
   `lr_factors` (x3, then x10) its advised rate — turning to x1/3 if x3 did worse than
   x1, and starting at x1/3, x1/10 if its run at the advised rate failed (a non-finite
   score). Its rates differ in nothing else (same model, same data order), so they are
   compared with each other to within `min_gain`, not the margin; the one within it of
   their best nearest the advised rate stands for the candidate — one step smaller if a
   still larger rate did measurably worse (`_rate`);
3. the *leader* is the first candidate (in that order, so the diagnosis's own pick
   leads a tie) within the margin of the best score. The margin is
   ``max(min_gain, 2 * |original - original repeat|)``: a gain must exceed twice what
   chance alone moved the original by, and never be less than `min_gain` (0.02 in
   score units: two points of accuracy, about one standard error of an accuracy
   measured on 400 examples). A leader ahead of the original by more than twice the
   margin is kept at once — unless it leads at a rate of the axis: the rate that makes
   the fastest start is often the largest that does not yet diverge, so it is always
   confirmed at length;
4. otherwise the leader and the original both train on to the same length, as far as the budget allows,
   and the leader is kept only if it is ahead by more than the margin there (some fixes
   only show after a plateau, and a small early lead may be chance). A leader at a rate
   of the axis that lost ground there (its score fell by more than the margin with more
   steps) runs at a rate too large to hold: if its candidate at the advised rate beat
   the original by more than the margin in the first round, that is kept instead (the
   budget of this round is split so that it can still be finished); otherwise the
   leader is judged as any other. When the original failed (non-finite both times) it
   is no yardstick, so a leader that is not the diagnosis's own pick is confirmed
   against that pick instead, and the pick is kept unless the leader is ahead by more
   than the margin at length;
5. the model kept (the winner, or the original) trains on to N steps in all
   (`finish=True`), so the caller gets a trained model.

Cost: every step trained counts. The kept model's own steps are part of its N; the
others are the overhead, held to (B - 1) N: half of it for the first round (s =
(B - 1) N / 10 by default: five short runs besides the kept one), the rest for the
learning-rate axis (two runs of s) and the second round. So the total never exceeds B N
steps — the earlier AutoTrainer retrained from scratch with randomly chosen repairs at 2.2x.
A candidate whose step is dearer (a GRU for an RNN, an added BatchNorm) costs more wall
time per step than the original.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from gradwatch._compiled import unwrap
from gradwatch._errors import GradwatchTypeError, GradwatchValueError
from gradwatch._optim import has_closure
from gradwatch.anatomy.order import order_of
from gradwatch.fix._infer import infer_causes
from gradwatch.fix._surgery import copy_model
from gradwatch.fix.apply import apply
from gradwatch.fix.choose import choose, ranked_causes
from gradwatch.fix.remedies import BRINGS_INIT, PREFERENCE, Plan, Remedy, remedies_for
from gradwatch.record import Timeline
from gradwatch.types import Change, Diagnosis, Finding, FixResult, Kind, Severity

TrainFn = Callable[[nn.Module, dict[str, Any], int], float]


@dataclass
class Trial:
    """One short training run: what was trained, with what advice, and how it scored."""

    name: str
    changes: list[Change]
    advice: dict[str, Any]
    steps: int
    score: float
    seconds: float
    error: str = ""
    kept: bool = False
    lr_factor: float = 1.0  # the candidate's advised learning rate times this (the lr axis)

    @property
    def lr_scale(self) -> float:
        """The learning-rate multiplier this run trained with (1.0: the recipe's own rate)."""
        return float(self.advice.get("lr_scale", 1.0))


@dataclass
class RepairResult:
    """What `repair` tried, what each scored, and what it kept.

    Attributes:
        model: the trained winner (or the trained original) when ``finish=True``;
            otherwise the untrained fixed model (or a copy of the original).
        fix: the kept `FixResult`, or None when the original was kept.
        advice: the advice to train the model with (empty when the original was kept);
            its ``lr_scale`` is the rate the kept fix won at.
        trials: every short run, the original's first; a run of the learning-rate
            axis is named ``'<candidate> @ lr x<factor>'`` (`Trial.lr_factor`,
            `Trial.lr_scale`).
        baseline: the better of the original's short-run scores.
        margin: how much a candidate had to beat the baseline by.
        final_score: the score after the finishing run (None without it).
        steps: one full run (N); steps_used: steps trained in all; budget_steps: the limit.
        seconds: wall time of the whole repair.
    """

    model: nn.Module
    fix: FixResult | None
    advice: dict[str, Any]
    trials: list[Trial]
    baseline: float
    margin: float
    diagnosis: Diagnosis
    steps: int
    steps_used: int
    budget_steps: int
    seconds: float
    final_score: float | None = None
    notes: list[str] = field(default_factory=list)
    timeline: Timeline | None = None  # the original's watched short run (None when a diagnosis was passed)

    @property
    def improved(self) -> bool:
        return self.fix is not None

    @property
    def cost(self) -> float:
        """Steps trained, in units of one full training run."""
        return self.steps_used / self.steps

    def __str__(self) -> str:
        kept = next((t for t in self.trials if t.kept), None)
        if kept is not None:
            head = (
                f"repair: kept '{kept.name}': score {_fmt(kept.score)} against the original's "
                f"{_fmt(self.baseline)} (margin {_fmt(self.margin)})"
            )
        elif self.diagnosis.healthy:
            head = "repair: the original is healthy; nothing to try"
        else:
            head = (
                f"repair: no candidate beat the original's {_fmt(self.baseline)} by more than "
                f"{_fmt(self.margin)}; kept the original"
            )
        lines = [head, f"  {'trial':<40} {'lr':>8} {'steps':>6} {'score':>9} {'time':>7}"]
        for t in self.trials:
            mark = "  kept" if t.kept else (f"  error: {t.error}" if t.error else "")
            lines.append(
                f"  {t.name:<40} {_lr(t.lr_scale):>8} {t.steps:>6} {_fmt(t.score):>9} {t.seconds:>6.1f}s{mark}"
            )
        if self.fix is not None:
            lines.append("  changes:")
            lines += [f"    - {c}" for c in self.fix.changes]
            for k in ("lr_scale", "clip_grad_norm"):
                if k in self.advice:
                    lines.append(f"    - train with {k} = {self.advice[k]}")
        if self.final_score is not None:
            lines.append(f"  after the full run: score {_fmt(self.final_score)}")
        lines.append(
            f"  cost: {self.steps_used} steps = {self.cost:.2f}x one run of {self.steps} "
            f"(budget {self.budget_steps}), {self.seconds:.1f} s"
        )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(x: float) -> str:
    return "failed" if not math.isfinite(x) else f"{x:.4g}"


def _lr(scale: float) -> str:
    return f"x{scale:.3g}"


# -- watching the user's own loop --------------------------------------------------------------


class _LossTap:
    """Catches the tensor each ``loss.backward()`` is called on.

    ``torch.Tensor.backward`` is wrapped while the original is watched (and restored on
    exit): one Python call per backward, where a `TorchFunctionMode` would intercept every
    torch operation of the forward pass as well.
    """

    #: at most this many losses wait for an optimizer step (a loop that never steps one)
    CAP = 1024

    def __init__(self) -> None:
        self.pending: list[torch.Tensor] = []
        self._original: Any = None

    def __enter__(self) -> _LossTap:
        original = torch.Tensor.backward
        pending = self.pending
        cap = self.CAP

        @functools.wraps(original)
        def backward(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if tensor.numel() == 1:
                if len(pending) >= cap:
                    del pending[: cap // 2]
                pending.append(tensor.detach().reshape(()))
            return original(tensor, *args, **kwargs)

        self._original = original
        torch.Tensor.backward = backward  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._original is not None:
            torch.Tensor.backward = self._original  # type: ignore[method-assign]
            self._original = None


class _Watching:
    """Watches the original while `train_fn` trains it, over one or several calls.

    Gradients are read in a global optimizer-step pre-hook (the optimizer is the user's
    own, built inside `train_fn`) — in the post-hook for a step given a closure, which
    computes its gradients inside the step — the loss where ``loss.backward()`` is
    called, and the first forward's input is kept as the example input for `gw.fix`.
    """

    def __init__(self, model: nn.Module, diagnose: bool, every: int) -> None:
        self.model = model
        self.diagnose_it = diagnose
        self.every = every
        self.example_input: Any = None
        self.timeline: Timeline | None = None
        self.note = ""
        self._broken: list[str] = []
        self._handles: list[Any] = []
        self._tap = _LossTap()
        self._recorder: Any = None

    def __enter__(self) -> _Watching:
        from gradwatch.recorder import Recorder  # fix sits above the recorder: imported where used

        self._handles.append(self.model.register_forward_pre_hook(self._keep_input, with_kwargs=True))
        if self.diagnose_it:
            self._recorder = Recorder(self.model, every=self.every)
            self.timeline = self._recorder.timeline
            own = {id(p) for p in self.model.parameters()}

            def record(opt: torch.optim.Optimizer) -> None:
                if self._broken or not any(id(p) in own for g in opt.param_groups for p in g["params"]):
                    return
                try:
                    if self._tap.pending:
                        self._recorder.add_loss(torch.stack(self._tap.pending).mean())
                        self._tap.pending.clear()
                    self._recorder.gradients_ready()
                except Exception as e:  # watching is best-effort: it must never break the user's run
                    self._broken.append(f"{type(e).__name__}: {e}")

            def before(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
                if not has_closure(args, kwargs):
                    record(opt)

            def after(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
                if has_closure(args, kwargs):  # its gradients were computed inside the step
                    record(opt)

            self._handles.append(register_optimizer_step_pre_hook(before))
            self._handles.append(register_optimizer_step_post_hook(after))
            self._tap.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.diagnose_it:
            self._tap.__exit__(None, None, None)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._recorder is not None:
            self._recorder.close()

    def _keep_input(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if self.example_input is None and not torch.compiler.is_compiling():
            if kwargs and not args:
                self.example_input = dict(kwargs)
            elif not kwargs:
                # a tuple, list or dict is spread into the call (`anatomy._call.split_input`):
                # one such argument travels inside a tuple, to be passed as it came
                one = len(args) == 1 and isinstance(args[0], torch.Tensor)
                self.example_input = args[0] if one else tuple(args)

    def diagnose(self) -> Diagnosis:
        if self._recorder is None:
            return Diagnosis()
        if self._broken:
            self.note = f"watching the original's run stopped early ({self._broken[0]}); the diagnosis covers the steps before"
        elif self._recorder.step_count == 0:
            self.note = (
                "no torch.optim optimizer step on the model's parameters was seen during the original's "
                "run, so it could not be diagnosed; pass diagnosis= (from gw.watch inside train_fn)"
            )
        return self._recorder.diagnose()


# -- the loop -----------------------------------------------------------------------------------


def _candidates(
    model: nn.Module, diagnosis: Diagnosis, example_input: Any, timeline: Timeline | None
) -> list[tuple[str, FixResult]]:
    """The fix `gw.fix` picks, each of its remedies alone, then alternatives for the same causes."""
    plan = choose(model, diagnosis, example_input=example_input, timeline=timeline)
    plans: list[Plan] = []
    if plan.remedies:
        plans.append(plan)
    primaries = [r for r in plan.remedies if not (r == Remedy.INIT and BRINGS_INIT & set(plan.remedies))]
    if len(primaries) > 1:
        for r in primaries:
            single = Plan()
            single.add(r, plan.reasons[r], **plan.options.get(r, {}))
            single.clip = plan.clip and r == Remedy.LR
            plans.append(single)
    order = order_of(model, example_input)
    seen = {tuple(sorted(p.remedies)) for p in plans}
    alternatives: list[tuple[int, Plan]] = []
    for f in diagnosis.findings:
        if f.severity <= Severity.INFO:
            continue
        kinds = [c.kind for c in ranked_causes(f, diagnosis)] or infer_causes(model, order, f.kind, f.step)
        for k in kinds[:2]:
            for r in remedies_for(k, order):
                alt = Plan()
                alt.add(r, f"alternative for {f.kind}: {str(k).replace('_', ' ')}")
                alt.clip = r == Remedy.LR
                key = tuple(sorted(alt.remedies))
                if key not in seen:
                    seen.add(key)
                    alternatives.append((PREFERENCE.index(r), alt))
    plans += [p for _, p in sorted(alternatives, key=lambda t: t[0])]
    out: list[tuple[str, FixResult]] = []
    for p in plans:
        result = apply(model, p, diagnosis, example_input=example_input, timeline=timeline)
        if not result.changes and not any(k in result.advice for k in ("lr_scale", "clip_grad_norm")):
            continue
        out.append(("+".join(r for r in p.remedies) + (" (+clip)" if "clip_grad_norm" in result.advice and Remedy.LR not in p.remedies else ""), result))
    return out


def _score(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError) as e:
        raise GradwatchTypeError(
            f"train_fn must return a number (higher is better), got {type(x).__qualname__}"
        ) from e
    return v if math.isfinite(v) else -math.inf


#: The most candidates tried in the first round (the default trial length spreads half
#: of the spare budget over them and the original's two runs).
MAX_CANDIDATES = 4
#: How long the original is watched, at most, while it still looks healthy: Part 3's
#: detectors report problems present from initialisation within about 100 steps
#: (docs/performance.md, Detection), a few as late as 180.
DIAGNOSE_STEPS = 200
#: Factors on an architectural candidate's advised learning rate tried besides x1 (the
#: learning-rate axis). Learning rates act on a log scale and a good one is flat to within
#: a factor of two or three, so half-decade steps are the coarsest grid that cannot step
#: over a working rate; one decade is what two runs of s buy while leaving the second
#: round more than half of its share. Upward first, because what a finite run at the
#: advised rate leaves open is a plateau the new layers cross only with a larger step (a
#: fresh GRU's updates pass through its gates; `docs/fix.md`, Limits); the axis turns down
#: by the same factors when the first step up does worse, or when the run at the advised
#: rate failed.
LR_FACTORS: tuple[float, ...] = (3.0, 10.0)


def _changes_architecture(result: FixResult) -> bool:
    """True if the fix changes the model's layers, not only its weights or the advice."""
    return any(c.kind != Remedy.INIT for c in result.changes)


def _scaled_advice(advice: dict[str, Any], factor: float) -> dict[str, Any]:
    """`advice` with its learning-rate scale (1 when absent) multiplied by `factor`."""
    out = copy.deepcopy(advice)
    base = float(advice.get("lr_scale", 1.0))
    out["lr_scale"] = float(f"{base * factor:.6g}")
    why = dict(out.get("why", {}))
    why["lr_scale"] = (
        f"repair's learning-rate axis: x{factor:.3g} the advised {base:.3g}, measured in short runs "
        "(the architecture changed, and the recipe's rate was chosen for the old one)"
    )
    out["why"] = why
    return out


def _to_explore(
    trials: list[Trial], screened: list[int], results: dict[int, FixResult], margin: float
) -> tuple[int, bool] | None:
    """Which screened candidate gets the learning-rate axis, and in which direction.

    The architectural candidate that screened best (the first within `margin` of the best,
    as for the leader), upward; if none ran to a finite score, the first that failed
    without raising (a non-finite score: the step was too large), downward. A candidate
    that raised is not a learning-rate problem.
    """
    arch = [i for i in screened if _changes_architecture(results[i])]
    best = _leader(trials, arch, margin)
    if best is not None:
        return best, True
    failed = next((i for i in arch if not trials[i].error), None)
    return (failed, False) if failed is not None else None


def _leader(trials: list[Trial], candidates: list[int], margin: float) -> int | None:
    """The first candidate (in the order tried) whose score is within `margin` of the best.

    Candidates are tried in the chooser's order — its own pick first — so when short runs
    cannot tell candidates apart, the one the diagnosis points to leads.
    """
    finite = [i for i in candidates if math.isfinite(trials[i].score)]
    if not finite:
        return None
    best = max(trials[i].score for i in finite)
    return next(i for i in finite if trials[i].score >= best - margin)


def _rate(trials: list[Trial], scales: list[int], min_gain: float, margin: float = 0.0) -> tuple[int | None, str]:
    """Which of one candidate's runs at several learning rates stands for it, and why.

    The rate nearest the advised one (upward first) within `min_gain` of the best score:
    a larger rate must earn its place by a measurable gain, since what it risks — a
    divergence after the short run — the short run cannot show. And if a still larger
    rate did measurably worse, the best one is at the edge of what is stable over a
    short run, and training sharpens the loss further (Cohen et al. 2021, progressive
    sharpening): the next smaller rate tried stands instead. "Measurably worse" there is
    worse by more than the `margin` (and `min_gain`).
    """
    finite = sorted((j for j in scales if math.isfinite(trials[j].score)), key=lambda j: trials[j].lr_factor)
    if not finite:
        return None, ""
    best = max(trials[j].score for j in finite)
    chosen = min(
        (j for j in finite if trials[j].score >= best - min_gain),
        key=lambda j: (abs(math.log(trials[j].lr_factor)), trials[j].lr_factor < 1),
    )
    # "Did worse" at the edge is evidence that the larger rate has begun to diverge, so it
    # must exceed what chance moves a score (the margin, as for every other verdict here),
    # not just `min_gain`: a tanh RNN made a GRU scored -0.87 / -0.16 / -0.19 at x1 / x3 /
    # x10 after 15 steps, with a margin of 0.2 — x10 a little behind, not diverging.
    worse = max(min_gain, margin)
    above = [
        j for j in scales
        if trials[j].lr_factor > trials[chosen].lr_factor and not trials[j].score >= best - worse
    ]
    below = [j for j in finite if trials[j].lr_factor < trials[chosen].lr_factor]
    if above and below:
        edge = trials[chosen].lr_factor
        return below[-1], f"x{edge:.3g} is at the edge: a larger rate did worse"
    return chosen, ""


def _failed_unseen(score: float, steps: int) -> Finding:
    """The original's own score was non-finite though the watched steps showed nothing wrong."""
    return Finding(
        kind=Kind.DIVERGING_LOSS,
        severity=Severity.ERROR,
        layers=[],
        step=steps,
        evidence={"score_nonfinite": 1.0},
        message=(
            f"train_fn returned a non-finite score ({score}) after {steps} steps, though the steps "
            "gradwatch watched showed nothing wrong: the run diverged where the watcher could not see it "
            "(a train_fn that stops at the first non-finite loss, before its backward, hides the blow-up)"
        ),
    )


def _extension(
    steps: int, s: int, spent: int, budget_steps: int, finish: bool, ahead: int = 0, fallback: bool = False
) -> int:
    """How far the leader can train on in round 2 (the original is brought to the same length).

    The leader goes on by e; the original, already `ahead` steps past s, by max(0, e - ahead);
    the one kept is then finished to `steps` (costing steps - s - e), so
    spent + e + max(0, e - ahead) + (steps - s - e) <= budget_steps, and s + e <= steps.
    With `fallback`, a run of s steps may be kept instead of the leader (finishing it
    costs steps - s), so the leader's e steps count as well.
    """
    room = budget_steps - spent - (steps - s if finish else 0)
    if room < 0:
        return 0
    # e + max(0, e - ahead) - (e if finish and not fallback else 0) <= room
    if finish and not fallback:
        e = room + ahead
    else:
        e = (room + ahead) // 2 if room > ahead else room
    return max(0, min(steps - s, e))


def _latest_original(trials: list[Trial], trained_steps: list[int]) -> int:
    """The trial of the original (not its repeat) whose model has trained longest."""
    return max(
        (i for i, t in enumerate(trials) if t.name.startswith("original") and "repeat" not in t.name),
        key=lambda i: trained_steps[i],
    )


def _print(t: Trial) -> None:
    extra = f" (error: {t.error})" if t.error else ""
    print(
        f"repair: {t.name:<40} lr {_lr(t.lr_scale):<7} score {_fmt(t.score):>9}  {t.steps} steps  "
        f"{t.seconds:.1f}s{extra}",
        flush=True,
    )


def repair(
    model: nn.Module,
    train_fn: TrainFn,
    *,
    steps: int,
    budget: float = 1.5,
    trial_steps: int | None = None,
    diagnosis: Diagnosis | None = None,
    example_input: Any = None,
    min_gain: float = 0.02,
    repeat_original: bool = True,
    finish: bool = True,
    seed: int = 0,
    lr_factors: tuple[float, ...] = LR_FACTORS,
    progress: bool | Callable[[Trial], None] = True,
) -> RepairResult:
    """Diagnose, try candidate fixes in short A/B runs, keep one only if it measurably wins.

    Args:
        model: the model to repair (never changed; every run trains a copy).
        train_fn: ``train_fn(model, advice, steps) -> score``: trains `model` in place for
            `steps` optimizer steps honouring ``advice["lr_scale"]`` and
            ``advice["clip_grad_norm"]`` when present, and returns a score where higher
            is better (validation accuracy, minus the loss). NaN counts as a failure.
        steps: the length of one full training run (N).
        budget: the most steps trained in all, in units of N.
        trial_steps: the length of each first-round run (default (budget - 1) N / 10).
        diagnosis: skip the watched run's own diagnosis and use this one.
        example_input: an input for `gw.fix` (default: the first batch the original saw).
        min_gain: the smallest score gain that counts (see the module docstring).
        repeat_original: run the original twice to measure the run-to-run spread.
        finish: train the winner on to N steps so the result is a trained model.
        seed: `torch.manual_seed` before each run, so candidates see the same data order
            and dropout draws as the original (the global RNG is restored afterwards).
        lr_factors: the learning-rate axis: factors (other than 1) on the advised rate at
            which the best-screened architectural candidate is also tried; reciprocals when
            its run at the advised rate failed; ``()`` turns the axis off.
        progress: print a line per run (True), stay quiet (False), or call this with each `Trial`.

    Returns:
        A `RepairResult`; ``print(result)`` shows every trial and its score.
    """
    model = unwrap(model)  # type: ignore[assignment]  # a torch.compile wrapper: repair its module
    if not isinstance(model, nn.Module):
        raise GradwatchTypeError(f"repair() expects a torch.nn.Module, got {type(model).__qualname__}")
    if not callable(train_fn):
        raise GradwatchTypeError(
            f"train_fn must be a callable train_fn(model, advice, steps) -> score, got {type(train_fn).__qualname__}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise GradwatchValueError(f"steps must be the length of one full training run (a positive int), got {steps!r}")
    if not isinstance(budget, int | float) or not budget >= 1.0:
        raise GradwatchValueError(
            f"budget must be at least 1.0 (one full run; 1.5 allows a few trials), got {budget!r}"
        )
    budget_steps = math.floor(budget * steps + 1e-9)
    waste = budget_steps - steps  # steps that may go to runs whose model is not the one kept
    s = trial_steps if trial_steps is not None else max(1, waste // (2 * (MAX_CANDIDATES + 1)))
    if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= steps:
        raise GradwatchValueError(f"trial_steps must be an int between 1 and steps={steps}, got {trial_steps!r}")
    if not isinstance(lr_factors, tuple | list) or not all(
        isinstance(f, int | float) and not isinstance(f, bool) and math.isfinite(f) and f > 0 and f != 1
        for f in lr_factors
    ):
        raise GradwatchValueError(
            f"lr_factors must be a tuple of positive finite factors other than 1 (e.g. (3.0, 10.0); () for none), "
            f"got {lr_factors!r}"
        )
    if diagnosis is not None and not isinstance(diagnosis, Diagnosis):
        raise GradwatchTypeError(f"diagnosis must be a gradwatch.Diagnosis or None, got {type(diagnosis).__qualname__}")
    report: Callable[[Trial], None] | None = _print if progress is True else (progress or None)
    trials: list[Trial] = []
    models: list[nn.Module] = []  # the model each trial trained (a continued trial shares its model)
    trained_steps: list[int] = []  # steps the model of each trial has been trained in all
    notes: list[str] = []
    started = time.perf_counter()

    def run(name: str, m: nn.Module, advice: dict[str, Any], run_seed: int, changes: list[Change],
            n: int, before: int = 0, lr_factor: float = 1.0) -> Trial:
        torch.manual_seed(run_seed)
        t0 = time.perf_counter()
        error = ""
        try:
            score = _score(train_fn(m, dict(advice), n))
        except GradwatchTypeError:
            raise
        except Exception as e:  # a candidate that crashes is a failed candidate
            score, error = -math.inf, f"{type(e).__name__}: {e}"
        trial = Trial(name, changes, advice, n, score, time.perf_counter() - t0, error, lr_factor=lr_factor)
        trials.append(trial)
        models.append(m)
        trained_steps.append(before + n)
        if report is not None:
            report(trial)
        return trial

    spent = 0

    def carry_on(i: int, e: int) -> int:
        """Train trial `i`'s candidate on by `e` steps, as a trial of its own; returns its index."""
        nonlocal spent
        run(f"{trials[i].name}, continued", models[i], dict(trials[i].advice), seed + 3,
            list(results[i].changes), e, before=s, lr_factor=trials[i].lr_factor)
        spent += e
        results[len(trials) - 1] = results[i]
        return len(trials) - 1

    def affordable(extra: int, keep_trained: int) -> bool:
        """Can `extra` more steps be trained and the kept model still be finished to N?"""
        finish_cost = steps - keep_trained if finish else 0
        return spent + extra + finish_cost <= budget_steps

    with torch.random.fork_rng(devices=[]):
        original = copy_model(model, inplace=False)  # a model torch cannot copy is named here
        watching = _Watching(original, diagnose=diagnosis is None, every=max(1, min(10, s // 3)))
        with watching:
            first = run("original", original, {}, seed, [], s)
            spent = s
            diag = diagnosis if diagnosis is not None else watching.diagnose()
            if diagnosis is None and diag.healthy and not math.isfinite(first.score) and not first.error:
                diag.findings.append(_failed_unseen(first.score, s))
            # Detectors need some steps of evidence. While the original looks healthy, watch
            # it on in chunks: free if it stays healthy (they are part of its own run), and
            # held to what leaves the first round its budget if a problem shows late.
            horizon = min(steps - s, DIAGNOSE_STEPS - s, max(0, waste - 3 * s))
            watched_on = 0
            while diagnosis is None and diag.healthy and watched_on < horizon:
                n = min(s, horizon - watched_on)
                run("original, watched on", original, {}, seed + 10 + watched_on, [], n, before=s + watched_on)
                spent += n
                watched_on += n
                diag = watching.diagnose()
        if watching.note:
            notes.append(watching.note)
        baseline, margin = first.score, float(min_gain)
        winner: int | None = None
        cands: list[tuple[str, FixResult]] = []
        results: dict[int, FixResult] = {}
        if not diag.healthy:
            torch.manual_seed(seed)
            example = example_input if example_input is not None else watching.example_input
            cands = _candidates(model, diag, example, watching.timeline)[:MAX_CANDIDATES]
            if not cands:
                notes.append("no transform or advice applies to this model for the findings; see gw.fix(...).advice['manual']")
            if cands and repeat_original and affordable(2 * s, s):
                again = run("original (repeat, another seed)", copy.deepcopy(model), {}, seed + 1, [], s)
                spent += s
                baseline = max(first.score, again.score)
                if math.isfinite(first.score) and math.isfinite(again.score):
                    margin = max(margin, 2 * abs(first.score - again.score))
            for i, (name, result) in enumerate(cands):
                if not affordable(s, s):
                    notes.append(f"budget reached: {len(cands) - i} candidate(s) not tried")
                    break
                run(name, copy.deepcopy(result.model), dict(result.advice), seed, list(result.changes), s)
                results[len(trials) - 1] = result
                spent += s
            if all(t.error for t in trials):
                notes.append(f"every run raised (first: {trials[0].error}); check train_fn")
            screened = list(results)
            # The learning-rate axis: the best-screened architectural candidate at other
            # rates, from the same seed. Its scales differ only in the rate, so they are
            # compared with each other to within min_gain (not the margin, which measures
            # how much another data order moves the original); `_rate` says which one
            # stands for the candidate.
            advised_of: dict[int, int] = {}  # a run of the lr axis -> its candidate's run at the advised rate
            pick = _to_explore(trials, screened, results, margin) if lr_factors else None
            if pick is not None:
                i, up = pick
                steps_out = sorted(lr_factors, key=lambda f: abs(math.log(f)))  # nearest the advised rate first
                queue = [f if up else 1.0 / f for f in steps_out]
                scales = [i]
                while queue:
                    f = queue.pop(0)
                    if not affordable(s, s):
                        notes.append(f"budget reached: '{trials[i].name}' not tried at lr x{f:.3g} its advised rate")
                        break
                    t_f = run(f"{trials[i].name} @ lr x{f:.3g}", copy.deepcopy(results[i].model),
                              _scaled_advice(results[i].advice, f), seed, list(results[i].changes), s, lr_factor=f)
                    results[len(trials) - 1] = results[i]
                    advised_of[len(trials) - 1] = i
                    scales.append(len(trials) - 1)
                    spent += s
                    if len(scales) == 2 and up and not t_f.score >= trials[i].score - min_gain:
                        # the first step up made it worse: the rate wants to go down instead
                        queue = [1.0 / g for g in steps_out][: len(queue)]
                best_scale, why_rate = _rate(trials, scales, min_gain, margin)
                if len(scales) > 1:
                    tried = ", ".join(
                        f"x{trials[j].lr_factor:.3g} {_fmt(trials[j].score)}" for j in sorted(scales)
                    )
                    chosen = f"x{trials[best_scale].lr_factor:.3g}" if best_scale is not None else "none (all failed)"
                    notes.append(
                        f"learning-rate axis: '{trials[i].name}' changes the architecture, so it was also tried at "
                        f"other rates (times its advised rate, in the order tried: {tried}); it competes at {chosen}"
                        + (f" ({why_rate})" if why_rate else "")
                    )
                if best_scale is not None:
                    screened[screened.index(i)] = best_scale
            leader = _leader(trials, screened, margin)
            # A rate other than the advised one is never kept on a short run alone: the
            # rate that makes the fastest start is often the largest that does not yet
            # diverge, and some diverge a few dozen steps later. It is confirmed at length,
            # and falls back to the candidate's advised rate if it loses ground there.
            advised = advised_of.get(leader) if leader is not None else None
            own = screened[0] if screened else None  # the diagnosis's own pick, tried first
            if (
                leader is not None
                and advised is None
                and not math.isfinite(baseline)
                and own is not None
                and own != leader
                and math.isfinite(trials[own].score)
            ):
                # The original failed, so it is no yardstick: every finite candidate is ahead
                # of it, and what the short runs still rank is how the candidates start. The
                # diagnosis's own pick (at the rate that stands for it), led there, trains on
                # beside the leader (round 2 with the pick in the original's place) and is
                # kept unless the leader is ahead by more than the margin.
                e = _extension(steps, s, spent, budget_steps, finish)
                if e > 0:
                    pick_on, lead_on = carry_on(own, e), carry_on(leader, e)
                    winner = lead_on if trials[lead_on].score > trials[pick_on].score + margin else pick_on
                else:
                    winner = leader
            elif leader is not None and advised is None and trials[leader].score > baseline + 2 * margin:
                winner = leader  # a clear win: no need to look further
            elif leader is not None:
                # Round 2: the leader did not pull clearly ahead in s steps (some fixes only
                # show after a plateau, and a small lead may be chance). Train it and the
                # original on to the same length, as far as the budget allows — only the
                # loser's steps are wasted — and keep it only if it is ahead by more than
                # the margin there.
                e = _extension(steps, s, spent, budget_steps, finish, watched_on, fallback=advised is not None)
                if e > 0:
                    need = s + e - (s + watched_on)
                    if need > 0:
                        a_score = run("original, continued", original, {}, seed + 3, [], need, before=s + watched_on).score
                        spent += need
                    else:  # the original was already watched on at least that far
                        a_score = trials[_latest_original(trials, trained_steps)].score
                    lead_on = carry_on(leader, e)
                    b = trials[lead_on]
                    lost_ground = not b.score >= trials[leader].score - margin
                    if advised is not None and lost_ground and trials[advised].score > baseline + margin:
                        # more steps at that rate lost ground: too large to hold, even if
                        # still ahead; the candidate at its advised rate beat the original
                        notes.append(
                            f"lr x{trials[leader].lr_factor:.3g} led '{trials[advised].name}' in the short run "
                            f"({_fmt(trials[leader].score)}) but fell to {_fmt(b.score)} after {s + e} steps: too "
                            "large to hold; kept at its advised rate, which beat the original in the short run"
                        )
                        winner = advised
                    elif b.score > a_score + margin:
                        winner, baseline = lead_on, a_score
                else:
                    judged = advised if advised is not None else leader
                    if trials[judged].score > baseline + margin:
                        winner = judged
            if winner is not None:
                trials[winner].kept = True
        kept_fix: FixResult | None = None
        advice: dict[str, Any] = {}
        final_score: float | None = None
        if winner is not None:
            # the fix as kept: its advice carries the learning rate it won at
            kept_fix = FixResult(
                model=results[winner].model, changes=list(results[winner].changes),
                advice=copy.deepcopy(trials[winner].advice),
            )
            advice = dict(kept_fix.advice)
            idx = winner
        else:  # the original: its longest-trained run
            idx = _latest_original(trials, trained_steps)
        out_model = models[idx]
        rest = steps - trained_steps[idx]
        if finish and rest > 0:
            torch.manual_seed(seed + 2)
            final_score = _score(train_fn(out_model, dict(advice), rest))
            spent += rest
        elif finish:  # the kept run already had all N steps
            final_score = trials[idx].score
        else:
            out_model = copy.deepcopy(kept_fix.model) if kept_fix is not None else copy.deepcopy(model)
    return RepairResult(
        model=out_model,
        fix=kept_fix,
        advice=advice,
        trials=trials,
        baseline=baseline,
        margin=margin,
        diagnosis=diag,
        steps=steps,
        steps_used=spent,
        budget_steps=budget_steps,
        seconds=time.perf_counter() - started,
        final_score=final_score,
        notes=notes,
        timeline=watching.timeline,
    )
