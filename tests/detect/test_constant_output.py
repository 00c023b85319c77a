from __future__ import annotations

import pytest

from gradwatch import Kind, Severity
from gradwatch.detect import Thresholds, constant_output
from tests.detect._timelines import build, chain_anatomy, falling_loss, stuck_loss

TH = Thresholds()
AN = chain_anatomy(3)


def test_identical_outputs_with_a_stuck_loss_are_an_error() -> None:
    tl = build(AN, 31, loss=stuck_loss(), values=lambda s: {"output_spread": {"output": 0.0 if s >= 50 else 0.4}})
    (f,) = constant_output(tl, AN, TH)
    assert f.kind == Kind.CONSTANT_OUTPUT and f.severity == Severity.ERROR
    assert f.step == 50 and f.evidence["output_spread"] == 0.0
    assert "exactly the same output" in f.message


def test_small_spread_is_quoted() -> None:
    tl = build(AN, 31, loss=stuck_loss(), values=lambda s: {"output_spread": {"output": 4e-8}})
    (f,) = constant_output(tl, AN, TH)
    assert f.evidence["output_spread"] == pytest.approx(4e-8) and "differ by 4e-8" in f.message


def test_quiet_for_varied_outputs_and_info_while_learning() -> None:
    assert constant_output(build(AN, 31, loss=stuck_loss(), values=lambda s: {"output_spread": {"output": 0.3}}), AN, TH) == []
    learning = build(AN, 31, loss=falling_loss(), values=lambda s: {"output_spread": {"output": 0.0}})
    assert constant_output(learning, AN, TH)[0].severity == Severity.INFO
    assert constant_output(build(AN, 31, loss=stuck_loss()), AN, TH) == []
