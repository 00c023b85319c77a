"""Text pieces the terminal and HTML reports share: sparklines and the per-layer table."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradwatch.detect._signals import num
from gradwatch.record import Timeline
from gradwatch.types import Diagnosis, FixResult

#: Eight levels, lowest first.
BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: np.ndarray, width: int = 24) -> str:
    """`values` (a series over time) as at most `width` block characters on a log10 scale.

    The series is cut into `width` consecutive chunks (each shown by its mean of log10)
    when longer; each character's height is its place between the series' own lowest and
    highest value; a level series is drawn at mid-height; a chunk with no finite positive
    value is a space.
    """
    v = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(np.isfinite(v) & (v > 0), np.log10(np.where(v > 0, v, 1.0)), np.nan)
    if logs.size > width:
        chunks = np.array_split(logs, width)
        logs = np.array([np.nanmean(c) if np.isfinite(c).any() else np.nan for c in chunks])
    finite = logs[np.isfinite(logs)]
    if not finite.size:
        return " " * len(logs)
    lo, hi = float(finite.min()), float(finite.max())
    out = []
    for x in logs:
        if not math.isfinite(x):
            out.append(" ")
        elif hi - lo < 1e-12:
            out.append(BLOCKS[3])
        else:
            out.append(BLOCKS[round((x - lo) / (hi - lo) * (len(BLOCKS) - 1))])
    return "".join(out)


@dataclass
class Row:
    """One line of the per-layer table."""

    name: str
    type: str
    grad_norm: str
    predicted: str
    update_ratio: str
    trend: str  # a sparkline of the gradient norm over the recorded steps
    span: str  # the lowest and highest gradient norm the sparkline spans


def _f(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else num(float(x))


def layer_rows(diagnosis: Diagnosis, timeline: Timeline | None) -> list[Row]:
    """The per-layer table: the diagnosis's `LayerReport`s, with each layer's gradient over
    time from the Timeline where there is one."""
    series: dict[str, np.ndarray] = {}
    if timeline is not None and len(timeline):
        g = timeline.layer_metric("grad_norm")
        series = {name: g[:, j] for j, name in enumerate(timeline.layers)}
    rows = []
    for r in diagnosis.layers:
        s = series.get(r.name)
        trend = span = ""
        if s is not None:
            trend = sparkline(s)
            ok = s[np.isfinite(s) & (s > 0)]
            span = f"{num(float(ok.min()))}..{num(float(ok.max()))}" if ok.size else ""
        rows.append(
            Row(
                name=r.name,
                type=r.type + (" (frozen)" if r.frozen else ""),
                grad_norm=_f(r.measured_grad_norm),
                predicted=_f(r.predicted_grad_norm),
                update_ratio=_f(r.update_ratio),
                trend=trend,
                span=span,
            )
        )
    return rows


def fix_lines(fix: FixResult | None) -> list[str]:
    """The proposed fix as it prints (`FixResult.__str__`), one item per line; none without one
    (the causes' remedies are shown with the causes)."""
    if fix is None or not (fix.changes or fix.advice):
        return []
    return [line.removeprefix("- ") for line in str(fix).splitlines() if line.strip()]
