from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw
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


def _blown(recovers_to: float) -> Callable[[int], float]:
    """Chance (log 10) at step 0, ~450 at step 1, then decaying towards `recovers_to`."""
    decay = falling_loss(start=450.0, rate=0.01, floor=recovers_to)
    return lambda s: float(np.log(10)) if s == 0 else decay(s - 1)


def test_a_classifier_blown_far_above_chance_is_an_error_though_its_loss_falls() -> None:
    # 450 -> ~190 over 300 steps, every input the same answer: only the constant shrinking
    tl = build(AN, 31, loss=_blown(100.0), values=lambda s: {"output_spread": {"output": 0.0}})
    (f,) = constant_output(tl, AN, TH)
    assert f.severity == Severity.ERROR and f.evidence["blew_past_chance"] == 1.0
    assert "worse than a uniform guess" in f.message and "(chance 2.3)" in f.message
    # the same loss with varied outputs is no constant output
    assert constant_output(build(AN, 31, loss=_blown(100.0), values=lambda s: {"output_spread": {"output": 0.3}}), AN, TH) == []
    # a spike that has come back below chance is learning again: info, as before
    (g,) = constant_output(build(AN, 61, loss=_blown(0.5), values=lambda s: {"output_spread": {"output": 0.0}}), AN, TH)
    assert g.severity == Severity.INFO and "blew_past_chance" not in g.evidence


def test_a_real_lstm_blown_above_chance_by_adam_is_found_and_its_step_blamed() -> None:
    """An LSTM under Adam at lr 20 on 8-symbol recall: the loss jumps from chance (2.1) to
    ~200 at once and falls slowly (~125 at step 300) while every input gets the same answer."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(8, 16, batch_first=True)
            self.head = nn.Linear(16, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x)[0][:, -1])

    model = Net()
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=20.0)
    with gw.watch(model, every=10) as w:
        for _ in range(300):
            s = torch.randint(0, 8, (64, 20), generator=g)
            loss = nn.functional.cross_entropy(model(nn.functional.one_hot(s, 8).float()), s[:, 0])
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    d = w.diagnose()
    (f,) = d.by_kind("constant_output")
    assert f.severity == Severity.ERROR and f.evidence["blew_past_chance"] == 1.0
    assert f.evidence["loss_recent"] > 20 * f.evidence["loss_chance"]
    assert not d.healthy
    assert "lr_scale" in gw.fix(copy.deepcopy(model), d, timeline=w.timeline).advice


def test_a_spread_rising_steadily_off_a_plateau_is_info_and_a_level_one_is_not() -> None:
    # the direction that breaks a symmetric start grows exponentially: x2 per record
    rising = build(AN, 20, loss=stuck_loss(), values=lambda s: {"output_spread": {"output": 1e-9 * 2.0 ** (s / 10)}})
    (f,) = constant_output(rising, AN, TH)
    assert f.severity == Severity.INFO and f.evidence["escape_decades"] > 1.0
    assert "the model is leaving a plateau" in f.message
    level = build(AN, 31, loss=stuck_loss(), values=lambda s: {"output_spread": {"output": 1e-7 * (1 + 0.1 * np.sin(s))}})
    (g,) = constant_output(level, AN, TH)
    assert g.severity == Severity.ERROR and "escape_decades" not in g.evidence
