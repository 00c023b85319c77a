"""Remedies for causes the data holds (fix/data.py): a standardisation layer, a linear output, advice."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradwatch as gw
from gradwatch.fix.advice import overflow
from gradwatch.fix.data import (
    InputStandardized,
    OutputScaled,
    ScaleOutput,
    Standardize,
    linear_output,
    output_scale,
    scale_output,
    standardise_inputs,
    target_scale,
)


def test_standardize_against_hand_computation() -> None:
    x = torch.tensor([[102.0, 1.0], [82.0, 3.0]])
    layer = Standardize(torch.tensor([92.0, 2.0]), torch.tensor([10.0, 0.5]))
    torch.testing.assert_close(layer(x), torch.tensor([[1.0, -2.0], [-1.0, 2.0]]))
    images = torch.ones(2, 3, 4, 4)
    channels = Standardize(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([1.0, 1.0, 0.5]), dim=1)
    torch.testing.assert_close(channels(images)[0, :, 0, 0], torch.tensor([0.0, 1.0, -2.0]))
    assert list(dict(layer.named_buffers())) == ["mean", "std"] and not list(layer.parameters())


def test_standardize_rejects_bad_statistics() -> None:
    with pytest.raises(gw.GradwatchError, match="same shape"):
        Standardize(torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match="std positive"):
        Standardize(torch.zeros(2), torch.tensor([1.0, 0.0]))


def test_sequential_gets_a_first_layer_and_keeps_its_names() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    new, changes = standardise_inputs(model, mean=[5.0, -1.0], std=[2.0, 4.0])
    assert list(dict(new.named_children())) == ["standardize", "0", "1", "2"]
    assert changes[0].kind == "inputs" and "raw data" in changes[0].description
    x = torch.randn(4, 2)
    torch.testing.assert_close(new(x), model((x - torch.tensor([5.0, -1.0])) / torch.tensor([2.0, 4.0])))
    assert standardise_inputs(model) == (model, [])  # no statistics: nothing to build


def test_other_modules_are_wrapped() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    new, _ = standardise_inputs(Net(), mean=[1.0, 1.0], std=[1.0, 1.0])
    assert isinstance(new, InputStandardized)
    torch.testing.assert_close(new(torch.ones(1, 2)), new.model(torch.zeros(1, 2)))


def test_linear_output_replaces_a_bounded_module_only() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Sequential(nn.Linear(2, 1), nn.Sigmoid()))
    new, changes = linear_output(model, layers=["2.1", "1", "0"])
    assert isinstance(new[2][1], nn.Identity) and isinstance(new[1], nn.Identity)
    assert isinstance(new[0], nn.Linear) and isinstance(model[2][1], nn.Sigmoid)  # the input is left as it was
    assert [c.target for c in changes] == ["2.1", "1"]


def _watched(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, lr: float, steps: int):  # type: ignore[no-untyped-def]
    opt = torch.optim.SGD(model.parameters(), lr=lr) if lr >= 0.05 else torch.optim.Adam(model.parameters(), lr=lr)
    with gw.watch(model, every=10) as w:
        for i in range(steps):
            j = slice(i % len(x), i % len(x) + 1) if lr >= 0.05 else slice(None)
            loss = loss_fn(model(x[j]), y[j])
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    return w


def test_fix_standardises_raw_inputs_inside_the_model() -> None:
    x = 92.0 + 10.0 * torch.randn(300, 1)
    y = (x > 91).float()
    model = nn.Sequential(nn.Linear(1, 4), nn.Sigmoid(), nn.Linear(4, 1), nn.Sigmoid())
    w = _watched(model, x, y, F.binary_cross_entropy, 1e-3, 60)
    d = w.diagnose()
    if not any(f.severity >= gw.Severity.WARNING for f in d.findings):
        pytest.skip("no finding on this draw: fix has nothing to act on")
    r = gw.fix(model, d, timeline=w.timeline)
    assert "inputs" in {c.kind for c in r.changes}
    layer = r.model.standardize
    assert float(layer.mean[0]) == pytest.approx(float(x.mean()), rel=0.05)
    assert not any("Standardise the inputs" in m for m in r.advice.get("manual", []))  # done in the model


#: Words that would tell a person to standardise the targets (done twice with the layer).
STANDARDISE_TARGETS = re.compile(r"(standardi[sz]e|normali[sz]e|rescale)[^.;\n]{0,40}\btargets?\b", re.I)


def test_fix_removes_a_sigmoid_output_asked_for_large_targets() -> None:
    torch.manual_seed(0)
    x = torch.randn(200, 5)
    y = 100 * torch.sigmoid(x @ torch.randn(5, 1))
    model = nn.Sequential(nn.Linear(5, 8), nn.Sigmoid(), nn.Linear(8, 1), nn.Sigmoid())
    w = _watched(model, x, y, F.mse_loss, 0.1, 200)
    r = gw.fix(model, w.diagnose(), timeline=w.timeline)
    assert isinstance(r.model[3], nn.Identity) and isinstance(model[3], nn.Sigmoid)
    # targets of root mean square ~55, far beyond the unit scale a linear output starts at
    assert isinstance(r.model[-1], ScaleOutput)
    rms = float(y.pow(2).mean().sqrt())
    assert rms / 2 < float(r.model[-1].scale) < 2 * rms
    manual = " ".join(r.advice.get("manual", []))
    assert "beyond its range (0 to 1)" in manual and "`scale_output`" in manual
    assert not STANDARDISE_TARGETS.search(manual), manual  # the layer does it: never twice


def test_fix_gives_targets_far_beyond_the_output_a_fixed_output_scale() -> None:
    torch.manual_seed(0)
    x = torch.randn(300, 8)
    y = (x @ torch.randn(8, 1)) * 3e4 + 2e5
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    w = _watched(model, x, y, F.mse_loss, 1e-3, 60)
    d = w.diagnose()
    assert gw.CauseKind.TARGET_SCALE in {c.kind for c in d.causes}
    r = gw.fix(model, d, timeline=w.timeline, example_input=x[:64])
    assert list(dict(r.model.named_children()))[-1] == "scale_output"
    # the targets read from the output's gradient: the layer standardises them (spread, mean)
    layer = r.model[-1]
    assert float(layer.scale) == pytest.approx(float(y.std()), rel=0.1)
    assert float(layer.shift) == pytest.approx(float(y.mean()), rel=0.05)
    with torch.no_grad():  # the model predicts in the targets' units: its layers at order one
        torch.testing.assert_close(r.model(x[:4]), r.model[:-1](x[:4]) * layer.scale + layer.shift)
    manual = " ".join(r.advice.get("manual", []))
    assert "`scale_output`" in manual and not STANDARDISE_TARGETS.search(manual), manual
    assert float(r.advice.get("lr_scale", 1.0)) == 1.0  # Adam divides the scale out
    assert "inputs" not in {c.kind for c in r.changes}  # the inputs were standard normal already


def test_scale_output_against_hand_computation() -> None:
    layer = ScaleOutput(1e5)
    torch.testing.assert_close(layer(torch.tensor([[1.5, -2.0]])), torch.tensor([[1.5e5, -2e5]]))
    assert list(dict(layer.named_buffers())) == ["scale", "shift"] and not list(layer.parameters())
    shifted = ScaleOutput(10.0, shift=-3.0)
    torch.testing.assert_close(shifted(torch.tensor([[1.5, -2.0]])), torch.tensor([[12.0, -23.0]]))
    with pytest.raises(gw.GradwatchError, match="shift must be finite"):
        ScaleOutput(2.0, shift=float("nan"))
    old = {"scale": torch.tensor(5.0)}  # saved before the layer had a shift
    loaded = ScaleOutput(1.0)
    loaded.load_state_dict(old)
    assert float(loaded.scale) == 5.0 and float(loaded.shift) == 0.0
    for bad in (0.0, -3.0, float("nan"), float("inf")):
        with pytest.raises(gw.GradwatchError, match="finite and positive"):
            ScaleOutput(bad)


def test_scale_output_goes_last_or_around_and_composes() -> None:
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    new, changes = scale_output(seq, scale=40.0)
    assert list(dict(new.named_children())) == ["0", "1", "2", "scale_output"] and len(seq) == 3
    assert changes[0].kind == "targets" and "raw targets" in changes[0].description
    again, _ = scale_output(new, scale=2.0)
    assert len(again) == 4 and output_scale(again) == pytest.approx(80.0)  # multiplied, not stacked
    assert scale_output(seq, scale=None) == (seq, []) and scale_output(seq, scale=0.5) == (seq, [])

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.fc(x), x

    wrapped, _ = scale_output(Pair(), scale=10.0)
    assert isinstance(wrapped, OutputScaled)
    x = torch.randn(3, 2)
    out, rest = wrapped(x)
    torch.testing.assert_close(out, wrapped.model.fc(x) * 10.0)
    torch.testing.assert_close(rest, x)  # only the first tensor is the prediction


def _out_of_range(distance: float) -> gw.Diagnosis:
    cause = gw.Cause(
        gw.CauseKind.TARGET_OUT_OF_RANGE, 0.8, ["1"],
        {"loss_floor": 9.0, "bound": 1.0, "low": 0.0, "high": 1.0, "outputs": 1.0, "target_distance": distance}, "m",
    )
    finding = gw.Finding(gw.Kind.DIVERGING_LOSS, gw.Severity.ERROR, [], 5, {}, "the loss rose")
    return gw.Diagnosis(findings=[finding], causes=[cause])


def test_output_scale_only_for_targets_a_decade_beyond_the_activation() -> None:
    assert target_scale(_out_of_range(3.0)) is None  # within reach of a linear output: no layer
    assert target_scale(_out_of_range(50.0)) == pytest.approx(50.0)


def test_no_rate_for_raw_targets_beside_advice_to_standardise_them() -> None:
    # Regression: a rate sized for the targets as they are was advised together with advice to
    # standardise them, which shrinks every gradient by their scale squared.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1), nn.Sigmoid())
    r = gw.fix(model, _out_of_range(3.0), example_input=torch.randn(8, 2))
    manual = " ".join(r.advice.get("manual", []))
    assert STANDARDISE_TARGETS.search(manual)  # no layer: the targets are the user's to scale
    assert "lr_scale" not in r.advice and "does not carry over" in r.advice["why"]["lr_scale"]


def test_sgd_rate_for_the_scaled_model_counts_the_scale_twice() -> None:
    """Through `scale_output` a squared error's gradient is scale^2 times the standardised one:
    the advised rate must bring that down, and the fixed model must then train."""
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = x @ torch.randn(4, 1) * 300.0 + 1000.0
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, every=5) as w:
        for i in range(40):
            j = slice(32 * (i % 8), 32 * (i % 8) + 32)
            loss = F.mse_loss(model(x[j]), y[j])
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    d = w.diagnose()
    assert gw.CauseKind.TARGET_SCALE in {c.kind for c in d.causes}
    r = gw.fix(model, d, timeline=w.timeline, example_input=x[:64])
    scale = output_scale(r.model)
    rate = float(r.advice["lr_scale"])
    assert rate < 1.0 / scale  # one factor of the scale would not do: the error carries the other
    fixed = r.model
    opt = torch.optim.SGD(fixed.parameters(), lr=0.01 * rate)
    with torch.no_grad():
        start = float(F.mse_loss(fixed(x), y))
    for i in range(300):
        j = slice(32 * (i % 8), 32 * (i % 8) + 32)
        loss = F.mse_loss(fixed(x[j]), y[j])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = float(F.mse_loss(fixed(x), y))
    assert math.isfinite(end) and end < 0.1 * start


def test_overflow_bound_follows_the_float_type() -> None:
    assert overflow(1e21, torch.float32) and not overflow(1e10, torch.float32)
    assert overflow(1e3, torch.float16) and not overflow(10.0, torch.float16)
    assert not overflow(math.nan, torch.float32) and overflow(math.inf, torch.float32)


def test_targets_whose_gradient_would_overflow_adam_get_a_normalised_gradient() -> None:
    """Through a scale of 1e11 a squared error's gradient is ~1e20 per element: Adam's squared
    state and the clipping norm overflow float32 and every step stops. The layer then passes
    back the gradient of loss / scale^2, and the fixed model trains at Adam's rate."""
    torch.manual_seed(0)
    x = torch.randn(300, 8)
    y = (x @ torch.randn(8, 1)) * 3e10 + 2e11
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    w = _watched(model, x, y, F.mse_loss, 1e-3, 60)
    d = w.diagnose()
    assert gw.CauseKind.TARGET_SCALE in {c.kind for c in d.causes}
    r = gw.fix(model, d, timeline=w.timeline, example_input=x[:64])
    layer = r.model[-1]
    assert isinstance(layer, ScaleOutput) and layer.normalised_gradient
    manual = " ".join(r.advice.get("manual", []))
    assert "would overflow" in manual and not STANDARDISE_TARGETS.search(manual)
    assert float(r.advice.get("lr_scale", 1.0)) == 1.0
    fixed, exact = r.model, copy.deepcopy(r.model)
    exact[-1].normalised_gradient = False
    for net in (fixed, exact):
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(300):
            loss = F.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        r2 = [1 - float(F.mse_loss(net(x), y) / y.var()) for net in (fixed, exact)]
    assert r2[0] > 0.5 and not r2[1] > 0.5  # the exact gradient overflows Adam: nothing learns


def test_normalised_gradient_against_autograd() -> None:
    x = torch.randn(5, 1, requires_grad=True)
    ScaleOutput(1e3, normalised_gradient=True)(x).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.full((5, 1), 1e-3))  # 1 / scale, where the exact one is scale
    y = ScaleOutput(1e3, normalised_gradient=True)(torch.ones(2, 1))
    torch.testing.assert_close(y, torch.full((2, 1), 1e3))  # the forward pass is the same


def _sigmoid_run_out_of_range(trouble_step: int) -> tuple[nn.Module, gw.Diagnosis, gw.Timeline, torch.Tensor]:
    """A sigmoid-output net asked for targets of root mean square 50: its output saturated (tiny
    recorded gradients, no update measured), and the loss diverged at `trouble_step`."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 1), nn.Sigmoid())
    tl = gw.Timeline(layers=["0", "2"])
    for step in (0, 10, 20, 30):
        tl.ingest({"type": "record", "step": step, "losses": [(s, 2500.0) for s in range(step, step + 10)],
                   "layers": {"grad_norm": [1e-4, 2e-3], "update_norm": [math.nan, math.nan], "weight_norm": [1.0, 1.0]}})
    cause = gw.Cause(
        gw.CauseKind.TARGET_OUT_OF_RANGE, 0.9, ["3"],
        {"loss_floor": 2400.0, "bound": 1.0, "low": 0.0, "high": 1.0, "outputs": 1.0, "target_distance": 50.0,
         "target_rms": 50.0}, "m",
    )
    finding = gw.Finding(gw.Kind.NONFINITE_GRADIENT, gw.Severity.ERROR, [], trouble_step, {}, "inf")
    return model, gw.Diagnosis(findings=[finding], causes=[cause]), tl, torch.randn(16, 3)


def test_clip_read_through_a_removed_output_activation_is_not_advised() -> None:
    model, d, tl, x = _sigmoid_run_out_of_range(trouble_step=25)
    r = gw.fix(model, d, timeline=tl, example_input=x)
    assert isinstance(r.model[3], nn.Identity) and output_scale(r.model) == pytest.approx(50.0)
    # gradients read through a saturated sigmoid (2e-3) would cut the fixed model's to nothing
    assert "clip_grad_norm" not in r.advice and "removed" in r.advice["why"]["clip_grad_norm"]


def test_a_late_divergence_takes_a_decade_off_the_standardised_rate() -> None:
    model, d, tl, x = _sigmoid_run_out_of_range(trouble_step=25)
    late = gw.fix(model, d, timeline=tl, example_input=x).advice
    assert late["lr_scale"] == pytest.approx(0.1 / 50.0**2) and "after it had trained" in late["why"]["lr_scale"]
    # the twin: a divergence within the first recording interval is the targets' own doing
    model, d, tl, x = _sigmoid_run_out_of_range(trouble_step=5)
    early = gw.fix(model, d, timeline=tl, example_input=x).advice
    assert early["lr_scale"] == pytest.approx(1 / 50.0**2)


def test_target_rms_counts_every_step_and_leaves_a_blow_up_out() -> None:
    from gradwatch.explain.causes import _early_rms

    def timeline(losses: list[float]) -> gw.Timeline:
        tl = gw.Timeline(layers=["0"])
        tl.ingest({"type": "record", "step": 0, "losses": list(enumerate(losses)), "layers": {"grad_norm": [1.0]}})
        tl.ingest({"type": "record", "step": len(losses), "losses": [], "layers": {"grad_norm": [1.0]}})
        return tl

    # a batch of one: each loss is one example's squared distance; the first is a small one
    scattered = [0.02, 130.0, 220.0, 90.0, 5900.0, 1900.0, 680.0, 9000.0, 1800.0, 0.6]
    assert _early_rms(timeline(scattered)) == pytest.approx(math.sqrt(sum(scattered) / 10))
    # a run that blew up in its first interval: the rise before the overflow is left out
    assert _early_rms(timeline([3e10, 2.5e10, 6e18, float("inf")])) == pytest.approx(math.sqrt(2.75e10))


def test_fix_gives_a_sigmoid_asked_for_negative_targets_a_linear_output_that_trains() -> None:
    # unit-scale targets of both signs (sin of a grid) under a sigmoid output: the output is
    # removed, no scale layer is wanted (the targets are at unit scale), and the fixed model fits
    grid = torch.cartesian_prod(*[torch.tensor([-1.0, 0.0, 1.0])] * 4)
    x, y = torch.cat([grid, torch.ones(len(grid), 1)], 1), torch.sin(grid.sum(1, keepdim=True))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Sigmoid(), nn.Linear(6, 1), nn.Sigmoid())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with gw.watch(model, every=10) as w:
        for _ in range(300):
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    r = gw.fix(model, w.diagnose(), timeline=w.timeline, example_input=x)
    kinds = {c.kind for c in r.changes}
    assert "output" in kinds and "targets" not in kinds and isinstance(r.model[3], nn.Identity)
    fitted = copy.deepcopy(r.model)
    opt = torch.optim.SGD(fitted.parameters(), lr=0.5 * float(r.advice.get("lr_scale", 1.0)))
    for _ in range(1500):
        loss = F.mse_loss(fitted(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert 1 - float(F.mse_loss(fitted(x), y) / y.var(unbiased=False)) > 0.9  # the sigmoid capped it near 0.5


def test_scale_output_with_a_shift_composes() -> None:
    seq = nn.Sequential(nn.Linear(2, 1))
    new, changes = scale_output(seq, scale=10.0, shift=5.0)
    assert "+5 added" in changes[0].description
    again, _ = scale_output(new, scale=2.0, shift=1.0)  # 2 (10 f + 5) + 1
    x = torch.randn(4, 2)
    with torch.no_grad():
        torch.testing.assert_close(again(x), 20.0 * again[0](x) + 11.0)
    # a shift alone (targets far off zero with a spread under 1) still gives a layer
    shifted, done = scale_output(seq, scale=1.0, shift=1e4)
    assert done and float(shifted[-1].shift) == 1e4
    assert scale_output(seq, scale=1.0, shift=0.0) == (seq, [])
