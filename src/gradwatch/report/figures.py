"""The figures: one function per figure, each returning a matplotlib `Figure` (Agg).

Every figure is drawn from a `Timeline`, a `Diagnosis` or both, never from a live model,
so a run read back with `gw.load` draws what the watcher drew. Titles say what the data
show ("layer '0' receives 1e-08 of the last layer's gradient"); a finding's onset is a
dashed vertical line at its step, labelled with its kind.

Figures are built with `matplotlib.figure.Figure` directly (no pyplot): nothing global
changes, and nothing needs a display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from gradwatch.detect._signals import num, quiet_numpy
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import Diagnosis, Finding, Kind

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "activation_health",
    "gradient_flow",
    "gradient_heatmap",
    "gradient_through_time",
    "jacobian_spectrum",
    "loss_curve",
    "update_ratios",
]

#: Colours of the onset lines, by severity.
_ONSET_COLOURS = {"error": "#c0392b", "warning": "#d68910", "info": "#7f8c8d"}
_MAX_LEGEND = 12  # more lines than this and the legend hides the plot
#: More series than this (layers, sites) are summarised: their median, their range, and
#: the first and last of them; a hundred lines read as one smear and take long to draw.
MAX_LINES = 12
_MAX_TICKS = 40  # layer names on an axis, at most; the rest are thinned out


def _figure(width: float = 8.0, height: float = 4.5) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _onsets(ax: Axes, findings: Sequence[Finding], steps: np.ndarray | None = None) -> None:
    """A dashed vertical line at each finding's first step (one per kind and step)."""
    seen: set[tuple[str, int]] = set()
    lo = hi = None
    if steps is not None and len(steps):
        lo, hi = float(np.min(steps)), float(np.max(steps))
    for f in findings:
        if f.step is None or (str(f.kind), f.step) in seen:
            continue
        seen.add((str(f.kind), f.step))
        if lo is not None and hi is not None and not lo <= f.step <= hi:
            continue
        ax.axvline(
            f.step, color=_ONSET_COLOURS[str(f.severity)], linestyle="--", linewidth=1.2,
            label=f"{f.kind} (step {f.step})", gid=f"onset:{f.kind}",
        )


def _legend(ax: Axes) -> None:
    handles, _labels = ax.get_legend_handles_labels()
    if 0 < len(handles) <= _MAX_LEGEND:
        ax.legend(fontsize="small", loc="best")


def _row_at(timeline: Timeline, step: int | None) -> int:
    steps = timeline.steps
    if not len(steps):
        raise ValueError("the timeline holds no recording step")
    if step is None:
        return len(steps) - 1
    i = int(np.searchsorted(steps, step, side="right")) - 1
    if i < 0:
        raise ValueError(f"no recording step at or before step {step}; the first is {int(steps[0])}")
    return i


def _has(diagnosis: Diagnosis | None, *kinds: Kind) -> list[Finding]:
    if diagnosis is None:
        return []
    return [f for f in diagnosis.findings if f.kind in kinds]


def _series(ax: Axes, steps: np.ndarray, values: np.ndarray, names: Sequence[str], prefix: str, *, marker: str = "") -> int:
    """One line per column of `values` (NaN leaves a gap) — or, past `MAX_LINES` columns,
    the median across them, their min-max range shaded, and the first and last column.
    Returns how many columns had something to draw."""
    has = [j for j in range(values.shape[1]) if np.isfinite(values[:, j]).any()]
    if len(has) <= MAX_LINES:
        for j in has:
            ax.plot(steps, values[:, j], marker=marker, linewidth=1.0, label=names[j], gid=f"{prefix}:{names[j]}")
        return len(has)
    with quiet_numpy():
        sub = values[:, has]
        med, lo, hi = np.nanmedian(sub, axis=1), np.nanmin(sub, axis=1), np.nanmax(sub, axis=1)
    ax.fill_between(steps, lo, hi, color="#d6eaf8", label=f"range over {len(has)}", gid=f"{prefix}:range")
    ax.plot(steps, med, color="#2e86c1", linewidth=1.5, label=f"median of {len(has)}", gid=f"{prefix}:median")
    for j, style, which in ((has[0], "--", "first"), (has[-1], ":", "last")):
        ax.plot(steps, values[:, j], linestyle=style, color="#555", linewidth=1.0, label=f"{which}: {names[j]}", gid=f"{prefix}:{names[j]}")
    return len(has)


def _layer_ticks(ax: Axes, x: np.ndarray, names: Sequence[str]) -> None:
    every = max(1, math.ceil(len(names) / _MAX_TICKS))
    ax.set_xticks(x[::every], [n[-18:] for n in names][::every], rotation=90 if len(names) > 8 else 0, fontsize="small")


# -- gradient flow --------------------------------------------------------------------------


def gradient_flow(
    timeline: Timeline | None = None, diagnosis: Diagnosis | None = None, *, step: int | None = None
) -> Figure:
    """Per-layer gradient at one recording step, on a log axis: the forum's "gradient flow" chart.

    From a Timeline: bars of each layer's RMS gradient entry (``grad_rms``) and largest
    entry (``grad_max``) at `step` (the last recording step by default). From an `inspect`
    Diagnosis alone: each layer's measured gradient norm. Where theory predicts a layer's
    gradient (``LayerReport.predicted_grad_norm``) it is drawn as a marker, in the bars' unit.
    """
    if timeline is None and diagnosis is None:
        raise ValueError("gradient_flow needs a timeline, a diagnosis, or both")
    predicted = {
        r.name: r.predicted_grad_norm for r in (diagnosis.layers if diagnosis else []) if r.predicted_grad_norm
    }
    n = len(timeline.layers if timeline is not None else diagnosis.layers)  # type: ignore[union-attr]
    fig = _figure(min(14.0, max(6.0, 0.25 * n + 3)), 4.5)
    ax = fig.add_subplot()
    if timeline is not None and len(timeline):
        row = _row_at(timeline, step)
        at = int(timeline.steps[row])
        names = list(timeline.layers)
        rms = timeline.layer_metric("grad_rms")[row]
        gmax = timeline.layer_metric("grad_max")[row]
        norm = timeline.layer_metric("grad_norm")[row]
        x = np.arange(len(names))
        ax.bar(x, gmax, width=0.8, color="#aed6f1", label="max |g|", gid="grad_max")
        ax.bar(x, rms, width=0.5, color="#2e86c1", label="RMS |g|", gid="grad_rms")
        main, unit = rms, "RMS |g|"
        # A predicted norm in RMS units: this step's norm/RMS is sqrt(entries) of that layer.
        with quiet_numpy():
            scale = rms / norm
        pred = np.array([predicted.get(n, np.nan) for n in names], dtype=float) * scale
        where = f"step {at}"
    else:
        if diagnosis is None:
            raise ValueError("the timeline holds no recording step yet, and no diagnosis was given")
        names = [r.name for r in diagnosis.layers if r.measured_grad_norm is not None]
        reports = {r.name: r for r in diagnosis.layers}
        main = np.array([float(reports[n].measured_grad_norm or np.nan) for n in names])
        x = np.arange(len(names))
        ax.bar(x, main, width=0.6, color="#2e86c1", label="measured ‖g‖", gid="grad_norm")
        pred = np.array([predicted.get(n, np.nan) for n in names], dtype=float)
        unit, where = "‖g‖", "one probing pass"
    if np.isfinite(pred).any():
        ax.plot(x, pred, "D", color="#e67e22", markersize=5, label="theory predicts", gid="predicted")
    ax.set_yscale("log")
    _layer_ticks(ax, x, names)
    ax.set_xlabel("layer (input side on the left)")
    ax.set_ylabel(f"{unit} (log)")
    ax.set_title(_flow_title(names, main, diagnosis, where))
    _legend(ax)
    return fig


def _flow_title(names: Sequence[str], values: np.ndarray, diagnosis: Diagnosis | None, where: str) -> str:
    ok = [i for i, v in enumerate(values) if math.isfinite(v) and v > 0]
    if len(ok) < 2:
        return f"gradient per layer ({where})"
    first, last = ok[0], ok[-1]
    ratio = float(values[first] / values[last])
    if _has(diagnosis, Kind.VANISHING_GRADIENT) or ratio < 1e-3:
        return f"layer '{names[first]}' receives {num(ratio)} of the last layer's gradient ({where})"
    if _has(diagnosis, Kind.EXPLODING_GRADIENT) or ratio > 1e3:
        return f"layer '{names[first]}' receives {num(ratio)}x the last layer's gradient ({where})"
    return f"gradient per layer ({where}): first/last layer {num(ratio)}"


# -- layers x time ----------------------------------------------------------------------------


def relative_gradient(timeline: Timeline) -> tuple[list[str], np.ndarray]:
    """``log10(grad_norm / grad_norm of the last layer)`` per record, ``[records, layers]``.

    The last layer is the last one (in the Timeline's execution order) that got a finite,
    non-zero gradient on some record; cells without a finite positive value are NaN.
    """
    g = timeline.layer_metric("grad_norm")
    names = list(timeline.layers)
    good = np.isfinite(g) & (g > 0)
    cols = np.flatnonzero(good.any(axis=0))
    if not len(cols):
        return names, np.full(g.shape, np.nan)
    ref = g[:, [cols[-1]]]
    with quiet_numpy():
        out = np.log10(g / ref)
    out[~np.isfinite(out)] = np.nan
    return names, out


def _edges(steps: np.ndarray) -> np.ndarray:
    s = steps.astype(float)
    if len(s) == 1:
        return np.array([s[0] - 0.5, s[0] + 0.5])
    mid = (s[1:] + s[:-1]) / 2
    return np.concatenate([[s[0] - (mid[0] - s[0])], mid, [s[-1] + (s[-1] - mid[-1])]])


def gradient_heatmap(timeline: Timeline, diagnosis: Diagnosis | None = None) -> Figure:
    """Layers (rows, input side at the top) x recorded steps: log10 of each layer's gradient
    norm relative to the last layer's (`relative_gradient`), with each finding's onset."""
    names, rel = relative_gradient(timeline)
    steps = timeline.steps
    fig = _figure(9.0, min(9.0, max(3.5, 0.18 * len(names) + 2)))
    ax = fig.add_subplot()
    if not len(steps):
        ax.set_title("no recording step yet")
        return fig
    finite = rel[np.isfinite(rel)]
    span = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0
    mesh = ax.pcolormesh(
        _edges(steps), np.arange(len(names) + 1), rel.T, cmap="RdBu", vmin=-span, vmax=span,
        shading="flat", gid="relative_gradient",
    )
    ax.invert_yaxis()
    if len(names) <= _MAX_TICKS:
        ax.set_yticks(np.arange(len(names)) + 0.5, [n[-18:] for n in names], fontsize="small")
        ax.set_ylabel("layer (input side at the top)")
    else:
        ax.set_ylabel(f"layer: position among {len(names)} (input side at the top)")
    ax.set_xlabel("training step")
    fig.colorbar(mesh, ax=ax, label="log10(‖g‖ / last layer's ‖g‖)")
    findings = diagnosis.findings if diagnosis else []
    _onsets(ax, findings, steps)
    title = "gradient norm relative to the last layer, per recorded step"
    if finite.size:
        low = np.nanmin(rel[-1]) if np.isfinite(rel[-1]).any() else math.nan
        if math.isfinite(low) and low < -3:
            j = int(np.nanargmin(rel[-1]))
            title = f"layer '{names[j]}' gets 1e{low:.0f} of the last layer's gradient at step {int(steps[-1])}"
    ax.set_title(title)
    _legend(ax)
    return fig


# -- the loss ---------------------------------------------------------------------------------


def loss_curve(timeline: Timeline, diagnosis: Diagnosis | None = None, *, chance: float | None = None) -> Figure:
    """The loss at every step, the chance level (a classifier's ln C) and the findings' onsets.

    The y axis is logarithmic when the finite, positive losses span more than two decades.
    """
    steps, values = timeline.loss()
    fig = _figure(8.0, 4.0)
    ax = fig.add_subplot()
    ax.plot(steps, values, color="#2e86c1", linewidth=1.0, label="loss", gid="loss")
    if chance is not None:
        ax.axhline(chance, color="#7f8c8d", linestyle=":", label=f"chance ({num(chance)})", gid="chance")
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    if positive.size and positive.size == finite.size and positive.max() / positive.min() > 100:
        ax.set_yscale("log")
    _onsets(ax, diagnosis.findings if diagnosis else [], steps)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_title(_loss_title(steps, values, diagnosis, chance))
    _legend(ax)
    return fig


def _loss_title(steps: np.ndarray, values: np.ndarray, diagnosis: Diagnosis | None, chance: float | None) -> str:
    finite = np.isfinite(values)
    if not finite.any():
        return "no finite loss recorded"
    v = values[finite]
    head, tail = float(np.median(v[:10])), float(np.median(v[-10:]))
    text = f"loss {num(head)} → {num(tail)}"
    if chance is not None and abs(tail - chance) <= 0.15 * chance:
        text += f", at chance ({num(chance)})"
    if not finite.all():
        text += f"; non-finite from step {int(steps[~finite][0])}"
    loss_findings = _has(diagnosis, Kind.FLAT_LOSS, Kind.DIVERGING_LOSS)
    if loss_findings:
        f = loss_findings[0]
        text += f"; {f.kind}" + (f" from step {f.step}" if f.step is not None else "")
    return text


# -- updates ----------------------------------------------------------------------------------


def update_ratios(timeline: Timeline, diagnosis: Diagnosis | None = None, thresholds: Thresholds | None = None) -> Figure:
    """Each layer's ``update_norm / weight_norm`` per recorded step (log), with the healthy
    band between `Thresholds.small_update_ratio` and `Thresholds.large_update_ratio`.
    A layer whose updates were all exactly 0 has no line (its zeros are in the table).
    Past `MAX_LINES` layers: their median, their range, the first and the last layer."""
    th = thresholds or Thresholds()
    steps = timeline.steps
    ratio = timeline.layer_metric("update_ratio")
    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot()
    ax.axhspan(th.small_update_ratio, th.large_update_ratio, color="#abebc6", alpha=0.4,
               label=f"healthy band ({num(th.small_update_ratio)}..{num(th.large_update_ratio)})", gid="band")
    # A log axis has no place for an update of exactly 0 (none at all, or one below
    # float32's resolution of the weights): those records leave a gap in the line.
    drawn = _series(ax, steps, np.where(ratio > 0, ratio, np.nan), timeline.layers, "update_ratio")
    ax.set_yscale("log")
    _onsets(ax, _has(diagnosis, Kind.STALLED_WEIGHTS, Kind.DIVERGING_LOSS, Kind.EXPLODING_GRADIENT), steps)
    ax.set_xlabel("training step")
    ax.set_ylabel("‖ΔW‖ / ‖W‖ per step (log)")
    with quiet_numpy():
        med = float(np.nanmedian(ratio[-1])) if len(ratio) and np.isfinite(ratio[-1]).any() else math.nan
    last = ratio[-1][np.isfinite(ratio[-1])] if len(ratio) else np.array([])
    if not drawn or not math.isfinite(med):
        ax.set_title("update size: no optimizer update measured")
    elif med == 0:
        ax.set_title(
            f"updates too small: {int((last == 0).sum())} of {last.size} layers did not change at all at step {int(steps[-1])}"
        )
    elif med < th.small_update_ratio:
        ax.set_title(f"updates too small: the median layer changes by {num(med)} of its weights per step")
    elif med > th.large_update_ratio:
        ax.set_title(f"updates too large: the median layer changes by {num(med)} of its weights per step")
    else:
        ax.set_title(f"update size per step: median layer {num(med)} of its weights (inside the healthy band)")
    _legend(ax)
    return fig


# -- activations ------------------------------------------------------------------------------


def activation_health(timeline: Timeline, diagnosis: Diagnosis | None = None, thresholds: Thresholds | None = None) -> Figure:
    """Share of dead units (ReLU family, ``act_dead_frac``) and of saturated outputs
    (sigmoid/tanh family, ``act_sat_frac``) per activation site over the recorded steps,
    with the detectors' bars (`Thresholds.dead_frac`, `Thresholds.saturated_frac`).
    Past `MAX_LINES` sites: their median, their range, the first and the last site."""
    th = thresholds or Thresholds()
    steps = timeline.steps
    panels = [
        (metric, label, bar, kind)
        for metric, label, bar, kind in (
            ("act_dead_frac", "dead units", th.dead_frac, Kind.DEAD_UNITS),
            ("act_sat_frac", "saturated outputs", th.saturated_frac, Kind.SATURATED_UNITS),
        )
        if timeline.metric(metric)[0]
    ] or [("act_dead_frac", "dead units", th.dead_frac, Kind.DEAD_UNITS)]
    fig = _figure(9.0, 3.2 * len(panels) + 0.6)
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0])
    worst: list[str] = []
    for ax, (metric, label, bar, kind) in zip(axes, panels, strict=True):
        sites, values = timeline.metric(metric)
        _series(ax, steps, values, sites, metric, marker=".")
        ax.axhline(bar, color="#c0392b", linestyle=":", linewidth=1.0, gid=f"bar:{metric}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(f"share of {label}")
        _onsets(ax, _has(diagnosis, kind), steps)
        if not sites:
            ax.set_title(f"{label}: no such activation site measured", fontsize="medium")
        else:
            last = values[-1] if len(values) else np.array([])
            if np.isfinite(last).any() and np.nanmax(last) == 0:
                ax.set_title(f"{label}: none at any of {len(sites)} sites (step {int(steps[-1])})", fontsize="medium")
            elif np.isfinite(last).any():
                j = int(np.nanargmax(last))
                ax.set_title(f"{label}: worst site '{sites[j]}' at {100 * last[j]:.0f}% (step {int(steps[-1])})", fontsize="medium")
                if last[j] >= bar:
                    worst.append(f"{100 * last[j]:.0f}% {label} at '{sites[j]}'")
            else:
                ax.set_title(f"{label} per activation site", fontsize="medium")
        _legend(ax)
    axes[-1].set_xlabel("training step")
    fig.suptitle("; ".join(worst) if worst else "activations: share of dead units and saturated outputs per site")
    return fig


# -- time -------------------------------------------------------------------------------------


def gradient_through_time(timeline: Timeline, diagnosis: Diagnosis | None = None) -> Figure:
    """‖∂L/∂x_t‖ against t (log) for every recurrent layer, at the first and the last
    recording step that measured it (profiles ``grad_t/<module>``)."""
    names = [n for n in timeline.profiles.names() if n.startswith("grad_t/")]
    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot()
    if not names:
        ax.set_title("gradient through time: no recurrent layer measured")
        return fig
    titles = []
    for key in names:
        module = key.split("/", 1)[1]
        rows = timeline.profiles.get(key)
        shown = [rows[0], rows[-1]] if len(rows) > 1 else rows
        for k, (step, vec) in enumerate(shown):
            ax.plot(np.arange(len(vec)), vec, linestyle="--" if k == 0 and len(shown) > 1 else "-",
                    label=f"{module}, step {step}", gid=f"grad_t:{module}:{step}")
        vec = rows[-1][1]
        ok = vec[np.isfinite(vec) & (vec > 0)]
        if len(vec) and ok.size and math.isfinite(vec[0]) and vec[0] > 0:
            titles.append(f"'{module}': t=0 gets {num(float(vec[0] / ok.max()))} of the largest")
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel("‖∂L/∂x_t‖ (log)")
    ax.set_title("gradient through time" + (": " + "; ".join(titles) if titles else ""))
    tv = _has(diagnosis, Kind.TEMPORAL_VANISHING)
    if tv:
        ax.set_title(ax.get_title() + " — temporal vanishing", fontsize="medium")
    _legend(ax)
    return fig


# -- theory -----------------------------------------------------------------------------------


def jacobian_spectrum(diagnosis: Diagnosis) -> Figure:
    """The input-output Jacobian's singular values from ``gw.inspect(..., jacobian=True)``,
    largest first (log), with 1 (dynamical isometry) marked."""
    s = np.sort(np.asarray(diagnosis.jacobian, dtype=float))[::-1]
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    if not s.size:
        ax.set_title("no Jacobian spectrum (gw.inspect(..., jacobian=True) computes one)")
        return fig
    ax.plot(np.arange(1, s.size + 1), s, "o-", markersize=3, gid="singular_values")
    ax.axhline(1.0, color="#27ae60", linestyle=":", label="1 (dynamical isometry)", gid="isometry")
    ax.set_yscale("log")
    ax.set_xlabel("rank")
    ax.set_ylabel("singular value (log)")
    pos = s[s > 0]
    med = float(np.median(s))
    ms = float(np.mean(s**2))
    spread = f", spread {num(float(pos.max() / pos.min()))}x" if pos.size else ""
    ax.set_title(f"input-output Jacobian: median singular value {num(med)}, mean square {num(ms)}{spread}")
    _legend(ax)
    return fig
