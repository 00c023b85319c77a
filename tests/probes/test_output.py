from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.probes.output import first_tensor, spread


def test_spread_matches_a_direct_computation() -> None:
    y = torch.randn(16, 3) * torch.tensor([1.0, 2.0, 5.0]) + 1.0
    expected = y.double().std(0).mean() / y.double().abs().mean()
    assert float(spread(y)) == pytest.approx(float(expected))


def test_a_constant_output_has_zero_spread() -> None:
    assert float(spread(torch.full((8, 4), 3.0))) == 0.0


def test_spread_needs_a_batch() -> None:
    assert spread(torch.ones(1, 4)) is None
    assert spread(torch.tensor(2.0)) is None


def test_first_tensor_finds_logits() -> None:
    t = torch.ones(2)

    class Out:
        logits = t

    assert first_tensor(Out()) is t
    assert first_tensor({"loss": 1.0, "logits": t}) is t
    assert first_tensor((None, [t])) is t
    assert first_tensor("nothing") is None


def test_watch_records_the_spread_of_a_collapsed_model() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every ReLU off: the output is the last bias for every input
    with gw.watch(model, every=1) as w:
        model(torch.randn(16, 4)).sum().backward()
        w.step()
    assert w.timeline.records.column("output_spread", "output")[0] == 0.0
    assert w.timeline.records.column("act_dead_frac", "1")[0] == 1.0
