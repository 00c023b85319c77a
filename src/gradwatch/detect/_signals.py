"""Evidence the detectors share: persistence over records, relative gradients, activation sites.

Everything here is a pure function of a Timeline (and the Anatomy), tolerant of missing
values: NaN means "not measured" and is skipped, never propagated into a verdict.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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


def site_series(timeline: Timeline, metric: str, site: str) -> np.ndarray | None:
    """One site's values of `metric`, one per record (NaN where missing); None if never measured."""
    names, values = site_values(timeline, metric)
    return values[:, names.index(site)] if site in names else None


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
