"""Advice for the model `fix` returns (issue 15): a predicted rate, restarts, one direction, LSUV, never silence."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradwatch as gw
from gradwatch.anatomy.order import order_of
from gradwatch.fix import first_update, lsuv, restart
from gradwatch.fix import init as fix_init
from gradwatch.fix.remedies import Plan
from gradwatch.types import Diagnosis, Finding


def _bits(n: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (n, 16), generator=g).float()
    teacher = torch.randn(16, 8, generator=g) / math.sqrt(4)
    y = torch.tanh((x - 0.5) @ teacher).sum(1, keepdim=True)
    return x, (y - y.mean()) / y.std()


def _sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int, watch: bool = False) -> gw.Watcher | None:
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    w = gw.watch(model, every=10) if watch else None
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        i = torch.randint(0, len(x), (64,), generator=g)
        loss = F.mse_loss(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        if w is not None:
            w.step(loss=loss)
        opt.step()
    if w is not None:
        w.close()
    return w


def _r2(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        out = model(x)
    if not torch.isfinite(out).all():
        return -math.inf
    return 1.0 - float(((out - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def _deep(act: type[nn.Module], width: int = 256, depth: int = 4) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(16, width), act()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), act()]
    model = nn.Sequential(*layers, nn.Linear(width, 1))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def test_the_rate_is_advised_for_the_fixed_model_not_the_one_it_replaced() -> None:
    # A deep sigmoid net made ReLU + He: the gradient reaches every layer again, and the
    # recipe's rate, harmless for the sigmoid net, diverges with the fixed one.
    x, y = _bits()
    lr = 0.3
    model = _deep(nn.Sigmoid)
    w = _sgd(model, x, y, lr, 200, watch=True)
    assert w is not None
    d = w.diagnose()
    r = gw.fix(model, d, timeline=w.timeline, example_input=x[:64])
    assert any(c.kind == "activation" for c in r.changes)
    scale = r.advice["lr_scale"]
    assert scale < 1 and "fixed model's first update is predicted" in r.advice["why"]["lr_scale"]
    at_recipe = copy.deepcopy(r.model)
    _sgd(at_recipe, x, y, lr, 300)
    advised = copy.deepcopy(r.model)
    _sgd(advised, x, y, lr * scale, 300)
    assert _r2(advised, x, y) > 0.5
    assert not _r2(at_recipe, x, y) > 0.5


def test_an_adaptive_optimizer_is_told_apart_from_sgd() -> None:
    tl = gw.Timeline(layers=["0", "2"])
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    for i, (g0, g1) in enumerate([(1e-4, 1.0), (2e-4, 0.5), (1e-3, 2.0)]):
        # SGD: the update follows the gradient at eta = 0.1
        tl.ingest({"type": "record", "step": 10 * i, "losses": [], "layers": {
            "grad_norm": [g0, g1], "update_norm": [0.1 * g0, 0.1 * g1], "weight_norm": [1.0, 1.0]}})
    sgd = first_update.step_size(tl, model)
    assert sgd is not None and not sgd.adaptive and sgd.eta == pytest.approx(0.1)
    tl = gw.Timeline(layers=["0", "2"])
    for i, (g0, g1) in enumerate([(1e-4, 1.0), (2e-4, 0.5), (1e-3, 2.0)]):
        # Adam: about the rate per parameter, whatever the gradient
        tl.ingest({"type": "record", "step": 10 * i, "losses": [], "layers": {
            "grad_norm": [g0, g1], "update_norm": [1e-3 * math.sqrt(20), 1e-3 * math.sqrt(5)], "weight_norm": [1.0, 1.0]}})
    adam = first_update.step_size(tl, model)
    assert adam is not None and adam.adaptive and adam.rms == pytest.approx(1e-3)


def _inflated_run() -> tuple[nn.Module, Diagnosis, gw.Watcher, torch.Tensor, torch.Tensor]:
    # y = 0.5 x on raw x in 1..20 under SGD 0.01: the loss grows by a factor each step and
    # the weight ends finite but far off any initialisation
    x = torch.arange(1, 21, dtype=torch.float32).reshape(-1, 1)
    y = 0.5 * x
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = gw.watch(model, every=10)
    for _ in range(60):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        w.step(loss=loss)
        opt.step()
    w.close()
    return model, w.diagnose(), w, x, y


def test_weights_a_divergence_inflated_are_redrawn_and_the_fresh_model_trains() -> None:
    model, d, w, x, y = _inflated_run()
    assert torch.isfinite(model[0].weight).all() and float(model[0].weight.detach().abs()) > 1e3
    assert restart.inflated_layers(model, order_of(model, x))
    r = gw.fix(model, d, timeline=w.timeline, example_input=x)
    said = [c for c in r.changes if "times their initial scale" in c.reason]
    assert said and said[0].target == "0"
    assert float(r.model[0].weight.detach().abs()) < 10
    assert 0 < r.advice["lr_scale"] < 1
    fresh = r.model
    opt = torch.optim.SGD(fresh.parameters(), lr=0.01 * r.advice["lr_scale"])
    for _ in range(500):
        loss = F.mse_loss(fresh(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert _r2(fresh, x, y) > 0.99
    # the twin: the same weights without a divergence in the diagnosis are not re-drawn
    calm = Diagnosis(findings=[Finding("flat_loss", "warning", [], 0, {}, "")])
    assert not any("initial scale" in c.reason for c in gw.fix(model, calm, example_input=x).changes)


def test_learning_rate_advice_goes_one_way() -> None:
    plan = Plan()
    plan.add("lr", "dead_units: step size too large")
    plan.add("lr", "stalled_weights: updates too small for the weights", up=True)
    assert not plan.options["lr"].get("up") and "too large" in plan.reasons["lr"]
    plan = Plan()
    plan.add("lr", "stalled_weights: updates too small for the weights", up=True)
    plan.add("lr", "diverging_loss: step size too large")
    assert not plan.options["lr"].get("up") and "too large" in plan.reasons["lr"]


def test_units_dead_from_step_0_are_not_blamed_on_the_step_size() -> None:
    # All-positive inputs against all-negative first-layer weights at He's scale: every
    # ReLU is off before any step. No step size did it, and none can undo it.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        model[0].weight.copy_(-model[0].weight.abs() * math.sqrt(6))
        model[0].bias.zero_()
    d = Diagnosis(findings=[
        Finding("dead_units", "error", ["1"], 0, {}, "every unit is off"),
        Finding("stalled_weights", "error", [], 10, {}, "the weights do not change"),
    ])
    r = gw.fix(model, d, example_input=torch.rand(32, 4))
    why = r.advice.get("why", {}).get("lr_scale", "")
    assert not ("too large" in why and r.advice.get("lr_scale", 1.0) > 1)
    assert r.advice.get("lr_scale", 1.0) <= 1.0
    assert "step size too large" not in why


class _ScaledTanh(nn.Module):
    def __init__(self, depth: int = 10, width: int = 64) -> None:
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.hidden = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])
        self.out = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = 0.5 * torch.tanh(self.inp(x))
        for layer in self.hidden:
            h = 0.5 * torch.tanh(layer(h))
        return self.out(h)


def _digits_acc(model: nn.Module, steps: int = 300) -> float:
    from gradwatch.lab.data import accuracy, digits

    data = digits(0)
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, len(data.x_train), (64,), generator=g)
        loss = F.cross_entropy(model(data.x_train[i]), data.y_train[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return accuracy(model, data.x_test, data.y_test)


def test_a_scaled_functional_activation_is_calibrated_by_measurement() -> None:
    from gradwatch.lab.data import digits

    x = digits(0).x_train[:128]
    torch.manual_seed(0)
    model = _ScaledTanh()
    d = Diagnosis(findings=[Finding("vanishing_gradient", "error", ["inp"], 0, {}, "")])
    r = gw.fix(model, d, example_input=x)
    assert any("LSUV" in c.description for c in r.changes)
    assert lsuv.drift(r.model, x) < lsuv.DRIFT
    assert _digits_acc(r.model) > _digits_acc(fix_init.transform(model, example_input=x)[0]) + 0.2
    # the twin: tanh modules, whose closed form (Xavier) holds, get no measurement
    twin = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    r = gw.fix(twin, d, example_input=x)
    assert not any("LSUV" in c.description for c in r.changes)


def test_lsuv_is_idempotent_and_leaves_the_head() -> None:
    from gradwatch.lab.data import digits

    x = digits(0).x_train[:128]
    torch.manual_seed(0)
    once, changes = lsuv.transform(_ScaledTanh(), example_input=x)
    assert changes and all(c.target != "out" for c in changes)
    _, again = lsuv.transform(once, example_input=x)
    assert again == []


def test_a_sick_run_with_nothing_to_change_is_told_what_to_try() -> None:
    model = nn.Sequential(nn.Linear(4, 1))
    d = Diagnosis(findings=[Finding("flat_loss", "warning", [], 0, {}, "the loss has stayed at 0.69")])
    r = gw.fix(model, d)
    assert not r.changes
    lines = r.advice.get("manual", [])
    assert any(line.startswith("flat_loss:") and "Check the labels" in line for line in lines)
    # a healthy run still hears nothing
    assert gw.fix(model, Diagnosis()).advice == {}


def _narrow(seed: int, width: int = 2, depth: int = 6) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(4, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return _r2(model, x, y)


def test_dead_units_in_a_narrow_deep_relu_net_get_a_leaky_activation() -> None:
    # Width 2, six ReLU layers: a re-draw leaves each input a 1 - (3/4)^6 = 82% chance that
    # some layer is off as a whole (Lu et al. 2019); He's weights re-draw the same odds.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = x.sum(1, keepdim=True) / 2
    dead = Diagnosis(findings=[Finding("dead_units", "error", ["3"], 0, {}, "every unit is off")])
    leaky = relu = 0
    for seed in range(6):
        r = gw.fix(_narrow(seed), dead, example_input=x)
        assert any(isinstance(m, nn.LeakyReLU) for m in r.model.modules())
        assert "Lu et al. 2019" in next(c.reason for c in r.changes if c.kind == "activation")
        leaky += _fit(r.model, x, y) > 0.9
        torch.manual_seed(100 + seed)
        redrawn = fix_init.transform(_narrow(seed), force=True)[0]  # He re-draws: the same risk
        relu += _fit(redrawn, x, y) > 0.9
    assert leaky >= relu + 2, (leaky, relu)
    # the twin: a wide net's layers are never off as a whole — re-drawn weights revive it
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    r = gw.fix(wide, dead, example_input=x)
    assert not any(isinstance(m, nn.LeakyReLU) for m in r.model.modules())


def test_batch_of_one_sgd_is_not_read_as_adaptive() -> None:
    """A record pairs the previous step's update with this step's gradient: with one example
    per batch their sizes scatter independently from record to record, which flattens a slope
    read over (record, layer) points. Read across the layers' medians, SGD is SGD."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    rng = torch.Generator().manual_seed(0)
    tl = gw.Timeline(layers=["0", "2"])
    previous = [1e-3, 1e-2]
    for i in range(12):
        noise = torch.exp(2.0 * torch.randn(2, generator=rng)).tolist()  # example-to-example scatter
        g = [1e-3 * noise[0], 1e-2 * noise[1]]
        tl.ingest({"type": "record", "step": 10 * i, "losses": [], "layers": {
            "grad_norm": g, "update_norm": [0.1 * p for p in previous], "weight_norm": [1.0, 1.0]}})
        previous = g
    step = first_update.step_size(tl, model)
    assert step is not None and not step.adaptive
    # the twin: Adam's steps stay near its rate across layers whose gradients differ
    tl = gw.Timeline(layers=["0", "2"])
    for i in range(12):
        noise = torch.exp(2.0 * torch.randn(2, generator=rng)).tolist()
        tl.ingest({"type": "record", "step": 10 * i, "losses": [], "layers": {
            "grad_norm": [1e-3 * noise[0], 1e-1 * noise[1]], "update_norm": [1e-3 * math.sqrt(20), 1e-3 * math.sqrt(5)],
            "weight_norm": [1.0, 1.0]}})
    step = first_update.step_size(tl, model)
    assert step is not None and step.adaptive


def test_step_size_leaves_out_a_record_after_a_one_step_blow_up() -> None:
    """A record whose loss grew by 1e10 in the step before it pairs a sane update with a blown-up
    gradient: its ratio is no step size."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    tl = gw.Timeline(layers=["0", "2"])
    rows = [(0, [1.0, 2.0], [math.nan, math.nan]), (10, [1.2, 2.1], [0.12, 0.21]), (20, [1e9, 2e9], [0.13, 0.2])]
    for step, g, u in rows:
        loss = 1e12 if step == 20 else 1.0
        tl.ingest({"type": "record", "step": step, "losses": [(step - 1, 1.0), (step, loss)], "layers": {
            "grad_norm": g, "update_norm": u, "weight_norm": [1.0, 1.0]}})
    blown = first_update.step_size(tl, model, until=20)
    assert blown is not None and blown.eta == pytest.approx(0.1)
    # the twin: a loss that grows gently between steps keeps its records
    calm = first_update.step_size(tl, model)
    assert calm is not None and calm.eta < 0.1  # without trouble nothing is left out


def test_the_surrogate_is_calibrated_on_the_model_as_built_when_the_user_rebuilt_it() -> None:
    # A cross-entropy's gradient is ~1/sqrt(C) per logit at the start, the surrogate's 1: the
    # record the model's weights match calibrates it, the last (a trained model) or the first
    # (the model built afresh with the same seed)
    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 10))

    model = build()
    opt = torch.optim.SGD(model.parameters(), 0.5)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 16, generator=g), torch.randint(0, 10, (64,), generator=g)
    with gw.watch(model, every=5) as w:
        for _ in range(60):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    probe = first_update.surrogate_gradients(build(), x)
    assert probe is not None
    c_fresh, where_fresh = first_update.calibration(build(), probe, w.timeline, x, same_architecture=False)
    _, where_trained = first_update.calibration(model, probe, w.timeline, x, same_architecture=False)
    assert "(the original model at step 0)" in where_fresh and f"at step {int(w.timeline.steps[-1])})" in where_trained
    assert 0.1 < c_fresh < 0.6  # about 1/sqrt(10) per logit: the surrogate overstates it
    other = build()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(3.0)  # weights no record measured: nothing to read
    assert first_update.calibration(other, probe, w.timeline, x, same_architecture=False)[0] == 1.0
