"""The loss's state at the end of a Timeline (`loss_view`): where it started, where it is,
whether it still moves and how fast, read off the losses alone. Every detector takes its
severity from it (docs/detectors.md, "How severity is decided").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradwatch.anatomy import Anatomy
from gradwatch.detect._signals import num, recent_rows, site_series
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import _StrEnum

__all__ = ["FAILING", "LEARNING", "LossStatus", "LossView", "loss_view", "output_classes"]


class LossStatus(_StrEnum):
    """Where the loss stands (`LossView.status`); a str, so it prints and compares as its value."""

    UNKNOWN = "unknown"  # too few losses
    UNCLEAR = "unclear"  # not improving, not yet flat for long
    NONFINITE = "nonfinite"  # the latest loss is inf/NaN
    DIVERGING = "diverging"  # above its start, or most of the progress given back
    CONVERGED = "converged"  # far below its start or chance
    STUCK = "stuck"  # flat at its starting value or at chance
    IMPROVING = "improving"
    PLATEAU = "plateau"  # flat, after some progress, far from converged


#: Statuses in which training is not making progress.
FAILING = frozenset({LossStatus.STUCK, LossStatus.PLATEAU, LossStatus.DIVERGING, LossStatus.NONFINITE})
#: Statuses in which training is making, or has made, progress.
LEARNING = frozenset({LossStatus.IMPROVING, LossStatus.CONVERGED})


@dataclass(frozen=True)
class LossView:
    """Where the loss stands at the end of a Timeline.

    `status` is one of: ``unknown`` (too few losses), ``unclear`` (not improving, not
    yet flat for long), ``nonfinite`` (the latest loss is inf/NaN), ``diverging`` (above
    its start, or most of the progress given back), ``converged`` (far below its start
    or chance), ``stuck`` (flat at its starting value or at chance), ``improving``, and
    ``plateau`` (flat, after some progress, far from converged).
    """

    status: LossStatus
    start: float = math.nan
    recent: float = math.nan
    previous: float = math.nan
    best: float = math.nan
    noise: float = math.nan
    flat_steps: int = 0
    flat_since: int | None = None
    classes: int | None = None
    first_nonfinite: int | None = None
    steps_seen: int = 0
    best_step: int | None = None  # where the rolling median was lowest (where a rise began)
    first: float = math.nan  # the first finite loss
    #: For a loss that improves: the steps its current pace needs to reach convergence, over
    #: the steps run so far (NaN otherwise); `slow` when that is over `Thresholds.slow_pace`.
    pace: float = math.nan
    slow: bool = False
    #: Flat far below its start while the model gives every input the same output: the
    #: level a constant predictor reaches (the targets' average), not convergence.
    constant: bool = False

    def blew_past_chance(self, th: Thresholds) -> bool:
        """A classifier that began at or near chance and now sits well above both its first
        loss and chance — confidently wrong, falling or not."""
        return _blew_past(self.first, self.recent, self.chance, th)

    @property
    def failing(self) -> bool:
        return self.status in FAILING

    @property
    def learning(self) -> bool:
        return self.status in LEARNING

    @property
    def chance(self) -> float | None:
        return math.log(self.classes) if self.classes else None

    def at_chance(self, value: float, tolerance: float) -> bool:
        c = self.chance
        return c is not None and math.isfinite(value) and abs(value - c) <= tolerance * c

    def level_text(self, value: float, tolerance: float = 0.15) -> str:
        text = num(value)
        if self.at_chance(value, tolerance):
            c = self.chance
            assert c is not None
            near = "" if num(value) == num(c) else f"near chance, {num(c)}, "
            text += f" ({near or 'chance '}for {self.classes} classes)"
        return text

    def describe(self) -> str:
        """A clause a person reads after the gradient evidence."""
        s = self.status
        if s == LossStatus.STUCK and self.constant:
            return (
                f"the loss fell from {num(self.start)} to {num(self.recent)} and has stayed there for "
                f"{self.flat_steps} steps with the same output for every input: the best a constant "
                "prediction can do (the targets' average), learned without the inputs. If the targets "
                "cannot be predicted from the inputs at all, check the labels"
            )
        if s == LossStatus.STUCK:
            return f"the loss has stayed at {self.level_text(self.recent)} for {self.flat_steps} steps"
        if s == LossStatus.PLATEAU:
            return (
                f"the loss has stopped improving: {num(self.recent)} for the last "
                f"{self.flat_steps} steps (it started at {num(self.start)})"
            )
        if s == LossStatus.DIVERGING:
            return f"the loss rose to {num(self.recent)} (it started at {num(self.start)}, best {num(self.best)})"
        if s == LossStatus.NONFINITE:
            return f"the loss became non-finite at step {self.first_nonfinite}"
        if s == LossStatus.IMPROVING and self.slow:
            return (
                f"the loss still improves ({num(self.start)} -> {num(self.recent)}), but slowly: at "
                f"this pace it needs ~{num(self.pace)}x the {self.steps_seen} steps run so far to converge"
            )
        if s == LossStatus.IMPROVING:
            return f"the loss still improves ({num(self.start)} -> {num(self.recent)})"
        if s == LossStatus.CONVERGED:
            return f"the loss fell from {num(self.start)} to {num(self.recent)}"
        if s == LossStatus.UNCLEAR:
            return f"the loss has not clearly improved yet ({num(self.start)} -> {num(self.recent)})"
        return "too few losses were recorded to judge whether training progresses"

    def evidence(self) -> dict[str, float]:
        ev = {
            "loss_start": self.start,
            "loss_recent": self.recent,
            "loss_flat_steps": float(self.flat_steps),
        }
        if math.isfinite(self.pace):
            ev["loss_pace"] = self.pace
        if self.chance is not None:
            ev["loss_chance"] = self.chance
        return {k: float(v) for k, v in ev.items()}


def output_classes(anatomy: Anatomy) -> int | None:
    """C for a model whose last layer (in execution order) has C >= 2 outputs, else None.

    The last layer may be a tied use of an earlier layer's weight (an output head sharing
    the input embedding, as in GPT-2): its owner then carries the head's outputs.
    """
    for layer in anatomy.layers:
        head = layer.extra.get("tied_head")
        if head:
            return int(head) if head >= 2 else None
    ran = [layer for layer in anatomy.layers if layer.order is not None] or anatomy.layers
    for layer in reversed(ran):
        if layer.fan_out is not None and layer.fan_in is not None:
            return int(layer.fan_out) if layer.fan_out >= 2 else None
    return None


def _blew_past(first: float, recent: float, chance: float | None, th: Thresholds) -> bool:
    """Began at or within `chance_tolerance` of chance; now over `diverge_rise` above both
    that start and chance."""
    if chance is None or not (math.isfinite(first) and math.isfinite(recent)):
        return False
    above = max(first, chance)
    return first <= (1 + th.chance_tolerance) * chance and recent - above > th.diverge_rise * above


def loss_view(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> LossView:
    """Summarise the loss: where it started, where it is, and whether it still moves."""
    steps, values = timeline.loss()
    classes = output_classes(anatomy)
    if len(values) == 0:
        return LossView(LossStatus.UNKNOWN, classes=classes)
    finite = np.isfinite(values)
    first_bad = int(steps[~finite][0]) if not finite.all() else None
    v, s = values[finite], steps[finite]
    n = len(v)
    if not finite[-1]:
        # Before a blow-up the last finite losses are the blow-up itself: the start is read
        # from the first half of them (at most `loss_head`), so two losses 7.7e3, 3.4e34 give
        # 7.7e3, not their median.
        start = float(np.median(v[: max(1, min(th.loss_head, n // 2))])) if n else math.nan
        return LossView(
            LossStatus.NONFINITE, start=start, classes=classes, first_nonfinite=first_bad, steps_seen=len(values)
        )
    if n < th.loss_min_steps:
        return LossView(LossStatus.UNKNOWN, classes=classes, first_nonfinite=first_bad, steps_seen=len(values))

    head = v[: th.loss_head]
    # The start is a level, de-noised by a median; first losses that move steadily one way
    # over a decade are no level but a run already blowing up (or dropping) within them: the
    # first loss is where it started. (Noise that spans a decade, one-example batches, has
    # no such order: about half its pairs rise.)
    i, j = np.triu_indices(len(head), k=1)
    steady = len(head) >= 3 and max(float(np.mean(head[j] > head[i])), float(np.mean(head[j] < head[i]))) >= 0.9
    spans_decade = steady and bool(np.all(head > 0)) and float(head.max()) > 10 * float(head.min())
    start = float(head[0]) if spans_decade else float(np.median(head))
    head_se = 1.2533 * 1.4826 * float(np.median(np.abs(head - np.median(head)))) / math.sqrt(len(head))
    w = int(min(max(round(n * th.loss_tail_frac), th.loss_tail_min), th.loss_tail_max, n // 2))
    recent_vals, prev_vals = v[-w:], v[-2 * w : -w]
    recent, previous = float(np.median(recent_vals)), float(np.median(prev_vals))
    noise = 1.4826 * float(np.median(np.abs(recent_vals - recent)))
    se = 1.2533 * noise / math.sqrt(w)  # standard error of a median of w noisy values
    roll = np.median(np.lib.stride_tricks.sliding_window_view(v, w), axis=1)
    best = float(roll.min())
    last_min = len(roll) - 1 - int(np.argmin(roll[::-1]))  # the latest window at the minimum
    best_step = int(s[last_min + w - 1])

    # Flat: how long the rolling median has stayed within a band around the recent level.
    band = max(th.trend_sigmas * se, 0.5 * th.stuck_progress * abs(recent))
    off = np.nonzero(np.abs(roll - recent) > band)[0]
    since_idx = 0 if len(off) == 0 else int(off[-1]) + w
    flat_since = int(s[since_idx]) if since_idx < n else None
    flat_steps = int(s[-1] - flat_since + 1) if flat_since is not None else 0

    scale = abs(start) if start != 0 else max(float(np.max(np.abs(v))), 1e-12)
    chance = math.log(classes) if classes else None
    view = dict(
        start=start, recent=recent, previous=previous, best=best, noise=noise,
        flat_steps=flat_steps, flat_since=flat_since, classes=classes,
        first_nonfinite=first_bad, steps_seen=len(values), best_step=best_step, first=float(v[0]),
    )  # fmt: skip
    gained = start - best
    # Still falling: the last window's median is below the one before by more than chance
    # moves a median (3 standard errors of a difference) and by a thousandth of the level.
    # A loss that keeps falling is not stuck, however slowly: the flat band (5% of the
    # level) would otherwise call a slow, steady descent flat.
    falling = previous - recent > max(th.trend_sigmas * se * math.sqrt(2), 1e-3 * abs(previous))
    at_chance = chance is not None and abs(recent - chance) <= th.chance_tolerance * chance
    # Far below chance is a fitted classifier, even if the watch began after it converged.
    fitted = chance is not None and recent <= th.converged_frac * chance
    # A classifier that began at or below chance and now sits well above both: confidently
    # wrong, which no learning does. The start (a median of the first losses) misses it
    # when the loss blew up within those first steps and stayed up.
    first = float(v[0])
    blew_past_chance = _blew_past(first, recent, chance, th) and not falling
    if (blew_past_chance or spans_decade) and first <= start:
        view["start"], view["best"] = first, min(best, first)
        view["best_step"] = int(s[0]) if first <= best else best_step
    # A rise within the noise of the two medians is no rise: one-example batches swing a
    # loss by orders of magnitude from step to step.
    risen = recent - start > max(th.diverge_rise * scale, th.trend_sigmas * math.hypot(se, head_se))
    if risen or blew_past_chance:
        status = LossStatus.DIVERGING
    elif (
        gained > th.stuck_progress * scale
        and recent - best >= th.diverge_giveback * gained
        and recent - best > th.trend_sigmas * se
    ):
        status = LossStatus.DIVERGING
    elif (
        flat_steps >= th.flat_min_steps
        and not fitted
        and not falling
        and (abs(start - recent) <= th.stuck_progress * scale or at_chance)
    ):
        status = LossStatus.STUCK
    elif fitted or (start > 0 and recent <= th.converged_frac * start and not _confidently_wrong(timeline, first, chance, th)):
        status = LossStatus.CONVERGED
    elif falling:
        status = LossStatus.IMPROVING
        pace = _pace(v, s, w, start, chance, th)
        view["pace"], view["slow"] = pace, pace > th.slow_pace
    elif (
        at_chance
        and chance is not None
        and best >= (1 - th.chance_tolerance) * chance
        and int(s[-1] - s[0]) + 1 >= th.flat_min_steps
    ):
        # A noisy loss that has never got below chance: a classifier that has learned nothing.
        status = LossStatus.STUCK
        view["flat_since"], view["flat_steps"] = int(s[0]), int(s[-1] - s[0] + 1)
    elif flat_steps >= th.flat_min_steps:
        status = LossStatus.PLATEAU
    elif int(s[-1]) - best_step >= th.flat_min_steps:
        # Not flat by the band (a noisy loss that wanders: Adam oscillating on a regression
        # target's baseline), but no new low for as long as a flat loss must last: as
        # stalled as a flat one. Since the best is the measure of "since".
        stalled_at_start = abs(start - recent) <= th.stuck_progress * scale or at_chance
        status = LossStatus.STUCK if stalled_at_start else LossStatus.PLATEAU
        view["flat_since"], view["flat_steps"] = best_step, int(s[-1]) - best_step + 1
    else:
        status = LossStatus.UNCLEAR
    if (
        status in (LossStatus.CONVERGED, LossStatus.PLATEAU)
        and not fitted
        and not falling
        and flat_steps >= th.flat_min_steps
        and _constant_output(timeline, th)
    ):
        # A model that gives every input the same output can fall no lower than the best
        # constant's loss: flat there, it has learned the targets' average and nothing else.
        status = LossStatus.STUCK
        view["constant"] = True
    return LossView(status, **view)  # type: ignore[arg-type]


def _constant_output(timeline: Timeline, th: Thresholds) -> bool:
    """The output spread below `th.output_spread` on each of the last `th.persist` records."""
    spread = site_series(timeline, "output_spread", "output")
    if spread is None:
        return False
    recent = recent_rows(spread, th.persist)
    with np.errstate(invalid="ignore"):
        return len(recent) >= th.persist and bool(np.all(recent < th.output_spread))


def _confidently_wrong(timeline: Timeline, first: float, chance: float | None, th: Thresholds) -> bool:
    """A classifier whose first loss was far above chance (over `1 + chance_tolerance` times
    ln C) because its outputs were large: its logits began confidently wrong.

    Falling far below such a start is no convergence: the first steps only shrink the
    logits back to where chance is, and what is left to learn is measured from chance, the
    loss of a constant prediction. Read as cross-entropy only while the first loss is within
    what logits of the recorded spread s can cost, ln C + s * (sqrt(2 ln C) + 2) (the
    expected gap between the largest of C normal logits and the true one, with room): a
    squared error on outputs of spread s costs s^2 plus the targets' own spread, far above it.
    """
    if chance is None or not first > (1 + th.chance_tolerance) * chance:
        return False
    s = site_series(timeline, "output_rms", "output")
    if s is None:
        return False
    s = s[np.isfinite(s)]
    return bool(len(s)) and first <= chance + float(s[0]) * (math.sqrt(2 * chance) + 2)


def _pace(v: np.ndarray, s: np.ndarray, w: int, start: float, chance: float | None, th: Thresholds) -> float:
    """Steps the current pace needs to bring the loss to convergence, over the steps run so far.

    The pace is the fall from the window before the last to the last (medians of `w`
    losses) per step; convergence is the level the `converged` status asks for, whichever
    is higher of `converged_frac` of the start and of chance. NaN where that level is not
    defined (a loss that starts at or below zero) or the loss does not fall.
    """
    ref = max(start, chance or 0.0)
    if not ref > 0:
        return math.nan
    recent, previous = float(np.median(v[-w:])), float(np.median(v[-2 * w : -w]))
    dt = float(np.median(s[-w:]) - np.median(s[-2 * w : -w]))
    rate = (previous - recent) / max(dt, 1.0)
    if not rate > 0:
        return math.nan
    needed = max(recent - th.converged_frac * ref, 0.0) / rate
    return needed / float(s[-1] - s[0] + 1)
