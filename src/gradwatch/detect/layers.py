"""Per-layer summaries of a Timeline, for the Diagnosis and the reports."""

from __future__ import annotations

import warnings

import numpy as np

from gradwatch.anatomy import Anatomy
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import LayerReport


def recent_median(values: np.ndarray, window: int) -> np.ndarray:
    """Median over the last `window` rows, ignoring NaN (NaN where a column has no value)."""
    if values.shape[0] == 0:
        return np.full(values.shape[1], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, as wanted
        return np.nanmedian(values[-window:], axis=0)


def _opt(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def layer_reports(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[LayerReport]:
    """One report per layer of the anatomy, in order; frozen layers are listed as frozen."""
    w = th.report_window
    cols = {name: j for j, name in enumerate(timeline.layers)}
    summary = {
        m: recent_median(timeline.layer_metric(m), w)
        for m in ("grad_norm", "weight_norm", "update_ratio", "grad_zero_frac")
    }
    reports = []
    for layer in anatomy.layers:
        j = cols.get(layer.name)
        r = LayerReport(name=layer.name, type=layer.type, frozen=layer.frozen)
        if j is not None:
            r.measured_grad_norm = _opt(summary["grad_norm"][j])
            r.weight_norm = _opt(summary["weight_norm"][j])
            r.update_ratio = _opt(summary["update_ratio"][j])
            r.grad_zero_frac = _opt(summary["grad_zero_frac"][j])
        reports.append(r)
    return reports
