from __future__ import annotations

import math

import pytest

from gradwatch import Kind, Severity
from gradwatch.detect import Thresholds, diverging_loss
from tests.detect._timelines import build, chain_anatomy, falling_loss, grads, stuck_loss

TH = Thresholds()
AN = chain_anatomy(3, classes=1)


def test_a_rising_loss_is_an_error_from_where_it_turned() -> None:
    loss = lambda s: 1.0 if s < 100 else 1.0 + 0.01 * (s - 100)  # noqa: E731
    tl = build(AN, 31, layers=lambda s: grads(3, [1, 1, 1], update=0.2), loss=loss)
    (f,) = diverging_loss(tl, AN, TH)
    assert f.kind == Kind.DIVERGING_LOSS and f.severity == Severity.ERROR
    assert f.evidence["loss_recent"] > 1.25 * f.evidence["loss_start"]
    assert f.evidence["update_ratio_peak"] == pytest.approx(0.2)
    assert "step size is likely too large" in f.message
    assert 80 <= (f.step or 0) <= 130


def test_giving_back_most_of_the_progress_counts_as_diverging() -> None:
    loss = lambda s: 2.0 - 1.5 * min(s, 150) / 150 + (0.012 * (s - 150) if s > 150 else 0.0)  # noqa: E731
    (f,) = diverging_loss(build(AN, 31, loss=loss), AN, TH)  # 2.0 -> 0.5 -> 1.7
    assert f.severity == Severity.ERROR and f.evidence["loss_best"] < 0.8  # a rolling median: the V's tip is smoothed


def test_a_nonfinite_loss_is_an_error_at_its_first_step() -> None:
    tl = build(AN, 10, loss=lambda s: 2.3 if s < 42 else math.inf)
    (f,) = diverging_loss(tl, AN, TH)
    assert f.severity == Severity.ERROR and f.step == 42
    assert "non-finite at step 42" in f.message


def test_huge_updates_without_progress_warn() -> None:
    tl = build(AN, 31, layers=lambda s: grads(3, [1, 1, 1], update=0.3), loss=stuck_loss(1.0))
    (f,) = diverging_loss(tl, AN, TH)
    assert f.severity == Severity.WARNING and f.evidence["update_ratio"] == pytest.approx(0.3)


def test_quiet_for_learning_or_flat_runs_with_normal_steps() -> None:
    assert diverging_loss(build(AN, 31, layers=lambda s: grads(3, [1, 1, 1], update=0.3), loss=falling_loss()), AN, TH) == []
    assert diverging_loss(build(AN, 31, layers=lambda s: grads(3, [1, 1, 1]), loss=stuck_loss(1.0)), AN, TH) == []
    # One spike does not move the window medians.
    spiky = lambda s: 10.0 if s == 200 else 1.0 + 0.01 * math.sin(s)  # noqa: E731
    assert diverging_loss(build(AN, 31, loss=spiky), AN, TH) == []
    assert diverging_loss(build(AN, 0), AN, TH) == []


CLS = chain_anatomy(3, classes=4)  # a 4-class head: chance is ln 4 = 1.39


def _blown_up(s: int) -> float:
    """Chance at step 0, then confidently wrong from step 3 on, noisily, never back."""
    return math.log(4) if s < 3 else 60.0 + 20.0 * math.sin(1.7 * s)


def test_a_classifier_that_blew_up_in_its_first_steps_is_diverging() -> None:
    # The median of the first ten losses is already the blown-up level, so "risen since the
    # start" cannot see it; a loss that began at chance and sits far above it can.
    (f,) = diverging_loss(build(CLS, 31, loss=_blown_up), CLS, TH)
    assert f.severity == Severity.ERROR and f.step == 0
    assert f.evidence["loss_start"] == pytest.approx(math.log(4))
    assert "from 1.39 at best and 1.39 at the start" in f.message


def test_a_classifier_that_starts_above_chance_and_falls_is_not() -> None:
    # a poor initialisation (large logits) begins far above chance: not a divergence
    assert diverging_loss(build(CLS, 31, loss=lambda s: 40.0 * math.exp(-s / 100) + 1.0), CLS, TH) == []
    # near chance and noisy, a little above it: not either
    near = lambda s: math.log(4) * (1.1 + 0.05 * math.sin(s))  # noqa: E731
    assert diverging_loss(build(CLS, 31, loss=near), CLS, TH) == []
