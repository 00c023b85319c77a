"""AutoTrainer's and DeepDiagnosis's published rules, ported as plain functions.

Both tools were written for Keras and read quantities gradwatch does not record in the
same form; where a quantity is approximated, the comment says how (and
docs/performance.md repeats it). Each function takes the same Timeline and Anatomy the
gradwatch detectors see and returns the set of `gw.Kind`s it reports. The thresholds
are the published ones (shared/REFERENCES.md section 3).
"""

from __future__ import annotations

import numpy as np

import gradwatch as gw
from gradwatch.anatomy import Anatomy
from gradwatch.record import Timeline

K = gw.Kind


def _last(values: np.ndarray) -> np.ndarray:
    """The last record's row (NaN row if none)."""
    return values[-1] if len(values) else np.full(values.shape[1] if values.ndim == 2 else 0, np.nan)


def _loss_tail(timeline: Timeline) -> tuple[float, float, np.ndarray]:
    """(start, recent median, recent window) of the finite losses; NaNs if none."""
    _, loss = timeline.loss()
    finite = loss[np.isfinite(loss)]
    if len(finite) < 10:
        return float("nan"), float("nan"), finite
    w = max(10, len(finite) // 5)
    return float(np.median(finite[:10])), float(np.median(finite[-w:])), finite[-w:]


def autotrainer(timeline: Timeline, anatomy: Anatomy) -> set[gw.Kind]:
    """AutoTrainer (Zhang et al., ICSE'21).

    - vanishing: ``|g_first| / |g_last| < 1e-3`` and ``|g_first| < 1e-4`` (norms of the
      first and last measured layers' gradients, at the latest record);
    - exploding: that ratio ``> 70``; NaN gradients are reported as `nonfinite_gradient`;
    - dying ReLU: ``>= 70%`` of a layer's gradient entries exactly zero;
    - oscillating loss (mapped to `diverging_loss`): approximated as a recent loss window
      whose spread (std / mean) exceeds 0.3, or a NaN loss;
    - slow convergence (mapped to `flat_loss`): the recent loss less than 1% below the
      window before it.
    Every problem but NaN is only reported when accuracy is below 0.6; gradwatch records
    no accuracy, so the gate is approximated by "the recent loss is above half its start".
    """
    found: set[gw.Kind] = set()
    if len(timeline) == 0:
        return found
    g = _last(timeline.layer_metric("grad_norm"))
    z = _last(timeline.layer_metric("grad_zero_frac"))
    _, loss = timeline.loss()
    if np.isnan(g).all() and len(loss) and not np.isfinite(loss[-1]):
        found.add(K.NONFINITE_GRADIENT)
    if (np.nan_to_num(timeline.layer_metric("grad_nonfinite")[-1:], nan=0.0) > 0).any():
        found.add(K.NONFINITE_GRADIENT)
    start, recent, window = _loss_tail(timeline)
    if len(loss) and not np.isfinite(loss[-1]):
        found.add(K.DIVERGING_LOSS)
    poor = not (np.isfinite(recent) and np.isfinite(start) and recent <= 0.5 * start)
    if not poor:
        return found
    first, last = g[0], g[-1]
    if np.isfinite(first) and np.isfinite(last) and last > 0:
        ratio = first / last
        if ratio < 1e-3 and first < 1e-4:
            found.add(K.VANISHING_GRADIENT)
        if ratio > 70:
            found.add(K.EXPLODING_GRADIENT)
    if (np.nan_to_num(z, nan=0.0) >= 0.7).any():
        found.add(K.DEAD_UNITS)
    if len(window) >= 10:
        mean = float(np.mean(window))
        if mean != 0 and float(np.std(window)) / abs(mean) > 0.3:
            found.add(K.DIVERGING_LOSS)
        _, loss_f = timeline.loss()
        finite = loss_f[np.isfinite(loss_f)]
        w = len(window)
        if len(finite) >= 2 * w:
            before = float(np.median(finite[-2 * w : -w]))
            if before - recent < 0.01 * abs(before):
                found.add(K.FLAT_LOSS)
    return found


def deepdiagnosis(timeline: Timeline, anatomy: Anatomy) -> set[gw.Kind]:
    """DeepDiagnosis (Wardat et al., ICSE'22), judged at the latest record (its "final epoch").

    - vanishing: mean ``|dW| < 1e-7`` in a layer; approximated by the gradient's RMS
      (``grad_rms``, an upper bound of the mean absolute value);
    - dead: ``>= 70%`` of a ReLU site's outputs ``<= 0``: ``act_zero_frac`` (Part 2 metric);
    - saturation: ``> 50%`` of pre-activations beyond +-5: approximated by ``act_sat_frac``
      (derivative under 1% of its peak, i.e. |x| beyond ~6 for sigmoid, ~3 for tanh);
    - unchanged weights (mapped to `stalled_weights`): every layer's update exactly 0;
    - numerical errors (mapped to `nonfinite_gradient`): NaN/inf in gradients or weights;
    - loss not decreasing (mapped to `flat_loss`): the recent loss not below the window
      before it.
    No accuracy gate (the paper reports it flags 68 of 188 normal models).
    """
    found: set[gw.Kind] = set()
    if len(timeline) == 0:
        return found
    rms = _last(timeline.layer_metric("grad_rms"))
    if (np.nan_to_num(rms, nan=1.0) < 1e-7).any():
        found.add(K.VANISHING_GRADIENT)
    bad = np.nan_to_num(_last(timeline.layer_metric("grad_nonfinite")), nan=0.0) > 0
    weights = _last(timeline.layer_metric("weight_norm"))
    if bad.any() or np.isinf(weights).any() or (np.isnan(weights) & np.isfinite(timeline.layer_metric("weight_norm")).any(axis=0)).any():
        found.add(K.NONFINITE_GRADIENT)
    upd = _last(timeline.layer_metric("update_norm"))
    if len(upd) and np.isfinite(upd).all() and (upd == 0).all():
        found.add(K.STALLED_WEIGHTS)
    names, zero = timeline.metric("act_zero_frac")
    if names and (np.nan_to_num(zero[-1], nan=0.0) >= 0.7).any():
        found.add(K.DEAD_UNITS)
    names, sat = timeline.metric("act_sat_frac")
    if names and (np.nan_to_num(sat[-1], nan=0.0) > 0.5).any():
        found.add(K.SATURATED_UNITS)
    _, loss = timeline.loss()
    finite = loss[np.isfinite(loss)]
    if len(finite) >= 20:
        w = max(10, len(finite) // 5)
        if len(finite) >= 2 * w and np.median(finite[-w:]) >= np.median(finite[-2 * w : -w]):
            found.add(K.FLAT_LOSS)
    return found


BASELINES = {"AutoTrainer": autotrainer, "DeepDiagnosis": deepdiagnosis}
