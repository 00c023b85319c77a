"""Causes the data holds: each on a small real training run, beside a healthy twin that stays quiet."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradwatch as gw
from gradwatch.explain.causes import INPUT_OFFSET_LIMIT, saturated_share

C = gw.CauseKind


def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, opt: str = "adam", lr: float = 1e-3, steps: int = 150,
        loss: str = "mse", batch: int | None = None) -> gw.Diagnosis:
    o = torch.optim.Adam(model.parameters(), lr=lr) if opt == "adam" else torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    with gw.watch(model, every=10) as w:
        for _ in range(steps):
            idx = torch.randint(0, len(x), (batch,), generator=g) if batch else slice(None)
            out = model(x[idx])
            value = F.binary_cross_entropy(out, y[idx]) if loss == "bce" else F.mse_loss(out, y[idx])
            o.zero_grad()
            value.backward()
            w.step(loss=value)
            o.step()
    return w.diagnose()


def kinds(d: gw.Diagnosis) -> set[gw.CauseKind]:
    return {c.kind for c in d.causes}


def _heart(offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    hr = offset + 10.0 * torch.randn(400, 1)
    return hr, (hr > offset - 1).float()


def test_saturated_first_layer_from_raw_inputs_and_standardised_twin() -> None:
    # heart rates near 92 into sigmoid units (a Stack Overflow report): the first layer saturates
    x, y = _heart(92.0)
    d = run(nn.Sequential(nn.Linear(1, 4), nn.Sigmoid(), nn.Linear(4, 1), nn.Sigmoid()), x, y, loss="bce")
    cause = next(c for c in d.causes if c.kind == C.INPUT_NOT_STANDARDISED)
    assert cause.evidence["saturated_share"] >= 0.5
    assert "standardise the inputs" in cause.remedy and "keras.layers.Normalization" in cause.remedy
    torch.manual_seed(0)
    twin = run(nn.Sequential(nn.Linear(1, 4), nn.Sigmoid(), nn.Linear(4, 1), nn.Sigmoid()), (x - 92.0) / 10.0, y, loss="bce", steps=60)
    assert C.INPUT_NOT_STANDARDISED not in kinds(twin)


def test_relu_net_on_inputs_in_the_thousands_and_twin() -> None:
    x = torch.linspace(1, 4000, 400).reshape(-1, 1)
    y = (x / 4000) ** 2
    d = run(nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1)), x, y, steps=60)
    assert C.INPUT_NOT_STANDARDISED in kinds(d)
    torch.manual_seed(0)
    twin = run(nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1)), (x - x.mean()) / x.std(), y, steps=60)
    assert C.INPUT_NOT_STANDARDISED not in kinds(twin)


def test_mild_scales_stay_quiet_digits_raw_and_linear_models() -> None:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)  # raw pixels 0..16
    y = F.one_hot(torch.tensor(data.target), 10).float()
    d = run(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), x, y, steps=30, batch=64)
    assert C.INPUT_NOT_STANDARDISED not in kinds(d)
    # a linear model on inputs in the hundreds: scale only stretches curvature, a step-size matter
    xl = torch.rand(256, 4) * 100
    lin = run(nn.Sequential(nn.Linear(4, 2)), xl, xl[:, :2] + xl[:, 2:], steps=60)
    assert C.INPUT_NOT_STANDARDISED not in kinds(lin)


def test_offset_limit_is_where_half_the_units_stay_on_one_side() -> None:
    share = math.erfc(3.0 / INPUT_OFFSET_LIMIT / math.sqrt(2.0))  # 2 Phi(-3 / r)
    assert share == pytest.approx(0.5, abs=1e-3)


def test_saturated_share_against_a_sampled_computation() -> None:
    h = torch.randn(200_000, dtype=torch.float64) * 5.0
    s = torch.sigmoid(h)
    sampled = float((4 * s * (1 - s) < 0.01).double().mean())
    assert saturated_share("sigmoid", 25.0) == pytest.approx(sampled, abs=0.01)


def _regression(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(400, 8)
    y = (x @ torch.randn(8, 1)) * 0.3 * scale + 2.0 * scale
    return x, y


def test_targets_in_the_hundred_thousands_and_standardised_twin() -> None:
    x, y = _regression(1e5)
    d = run(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)), x, y, steps=100)
    cause = next(c for c in d.causes if c.kind == C.TARGET_SCALE)
    assert cause.evidence["decades"] >= 2
    assert "standardise the targets" in cause.remedy
    torch.manual_seed(0)
    twin = run(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)), x, (y - y.mean()) / y.std(), steps=100)
    assert C.TARGET_SCALE not in kinds(twin)


def test_large_targets_a_model_reaches_stay_quiet() -> None:
    # prices in the hundred thousands fitted by a zero-initialised linear model under SGD: the
    # loss is large only because the targets are, and it falls (a Coursera mentor's answer)
    x, y = _regression(1e5)
    model = nn.Sequential(nn.Linear(8, 1))
    nn.init.zeros_(model[0].weight)
    nn.init.zeros_(model[0].bias)
    d = run(model, x, y, opt="sgd", lr=0.1, steps=100)
    assert C.TARGET_SCALE not in kinds(d)


def test_sigmoid_output_asked_for_targets_up_to_100_and_twin() -> None:
    x = torch.randn(300, 5)
    y = 100 * torch.sigmoid(x @ torch.randn(5, 1))
    d = run(nn.Sequential(nn.Linear(5, 8), nn.Sigmoid(), nn.Linear(8, 1), nn.Sigmoid()), x, y, opt="sgd", lr=0.1, batch=1, steps=200)
    cause = next(c for c in d.causes if c.kind == C.TARGET_OUT_OF_RANGE)
    assert (cause.evidence["low"], cause.evidence["high"]) == (0.0, 1.0)
    assert cause.layers == ["3"]
    assert "targets lie outside" in cause.message and "remove the output activation" in cause.remedy
    torch.manual_seed(0)
    twin = run(nn.Sequential(nn.Linear(5, 8), nn.Sigmoid(), nn.Linear(8, 1), nn.Sigmoid()), x, y / 100, opt="sgd", lr=0.1, batch=1, steps=200)
    assert C.TARGET_OUT_OF_RANGE not in kinds(twin)


def test_sigmoid_classifier_under_bce_stays_quiet() -> None:
    x = torch.randn(300, 5)
    y = (x[:, :1] > 0).float()
    d = run(nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid()), x, y, loss="bce", steps=100)
    assert not kinds(d) & {C.TARGET_OUT_OF_RANGE, C.TARGET_SCALE, C.INPUT_NOT_STANDARDISED}


def test_causes_survive_the_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = _heart(92.0)
    model = nn.Sequential(nn.Linear(1, 4), nn.Sigmoid(), nn.Linear(4, 1), nn.Sigmoid())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with gw.watch(model, every=10, log=tmp_path / "run.jsonl") as w:
        for _ in range(60):
            loss = F.binary_cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    assert C.INPUT_NOT_STANDARDISED in kinds(gw.load(tmp_path / "run.jsonl").diagnose())


def test_a_normalisation_after_the_first_layer_absorbs_the_input_scale() -> None:
    x, y = _heart(92.0)
    model = nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.Sigmoid(), nn.Linear(4, 1), nn.Sigmoid())
    assert C.INPUT_NOT_STANDARDISED not in kinds(run(model, x, y, loss="bce", steps=30))


def _signed_targets() -> tuple[torch.Tensor, torch.Tensor]:
    # the Stack Overflow grid: every x in {-1, 0, 1}^4 with a bias input, targets sin(sum x) of both signs
    grid = torch.cartesian_prod(*[torch.tensor([-1.0, 0.0, 1.0])] * 4)
    return torch.cat([grid, torch.ones(len(grid), 1)], 1), torch.sin(grid.sum(1, keepdim=True))


def _sin_net(out: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Sigmoid(), nn.Linear(6, 1), out)


def test_sigmoid_output_asked_for_negative_targets_and_twins() -> None:
    # unit-scale targets, half of them negative: the loss bound cannot see it (a sigmoid's error
    # may be 1 per output), the targets read from the output's gradient can
    x, y = _signed_targets()
    d = run(_sin_net(nn.Sigmoid()), x, y, opt="sgd", lr=0.5, steps=300)
    cause = next(c for c in d.causes if c.kind == C.TARGET_OUT_OF_RANGE)
    # half the targets' variance lies below 0 (sin is odd, the grid symmetric): computed directly
    least = float(y.clamp(max=0).pow(2).mean())
    assert cause.evidence["least_error"] == pytest.approx(least, rel=0.1)
    assert cause.evidence["unreachable_share"] == pytest.approx(least / float(y.var(unbiased=False)), abs=0.1)
    assert cause.evidence["target_min"] == pytest.approx(float(y.min()), rel=1e-3)
    assert "targets lie outside" in cause.message
    # the finding the detectors could not give: the output driven into sigmoid's flat tail
    finding = next(f for f in d.findings if f.kind == gw.Kind.SATURATED_UNITS and f.layers == ["3"])
    assert finding.severity == gw.Severity.WARNING and "cannot reach the targets" in finding.message
    assert C.TARGET_OUT_OF_RANGE in finding.causes
    # twins: the same targets moved into (0, 1); a tanh output, whose range holds them
    twin = run(_sin_net(nn.Sigmoid()), x, (y + 1) / 2.2, opt="sgd", lr=0.5, steps=300)
    assert C.TARGET_OUT_OF_RANGE not in kinds(twin) and twin.healthy
    tanh = run(_sin_net(nn.Tanh()), x, y, opt="sgd", lr=0.5, steps=300)
    assert C.TARGET_OUT_OF_RANGE not in kinds(tanh) and tanh.healthy


def test_relu_output_asked_for_negative_targets_and_twin() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = x @ torch.randn(4, 1)  # standardised-scale targets of both signs
    d = run(nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1), nn.ReLU()), x, y, steps=150)
    cause = next(c for c in d.causes if c.kind == C.TARGET_OUT_OF_RANGE)
    assert cause.evidence["low"] == 0.0 and math.isinf(cause.evidence["high"])
    assert any(f.kind == gw.Kind.DEAD_UNITS and f.layers == ["3"] and f.severity >= gw.Severity.WARNING for f in d.findings)
    torch.manual_seed(0)
    twin = run(nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1), nn.ReLU()), x, y.abs(), steps=150)
    assert C.TARGET_OUT_OF_RANGE not in kinds(twin)


def test_tanh_output_on_standardised_targets_stays_quiet() -> None:
    # a third of standard-normal targets lie beyond +-1, 15% of their variance: below the bar
    torch.manual_seed(0)
    x = torch.randn(512, 6)
    y = x @ torch.randn(6, 1)
    y = (y - y.mean()) / y.std()
    d = run(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1), nn.Tanh()), x, y, steps=150, batch=64)
    assert C.TARGET_OUT_OF_RANGE not in kinds(d)


def test_targets_read_give_the_target_scale_cause_its_mean_and_spread() -> None:
    x, y = _regression(1e5)
    d = run(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)), x, y, steps=100)
    cause = next(c for c in d.causes if c.kind == C.TARGET_SCALE)
    assert cause.evidence["target_mean"] == pytest.approx(float(y.mean()), rel=0.05)
    assert cause.evidence["target_std"] == pytest.approx(float(y.std()), rel=0.1)


def _heart_run(x: torch.Tensor, y: torch.Tensor, lr: float, steps: int) -> tuple[gw.Watcher, nn.Module, torch.Tensor]:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(1, 4), nn.Sigmoid(), nn.Linear(4, 1), nn.Sigmoid())
    with torch.no_grad():
        first = torch.sigmoid(model[0](x))  # the first layer's outputs at the first record
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with gw.watch(model, every=10) as w:
        for _ in range(steps):
            loss = F.binary_cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    return w, model, first


def test_inputs_that_saturate_the_first_layer_of_a_run_that_does_not_learn_give_a_finding() -> None:
    from gradwatch.explain.link import saturated_by_inputs

    torch.manual_seed(0)
    x, y = _heart(92.0)
    w, _, first = _heart_run(x, y, 1e-3, 150)
    d = w.diagnose()
    bare = gw.Diagnosis(findings=[], causes=d.causes)  # as if no detector had spoken
    finding = saturated_by_inputs(bare, w.timeline)
    assert finding is not None and finding.kind == gw.Kind.SATURATED_UNITS and finding.layers == ["1"]
    assert finding.severity == gw.Severity.WARNING
    flat = (first * (1 - first) < 0.01 * 0.25).double().mean()  # derivative under 1% of its peak
    assert finding.evidence["saturated_frac"] == pytest.approx(float(flat), abs=1e-6)
    assert any(f.kind == gw.Kind.SATURATED_UNITS and f.severity >= gw.Severity.WARNING for f in d.findings)
    # twins: standardised inputs (no cause), and raw inputs with a step that learns anyway
    twin, _, _ = _heart_run((x - 92.0) / 10.0, y, 1e-3, 150)
    assert saturated_by_inputs(gw.Diagnosis(findings=[], causes=twin.diagnose().causes), twin.timeline) is None
    easy = (x > 75.0).float()  # labels the output's bias alone can learn: the loss falls by half
    learns, _, _ = _heart_run(x, easy, 1e-2, 150)
    _, loss = learns.timeline.loss()
    assert loss[-10:].mean() < 0.5 * loss[:10].mean()
    assert C.INPUT_NOT_STANDARDISED in kinds(learns.diagnose())  # the cause stands; the run learned
    assert saturated_by_inputs(gw.Diagnosis(findings=[], causes=learns.diagnose().causes), learns.timeline) is None
