from __future__ import annotations

import numpy as np
import pytest
from torch import nn

import gradwatch as gw
from gradwatch import Kind, Severity
from gradwatch.anatomy import Anatomy, Layer
from gradwatch.detect import Thresholds, temporal_vanishing
from tests.detect._timelines import build, falling_loss, slow_loss, stuck_loss

TH = Thresholds()


def _anatomy(kind: str) -> Anatomy:
    return Anatomy(
        [
            Layer("rnn", kind, 2, 32, 100, ["rnn.weight_hh_l0"], True, order=0),
            Layer("head", "Linear", 32, 1, 33, ["head.weight"], True, order=1),
        ]
    )


def _profile(reach: float) -> list[float]:
    return [reach] * 3 + [0.5] * 24 + [1.0] * 3  # T = 30, edges of 3 steps


def test_a_tanh_rnn_that_cannot_reach_back_is_an_error() -> None:
    an = _anatomy("RNN")
    tl = build(an, 31, loss=stuck_loss(0.167), profiles=lambda s: {"grad_t/rnn": _profile(1e-6)})
    (f,) = temporal_vanishing(tl, an, TH)
    assert f.kind == Kind.TEMPORAL_VANISHING and f.severity == Severity.ERROR
    assert f.layers == ["rnn"] and f.step == 0
    assert f.evidence["time_reach"] == pytest.approx(1e-6)
    assert "(the first, for a sequence read out at its end) is 1e-6 of the gradient there" in f.message


def test_a_gated_layer_on_a_plateau_is_a_warning() -> None:
    an = _anatomy("LSTM")
    tl = build(an, 31, loss=stuck_loss(0.167), profiles=lambda s: {"grad_t/rnn": _profile(1e-6)})
    (f,) = temporal_vanishing(tl, an, TH)
    assert f.severity == Severity.WARNING and "gated layers" in f.message


def test_an_lstm_whose_reach_jumps_up_as_it_learns_draws_nothing() -> None:
    an = _anatomy("LSTM")
    tl = build(an, 61, loss=lambda s: 0.167 if s < 300 else 0.01,
               profiles=lambda s: {"grad_t/rnn": _profile(1e-6 if s < 300 else 0.5)})  # fmt: skip
    assert temporal_vanishing(tl, an, TH) == []


def test_info_while_the_loss_improves_and_quiet_without_profiles() -> None:
    an = _anatomy("RNN")
    tl = build(an, 31, loss=falling_loss(), profiles=lambda s: {"grad_t/rnn": _profile(1e-6)})
    assert temporal_vanishing(tl, an, TH)[0].severity == Severity.INFO
    assert temporal_vanishing(build(an, 31, loss=stuck_loss()), an, TH) == []
    short = build(an, 31, loss=stuck_loss(), profiles=lambda s: {"grad_t/rnn": [0.0, 1.0]})
    assert temporal_vanishing(short, an, TH) == []


def test_a_sequence_read_out_in_the_middle_is_judged_from_the_middle() -> None:
    from gradwatch.detect._signals import reach_from_peak

    T = 60
    mid = np.exp(-np.abs(np.arange(T) - 30) * np.log(10) / 5)  # a decade every 5 steps away from step 30
    assert reach_from_peak(mid, 0.1) == pytest.approx(-5.4, abs=0.3)  # both ends ~5.6 decades down (windows of 6)
    # read out at the end: the first steps over the last, as before
    end = np.geomspace(1e-6, 1.0, T)
    assert reach_from_peak(end, 0.1) == pytest.approx(np.log10(end[:6].mean() / end[-6:].mean()))
    # a gradient that grows back through time peaks at the first steps: nothing has vanished
    assert reach_from_peak(end[::-1], 0.1) > 0
    # a one-way layer read out in the middle: the steps after it have no gradient at all, and do not count
    one_way = np.where(np.arange(T) <= 30, np.geomspace(1e-2, 1.0, T), 0.0)
    assert reach_from_peak(one_way, 0.1) == pytest.approx(np.log10(one_way[:6].mean() / one_way[25:31].mean()), abs=1e-9)


def _cut(kept: int, total: int = 20) -> list[float]:
    """A cell loop's profile whose state is detached inside the loop: calls before the last
    `kept` get no gradient at all (NaN), the rest a healthy one."""
    return [float("nan")] * (total - kept) + [0.5] * (kept - 1) + [1.0]


def test_a_recurrence_cut_through_time_is_an_error_gated_or_not_and_gets_manual_advice() -> None:
    an = _anatomy("GRUCell")  # gated: a plateau alone would be a warning
    tl = build(an, 31, loss=stuck_loss(2.08), profiles=lambda s: {"grad_t/rnn": _cut(1)})
    (f,) = temporal_vanishing(tl, an, TH)
    assert f.severity == Severity.ERROR and f.evidence["cut_steps"] == 19
    assert "no gradient at all reaches its first 19 of 20 steps" in f.message
    assert "truncated backpropagation through time over 1 step)" in f.message
    # while the loss improves (truncated BPTT on purpose, learning) it is information only
    learning = build(an, 31, loss=falling_loss(), profiles=lambda s: {"grad_t/rnn": _cut(5)})
    assert temporal_vanishing(learning, an, TH)[0].severity == Severity.INFO
    # a loop read out before its end: calls after the readout have no gradient by rights
    early_readout = [0.2] * 3 + [0.5] * 9 + [1.0] + [float("nan")] * 7
    quiet = build(an, 31, loss=stuck_loss(2.08), profiles=lambda s: {"grad_t/rnn": early_readout})
    assert all("no gradient at all" not in g.message for g in temporal_vanishing(quiet, an, TH))
    # fix has no surgery for a cut in the code: it passes the finding on as manual advice
    diag = gw.Diagnosis(findings=[f])
    result = gw.fix(nn.Sequential(nn.GRUCell(3, 4)), diag)
    assert result.changes == [] and any("state is cut between calls" in m for m in result.advice["manual"])


def test_holes_in_a_whole_sequence_layer_or_an_overflow_are_not_a_cut() -> None:
    # an nn.LSTM's profile is one tensor's gradient: NaN there is a non-finite gradient
    an = _anatomy("LSTM")
    tl = build(an, 31, loss=stuck_loss(2.08), profiles=lambda s: {"grad_t/rnn": _cut(1)})
    assert all("no gradient at all" not in f.message for f in temporal_vanishing(tl, an, TH))
    # a cell loop whose first entries overflowed (inf) did get a gradient: growth, not a cut
    cell = _anatomy("GRUCell")
    grown = [float("inf")] * 5 + [0.5] * 14 + [1.0]
    tl = build(cell, 31, loss=stuck_loss(2.08), profiles=lambda s: {"grad_t/rnn": grown})
    assert all("no gradient at all" not in f.message for f in temporal_vanishing(tl, cell, TH))


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_info_while_learning_warning_while_learning_too_slowly(kind: str) -> None:
    an = _anatomy(kind)
    profiles = lambda s: {"grad_t/rnn": _profile(1e-6)}  # noqa: E731
    (learning,) = temporal_vanishing(build(an, 31, loss=falling_loss(), profiles=profiles), an, TH)
    (slow,) = temporal_vanishing(build(an, 31, loss=slow_loss(), profiles=profiles), an, TH)
    assert learning.severity == Severity.INFO and slow.severity == Severity.WARNING


def test_a_vanilla_rnn_that_lost_most_of_the_run_before_its_reach_recovered_is_a_warning() -> None:
    an = _anatomy("RNN")

    def late(s: int) -> dict[str, list[float]]:
        return {"grad_t/rnn": _profile(1e-20 if s < 450 else 0.3)}

    tl = build(an, 61, loss=slow_loss(start=1.39, rate=6e-4), profiles=late)
    (f,) = temporal_vanishing(tl, an, TH)
    assert f.severity == Severity.WARNING and f.step == 0
    assert f.evidence["lost_share"] > 0.7 and f.evidence["time_reach_during"] == pytest.approx(1e-20)
    assert "from step 0 to" in f.message and "before it recovered to 0.3" in f.message
    # twins: it recovered within the first half; the loss converged all the same; gated
    early = build(an, 61, loss=slow_loss(start=1.39, rate=6e-4),
                  profiles=lambda s: {"grad_t/rnn": _profile(1e-20 if s < 200 else 0.3)})  # fmt: skip
    assert temporal_vanishing(early, an, TH) == []
    done = build(an, 61, loss=falling_loss(start=1.39, rate=0.02, floor=0.001), profiles=late)
    assert temporal_vanishing(done, an, TH) == []
    lstm = _anatomy("LSTM")
    assert temporal_vanishing(build(lstm, 61, loss=slow_loss(start=1.39, rate=6e-4), profiles=late), lstm, TH) == []


def test_a_gated_layer_whose_reach_rises_steadily_off_its_plateau_is_info() -> None:
    an = _anatomy("GRU")
    # reach x2 per record, still far below the bar: the layer is learning to carry the signal
    tl = build(an, 31, loss=stuck_loss(0.167), profiles=lambda s: {"grad_t/rnn": _profile(1e-14 * 2.0 ** (s / 10))})
    (f,) = temporal_vanishing(tl, an, TH)
    assert f.severity == Severity.INFO and f.evidence["escape_decades"] > 1.0
    assert "the layer is learning to carry the signal" in f.message
