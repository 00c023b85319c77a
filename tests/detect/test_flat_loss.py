from __future__ import annotations

import math

import pytest

from gradwatch import Kind, Severity
from gradwatch.detect import Thresholds, flat_loss
from tests.detect._timelines import build, chain_anatomy, falling_loss, stuck_loss

TH = Thresholds()
AN = chain_anatomy(2, classes=10)


def test_stuck_at_chance_warns_with_its_duration() -> None:
    (f,) = flat_loss(build(AN, 31, loss=stuck_loss()), AN, TH)
    assert f.kind == Kind.FLAT_LOSS and f.severity == Severity.WARNING
    assert f.step == 0 and f.evidence["loss_flat_steps"] == 301.0
    assert f.evidence["loss_chance"] == pytest.approx(math.log(10))
    assert "2.3 (chance for 10 classes) for 301 steps" in f.message


def test_flat_since_the_step_it_stopped_moving() -> None:
    loss = lambda s: 2.3 - 0.008 * min(s, 150) + 0.01 * math.sin(1.7 * s)  # noqa: E731  # 2.3 -> 1.1, then flat
    (f,) = flat_loss(build(AN, 31, loss=loss), AN, TH)
    assert f.severity == Severity.INFO  # progress was made: a plateau, not a stuck run
    assert 140 <= (f.step or 0) <= 175


def test_converged_is_info() -> None:
    (f,) = flat_loss(build(AN, 31, loss=falling_loss(rate=0.1, floor=0.001)), AN, TH)
    assert f.severity == Severity.INFO and "converged" in f.message


def test_quiet_while_improving_or_too_short() -> None:
    assert flat_loss(build(AN, 31, loss=falling_loss()), AN, TH) == []
    assert flat_loss(build(AN, 5, loss=stuck_loss()), AN, TH) == []  # 41 steps < 60
    assert flat_loss(build(AN, 0), AN, TH) == []


def test_flat_far_below_its_start_with_a_constant_output_is_stuck_not_converged() -> None:
    # a regression (1 output): the loss falls from 100 to the targets' variance, then sits
    reg = chain_anatomy(3, classes=1)
    loss = falling_loss(start=100.0, rate=0.05, floor=1.0)

    def spread(s: int) -> dict[str, dict[str, float]]:
        return {"output_spread": {"output": 1e-7}}

    (f,) = flat_loss(build(reg, 31, loss=loss, values=spread), reg, TH)
    assert f.severity == Severity.WARNING and "constant prediction" in f.message
    assert "check the labels" in f.message
    # the twin whose outputs still depend on the input has converged
    varied = build(reg, 31, loss=loss, values=lambda s: {"output_spread": {"output": 0.3}})
    (g,) = flat_loss(varied, reg, TH)
    assert g.severity == Severity.INFO and "converged" in g.message


def test_a_loss_at_chance_while_the_outputs_spread_rises_steadily_is_info() -> None:
    # a symmetric start breaking: the spread across the batch grows x2 per record while the
    # loss has not moved yet; the same loss with a level spread is stuck
    rising = build(AN, 31, loss=stuck_loss(), values=lambda s: {"output_spread": {"output": 1e-9 * 2.0 ** (s / 10)}})
    (f,) = flat_loss(rising, AN, TH)
    assert f.severity == Severity.INFO and "the model is leaving its plateau" in f.message
    level = build(AN, 31, loss=stuck_loss(), values=lambda s: {"output_spread": {"output": 0.2}})
    (g,) = flat_loss(level, AN, TH)
    assert g.severity == Severity.WARNING and "escape_decades" not in g.evidence
