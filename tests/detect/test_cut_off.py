"""Layers cut off from the loss by the code, on real training runs."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import gradwatch as gw
from gradwatch import Kind, Severity


class Net(nn.Module):
    def __init__(self, cut: bool, pooler: bool = False) -> None:
        super().__init__()
        self.low = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.pool = nn.Linear(32, 32)  # run, but its output is not used by the loss
        self.high = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
        self.cut, self.pooler = cut, pooler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.low(x)
        if self.cut:
            h = h.detach()  # the bug
        if self.pooler:
            self.pool(h)
        return self.high(h)


def _run(model: nn.Module) -> gw.Diagnosis:
    torch.manual_seed(0)
    x, w = torch.randn(256, 16), torch.randn(16, 4)
    y = (x @ w).argmax(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with gw.watch(model, every=5) as watcher:
        for i in range(100):
            xb, yb = x[i % 8 * 32 : i % 8 * 32 + 32], y[i % 8 * 32 : i % 8 * 32 + 32]
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            watcher.step(loss=loss)
            opt.step()
    return watcher.diagnose()


def test_a_detached_lower_half_is_found_and_fix_says_where_to_look() -> None:
    torch.manual_seed(0)
    model = Net(cut=True)
    d = _run(model)
    (f,) = [f for f in d.findings if f.kind == Kind.STALLED_WEIGHTS]
    assert f.severity == Severity.WARNING and f.layers == ["low.0", "low.2"]
    assert f.causes == []  # not blamed on the architecture
    result = gw.fix(model, d)
    assert "lr_scale" not in result.advice  # a larger step cannot reach a layer with no gradient
    assert not [c for c in result.changes if "stalled_weights" in c.reason]
    assert any(".detach()" in line for line in result.advice["manual"])


def test_the_same_model_without_the_cut_and_an_unused_branch_are_quiet() -> None:
    torch.manual_seed(0)
    assert not [f for f in _run(Net(cut=False)).findings if f.kind == Kind.STALLED_WEIGHTS]
    torch.manual_seed(0)
    assert not [f for f in _run(Net(cut=False, pooler=True)).findings if f.kind == Kind.STALLED_WEIGHTS]
