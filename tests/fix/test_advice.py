from __future__ import annotations

import math

import numpy as np
import pytest

from gradwatch.fix import advice
from gradwatch.record import Timeline
from gradwatch.types import Diagnosis, Finding, LayerReport


def _timeline(grads: list[list[float]], ratios: list[list[float]] | None = None, nonfinite: list[int] | None = None) -> Timeline:
    tl = Timeline(layers=["a", "b"])
    for i, g in enumerate(grads):
        layers = {"grad_norm": g, "grad_nonfinite": [float((nonfinite or [0] * len(grads))[i]), 0.0]}
        if ratios is not None:
            layers["update_ratio"] = ratios[i]
        tl.ingest({"type": "record", "step": 10 * i, "losses": [], "layers": layers})
    return tl


def test_total_norm_is_the_norm_clip_grad_norm_sees() -> None:
    tl = _timeline([[3.0, 4.0], [1.0, float("nan")], [float("nan"), float("nan")]], nonfinite=[0, 0, 0])
    steps, total = advice.total_grad_norm(tl)
    assert list(steps) == [0, 10, 20]
    assert total[0] == pytest.approx(5.0) and total[1] == pytest.approx(1.0) and math.isnan(total[2])


def test_clip_is_the_median_before_the_trouble() -> None:
    grads = [[3.0, 4.0], [6.0, 8.0], [0.6, 0.8], [300.0, 400.0], [3e4, 4e4]]
    tl = _timeline(grads, nonfinite=[0, 0, 0, 0, 1])
    value, why = advice.clip_grad_norm(tl)  # no diagnosis: all finite records
    assert value == pytest.approx(float(np.median([5.0, 10.0, 1.0, 500.0])), rel=0.01)
    diag = Diagnosis(findings=[Finding("exploding_gradient", "error", [], 20, {}, "")])
    value, why = advice.clip_grad_norm(tl, diag)
    assert value == pytest.approx(5.0)  # median of 5, 10, 1 (steps 0..20)
    assert "steps <= 20" in why


def test_clip_from_layer_reports_without_a_timeline() -> None:
    diag = Diagnosis(layers=[LayerReport("a", "Linear", measured_grad_norm=3.0), LayerReport("b", "Linear", measured_grad_norm=4.0)])
    value, _ = advice.clip_grad_norm(None, diag)
    assert value == pytest.approx(5.0)
    assert advice.clip_grad_norm(None, Diagnosis()) is None


def test_lr_scale_brings_the_largest_typical_step_to_the_top_of_the_healthy_band() -> None:
    # per-record medians over layers: 0.5, 0.25, 0.01 -> the largest is 0.5
    tl = _timeline([[1.0, 1.0]] * 3, ratios=[[0.4, 0.6], [0.25, 0.25], [0.01, float("nan")]])
    scale, why = advice.lr_scale(tl)
    assert scale == pytest.approx(1e-2 / 0.5)
    assert "0.5" in why
    tl = _timeline([[1.0, 1.0]] * 2, ratios=[[0.002, 0.002], [0.002, 0.002]])
    assert advice.lr_scale(tl)[0] == pytest.approx(0.1)  # blamed: at least one decade down
    up, _ = advice.lr_scale(_timeline([[1.0, 1.0]] * 2, ratios=[[1e-7, 1e-7], [1e-7, 1e-7]]), up=True)
    assert up == pytest.approx(1e3)  # stalled: 1e-3 / 1e-7 = 1e4, capped at three decades
    tl = _timeline([[1.0, 1.0]] * 2, ratios=[[float("nan")] * 2, [float("inf")] * 2])
    scale, why = advice.lr_scale(tl)
    assert scale == advice.NO_MEASURE_LR_SCALE == 0.01 and "no finite update ratio" in why
    tl = _timeline([[1.0, 1.0]] * 2, ratios=[[50.0, 50.0], [50.0, 50.0]])
    assert advice.lr_scale(tl)[0] == pytest.approx(1e-3)  # never more than three decades


def test_lr_scale_when_the_damage_came_before_the_first_measured_update() -> None:
    # Adam at lr 1 kills the ReLUs before the first record that measures an update (step
    # 10): the ratio measured there (median 0.06) is the aftermath, a lower bound of the
    # damaging step, so it is brought to the healthy centre 1e-3, not the top 1e-2.
    tl = _timeline([[1.0, 1.0]] * 4, ratios=[[float("nan")] * 2, [0.05, 0.07], [0.02, 0.02], [0.005, 0.005]])
    dead = Diagnosis(findings=[Finding("dead_units", "error", ["1"], 10, {}, "")])
    scale, why = advice.lr_scale(tl, dead)
    assert scale == pytest.approx(1e-3 / 0.06, rel=0.03)
    assert "before the first measured update" in why
    # the same ratios with the damage found later: the step at 10 was measured before it
    later = Diagnosis(findings=[Finding("dead_units", "error", ["1"], 30, {}, "")])
    assert advice.lr_scale(tl, later)[0] == pytest.approx(0.1)  # 1e-2 / 0.06, capped at one decade
    # without a damage finding every record counts, as before
    assert advice.lr_scale(tl)[0] == pytest.approx(0.1)
    # a non-finite finding at the first measured update is the same aftermath
    nan = Diagnosis(findings=[Finding("nonfinite_gradient", "error", [], 10, {}, "")])
    assert advice.lr_scale(tl, nan)[0] == pytest.approx(1e-3 / 0.06, rel=0.03)
    # nothing known at all (no timeline, no layer reports): one decade, the coarse step of a search
    assert advice.lr_scale(None, Diagnosis())[0] == 0.1


def test_clip_stops_at_the_run_up_to_a_divergence() -> None:
    # a run under a far too large step: 2 at step 0, then the blow-up building (4e10), then NaN
    tl = _timeline([[1.2, 1.6], [2.4e10, 3.2e10], [float("nan"), float("nan")]], nonfinite=[0, 0, 1])
    diag = Diagnosis(findings=[Finding("diverging_loss", "error", [], 15, {}, "")])
    value, why = advice.clip_grad_norm(tl, diag)
    assert value == pytest.approx(2.0) and "over 1 records" in why
    # a record within a decade of the typical ones is one of them (median of 5, 10, 20)
    tl = _timeline([[3.0, 4.0], [6.0, 8.0], [12.0, 16.0], [3e4, 4e4]])
    value, _ = advice.clip_grad_norm(tl, Diagnosis(findings=[Finding("diverging_loss", "error", [], 30, {}, "")]))
    assert value == pytest.approx(10.0)


def _blown(losses: list[float]) -> Timeline:
    """One finite record at step 0, then overflow: no update ratio was ever measured."""
    tl = _timeline([[1.0, 1.0], [float("inf")] * 2], ratios=[[float("nan")] * 2, [float("nan")] * 2])
    tl.ingest({"type": "losses", "losses": list(enumerate(losses))})
    return tl


def test_a_run_that_overflowed_unmeasured_is_sized_by_the_loss_run_up() -> None:
    # a batch of one scatters the start (100, 130, 70); the first loss a decade above their
    # median comes at step 3: growth (2700 / 100)^(1/3) = 3 per step, eta * lambda ~ 1 + sqrt(3)
    scale, why = advice.lr_scale(_blown([100.0, 130.0, 70.0, 2700.0, 1e12, float("inf")]))
    assert scale == pytest.approx(advice.EDGE_AIM / (1 + math.sqrt(3.0)), rel=0.02)
    assert "rose from 100 to 2.7e+03 in 3 steps" in why
    # one step that multiplies the loss by 1e8: the step was ~1e4 past the limit, floored at 1e-3
    assert advice.lr_scale(_blown([1.0, 1e8, float("nan")]))[0] == advice.MIN_LR_SCALE
    # the twins: a loss that went NaN without rising first, or no losses, keep the two decades
    assert advice.lr_scale(_blown([5.0, 4.0, 6.0, float("nan")]))[0] == advice.NO_MEASURE_LR_SCALE
    assert advice.lr_scale(_blown([]))[0] == advice.NO_MEASURE_LR_SCALE
    assert advice.runup_growth(_blown([-3.0, 50.0, float("nan")])) is None  # not a squared error


def test_an_explosion_from_initialisation_is_not_the_rates_doing() -> None:
    from gradwatch.fix.restart import blew_up, diverged

    def d(*found: tuple[str, str, int]) -> Diagnosis:
        return Diagnosis(findings=[Finding(k, s, [], step, {}, "") for k, s, step in found])

    # a recurrent weight of spectral radius 3: the gradient through time explodes from step 0, the loss holds
    from_init = d(("exploding_gradient", "error", 0), ("flat_loss", "info", 160))
    assert diverged(from_init) and not blew_up(from_init)  # inflated weights may be restarted; the rate stands
    assert blew_up(d(("exploding_gradient", "warning", 120)))  # grew while training at the rate
    assert blew_up(d(("exploding_gradient", "error", 0), ("diverging_loss", "error", 90)))
    assert blew_up(d(("nonfinite_gradient", "error", 0)))
    assert not blew_up(d(("diverging_loss", "info", 90)))
