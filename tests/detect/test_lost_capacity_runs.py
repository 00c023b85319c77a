"""Real runs on the digits that learn, but end far below a healthy net of the same shape,
each beside its healthy twin: a falling loss must not hide the fault, nor raise the twin."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F

import gradwatch as gw
from gradwatch import Kind, Severity
from gradwatch.lab.data import accuracy, batches, digits

SPLIT = digits(seed=0)


def _mlp(widths: list[int], act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1])


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> tuple[gw.Diagnosis, float]:
    with gw.watch(model, every=10) as w:
        for x, y in batches(SPLIT.x_train, SPLIT.y_train, 64, steps, seed=0):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    return w.diagnose(), accuracy(model, SPLIT.x_test, SPLIT.y_test)


def _dead_run(bias: float | None) -> tuple[gw.Diagnosis, float]:
    torch.manual_seed(0)
    model = _mlp([64, 128, 128, 10], nn.ReLU)
    if bias is not None:
        nn.init.constant_(model[2].bias, bias)  # the second layer's units start below zero
    return _train(model, torch.optim.SGD(model.parameters(), 0.05, momentum=0.9), 400)


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
    model = _mlp([64] + [64] * 20 + [10], nn.Tanh)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, math.sqrt(sigma_w2 / m.in_features))
            nn.init.zeros_(m.bias)
    return _train(model, torch.optim.SGD(model.parameters(), 0.01), 200)


def test_a_deep_tanh_net_initialised_in_the_chaotic_phase_is_named_as_such() -> None:
    d, _ = _tanh_run(6.0)
    (f,) = d.by_kind(Kind.EXPLODING_GRADIENT)
    assert f.severity == Severity.WARNING and f.evidence["chaotic"] == 1.0
    assert f.evidence["growth_decades"] > 1 and f.layers[0] == "0"
    # theory: sigma_w^2 = 6 on tanh gives chi above 1; the measured gain per layer says so too
    assert 1.1 < f.evidence["gain_per_layer"] < 1.5
    critical, _acc = _tanh_run(1.0)  # sigma_w^2 = 1 with zero biases: the critical line
    assert critical.healthy
