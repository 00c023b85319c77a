"""Real runs on the digits that learn, but end far below a healthy net of the same shape,
each beside its healthy twin: a falling loss must not hide the fault, nor raise the twin."""

from __future__ import annotations

import torch
from torch import nn

import gradwatch as gw
from gradwatch import Kind, Severity
from tests.detect._runs import mlp, train_digits


def _dead_run(bias: float | None) -> tuple[gw.Diagnosis, float]:
    torch.manual_seed(0)
    model = mlp([64, 128, 128, 10], nn.ReLU)
    if bias is not None:
        nn.init.constant_(model[2].bias, bias)  # the second layer's units start below zero
    return train_digits(model, torch.optim.SGD(model.parameters(), 0.05, momentum=0.9), 400)


def test_a_layer_left_with_a_few_live_units_is_a_warning_while_the_loss_falls() -> None:
    d, acc = _dead_run(-2.0)
    (f,) = d.by_kind(Kind.DEAD_UNITS)
    assert f.severity == Severity.WARNING and not d.healthy and acc < 0.5
    assert f.message.startswith("`3` works with ") and " of its 128 units: " in f.message
    assert "the loss still improves" in f.message
    assert str(d).startswith("1 problem found")
    twin, twin_acc = _dead_run(None)
    assert twin.healthy and twin_acc > 0.9 and str(twin).startswith("healthy")


def _tanh_run(sigma_w2: float) -> tuple[gw.Diagnosis, float]:
    torch.manual_seed(0)
    model = mlp([64] + [64] * 20 + [10], nn.Tanh, var=sigma_w2)
    return train_digits(model, torch.optim.SGD(model.parameters(), 0.01), 200)


def test_a_deep_tanh_net_initialised_in_the_chaotic_phase_is_named_as_such() -> None:
    d, _ = _tanh_run(6.0)
    (f,) = d.by_kind(Kind.EXPLODING_GRADIENT)
    assert f.severity == Severity.WARNING and f.evidence["chaotic"] == 1.0
    assert f.evidence["growth_decades"] > 1 and f.layers[0] == "0"
    # theory: sigma_w^2 = 6 on tanh gives chi above 1; the measured gain per layer says so too
    assert 1.1 < f.evidence["gain_per_layer"] < 1.5
    critical, _acc = _tanh_run(1.0)  # sigma_w^2 = 1 with zero biases: the critical line
    assert critical.healthy
