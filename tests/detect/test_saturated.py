from __future__ import annotations

from gradwatch import Kind, Severity
from gradwatch.detect import Thresholds, saturated_units
from tests.detect._timelines import build, chain_anatomy, falling_loss, stuck_loss

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
    tl = build(AN, 31, loss=falling_loss(), sites=SITES, values=lambda s: {"act_sat_frac": {"1": 0.9}})
    assert saturated_units(tl, AN, TH)[0].severity == Severity.INFO
    assert saturated_units(build(AN, 31, loss=stuck_loss(), values=lambda s: {"act_sat_frac": {"1": 0.2}}), AN, TH) == []
    assert saturated_units(build(AN, 2), AN, TH) == []
