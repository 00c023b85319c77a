"""Remedies for causes the data holds (fix/data.py): a standardisation layer, a linear output, advice."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradwatch as gw
from gradwatch.fix.data import InputStandardized, Standardize, linear_output, standardise_inputs


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


def test_fix_removes_a_sigmoid_output_asked_for_large_targets() -> None:
    x = torch.randn(200, 5)
    y = 100 * torch.sigmoid(x @ torch.randn(5, 1))
    model = nn.Sequential(nn.Linear(5, 8), nn.Sigmoid(), nn.Linear(8, 1), nn.Sigmoid())
    w = _watched(model, x, y, F.mse_loss, 0.1, 200)
    r = gw.fix(model, w.diagnose(), timeline=w.timeline)
    assert isinstance(r.model[3], nn.Identity) and isinstance(model[3], nn.Sigmoid)
    manual = " ".join(r.advice.get("manual", []))
    assert "targets lie outside what the output activation can produce (0 to 1)" in manual
    assert "Standardise the targets" in manual and "model(x) * y_std + y_mean" in manual


def test_fix_for_targets_far_beyond_the_output_is_advice_to_standardise_them() -> None:
    x = torch.randn(300, 8)
    y = (x @ torch.randn(8, 1)) * 3e4 + 2e5
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    w = _watched(model, x, y, F.mse_loss, 1e-3, 60)
    d = w.diagnose()
    assert gw.CauseKind.TARGET_SCALE in {c.kind for c in d.causes}
    r = gw.fix(model, d, timeline=w.timeline)
    manual = " ".join(r.advice.get("manual", []))
    assert "Standardise the targets" in manual and "y_std" in manual
    assert "lr_scale" not in r.advice and "Keep the learning rate" in manual
    assert "inputs" not in {c.kind for c in r.changes}  # the inputs were standard normal already
