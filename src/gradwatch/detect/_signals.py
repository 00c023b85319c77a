"""Evidence the detectors share: persistence over records, relative gradients, the loss's state.

Everything here is a pure function of a Timeline (and the Anatomy), tolerant of missing
values: NaN means "not measured" and is skipped, never propagated into a verdict.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradwatch.anatomy import Anatomy
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline


@contextmanager
def quiet_numpy() -> Iterator[None]:
    """Silence numpy's warnings for all-NaN slices and divisions by zero: NaN is the answer."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# -- persistence --------------------------------------------------------------------------


def first_persistent(mask: np.ndarray, k: int) -> int | None:
    """Index of the first record that starts `k` consecutive True records, or None."""
    run = 0
    for i, held in enumerate(np.asarray(mask, dtype=bool)):
        run = run + 1 if held else 0
        if run >= k:
            return i - k + 1
    return None


def still_holds(mask: np.ndarray, k: int) -> bool:
    """True if at least `k` of the last ``2k - 1`` records hold (one stray record is forgiven)."""
    m = np.asarray(mask, dtype=bool)
    return len(m) >= k and int(m[-(2 * k - 1) :].sum()) >= k


def episode(mask: np.ndarray, k: int) -> int | None:
    """Where a condition first held persistently, if it still holds now; None otherwise."""
    if not still_holds(mask, k):
        return None
    return first_persistent(mask, k)


def cleared_span(mask: np.ndarray, k: int) -> tuple[int, int] | None:
    """(first, last) record of the first persistent episode, if it no longer holds now: from
    where it began (`first_persistent`) to the last record at which it still held."""
    m = np.asarray(mask, dtype=bool)
    if still_holds(m, k):
        return None
    start = first_persistent(m, k)
    if start is None:
        return None
    end = start + k - 1
    for i in range(end, len(m)):
        if still_holds(m[: i + 1], k):
            end = i
    return start, end


def latched_episode(enter: np.ndarray, hold: np.ndarray, k: int) -> int | None:
    """Like `episode`, with a dead band: once `enter` has held on `k` records in a row, the
    episode lasts while the milder `hold` still holds (`k` of every ``2k - 1`` records since).

    A measurement that sits near its threshold would otherwise flicker in and out of a
    finding from one record to the next; the band (`Thresholds.release_decades`) makes
    the call stick until the evidence has clearly moved back.
    """
    start = episode(enter, k)
    if start is not None:
        return start
    start = first_persistent(enter, k)
    if start is None:
        return None
    h = np.asarray(hold, dtype=bool)[start:]
    w = 2 * k - 1
    if len(h) < w:
        return start  # too few records since it began for the band to have let go
    counts = np.convolve(h.astype(int), np.ones(w, dtype=int), mode="valid")
    return start if bool((counts >= k).all()) else None


def recent_rows(values: np.ndarray, k: int) -> np.ndarray:
    """The rows of the last ``2k - 1`` records: the window `still_holds` judges."""
    return values[-(2 * k - 1) :]


def nanmedian(values: np.ndarray, axis: int | None = None) -> Any:
    with quiet_numpy():
        return np.nanmedian(values, axis=axis)


# -- gradients ------------------------------------------------------------------------------


def relative_grads(timeline: Timeline) -> np.ndarray:
    """``[records, layers]``: each layer's gradient norm over the norm of the weights it reaches.

    A layer whose gradient has exact zeros in a share z of its entries (an embedding of
    which a batch touches a few rows) is judged against the weights that got a gradient,
    ``weight_norm * sqrt(1 - z)``, so sparsity does not read as weakness. Zero, missing or
    non-finite values become NaN: an all-zero gradient is not a small one (the dead-unit
    and stall detectors deal with it).
    """
    g = timeline.layer_metric("grad_norm")
    w = timeline.layer_metric("weight_norm")
    z = timeline.layer_metric("grad_zero_frac")
    with quiet_numpy():
        dense = np.clip(1.0 - np.nan_to_num(z, nan=0.0), 0.0, 1.0)
        r = g / (w * np.sqrt(dense))
    r[~(np.isfinite(r) & (r > 0))] = np.nan
    return r


def depth_chain(timeline: Timeline, anatomy: Anatomy) -> list[int]:
    """Columns of the layers that make up the path through depth, in execution order.

    Weight layers only (those with a fan-in: linear, convolution, recurrent, embedding);
    normalisation layers carry gains, not transforms, and a layer never seen running has
    no known place in the order.
    """
    known_order = any(layer.order is not None for layer in anatomy.layers)
    cols = []
    for j, name in enumerate(timeline.layers):
        if name not in anatomy:
            continue
        layer = anatomy[name]
        if layer.fan_in is None or "norm" in layer.type.lower():
            continue
        if known_order and layer.order is None:
            continue
        cols.append(j)
    return cols


def tied(timeline: Timeline, anatomy: Anatomy, columns: list[int]) -> np.ndarray:
    """Which of these layers share their weight with another use (an input embedding tied to
    the output head): their gradient comes from both ends, so it says nothing of depth."""
    return np.array([bool(anatomy[timeline.layers[c]].tied) for c in columns], dtype=bool)


def input_groups(timeline: Timeline, anatomy: Anatomy, columns: list[int]) -> np.ndarray:
    """Per layer of `columns`, the group of layers that read the same input tensor (the query,
    key and value projections of one attention block: one depth), or -1 for none."""
    return np.array([anatomy[timeline.layers[c]].extra.get("input_group", -1) for c in columns], dtype=int)


def peer_max(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """For each layer (last axis), the largest value among the *other* layers of its input
    group (`input_groups`); NaN for a layer in no group."""
    out = np.full(values.shape, np.nan)
    with quiet_numpy():
        for g in set(groups.tolist()) - {-1}:
            members = np.flatnonzero(groups == g)
            for j in members:
                others = [k for k in members if k != j]
                if others:  # a group of one among these layers (the rest not weight layers)
                    out[..., j] = np.nanmax(values[..., others], axis=-1)
    return out


def depth_log_ratio(timeline: Timeline, anatomy: Anatomy) -> tuple[list[int], np.ndarray]:
    """The depth chain's columns, and ``log10(r_layer / r_last)`` per record for every chain
    layer but the last (the reference): ``[records, len(chain) - 1]``. An empty chain when
    fewer than two weight layers were measured."""
    chain = depth_chain(timeline, anatomy)
    if len(chain) < 2 or len(timeline) == 0:
        return [], np.zeros((len(timeline), 0))
    r = relative_grads(timeline)
    with quiet_numpy():
        ratio = np.log10(r[:, chain[:-1]] / r[:, [chain[-1]]])
    return chain, ratio


def time_profiles(timeline: Timeline, th: Thresholds) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per recurrent module: the recording steps and ``log10(early / late)`` gradient through time.

    Read from the ``grad_t/<module>`` profiles: the mean gradient norm over the first
    `time_edge_frac` of the time steps, over that of the last. NaN where a profile is
    too short, empty or not finite.
    """
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key in timeline.profiles.names():
        if not key.startswith("grad_t/"):
            continue
        steps, reach = [], []
        for step, vec in timeline.profiles.get(key):
            steps.append(step)
            reach.append(_reach(vec, th.time_edge_frac))
        if steps:
            out[key.split("/", 1)[1]] = (np.asarray(steps, dtype=np.int64), np.asarray(reach))
    return out


def time_reach(timeline: Timeline, th: Thresholds) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per recurrent module: the recording steps and how far its gradient gets through time
    (`reach_from_peak`, log10) — what the vanishing-through-time rule reads."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key in timeline.profiles.names():
        if key.startswith("grad_t/"):
            rows = timeline.profiles.get(key)
            steps = np.asarray([step for step, _ in rows], dtype=np.int64)
            out[key.split("/", 1)[1]] = (steps, np.asarray([reach_from_peak(vec, th.time_edge_frac) for _, vec in rows]))
    return out


def cut_steps(vec: np.ndarray) -> int:
    """How many of a profile's first steps got no gradient at all (NaN: no gradient reached
    that call's input) while a later one did.

    Only a cell applied in a loop leaves such holes (`probes.temporal.CallProfile`; an
    ``nn.RNN``/``LSTM``/``GRU``'s profile is one tensor's gradient, NaN only where the
    gradient itself is — the caller checks which kind of layer it reads): each
    call feeds the next through the state, so a call whose input gets no gradient while a
    later call's does is cut off from the loss — the state was detached between them
    (``h = cell(x_t, h.detach())``: truncated backpropagation through time). Calls after
    the last with a gradient are not counted: a loop read out before its end leaves those
    without one by rights.
    """
    v = np.asarray(vec, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(v))
    if v.size < 2 or finite.size == 0 or not np.isnan(v[: finite[0]]).all():
        return 0  # an infinite entry is an overflow, not a hole
    return int(finite[0])


def reach_from_peak(vec: np.ndarray, edge: float) -> float:
    """log10 of how much of the gradient gets from where the loss enters to the far end.

    The loss enters where the profile peaks (its mean over windows of `edge` of the
    steps): at the last step for a sequence read out at its end — where this is the
    early/late ratio of `time_profiles` — and in the middle for one read out there. The
    reach is the weaker of the two ends' windows over that peak: the end the gradient
    must travel farthest to, in either direction of a bidirectional layer. Steps whose
    gradient is exactly zero at an end do not depend on the loss at all (those after a
    mid-sequence readout of a one-way layer): the end is taken at the first window with
    a gradient, so a gradient that fades to nothing is still seen fading. A profile that
    peaks at the first steps is read as growth back from the end (its reach is then the
    early/late ratio, above 1).
    """
    v = np.asarray(vec, dtype=np.float64)
    if v.size < 4 or not np.all(np.isfinite(v)) or np.any(v < 0):
        return math.nan
    k = max(1, round(v.size * edge))
    windows = np.convolve(v, np.ones(k) / k, mode="valid")
    peak = float(windows.max())
    if peak <= 0:
        return math.nan
    at = int(np.argmax(windows))
    live = np.flatnonzero(windows > 0)
    if at == 0 and live[-1] > 0:
        # Peaking at the first steps: a gradient that grows on its way back from a
        # readout at the end (the exploding detector's finding) looks the same as one
        # read out first that fades forwards; the first is what recurrent nets do, so
        # nothing has vanished here.
        return math.log10(float(windows[0]) / float(windows[live[-1]]))
    return math.log10(min(float(windows[live[0]]), float(windows[live[-1]])) / peak)


def _reach(vec: np.ndarray, edge: float) -> float:
    v = np.asarray(vec, dtype=np.float64)
    if v.size < 4 or not np.all(np.isfinite(v)):
        return math.nan
    k = max(1, round(v.size * edge))
    early, late = float(np.mean(v[:k])), float(np.mean(v[-k:]))
    if late <= 0 or early < 0:
        return math.nan
    if early == 0:
        return -np.inf
    return math.log10(early / late)


# -- the loss -----------------------------------------------------------------------------

#: Statuses in which training is not making progress.
FAILING = frozenset({"stuck", "plateau", "diverging", "nonfinite"})
#: Statuses in which training is making, or has made, progress.
LEARNING = frozenset({"improving", "converged"})


@dataclass(frozen=True)
class LossView:
    """Where the loss stands at the end of a Timeline.

    `status` is one of: ``unknown`` (too few losses), ``unclear`` (not improving, not
    yet flat for long), ``nonfinite`` (the latest loss is inf/NaN), ``diverging`` (above
    its start, or most of the progress given back), ``converged`` (far below its start
    or chance), ``stuck`` (flat at its starting value or at chance), ``improving``, and
    ``plateau`` (flat, after some progress, far from converged).
    """

    status: str
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
        if s == "stuck" and self.constant:
            return (
                f"the loss fell from {num(self.start)} to {num(self.recent)} and has stayed there for "
                f"{self.flat_steps} steps with the same output for every input: the best a constant "
                "prediction can do (the targets' average), learned without the inputs. If the targets "
                "cannot be predicted from the inputs at all, check the labels"
            )
        if s == "stuck":
            return f"the loss has stayed at {self.level_text(self.recent)} for {self.flat_steps} steps"
        if s == "plateau":
            return (
                f"the loss has stopped improving: {num(self.recent)} for the last "
                f"{self.flat_steps} steps (it started at {num(self.start)})"
            )
        if s == "diverging":
            return f"the loss rose to {num(self.recent)} (it started at {num(self.start)}, best {num(self.best)})"
        if s == "nonfinite":
            return f"the loss became non-finite at step {self.first_nonfinite}"
        if s == "improving" and self.slow:
            return (
                f"the loss still improves ({num(self.start)} -> {num(self.recent)}), but slowly: at "
                f"this pace it needs ~{num(self.pace)}x the {self.steps_seen} steps run so far to converge"
            )
        if s == "improving":
            return f"the loss still improves ({num(self.start)} -> {num(self.recent)})"
        if s == "converged":
            return f"the loss fell from {num(self.start)} to {num(self.recent)}"
        if s == "unclear":
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
        return LossView("unknown", classes=classes)
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
            "nonfinite", start=start, classes=classes, first_nonfinite=first_bad, steps_seen=len(values)
        )
    if n < th.loss_min_steps:
        return LossView("unknown", classes=classes, first_nonfinite=first_bad, steps_seen=len(values))

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
        status = "diverging"
    elif (
        gained > th.stuck_progress * scale
        and recent - best >= th.diverge_giveback * gained
        and recent - best > th.trend_sigmas * se
    ):
        status = "diverging"
    elif (
        flat_steps >= th.flat_min_steps
        and not fitted
        and not falling
        and (abs(start - recent) <= th.stuck_progress * scale or at_chance)
    ):
        status = "stuck"
    elif fitted or (start > 0 and recent <= th.converged_frac * start):
        status = "converged"
    elif falling:
        status = "improving"
        pace = _pace(v, s, w, start, chance, th)
        view["pace"], view["slow"] = pace, pace > th.slow_pace
    elif (
        at_chance
        and chance is not None
        and best >= (1 - th.chance_tolerance) * chance
        and int(s[-1] - s[0]) + 1 >= th.flat_min_steps
    ):
        # A noisy loss that has never got below chance: a classifier that has learned nothing.
        status = "stuck"
        view["flat_since"], view["flat_steps"] = int(s[0]), int(s[-1] - s[0] + 1)
    elif flat_steps >= th.flat_min_steps:
        status = "plateau"
    elif int(s[-1]) - best_step >= th.flat_min_steps:
        # Not flat by the band (a noisy loss that wanders: Adam oscillating on a regression
        # target's baseline), but no new low for as long as a flat loss must last: as
        # stalled as a flat one. Since the best is the measure of "since".
        stalled_at_start = abs(start - recent) <= th.stuck_progress * scale or at_chance
        status = "stuck" if stalled_at_start else "plateau"
        view["flat_since"], view["flat_steps"] = best_step, int(s[-1]) - best_step + 1
    else:
        status = "unclear"
    if (
        status in ("converged", "plateau")
        and not fitted
        and not falling
        and flat_steps >= th.flat_min_steps
        and _constant_output(timeline, th)
    ):
        # A model that gives every input the same output can fall no lower than the best
        # constant's loss: flat there, it has learned the targets' average and nothing else.
        status = "stuck"
        view["constant"] = True
    return LossView(status, **view)  # type: ignore[arg-type]


def _constant_output(timeline: Timeline, th: Thresholds) -> bool:
    """The output spread below `th.output_spread` on each of the last `th.persist` records."""
    names, values = site_values(timeline, "output_spread")
    if "output" not in names:
        return False
    recent = recent_rows(values[:, names.index("output")], th.persist)
    with np.errstate(invalid="ignore"):
        return len(recent) >= th.persist and bool(np.all(recent < th.output_spread))


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


# -- formatting -----------------------------------------------------------------------------


def num(x: float) -> str:
    """A number as a person reads it in a message: 2.3, 0.0412, 3e-12, 4.1e5."""
    if not math.isfinite(x):
        return str(x)
    a = abs(x)
    if a == 0:
        return "0"
    if 100 <= a < 1e4:
        return f"{x:.0f}"
    if 1e-2 <= a < 100:
        return f"{x:.3g}"
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def pct(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.01 else f"{100 * x:.1g}%"


def step_at(timeline: Timeline, index: int | None) -> int | None:
    """The recording step of record `index` (None stays None)."""
    if index is None:
        return None
    return int(timeline.steps[index])


# -- activation sites (Part 2 metrics) ------------------------------------------------------

def site_info(timeline: Timeline, site: str) -> dict[str, Any]:
    """What the probes recorded about an activation site (fn, module, family); {} if nothing."""
    sites = getattr(timeline, "sites", None) or {}
    info = sites.get(site, {})
    return dict(info) if isinstance(info, dict) else {}


def site_module(timeline: Timeline, site: str) -> str:
    """The module a site belongs to: ``block`` for ``block:relu#0``, ``lstm`` for ``lstm:forget_gate``."""
    module = site_info(timeline, site).get("module")
    if isinstance(module, str) and module:
        return module
    return site.split(":", 1)[0] if ":" in site else site


def is_gate(timeline: Timeline, site: str) -> bool:
    return site_info(timeline, site).get("family") == "gate" or site.endswith("_gate")


def site_values(timeline: Timeline, metric: str) -> tuple[list[str], np.ndarray]:
    """Sites measured under `metric` and their ``[records, sites]`` values (NaN where missing)."""
    if len(timeline) == 0:
        return [], np.zeros((0, 0))
    names, values = timeline.metric(metric)
    return names, values


def fill_pooled(values: np.ndarray) -> np.ndarray:
    """A ``[records, sites]`` metric some records of which pool the ones before them (NaN
    there: `act_dead_frac` of steps with too few outputs per unit), each gap given the value
    that pooled it; records after a site's last value keep that value."""
    out = np.array(values, dtype=np.float64, copy=True)
    for j in range(out.shape[1] if out.ndim == 2 else 0):
        col = out[:, j]
        seen = np.flatnonzero(np.isfinite(col))
        if len(seen) == 0:
            continue
        idx = np.searchsorted(seen, np.arange(len(col)))  # the next finite record, at or after
        col[:] = col[seen[np.minimum(idx, len(seen) - 1)]]
    return out


def per_site_episodes(
    timeline: Timeline, names: list[str], values: np.ndarray, mask: np.ndarray, k: int
) -> list[tuple[str, int, float]]:
    """(site, first record index, recent median value) for each site whose condition holds now."""
    out = []
    for j, name in enumerate(names):
        start = episode(mask[:, j], k)
        if start is not None:
            out.append((name, start, float(nanmedian(recent_rows(values[:, j], k)))))
    return out
