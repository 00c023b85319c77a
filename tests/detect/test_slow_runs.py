"""Real runs on the digits whose loss falls, or barely moves, while a known mechanism cripples
them — each beside a healthy twin of the same shape: units saturated by the initialisation,
steps below the healthy band everywhere, one parameter group's step set apart, and a
vanishing gradient that held for most of the run before an adaptive optimizer lifted it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import gradwatch as gw
from gradwatch import Kind, Severity
from tests.detect._runs import mlp, train_digits


def _train(model: nn.Module, opt: Callable[[nn.Module], torch.optim.Optimizer], steps: int) -> tuple[gw.Diagnosis, float]:
    return train_digits(model, opt(model), steps)


def _adam(lr: float) -> Callable[[nn.Module], torch.optim.Optimizer]:
    return lambda m: torch.optim.Adam(m.parameters(), lr)


def _sgd(lr: float) -> Callable[[nn.Module], torch.optim.Optimizer]:
    return lambda m: torch.optim.SGD(m.parameters(), lr)


def test_units_saturated_by_the_initialisation_warn_while_the_loss_falls() -> None:
    torch.manual_seed(0)
    d, acc = _train(mlp([64, 48, 48, 10], nn.Tanh, var=60.0), _adam(1e-3), 200)
    (f,) = d.by_kind(Kind.SATURATED_UNITS)
    assert f.severity == Severity.WARNING and acc < 0.75 and not d.healthy
    assert "from the first record, before training moved them" in f.message
    torch.manual_seed(0)
    twin, twin_acc = _train(mlp([64, 48, 48, 10], nn.Tanh, var=1.0), _adam(1e-3), 200)
    assert twin.healthy and twin_acc > 0.9


def test_units_on_their_shoulders_from_the_start_warn_although_under_half_are_saturated() -> None:
    # sigmoid pre-activations with a spread of ~9: many outputs sit on the shoulders, where the
    # derivative is above 1% of its peak, yet the site passes under a quarter of the gradient
    torch.manual_seed(0)
    d, acc = _train(mlp([64, 64, 64, 10], nn.Sigmoid, var=80.0), _adam(1e-3), 300)
    (f,) = d.by_kind(Kind.SATURATED_UNITS)
    assert f.severity == Severity.WARNING and acc < 0.75 and not d.healthy
    assert f.evidence["saturated_frac_max"] < 0.5 and f.evidence["deriv_share"] < 0.25
    assert "of the gradient a unit at its centre would, and have done so from the first record" in f.message
    torch.manual_seed(0)
    twin, twin_acc = _train(mlp([64, 64, 64, 10], nn.Sigmoid, var=1.0), _adam(1e-3), 300)
    assert twin.healthy and twin_acc > 0.9


def test_one_layer_pinned_by_its_initialisation_warns_after_a_long_fall() -> None:
    # one tanh layer with weights drawn at 150x LeCun's variance: the loss starts at ~15
    # (chance is 2.3) and falls a long way, yet the net ends well short of what the same
    # net learns at LeCun's scale, four units in five pinned at +-1 since the start
    torch.manual_seed(0)
    d, acc = _train(mlp([64, 40, 10], nn.Tanh, var=150.0), _sgd(0.1), 300)
    (f,) = d.by_kind(Kind.SATURATED_UNITS)
    assert f.severity == Severity.WARNING and acc < 0.85 and not d.healthy
    assert f.evidence["loss_start"] > 5 * f.evidence["loss_chance"] > 10 * f.evidence["loss_recent"] / 5
    torch.manual_seed(0)
    twin, twin_acc = _train(mlp([64, 40, 10], nn.Tanh, var=1.0), _sgd(0.1), 300)
    assert twin.healthy and twin_acc > 0.9


def test_steps_below_the_healthy_band_everywhere_are_named() -> None:
    torch.manual_seed(0)
    d, acc = _train(mlp([64, 128, 128, 10], nn.ReLU), _sgd(1e-4), 300)
    (f,) = d.by_kind(Kind.STALLED_WEIGHTS)
    assert f.severity >= Severity.WARNING and acc < 0.5
    assert "below the healthy band's bottom" in f.message and "learning rate is too small" in f.message
    torch.manual_seed(0)
    twin, twin_acc = _train(mlp([64, 128, 128, 10], nn.ReLU), _sgd(0.05), 300)
    assert twin.healthy and twin_acc > 0.9


def _groups(first: float) -> Callable[[nn.Module], torch.optim.Optimizer]:
    def make(m: nn.Module) -> torch.optim.Optimizer:
        assert isinstance(m, nn.Sequential)
        head = [p for p in m.parameters() if all(p is not q for q in m[0].parameters())]
        return torch.optim.SGD([{"params": m[0].parameters(), "lr": first}, {"params": head}], 0.05, momentum=0.9)

    return make


def test_a_parameter_group_whose_step_is_set_apart_is_named() -> None:
    torch.manual_seed(0)
    d, acc = _train(mlp([64, 6, 128, 10], nn.ReLU), _groups(1e-9), 300)
    (f,) = d.by_kind(Kind.STALLED_WEIGHTS)
    assert f.severity == Severity.WARNING and f.layers == ["0"] and acc < 0.75
    assert "parameter group" in f.message
    # the same net with the first group at a tenth of the rest's rate, on purpose: healthy
    torch.manual_seed(0)
    twin, twin_acc = _train(mlp([64, 6, 128, 10], nn.ReLU), _groups(0.005), 300)
    assert twin.healthy and twin_acc > 0.9


def test_a_vanishing_gradient_that_held_for_most_of_the_run_is_lost_time() -> None:
    # 30 tanh layers in the ordered phase: Adam lifts the early layers' share only late
    torch.manual_seed(0)
    d, acc = _train(mlp([64] + [32] * 30 + [10], nn.Tanh, var=0.3), _adam(3e-4), 300)
    (f,) = d.by_kind(Kind.VANISHING_GRADIENT)
    assert f.severity == Severity.WARNING and f.evidence["lost_share"] > 0.5 and acc < 0.5
    assert "for most of its steps the run could not train its early layers" in f.message
    torch.manual_seed(0)
    twin, twin_acc = _train(mlp([64] + [32] * 8 + [10], nn.Tanh, var=1.0), _adam(1e-3), 300)
    assert twin.healthy and twin_acc > 0.9


def test_a_relu_chain_drawn_above_hes_variance_is_a_growing_signal() -> None:
    # 10 ReLU layers at twice He's variance: each multiplies the signal's mean square by 2,
    # the logits start ~30x the inputs' scale, and the relative weight gradients stay level
    # (input and back-propagated signal grow in opposite directions), so only the weights'
    # scale and the measured forward gain tell
    torch.manual_seed(0)
    d, acc = _train(mlp([64] + [64] * 9 + [10], nn.ReLU, var=4.0), _adam(1e-3), 200)
    (f,) = d.by_kind(Kind.EXPLODING_GRADIENT)
    assert f.severity == Severity.WARNING and acc < 0.75 and not d.healthy
    assert 1.3 < f.evidence["gain_per_layer"] < 1.5 and f.evidence["forward_gain"] > 10
    assert "the signal grows 1.4" in f.message and "He's variance" in f.message
    torch.manual_seed(0)
    twin, twin_acc = _train(mlp([64] + [64] * 9 + [10], nn.ReLU, var=2.0), _adam(1e-3), 200)
    assert twin.healthy and twin_acc > 0.9
