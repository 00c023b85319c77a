"""The two things a falling loss does not excuse: slow progress and lost capacity."""

from __future__ import annotations

import math

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
