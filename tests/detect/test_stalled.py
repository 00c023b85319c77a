from __future__ import annotations

import pytest

from gradwatch import Kind, Severity
from gradwatch.detect import Thresholds, stalled_weights
from tests.detect._timelines import build, chain_anatomy, falling_loss, grads, stuck_loss

TH = Thresholds()
AN = chain_anatomy(3)


def test_every_layer_barely_moving_with_a_stuck_loss_is_an_error() -> None:
    tl = build(AN, 31, layers=lambda s: grads(3, [1, 1, 1], update=3e-7), loss=stuck_loss())
    (f,) = stalled_weights(tl, AN, TH)
    assert f.kind == Kind.STALLED_WEIGHTS and f.severity == Severity.ERROR
    assert f.layers == ["0", "2", "4"] and f.step == 0
    assert f.evidence["update_ratio_max"] == pytest.approx(3e-7)
    assert "3e-7 of their size" in f.message and "3.3e6 steps" in f.message


def test_zero_updates_point_at_the_optimizer() -> None:
    (f,) = stalled_weights(build(AN, 31, layers=lambda s: grads(3, [1, 1, 1], update=0.0), loss=stuck_loss()), AN, TH)
    assert "does it hold this model's parameters" in f.message


def test_one_moving_layer_means_the_optimizer_works() -> None:
    g = grads(3, [1, 1, 1], update=1e-8)
    g["update_ratio"][-1] = 1e-3
    assert stalled_weights(build(AN, 31, layers=lambda s: g, loss=stuck_loss()), AN, TH) == []


def test_tiny_updates_in_a_converged_run_are_info() -> None:
    tl = build(AN, 31, layers=lambda s: grads(3, [1, 1, 1], update=1e-7), loss=falling_loss(rate=0.1, floor=0.001))
    assert stalled_weights(tl, AN, TH)[0].severity == Severity.INFO


def test_unmeasured_updates_are_not_stalls() -> None:
    g = grads(3, [1, 1, 1])
    g["update_ratio"] = [float("nan")] * 3
    assert stalled_weights(build(AN, 31, layers=lambda s: g, loss=stuck_loss()), AN, TH) == []
    assert stalled_weights(build(AN, 2, layers=lambda s: grads(3, [1, 1, 1], update=0.0)), AN, TH) == []
