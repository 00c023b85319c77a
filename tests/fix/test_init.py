from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradwatch.fix import init
from tests.fix.zoo import FunctionalNet, RNNNet


def _sigma2(w: torch.Tensor) -> float:
    fan_in = w.shape[1] * (math.prod(w.shape[2:]) if w.dim() > 2 else 1)
    return float(w.detach().double().pow(2).mean()) * fan_in


def test_he_for_relu_xavier_for_tanh_and_for_the_head() -> None:
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 30), nn.Tanh(), nn.Linear(30, 5))
    new, changes = init.transform(model)
    assert [c.target for c in changes] == ["0", "2", "4"]
    assert _sigma2(new[0].weight) == pytest.approx(2.0, rel=1e-6)  # He: 2 / fan_in
    assert float(new[2].weight.detach().double().pow(2).mean()) == pytest.approx(2 / (30 + 30), rel=1e-6)
    assert float(new[4].weight.detach().double().pow(2).mean()) == pytest.approx(2 / (30 + 5), rel=1e-6)
    assert all(float(new[i].bias.detach().abs().max()) == 0 for i in (0, 2, 4))


def test_leaky_relu_slope_enters_the_he_gain() -> None:
    model = nn.Sequential(nn.Linear(10, 10), nn.LeakyReLU(0.5), nn.Linear(10, 2))
    new, _ = init.transform(model)
    assert _sigma2(new[0].weight) == pytest.approx(2 / (1 + 0.25), rel=1e-6)


def test_conv_fan_in_counts_the_kernel() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    new, _ = init.transform(model)
    w = new[0].weight
    assert float(w.detach().double().pow(2).mean()) == pytest.approx(2 / (3 * 9), rel=1e-6)


def test_a_layer_that_already_matches_is_left_alone() -> None:
    model = nn.Sequential(nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 50))
    with torch.no_grad():
        model[0].weight.normal_(0, math.sqrt(2 / 50)).mul_(1.02 * math.sqrt(2 / 50) / model[0].weight.pow(2).mean().sqrt())
    before = model[0].weight.clone()
    new, changes = init.transform(model)
    assert "0" not in {c.target for c in changes}
    assert torch.equal(new[0].weight, before)


def test_negative_biases_that_kill_relus_are_reset_even_at_the_right_scale() -> None:
    model = nn.Sequential(nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 2))
    init.transform(model, inplace=True)
    with torch.no_grad():
        model[0].bias.fill_(-3.0)
    new, changes = init.transform(model)
    assert [c.target for c in changes] == ["0"]
    assert float(new[0].bias.detach().abs().max()) == 0


def test_functional_activation_is_seen_with_an_example_input() -> None:
    model = FunctionalNet()
    static, _ = init.transform(model)
    traced, changes = init.transform(model, example_input=torch.randn(4, 6))
    assert "for sigmoid" in changes[0].description
    # Xavier either way for sigmoid / no activation: same target scale
    assert float(traced.fc1.weight.detach().pow(2).mean()) == pytest.approx(float(static.fc1.weight.detach().pow(2).mean()), rel=1e-5)


def test_lstm_orthogonal_recurrent_weights_and_forget_bias_one() -> None:
    model = RNNNet(nn.LSTM)
    new, changes = init.transform(model)
    assert "forget-gate bias 1" in changes[0].description
    h = 8
    for w in new.rnn.weight_hh_l0.detach().chunk(4, 0):
        assert torch.allclose(w @ w.T, torch.eye(h), atol=1e-5)
    b = new.rnn.bias_ih_l0.detach() + new.rnn.bias_hh_l0.detach()
    assert torch.equal(b[h : 2 * h], torch.ones(h))
    assert float(b[:h].abs().max()) == 0 and float(b[2 * h :].abs().max()) == 0
    # and the layer still runs
    out = new(torch.randn(2, 5, 3))
    assert out.shape == (2, 1)


def test_frozen_layers_are_not_touched() -> None:
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
    model[0].requires_grad_(False)
    before = model[0].weight.clone()
    new, changes = init.transform(model)
    assert "0" not in {c.target for c in changes}
    assert torch.equal(new[0].weight, before)


def test_layers_argument_restricts_the_transform() -> None:
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
    _, changes = init.transform(model, layers={"2"})
    assert [c.target for c in changes] == ["2"]
