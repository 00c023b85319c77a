"""`repair`'s rounds: watch the original, screen candidates, try the learning-rate axis, confirm.

Each round is one function over a `Session`: the user's training function, the `Ledger` of
every run so far and the `Budget` of steps. A round's docstring states its rule; the
module docstring of `gradwatch.fix.repair` tells the whole loop.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from gradwatch.anatomy.order import order_of
from gradwatch.fix._infer import infer_causes
from gradwatch.fix._ledger import Ledger, Session, Trial, fmt_score
from gradwatch.fix._watching import Watching
from gradwatch.fix.apply import apply
from gradwatch.fix.choose import choose, ranked_causes
from gradwatch.fix.remedies import BRINGS_INIT, PREFERENCE, Plan, Remedy, remedies_for
from gradwatch.record import Timeline
from gradwatch.types import Diagnosis, Finding, FixResult, Kind, Severity

#: The most candidates tried in the first round (the default trial length spreads half
#: of the spare budget over them and the original's two runs).
MAX_CANDIDATES = 4
#: How long the original is watched, at most, while it still looks healthy: Part 3's
#: detectors report problems present from initialisation within about 100 steps
#: (docs/performance.md, Detection), a few as late as 180.
DIAGNOSE_STEPS = 200


# -- round 0: the original's own run -----------------------------------------------------------


def watch_original(
    session: Session, original: nn.Module, watching: Watching, diagnosis: Diagnosis | None
) -> tuple[Diagnosis, int]:
    """Train the original s steps, watched, and diagnose it; returns (diagnosis, steps watched on).

    Rule: without a `diagnosis` given, the detectors judge the watched steps. While the
    original looks healthy it is watched on in chunks of s steps — free if it stays healthy
    (they are part of its own run) — up to `DIAGNOSE_STEPS`, and no further than leaves the
    first round three runs of s. A score that came out non-finite though the watched steps
    showed nothing is a divergence the watcher could not see (`_failed_unseen`).
    """
    budget, s, seed = session.budget, session.budget.trial, session.seed
    with watching:
        first = session.ledger[session.run("original", original, {}, seed, s)].trial
        diag = diagnosis if diagnosis is not None else watching.diagnose()
        if diagnosis is None and diag.healthy and not math.isfinite(first.score) and not first.error:
            diag.findings.append(_failed_unseen(first.score, s))
        horizon = min(budget.full - s, DIAGNOSE_STEPS - s, max(0, budget.spare - 3 * s))
        watched_on = 0
        while diagnosis is None and diag.healthy and watched_on < horizon:
            n = min(s, horizon - watched_on)
            session.run("original, watched on", original, {}, seed + 10 + watched_on, n, before=s + watched_on)
            watched_on += n
            diag = watching.diagnose()
    if watching.note:
        session.notes.append(watching.note)
    return diag, watched_on


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


# -- round 1: screening --------------------------------------------------------------------------


def candidates(
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
        clip = " (+clip)" if "clip_grad_norm" in result.advice and Remedy.LR not in p.remedies else ""
        out.append(("+".join(r for r in p.remedies) + clip, result))
    return out


@dataclass
class Screening:
    """What the first round found: the original's best short score, the margin a gain must
    beat, and the candidates' runs in the order tried."""

    baseline: float
    margin: float
    screened: list[int]


def screen(
    session: Session, model: nn.Module, cands: list[tuple[str, FixResult]], first: int, repeat_original: bool
) -> Screening:
    """Round 1: the original again from another seed, then each candidate for s steps.

    Rule: the original's repeat measures how much the score moves by chance; the margin a
    gain must beat is ``max(min_gain, 2 * |original - repeat|)`` (`min_gain` alone when
    either failed; 0.02 by default, in score units: two points of accuracy, about one
    standard error of an accuracy measured on 400 examples), and the baseline is the
    better of the two. Each candidate trains s steps
    from the original's own seed, in the chooser's order, while the budget still leaves the
    kept model its finishing run.
    """
    budget, s, seed = session.budget, session.budget.trial, session.seed
    ledger = session.ledger
    baseline, margin = ledger.score(first), float(session.min_gain)
    if cands and repeat_original and budget.affordable(2 * s, s):
        again = session.run("original (repeat, another seed)", copy.deepcopy(model), {}, seed + 1, s)
        baseline = max(ledger.score(first), ledger.score(again))
        if math.isfinite(ledger.score(first)) and math.isfinite(ledger.score(again)):
            margin = max(margin, 2 * abs(ledger.score(first) - ledger.score(again)))
    screened: list[int] = []
    for i, (name, result) in enumerate(cands):
        if not budget.affordable(s, s):
            session.notes.append(f"budget reached: {len(cands) - i} candidate(s) not tried")
            break
        screened.append(session.run(name, copy.deepcopy(result.model), dict(result.advice), seed, s, fix=result))
    if all(t.error for t in ledger.trials):
        session.notes.append(f"every run raised (first: {ledger[0].trial.error}); check train_fn")
    return Screening(baseline, margin, screened)


def leader(trials: list[Trial], candidates: list[int], margin: float) -> int | None:
    """The first candidate (in the order tried) whose score is within `margin` of the best.

    Candidates are tried in the chooser's order — its own pick first — so when short runs
    cannot tell candidates apart, the one the diagnosis points to leads.
    """
    finite = [i for i in candidates if math.isfinite(trials[i].score)]
    if not finite:
        return None
    best = max(trials[i].score for i in finite)
    return next(i for i in finite if trials[i].score >= best - margin)


# -- round 1b: the learning-rate axis --------------------------------------------------------


def changes_architecture(result: FixResult) -> bool:
    """True if the fix changes the model's layers, not only its weights or the advice."""
    return any(c.kind != Remedy.INIT for c in result.changes)


def scaled_advice(advice: dict[str, Any], factor: float) -> dict[str, Any]:
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


def to_explore(ledger: Ledger, screened: list[int], margin: float) -> tuple[int, bool] | None:
    """Which screened candidate gets the learning-rate axis, and in which direction.

    The architectural candidate that screened best (the first within `margin` of the best,
    as for the leader), upward; if none ran to a finite score, the first that failed
    without raising (a non-finite score: the step was too large), downward. A candidate
    that raised is not a learning-rate problem.
    """
    arch = [i for i in screened if (fix := ledger[i].fix) is not None and changes_architecture(fix)]
    best = leader(ledger.trials, arch, margin)
    if best is not None:
        return best, True
    failed = next((i for i in arch if not ledger[i].trial.error), None)
    return (failed, False) if failed is not None else None


def rate(trials: list[Trial], scales: list[int], min_gain: float, margin: float = 0.0) -> tuple[int | None, str]:
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


def rate_axis(session: Session, screening: Screening, lr_factors: tuple[float, ...]) -> list[int]:
    """Round 1b: the best-screened architectural candidate at other learning rates.

    Rule: a candidate that changes the architecture is not what the recipe's rate was
    chosen for. The one that screened best (`to_explore`) is also tried, s steps from the
    same seed, at `lr_factors` its advised rate, nearest first (x3, then x10) — turning to
    x1/3 if x3 did worse than x1 by more than `min_gain`, and starting at x1/3, x1/10 if its
    run at the advised rate failed. Its rates differ in nothing else, so they are compared
    with each other to within `min_gain`, not the margin; the run `rate` picks stands for
    the candidate among the screened ones (returned, in the candidate's place).
    """
    ledger, s, seed, min_gain = session.ledger, session.budget.trial, session.seed, session.min_gain
    screened = list(screening.screened)
    pick = to_explore(ledger, screened, screening.margin) if lr_factors else None
    if pick is None:
        return screened
    i, up = pick
    base = ledger[i]
    assert base.fix is not None
    steps_out = sorted(lr_factors, key=lambda f: abs(math.log(f)))  # nearest the advised rate first
    queue = [f if up else 1.0 / f for f in steps_out]
    scales = [i]
    while queue:
        f = queue.pop(0)
        if not session.budget.affordable(s, s):
            session.notes.append(f"budget reached: '{base.trial.name}' not tried at lr x{f:.3g} its advised rate")
            break
        j = session.run(
            f"{base.trial.name} @ lr x{f:.3g}", copy.deepcopy(base.fix.model), scaled_advice(base.fix.advice, f),
            seed, s, fix=base.fix, lr_factor=f, advised=i,
        )
        scales.append(j)
        if len(scales) == 2 and up and not ledger.score(j) >= base.trial.score - min_gain:
            # the first step up made it worse: the rate wants to go down instead
            queue = [1.0 / g for g in steps_out][: len(queue)]
    trials = ledger.trials
    best_scale, why_rate = rate(trials, scales, min_gain, screening.margin)
    if len(scales) > 1:
        tried = ", ".join(f"x{trials[j].lr_factor:.3g} {fmt_score(trials[j].score)}" for j in sorted(scales))
        chosen = f"x{trials[best_scale].lr_factor:.3g}" if best_scale is not None else "none (all failed)"
        session.notes.append(
            f"learning-rate axis: '{base.trial.name}' changes the architecture, so it was also tried at "
            f"other rates (times its advised rate, in the order tried: {tried}); it competes at {chosen}"
            + (f" ({why_rate})" if why_rate else "")
        )
    if best_scale is not None:
        screened[screened.index(i)] = best_scale
    return screened


# -- round 2: confirmation -------------------------------------------------------------------


def confirm(
    session: Session, screening: Screening, screened: list[int], original: nn.Module, watched_on: int
) -> tuple[int | None, float]:
    """Round 2: which run, if any, is kept; returns (its index or None, the baseline it beat).

    Rule: the *leader* is the first screened run within the margin of the best. When the
    original failed (non-finite both times) it is no yardstick: the diagnosis's own pick
    (the first screened) and the leader train on side by side, and the pick is kept unless
    the leader is ahead by more than the margin there. Otherwise a leader ahead of the
    baseline by more than twice the margin is kept at once — unless it leads at a rate of the
    axis, which is always confirmed at length. Else the leader and the original train on to
    the same length, as far as the budget allows, and the leader is kept only if ahead by
    more than the margin there; a leader at a rate of the axis that lost ground there (fell
    by more than the margin) runs at a rate too large to hold, and its candidate at the
    advised rate is kept instead if it beat the original by more than the margin in round 1.
    """
    ledger, budget, s, seed = session.ledger, session.budget, session.budget.trial, session.seed
    baseline, margin = screening.baseline, screening.margin
    trials = ledger.trials
    lead = leader(trials, screened, margin)
    # A rate other than the advised one is never kept on a short run alone: the rate that
    # makes the fastest start is often the largest that does not yet diverge, and some
    # diverge a few dozen steps later.
    advised = ledger[lead].advised if lead is not None else None
    own = screened[0] if screened else None  # the diagnosis's own pick, tried first
    if lead is None:
        return None, baseline
    if advised is None and not math.isfinite(baseline) and own is not None and own != lead and math.isfinite(trials[own].score):
        # The original failed, so every finite candidate is ahead of it, and what the short
        # runs still rank is how the candidates start.
        e = budget.extension()
        if e <= 0:
            return lead, baseline
        pick_on, lead_on = session.carry_on(own, e), session.carry_on(lead, e)
        return (lead_on if ledger.score(lead_on) > ledger.score(pick_on) + margin else pick_on), baseline
    if advised is None and trials[lead].score > baseline + 2 * margin:
        return lead, baseline  # a clear win: no need to look further
    # Some fixes only show after a plateau, and a small lead may be chance: only the loser's
    # steps are wasted.
    e = budget.extension(watched_on, fallback=advised is not None)
    if e <= 0:
        judged = advised if advised is not None else lead
        return (judged if trials[judged].score > baseline + margin else None), baseline
    need = s + e - (s + watched_on)
    if need > 0:
        a_score = ledger.score(session.run("original, continued", original, {}, seed + 3, need, before=s + watched_on))
    else:  # the original was already watched on at least that far
        a_score = ledger.score(ledger.latest_original(original))
    lead_on = session.carry_on(lead, e)
    b = ledger.score(lead_on)
    lost_ground = not b >= trials[lead].score - margin
    if advised is not None and lost_ground and trials[advised].score > baseline + margin:
        session.notes.append(
            f"lr x{trials[lead].lr_factor:.3g} led '{trials[advised].name}' in the short run "
            f"({fmt_score(trials[lead].score)}) but fell to {fmt_score(b)} after {s + e} steps: too "
            "large to hold; kept at its advised rate, which beat the original in the short run"
        )
        return advised, baseline
    if b > a_score + margin:
        return lead_on, a_score
    return None, baseline
