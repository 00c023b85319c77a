"""The two things a falling loss does not excuse: slow progress and lost capacity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradwatch import Severity
from gradwatch.detect import Thresholds
from gradwatch.detect.loss import LossView, loss_view
from gradwatch.detect.severity import raised
from tests.detect._timelines import build, chain_anatomy, falling_loss, slow_loss, stuck_loss

TH = Thresholds()
AN = chain_anatomy(3)


def test_a_slow_steady_fall_is_slow_and_says_how_slow() -> None:
    view = loss_view(build(AN, 31, loss=slow_loss()), AN, TH)
    assert view.status == "improving" and view.slow
    # independent: the fall per step is 3e-4 and the loss ~2.21 must reach 5% of chance (0.115)
    expected = (2.3 - 3e-4 * 290 - 0.05 * math.log(10)) / 3e-4 / 301
    assert view.pace == pytest.approx(expected, rel=0.15)
    assert "but slowly: at this pace it needs ~" in view.describe() and "the 301 steps run so far" in view.describe()
    assert view.evidence()["loss_pace"] == view.pace


def test_a_healthy_decaying_loss_is_not_slow() -> None:
    view = loss_view(build(AN, 31, loss=falling_loss()), AN, TH)
    assert view.status == "improving" and not view.slow and view.pace < 1
    assert "slowly" not in view.describe()
    # the bar is a threshold like the others
    assert loss_view(build(AN, 31, loss=falling_loss()), AN, Thresholds(slow_pace=view.pace / 2)).slow


def test_pace_is_only_read_for_a_loss_that_improves() -> None:
    view = loss_view(build(AN, 31, loss=stuck_loss()), AN, TH)
    assert view.status == "stuck" and math.isnan(view.pace) and not view.slow
    negative = loss_view(build(AN, 31, loss=lambda s: -1.0 - 3e-4 * s), chain_anatomy(3, classes=1), TH)
    assert math.isnan(negative.pace) and not negative.slow  # no level to converge to


@pytest.mark.parametrize(
    ("status", "slow", "lost", "expected"),
    [
        ("improving", False, False, Severity.INFO),
        ("improving", True, False, Severity.WARNING),
        ("improving", False, True, Severity.WARNING),
        ("unclear", False, True, Severity.WARNING),
        ("converged", False, True, Severity.INFO),
    ],
)
def test_raised(status: str, slow: bool, lost: bool, expected: Severity) -> None:
    assert raised(Severity.INFO, LossView(status, slow=slow), lost_capacity=lost) == expected


def test_raised_never_lowers() -> None:
    assert raised(Severity.ERROR, LossView("converged")) == Severity.ERROR
    assert raised(Severity.WARNING, LossView("improving")) == Severity.WARNING


def test_escaping_is_a_steady_rise_of_over_a_decade_across_the_last_records() -> None:
    from gradwatch.detect.severity import escaping

    w = 2 * TH.persist
    # x2 per record over six records: 5 * log10(2) = 1.5 decades on the fitted line
    assert escaping(np.log10(1e-6 * 2.0 ** np.arange(20)), TH) == pytest.approx((w - 1) * math.log10(2))
    assert escaping(np.log10(np.full(20, 1e-6)), TH) is None  # level
    assert escaping(np.log10(1e-6 * 1.3 ** np.arange(20)), TH) is None  # rising, under a decade
    jumps = np.log10(np.array([1e-6] * 14 + [1e-6, 1e-2, 1e-6, 1e-2, 1e-6, 1e-2]))
    assert escaping(jumps, TH) is None  # no steady rise: a noisy measurement
    assert escaping(np.log10(2.0 ** np.arange(w - 1)), TH) is None  # too few records
    assert escaping(np.append(np.log10(2.0 ** np.arange(10)), np.nan), TH) is None


def test_a_measurement_wandering_within_a_band_is_not_escaping() -> None:
    from gradwatch.detect.severity import escaping

    # a tanh RNN's reach through time: down and up by two decades, never past its old high
    wander = np.array([-5.2, -4.1, -6.5, -8.3, -7.4, -6.9, -6.0, -7.0, -6.3, -5.7, -5.4, -5.2, -4.0])
    assert escaping(wander, TH) is None
    assert escaping(np.append(wander, [-3.5, -2.5, -1.8]), TH) is not None  # now past it by a decade
