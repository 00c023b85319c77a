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


def test_output_sample_and_its_gradient_against_autograd() -> None:
    from gradwatch.probes.output import SAMPLE_SIZE

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, t = torch.randn(40, 3), torch.randn(40, 2)
    with gw.watch(model, every=1) as w:
        out = model(x)
        out.retain_grad()
        loss = torch.nn.functional.mse_loss(out, t)
        loss.backward()
        w.step(loss=loss)
    records = w.timeline.records
    assert out.grad is not None
    at = torch.div(torch.arange(SAMPLE_SIZE) * out.numel(), SAMPLE_SIZE, rounding_mode="floor")
    names = records.names("output_sample")
    assert len(names) == SAMPLE_SIZE
    torch.testing.assert_close(torch.tensor(records.get("output_sample", names)[0]), out.detach().reshape(-1)[at].double())
    torch.testing.assert_close(torch.tensor(records.get("output_grad_sample", names)[0]), out.grad.reshape(-1)[at].double())
    assert records.column("output_grad_sq", "output")[0] == pytest.approx(float(out.grad.double().pow(2).sum()), rel=1e-6)
    assert records.column("output_batch", "output")[0] == 40.0


def test_no_output_sample_when_a_step_has_two_forwards_or_a_huge_output() -> None:
    from gradwatch.probes.output import MAX_SAMPLED_OUTPUTS

    model = nn.Sequential(nn.Linear(3, 2))
    x = torch.randn(8, 3)
    with gw.watch(model, every=1) as w:  # gradient accumulation: the loss is not one output's
        (model(x).pow(2).mean() + model(x).pow(2).mean()).backward()
        w.step()
    assert "output_grad_sq" not in w.timeline.records.metrics
    wide = nn.Sequential(nn.Linear(3, MAX_SAMPLED_OUTPUTS // 4 + 1))
    with gw.watch(wide, every=1) as w:
        wide(torch.randn(4, 3)).pow(2).mean().backward()
        w.step()
    assert "output_grad_sq" not in w.timeline.records.metrics
