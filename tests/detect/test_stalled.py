from __future__ import annotations

import pytest

from gradwatch import Kind, Severity
from gradwatch.detect import Thresholds, stalled_weights
from tests.detect._timelines import build, chain_anatomy, falling_loss, grads, slow_loss, stuck_loss

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


def test_zero_updates_from_zero_gradients_do_not_blame_the_optimizer() -> None:
    # every unit dead: the gradients are exact zeros and the optimizer is fine
    (f,) = stalled_weights(build(AN, 31, layers=lambda s: grads(3, [0, 0, 0], update=0.0), loss=stuck_loss()), AN, TH)
    assert "every layer's gradient is exactly 0" in f.message and "does it hold" not in f.message


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


def _none(n: int, absent: list[int], rel: float = 1.0) -> dict[str, list[float]]:
    """Per-layer metrics where the layers in `absent` had no gradient (None: NaN in every column)."""
    g = grads(n, [rel] * n)
    for key in ("grad_norm", "grad_rms", "grad_zero_frac", "grad_nonfinite"):
        for i in absent:
            g[key][i] = float("nan")
    return g


def test_leading_layers_with_no_gradient_are_cut_off() -> None:
    tl = build(AN, 31, layers=lambda s: _none(3, [0]), loss=falling_loss(rate=0.01))
    (f,) = stalled_weights(tl, AN, TH)
    assert f.severity == Severity.WARNING and f.layers == ["0"] and f.evidence["no_gradient"] == 1.0
    assert "the first layer to run" in f.message and ".detach()" in f.message
    (two,) = stalled_weights(build(AN, 31, layers=lambda s: _none(3, [0, 1]), loss=stuck_loss()), AN, TH)
    assert two.layers == ["0", "2"] and "the first 2 layers to run" in two.message
    # a converged run: still said, as info
    conv = build(AN, 31, layers=lambda s: _none(3, [0]), loss=falling_loss(rate=0.1, floor=0.001))
    assert stalled_weights(conv, AN, TH)[0].severity == Severity.INFO


def test_what_is_not_a_cut() -> None:
    def quiet(g: dict[str, list[float]]) -> bool:
        return stalled_weights(build(AN, 31, layers=lambda s: g, loss=stuck_loss()), AN, TH) == []

    assert quiet(_none(3, [1]))  # its predecessor gets a gradient: an unused branch
    assert quiet(grads(3, [0.0, 1.0, 1.0]))  # exactly zero (dead ReLUs above): the dead-unit detector's
    nan_grad = grads(3, [float("nan"), 1.0, 1.0])
    nan_grad["grad_nonfinite"][0] = 12.0
    assert quiet(nan_grad)  # a NaN gradient is there, just not finite: the non-finite detector's
    assert quiet(_none(3, [0, 1, 2]))  # nothing gets a gradient: nothing to compare with


def test_steps_below_the_healthy_band_warn_when_the_loss_does_not_converge() -> None:
    small = lambda s: grads(3, [1, 1, 1], update=3e-5)  # noqa: E731  # between 1e-5 and 1e-4
    (f,) = stalled_weights(build(AN, 31, layers=small, loss=stuck_loss()), AN, TH)
    assert f.severity == Severity.WARNING and "below the healthy band's bottom (1e-4)" in f.message
    assert "learning rate is too small" in f.message
    assert stalled_weights(build(AN, 31, layers=small, loss=slow_loss()), AN, TH)[0].severity == Severity.WARNING
    # a run whose loss falls at a pace that finishes (fine-tuning at a small rate) keeps an info
    assert stalled_weights(build(AN, 31, layers=small, loss=falling_loss()), AN, TH)[0].severity == Severity.INFO
    # in the band: nothing
    assert stalled_weights(build(AN, 31, layers=lambda s: grads(3, [1, 1, 1], update=2e-4), loss=stuck_loss()), AN, TH) == []


def _apart(update: float, rel: float = 1.0) -> dict[str, list[float]]:
    """Three layers moving by 1e-3 of their weights a step, the first by `update`, its
    gradient (relative to its weights) `rel` times the others'."""
    g = grads(3, [rel, 1.0, 1.0], update=1e-3)
    g["update_ratio"][0] = update
    return g


def test_a_layer_the_optimizer_sets_apart_is_named() -> None:
    (f,) = stalled_weights(build(AN, 31, layers=lambda s: _apart(1e-8), loss=falling_loss(rate=0.003)), AN, TH)
    assert f.kind == Kind.STALLED_WEIGHTS and f.severity == Severity.WARNING and f.layers == ["0"]
    assert f.evidence["update_ratio"] == pytest.approx(1e-8) and f.evidence["update_ratio_others"] == pytest.approx(1e-3)
    assert f.message.startswith("`0` moves by 1e-8 of its size per step, the other layers by 1e-3")
    assert "parameter group" in f.message and "requires_grad_(False)" in f.message
    (zero,) = stalled_weights(build(AN, 31, layers=lambda s: _apart(0.0), loss=stuck_loss()), AN, TH)
    assert "`0` does not move at all" in zero.message
    conv = build(AN, 31, layers=lambda s: _apart(1e-8), loss=falling_loss(rate=0.1, floor=0.001))
    assert stalled_weights(conv, AN, TH)[0].severity == Severity.INFO


def test_what_is_not_set_apart() -> None:
    def quiet(g: dict[str, list[float]]) -> bool:
        return stalled_weights(build(AN, 31, layers=lambda s: g, loss=falling_loss(rate=0.003)), AN, TH) == []

    assert quiet(_apart(1e-5))  # two decades below: the spread of adaptive steps and weight scales
    assert quiet(_apart(1e-8, rel=1e-5))  # its gradient is as small as its step: vanishing, not set apart
    assert quiet(_apart(float("nan")))  # no update measured
