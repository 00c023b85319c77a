"""`repair`: diagnose a model from a short run of the user's own training, try candidate fixes in short A/B runs, keep one only when it measurably wins.

The user's ``train_fn(model, advice, steps) -> score`` trains `model` in place for
`steps` optimizer steps and returns a score where **higher is better** (a validation
accuracy, or minus a loss). ``advice`` is a dict the function should honour when it
holds these keys: ``lr_scale`` (multiply the learning rate) and ``clip_grad_norm``
(call ``torch.nn.utils.clip_grad_norm_(model.parameters(), value)`` before each
optimizer step); other keys (``manual``, ``why``) are for people.

The loop, with N = `steps` (one full training run), B = `budget` (1.5) and s the length of
a short run, is a sequence of rounds (`gradwatch.fix._rounds`; each function's docstring
states its rule), every run entered in a ledger (`gradwatch.fix._ledger`):

0. `watch_original`: the original trains s steps watched by a `gradwatch.Recorder`
   (`gradwatch.fix._watching`), watched on while it looks healthy, and is diagnosed —
   unless a `diagnosis` is passed. A healthy diagnosis ends it: nothing is tried;
1. `screen`: the original once more from another seed (the margin a gain must beat is
   twice what chance moved it by), then up to four candidates — the fix `gw.fix` chooses,
   each of its remedies alone when it has several, the alternatives for the same causes
   (`candidates`) — s steps each from the original's seed;
2. `rate_axis`: the best-screened candidate that changes the architecture also at other
   learning rates (`lr_factors` its advised one), since the recipe's was chosen for the
   old architecture;
3. `confirm`: the leader is kept at once when clearly ahead, else trained on beside the
   original and kept only if still ahead by more than the margin;
4. the model kept (the winner, or the original) trains on to N steps in all
   (`finish=True`), so the caller gets a trained model.

Cost: every step trained counts (`Budget`). The kept model's own steps are part of its N;
the others are the overhead, held to (B - 1) N: half of it for the first round (s =
(B - 1) N / 10 by default: five short runs besides the kept one), the rest for the
learning-rate axis (two runs of s) and the second round. So the total never exceeds B N
steps — the earlier AutoTrainer retrained from scratch with randomly chosen repairs at 2.2x.
A candidate whose step is dearer (a GRU for an RNN, an added BatchNorm) costs more wall
time per step than the original.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradwatch._compiled import unwrap
from gradwatch._errors import GradwatchTypeError, GradwatchValueError
from gradwatch.fix._ledger import Budget, Session, TrainFn, Trial, fmt_score, score_of
from gradwatch.fix._rounds import (
    DIAGNOSE_STEPS,
    MAX_CANDIDATES,
    candidates,
    confirm,
    rate_axis,
    screen,
    watch_original,
)
from gradwatch.fix._surgery import copy_model
from gradwatch.fix._watching import Watching
from gradwatch.record import Timeline
from gradwatch.types import Diagnosis, FixResult

__all__ = ["DIAGNOSE_STEPS", "LR_FACTORS", "MAX_CANDIDATES", "RepairResult", "TrainFn", "Trial", "repair"]


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

    def _repr_html_(self) -> str:
        """Jupyter's view: the trials as printed, the original's diagnosis and gradient flow."""
        from gradwatch.report.notebook import repair_html  # the report stage, loaded on use

        return repair_html(self)

    def __str__(self) -> str:
        kept = next((t for t in self.trials if t.kept), None)
        if kept is not None:
            head = (
                f"repair: kept '{kept.name}': score {fmt_score(kept.score)} against the original's "
                f"{fmt_score(self.baseline)} (margin {fmt_score(self.margin)})"
            )
        elif self.diagnosis.healthy:
            head = "repair: the original is healthy; nothing to try"
        else:
            head = (
                f"repair: no candidate beat the original's {fmt_score(self.baseline)} by more than "
                f"{fmt_score(self.margin)}; kept the original"
            )
        lines = [head, f"  {'trial':<40} {'lr':>8} {'steps':>6} {'score':>9} {'time':>7}"]
        for t in self.trials:
            mark = "  kept" if t.kept else (f"  error: {t.error}" if t.error else "")
            lines.append(
                f"  {t.name:<40} {_lr(t.lr_scale):>8} {t.steps:>6} {fmt_score(t.score):>9} {t.seconds:>6.1f}s{mark}"
            )
        if self.fix is not None:
            lines.append("  changes:")
            lines += [f"    - {c}" for c in self.fix.changes]
            for k in ("lr_scale", "clip_grad_norm"):
                if k in self.advice:
                    lines.append(f"    - train with {k} = {self.advice[k]}")
        if self.final_score is not None:
            lines.append(f"  after the full run: score {fmt_score(self.final_score)}")
        lines.append(
            f"  cost: {self.steps_used} steps = {self.cost:.2f}x one run of {self.steps} "
            f"(budget {self.budget_steps}), {self.seconds:.1f} s"
        )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _lr(scale: float) -> str:
    return f"x{scale:.3g}"


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



def _print(t: Trial) -> None:
    extra = f" (error: {t.error})" if t.error else ""
    print(
        f"repair: {t.name:<40} lr {_lr(t.lr_scale):<7} score {fmt_score(t.score):>9}  {t.steps} steps  "
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
    started = time.perf_counter()
    session = Session(train_fn, seed, Budget(steps, budget_steps, s, finish), min_gain, report)
    ledger = session.ledger
    with torch.random.fork_rng(devices=[]):
        original = copy_model(model, inplace=False)  # a model torch cannot copy is named here
        watching = Watching(original, diagnose=diagnosis is None, every=max(1, min(10, s // 3)))
        diag, watched_on = watch_original(session, original, watching, diagnosis)
        baseline, margin = ledger.score(0), float(min_gain)
        winner: int | None = None
        if not diag.healthy:
            torch.manual_seed(seed)
            example = example_input if example_input is not None else watching.example_input
            cands = candidates(model, diag, example, watching.timeline)[:MAX_CANDIDATES]
            if not cands:
                session.notes.append(
                    "no transform or advice applies to this model for the findings; see gw.fix(...).advice['manual']"
                )
            screening = screen(session, model, cands, 0, repeat_original)
            screened = rate_axis(session, screening, tuple(lr_factors))
            winner, baseline = confirm(session, screening, screened, original, watched_on)
            margin = screening.margin
            if winner is not None:
                ledger[winner].trial.kept = True
        kept_fix: FixResult | None = None
        advice: dict[str, Any] = {}
        final_score: float | None = None
        if winner is not None:
            # the fix as kept: its advice carries the learning rate it won at
            won = ledger[winner]
            assert won.fix is not None
            kept_fix = FixResult(model=won.fix.model, changes=list(won.fix.changes), advice=copy.deepcopy(won.trial.advice))
            advice = dict(kept_fix.advice)
            idx = winner
        else:  # the original: its longest-trained run
            idx = ledger.latest_original(original)
        out_model = ledger[idx].model
        rest = steps - ledger[idx].trained
        if finish and rest > 0:
            torch.manual_seed(seed + 2)
            final_score = score_of(train_fn(out_model, dict(advice), rest))
            session.budget.spent += rest
        elif finish:  # the kept run already had all N steps
            final_score = ledger.score(idx)
        else:
            out_model = copy.deepcopy(kept_fix.model) if kept_fix is not None else copy.deepcopy(model)
    return RepairResult(
        model=out_model,
        fix=kept_fix,
        advice=advice,
        trials=ledger.trials,
        baseline=baseline,
        margin=margin,
        diagnosis=diag,
        steps=steps,
        steps_used=session.budget.spent,
        budget_steps=budget_steps,
        seconds=time.perf_counter() - started,
        final_score=final_score,
        notes=session.notes,
        timeline=watching.timeline,
    )
