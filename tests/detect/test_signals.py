"""The shared evidence: persistence, relative gradients, the loss's state, number formatting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradwatch.detect import Thresholds
from gradwatch.detect._signals import (
    cleared_span,
    depth_chain,
    episode,
    fill_pooled,
    first_persistent,
    latched_episode,
    num,
    relative_grads,
    still_holds,
    time_profiles,
)
from gradwatch.detect.loss import LossStatus, loss_view
from tests.detect._timelines import build, chain_anatomy, falling_loss, grads, stuck_loss

TH = Thresholds()


def test_persistence_needs_k_in_a_row_and_forgives_one_stray_record() -> None:
    m = np.array([0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=bool)
    assert first_persistent(m, 3) == 4
    assert first_persistent(m, 4) is None
    assert still_holds(m, 3)  # 3 of the last 5 records hold
    assert not still_holds(np.array([1, 1, 1, 0, 0, 0], dtype=bool), 3)
    assert episode(m, 3) == 4
    assert episode(np.array([1, 1], dtype=bool), 3) is None  # too few records
    assert first_persistent(np.array([], dtype=bool), 1) is None


def test_a_latched_episode_lasts_while_the_milder_condition_holds() -> None:
    enter = np.array([1, 1, 1, 0, 1, 0, 0, 0, 1, 0], dtype=bool)
    near = np.array([1, 1, 1, 1, 1, 1, 0, 1, 1, 1], dtype=bool)  # still within the band
    assert episode(enter, 3) is None  # only 1 of the last 5 records clears the threshold
    assert latched_episode(enter, near, 3) == 0
    gone = near.copy()
    gone[5:8] = False  # at one point only 2 of 5 records were in the band: released
    assert latched_episode(enter, gone, 3) is None
    never = np.array([1, 1, 0, 1, 1, 0, 1, 1, 0], dtype=bool)  # never 3 in a row
    assert latched_episode(never, np.ones(9, dtype=bool), 3) is None
    assert latched_episode(enter[:4], near[:4], 3) == 0  # too few records to have let go


def test_relative_gradient_is_norm_over_the_weights_that_got_gradient() -> None:
    an = chain_anatomy(2)
    layers = {
        "grad_norm": [0.3, 0.0],
        "weight_norm": [2.0, 1.0],
        "grad_zero_frac": [0.75, 1.0],
    }
    tl = build(an, 1, layers=lambda s: layers)
    r = relative_grads(tl)
    # 0.3 / (2.0 * sqrt(1 - 0.75)) by hand; an all-zero gradient is not a small one (NaN).
    assert r[0, 0] == pytest.approx(0.3 / (2.0 * 0.5))
    assert math.isnan(r[0, 1])


def test_depth_chain_skips_norm_layers_and_layers_never_seen_running() -> None:
    an = chain_anatomy(3)
    an.layers[1].type = "LayerNorm"
    an.layers[1].fan_in = None
    an.layers[2].order = None
    tl = build(an, 1, layers=lambda s: grads(3, [1, 1, 1]))
    assert depth_chain(tl, an) == [0]


@pytest.mark.parametrize(
    ("loss", "status"),
    [
        (stuck_loss(), "stuck"),
        (falling_loss(rate=0.01), "improving"),
        (falling_loss(rate=0.1, floor=0.001), "converged"),
        (lambda s: 2.3 + 0.004 * s, "diverging"),  # 2.3 -> 3.5: above its start by > 25%
        (lambda s: 2.3 * math.exp(-0.05 * s) + 1.0 + 0.01 * math.sin(s), "plateau"),  # 3.3 -> 1.0, flat
    ],
)
def test_loss_status(loss, status) -> None:
    tl = build(chain_anatomy(2, classes=1), 31, loss=loss)  # 301 steps, no chance level (1 output)
    assert loss_view(tl, chain_anatomy(2, classes=1), TH).status == status


def _wander(level: float, drop: float = 0.0) -> object:
    # an early drop, then a slow swing of the level (Adam oscillating on a baseline) with batch noise
    return lambda s: level + drop * math.exp(-0.1 * s) + 0.05 * math.sin(2 * math.pi * s / 160) + 0.02 * math.sin(1.7 * s)


def test_a_loss_that_wanders_without_a_new_low_is_stalled_not_unclear() -> None:
    an = chain_anatomy(2, classes=1)
    lv = loss_view(build(an, 41, loss=_wander(0.16, drop=0.6)), an, TH)  # 401 steps
    assert lv.status == "plateau"  # not flat by the band, but no new low for >= 60 steps
    assert lv.flat_since == lv.best_step and lv.flat_steps == 400 - lv.best_step + 1 >= TH.flat_min_steps
    assert loss_view(build(an, 41, loss=_wander(0.5)), an, TH).status == "stuck"  # never left its start
    # the quiet side: a noisy loss that keeps making new lows, however slowly, improves
    assert loss_view(build(an, 41, loss=lambda s: 1.0 - 0.001 * s + 0.05 * math.sin(1.7 * s)), an, TH).status == "improving"


def test_converged_classifier_watched_late_is_not_stuck() -> None:
    an = chain_anatomy(2, classes=10)
    tl = build(an, 31, loss=stuck_loss(0.01))  # flat from the start, far below ln(10)
    assert loss_view(tl, an, TH).status == "converged"


def test_a_stuck_classifier_is_described_at_chance() -> None:
    an = chain_anatomy(2, classes=10)
    lv = loss_view(build(an, 31, loss=stuck_loss()), an, TH)
    assert lv.status == "stuck" and lv.classes == 10
    assert lv.flat_steps == 301
    assert "(chance for 10 classes) for 301 steps" in lv.describe()
    assert lv.start == pytest.approx(math.log(10), abs=0.03)
    # inside the band but not at chance: said to be near it, with chance's own value
    near = loss_view(build(an, 31, loss=stuck_loss(1.98)), an, TH)
    assert "1.98 (near chance, 2.3, for 10 classes)" in near.describe()


def test_loss_edge_cases() -> None:
    an = chain_anatomy(2)
    assert loss_view(build(an, 0), an, TH).status == "unknown"
    assert loss_view(build(an, 2, loss=stuck_loss()), an, TH).status == "unknown"  # 11 losses
    nan_end = build(an, 5, loss=lambda s: 2.3 if s < 30 else float("nan"))
    lv = loss_view(nan_end, an, TH)
    assert lv.status == "nonfinite" and lv.first_nonfinite == 30
    assert "non-finite at step 30" in lv.describe()


def test_time_profiles_reach_is_early_over_late_in_decades() -> None:
    an = chain_anatomy(2)
    vec = [1e-6] * 5 + [1.0] * 40 + [1e-2] * 5  # T = 50, edges of 5 steps
    tl = build(an, 3, profiles=lambda s: {"grad_t/rnn": vec, "other/x": [1.0]})
    (name, (steps, reach)), = time_profiles(tl, TH).items()
    assert name == "rnn" and list(steps) == [0, 10, 20]
    np.testing.assert_allclose(reach, [-4.0] * 3)


@pytest.mark.parametrize(
    ("x", "text"),
    [(2.302585, "2.3"), (3e-12, "3e-12"), (4.1e5, "4.1e5"), (1700.4, "1700"), (0.0412, "0.0412"), (0.0, "0"), (-2e-5, "-2e-5")],
)
def test_num(x: float, text: str) -> None:
    assert num(x) == text


def test_a_noisy_loss_that_never_got_below_chance_is_stuck() -> None:
    an = chain_anatomy(2, classes=10)
    # Jumps of +-0.25 around ln(10) keep the rolling median from being level for 60 steps,
    # but the classifier has learned nothing in 150 steps.
    c = math.log(10)
    noisy = lambda s: (c - 0.25 if s < 50 else c + 0.25 if s < 100 else c) + 0.01 * math.sin(1.7 * s)  # noqa: E731
    lv = loss_view(build(an, 16, loss=noisy), an, TH)
    assert lv.status == "stuck" and lv.flat_since == 0 and lv.flat_steps == 151


def test_a_slow_steady_descent_near_chance_is_improving_not_stuck() -> None:
    # 2.30 -> 2.16 over 300 steps with batch noise: every window of the tail sits inside the
    # flat band (5% of the level) and the level is within 15% of chance, but each window is
    # lower than the one before by far more than chance moves a median.
    an = chain_anatomy(2, classes=10)
    slow = lambda s: 2.30 - 0.00045 * s + 0.02 * math.sin(1.7 * s)  # noqa: E731
    assert loss_view(build(an, 31, loss=slow), an, TH).status == "improving"
    assert loss_view(build(an, 31, loss=stuck_loss()), an, TH).status == "stuck"  # no descent: still stuck


def test_the_start_of_a_loss_that_blew_up_within_a_few_steps_is_its_first_value() -> None:
    an = chain_anatomy(2)
    blown = build(an, 2, loss=lambda s: [7.7e3, 3.4e34][s] if s < 2 else float("nan"))
    lv = loss_view(blown, an, TH)
    assert lv.status == "nonfinite" and lv.start == pytest.approx(7.7e3)


def test_first_losses_spanning_decades_start_at_the_first_one() -> None:
    # a regression blowing up from its first step: the median of the first ten losses is
    # already the blow-up (2.8e12), not where the run started (1e5)
    an = chain_anatomy(3, classes=1)
    blowing = lambda s: 1e5 * 10 ** min(s, 7) * (1 + 0.01 * math.sin(s))  # noqa: E731
    view = loss_view(build(an, 31, loss=blowing), an, Thresholds())
    assert view.start == pytest.approx(1e5) and view.status == "diverging"
    assert "it started at 1e5" in view.describe()
    # a head of ordinary noise keeps its median
    assert loss_view(build(an, 31, loss=falling_loss()), an, Thresholds()).start != pytest.approx(falling_loss()(0))


def test_one_example_batches_swinging_by_orders_of_magnitude_are_not_a_divergence() -> None:
    # batch size 1 on a regression with unscaled targets: each step's loss is one example's
    # squared error, log-normal around a level that does not move
    rng = np.random.default_rng(3)  # a draw whose first ten happen to sit low (median 5e10)
    draws = 1e11 * np.exp(2.0 * rng.standard_normal(400))
    an = chain_anatomy(3, classes=1)
    view = loss_view(build(an, 31, loss=lambda s: float(draws[s])), an, Thresholds())
    assert view.status != "diverging"


def test_cleared_span_is_the_first_episode_that_no_longer_holds() -> None:
    m = np.array([1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    assert cleared_span(m, 3) == (0, 9)  # held until index 9 (3 of the last 5), one gap forgiven
    assert cleared_span(m[:8], 3) is None  # still holds
    assert cleared_span(np.array([1, 0, 1, 0, 1, 0, 0, 0, 0], dtype=bool), 3) is None  # never persistent


def test_fill_pooled_gives_each_gap_the_value_that_pooled_it() -> None:
    nan = float("nan")
    v = np.array([[nan, nan], [nan, 0.2], [1.0, nan], [nan, nan], [0.5, nan]])
    out = fill_pooled(v)
    assert out[:, 0].tolist() == [1.0, 1.0, 1.0, 0.5, 0.5]
    assert out[:, 1].tolist() == [0.2, 0.2, 0.2, 0.2, 0.2]  # after its last value: kept
    assert np.isnan(fill_pooled(np.full((3, 1), nan))).all()


def test_peer_max_is_the_best_of_the_other_members_and_nan_alone() -> None:
    from gradwatch.detect._signals import peer_max

    v = np.array([[1.0, 5.0, 3.0, 2.0]])
    out = peer_max(v, np.array([0, 0, 1, -1]))
    assert out[0, 0] == 5.0 and out[0, 1] == 1.0
    assert np.isnan(out[0, 2]) and np.isnan(out[0, 3])  # alone in its group; in none


def test_a_classifier_whose_logits_began_confidently_wrong_converges_only_below_chance() -> None:
    # 10 classes: a first loss of 15 is six times ln 10. Logits of spread 8 can cost that as
    # cross-entropy (bound 2.3 + 8 * 4.15 = 35): falling to 0.5 is 3% of the start, but
    # still a fifth of chance, so the run is not done.
    an = chain_anatomy(3)
    fall = lambda s: 0.5 + 14.5 * math.exp(-s / 30)  # noqa: E731
    wide = lambda s: {"output_rms": {"output": 8.0}}  # noqa: E731
    view = loss_view(build(an, 31, loss=fall, values=wide), an, TH)
    assert view.status != LossStatus.CONVERGED and view.status in (LossStatus.PLATEAU, LossStatus.IMPROVING)
    # outputs of spread 1 cannot cost 15 as cross-entropy (bound 6.5): a squared error on
    # targets far from the outputs, whose fall to 3% of its start is convergence
    narrow = lambda s: {"output_rms": {"output": 1.0}}  # noqa: E731
    assert loss_view(build(an, 31, loss=fall, values=narrow), an, TH).status == LossStatus.CONVERGED
    # without the output probe, or below chance at the end, the start decides as before
    assert loss_view(build(an, 31, loss=fall), an, TH).status == LossStatus.CONVERGED
    low = lambda s: 0.05 + 14.95 * math.exp(-s / 30)  # noqa: E731
    assert loss_view(build(an, 31, loss=low, values=wide), an, TH).status == LossStatus.CONVERGED
