from __future__ import annotations

import pytest

from gradwatch import Kind, Severity
from gradwatch.detect import Thresholds, saturated_units
from tests.detect._timelines import build, chain_anatomy, falling_loss, slow_loss, stuck_loss

TH = Thresholds()
AN = chain_anatomy(3)
SITES = {
    "1": {"fn": "sigmoid", "module": "1", "family": "saturating"},
    "lstm:forget_gate": {"fn": "sigmoid", "module": "lstm", "family": "gate"},
}


def test_saturated_sigmoids_with_a_stuck_loss_are_an_error_and_gates_only_info() -> None:
    tl = build(AN, 31, loss=stuck_loss(), sites=SITES,
               values=lambda s: {"act_sat_frac": {"1": 0.9, "lstm:forget_gate": 0.8}})  # fmt: skip
    units, gates = saturated_units(tl, AN, TH)
    assert units.kind == Kind.SATURATED_UNITS and units.severity == Severity.ERROR
    assert units.layers == ["1"] and units.evidence["saturated_frac_max"] == 0.9
    assert "90% of the outputs at `1` (sigmoid)" in units.message
    assert gates.severity == Severity.INFO and gates.layers == ["lstm"]


def test_info_while_learning_and_quiet_below_the_share() -> None:
    # saturated as training went on (not at the first record): learning put the units there
    later = lambda s: {"act_sat_frac": {"1": 0.8 if s >= 50 else 0.1}}  # noqa: E731
    tl = build(AN, 31, loss=falling_loss(), sites=SITES, values=later)
    assert saturated_units(tl, AN, TH)[0].severity == Severity.INFO
    assert saturated_units(build(AN, 31, loss=stuck_loss(), values=lambda s: {"act_sat_frac": {"1": 0.2}}), AN, TH) == []
    assert saturated_units(build(AN, 2), AN, TH) == []


def test_a_hidden_site_nine_tenths_saturated_warns_however_the_loss_falls() -> None:
    tl = build(AN, 31, loss=falling_loss(), sites=SITES, values=lambda s: {"act_sat_frac": {"1": 0.96, "lstm:forget_gate": 0.99}})
    units, gates = saturated_units(tl, AN, TH)
    assert units.severity == Severity.WARNING and gates.severity == Severity.INFO
    assert "so `1` passes the gradient on through at most 4% of its outputs" in units.message
    slow = build(AN, 31, loss=slow_loss(), sites=SITES, values=lambda s: {"act_sat_frac": {"1": 0.6}})
    assert saturated_units(slow, AN, TH)[0].severity == Severity.WARNING


def test_confident_outputs_are_not_lost_capacity() -> None:
    # a sigmoid whose output the model returns (multi-label under BCELoss) is meant to saturate
    sites = {"1": {"fn": "sigmoid", "module": "1", "family": "saturating", "output": True}}
    for loss in (falling_loss(), slow_loss()):
        (f,) = saturated_units(build(AN, 31, loss=loss, sites=sites, values=lambda s: {"act_sat_frac": {"1": 0.99}}), AN, TH)
        assert f.severity == Severity.INFO


def test_saturated_outputs_on_a_plateau_after_progress_warn_and_stuck_ones_are_an_error() -> None:
    sites = {"1": {"fn": "sigmoid", "module": "1", "family": "saturating", "output": True}}
    values = lambda s: {"act_sat_frac": {"1": 0.67}}  # noqa: E731
    plateau = lambda s: 0.58 - 0.53 * min(s, 200) / 200 + 0.002 * ((s * 7) % 3)  # noqa: E731  # 0.58 -> 0.05, flat
    one = chain_anatomy(3, classes=1)  # one sigmoid output under BCELoss
    (f,) = saturated_units(build(one, 41, loss=plateau, sites=sites, values=values), one, TH)
    assert f.severity == Severity.WARNING
    (g,) = saturated_units(build(one, 41, loss=stuck_loss(0.69), sites=sites, values=values), one, TH)
    assert g.severity == Severity.ERROR
    # a hidden site on the same plateau stays an error
    (h,) = saturated_units(build(one, 41, loss=plateau, sites=SITES, values=values), one, TH)
    assert h.severity == Severity.ERROR


def test_a_site_passing_under_a_quarter_of_the_gradient_from_the_start_warns() -> None:
    # 30% in the tails, but the mean derivative at 0.04 of sigmoid's 1/4: the site passes 16%
    weak = lambda s: {"act_sat_frac": {"1": 0.3}, "act_mean_deriv": {"1": 0.04}}  # noqa: E731
    (f,) = saturated_units(build(AN, 31, loss=falling_loss(), sites=SITES, values=weak), AN, TH)
    assert f.severity == Severity.WARNING and f.evidence["deriv_share"] == pytest.approx(0.16)
    assert "pass on 16% of the gradient a unit at its centre would" in f.message
    # the same share for tanh (peak 1) is 4%; 0.3 of tanh's peak is above the bar: nothing
    tanh = {"1": {"fn": "tanh", "module": "1", "family": "saturating"}}
    assert saturated_units(build(AN, 31, loss=falling_loss(), sites=tanh, values=weak), AN, TH)[0].evidence["deriv_share"] == pytest.approx(0.04)
    fine = lambda s: {"act_sat_frac": {"1": 0.3}, "act_mean_deriv": {"1": 0.3}}  # noqa: E731
    assert saturated_units(build(AN, 31, loss=falling_loss(), sites=tanh, values=fine), AN, TH) == []
    # weak only after training began (units grown confident): info while the loss falls, an
    # error on a plateau; at an output site: no finding
    late = lambda s: {"act_sat_frac": {"1": 0.3}, "act_mean_deriv": {"1": 0.2 if s <= 30 else 0.04}}  # noqa: E731
    (f,) = saturated_units(build(AN, 31, loss=falling_loss(), sites=SITES, values=late), AN, TH)
    assert f.severity == Severity.INFO and "sit on the shoulders of their activation (30% of the outputs" in f.message
    assert "first record" not in f.message
    plateau = lambda s: 2.3 - 1.0 * min(s, 100) / 100 + 0.002 * ((s * 7) % 3)  # noqa: E731  # 2.3 -> 1.3, flat
    (f,) = saturated_units(build(AN, 41, loss=plateau, sites=SITES, values=late), AN, TH)
    assert f.severity == Severity.ERROR
    out = {"1": {"fn": "sigmoid", "module": "1", "family": "saturating", "output": True}}
    assert saturated_units(build(AN, 31, loss=falling_loss(), sites=out, values=weak), AN, TH) == []
    # recovered by now: no finding
    healed = lambda s: {"act_sat_frac": {"1": 0.3}, "act_mean_deriv": {"1": 0.04 if s <= 100 else 0.2}}  # noqa: E731
    assert saturated_units(build(AN, 31, loss=falling_loss(), sites=SITES, values=healed), AN, TH) == []


def test_units_saturated_from_the_first_record_warn_while_the_loss_falls() -> None:
    tl = build(AN, 31, loss=falling_loss(), sites=SITES, values=lambda s: {"act_sat_frac": {"1": 0.6}})
    (f,) = saturated_units(tl, AN, TH)
    assert f.severity == Severity.WARNING
    assert "saturated from the first record, before training moved them" in f.message
    assert "initialisation" in f.message
    # below the share on the first records: saturated by training, not from the start
    gap = lambda s: {"act_sat_frac": {"1": 0.2 if s <= 30 else 0.6}}  # noqa: E731
    assert saturated_units(build(AN, 31, loss=falling_loss(), sites=SITES, values=gap), AN, TH)[0].severity == Severity.INFO
    # a converged run keeps its info, and an output site is never lost capacity
    conv = build(AN, 31, loss=falling_loss(rate=0.1, floor=0.001), sites=SITES, values=lambda s: {"act_sat_frac": {"1": 0.6}})
    assert saturated_units(conv, AN, TH)[0].severity == Severity.INFO
    out = {"1": {"fn": "sigmoid", "module": "1", "family": "saturating", "output": True}}
    assert saturated_units(build(AN, 31, loss=falling_loss(), sites=out, values=lambda s: {"act_sat_frac": {"1": 0.6}}), AN, TH)[0].severity == Severity.INFO


def test_a_site_saturated_from_the_start_for_most_of_the_run_is_lost_time() -> None:
    # saturated on records 0..20 of 31 (2/3 of the run), then freed; the loss falls slowly
    freed = lambda s: {"act_sat_frac": {"1": 0.8 if s <= 200 else 0.1}}  # noqa: E731
    (f,) = saturated_units(build(AN, 31, loss=slow_loss(), sites=SITES, values=freed), AN, TH)
    assert f.severity == Severity.WARNING and f.step == 0 and f.evidence["lost_share"] == pytest.approx(2 / 3)
    assert "saturated from the first record to step 200 (67% of the run), 80% of its outputs saturated" in f.message
    # freed before half the run, or saturated only after training began: nothing
    early = lambda s: {"act_sat_frac": {"1": 0.8 if s <= 100 else 0.1}}  # noqa: E731
    assert saturated_units(build(AN, 31, loss=slow_loss(), sites=SITES, values=early), AN, TH) == []
    late = lambda s: {"act_sat_frac": {"1": 0.8 if 30 <= s <= 250 else 0.1}}  # noqa: E731
    assert saturated_units(build(AN, 31, loss=slow_loss(), sites=SITES, values=late), AN, TH) == []
    # a run that converged all the same, or an output site: nothing
    assert saturated_units(build(AN, 31, loss=falling_loss(rate=0.1, floor=0.001), sites=SITES, values=freed), AN, TH) == []
    out = {"1": {"fn": "sigmoid", "module": "1", "family": "saturating", "output": True}}
    assert saturated_units(build(AN, 31, loss=slow_loss(), sites=out, values=freed), AN, TH) == []
