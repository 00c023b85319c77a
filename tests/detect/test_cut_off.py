"""Layers cut off from the loss by the code, on real training runs."""

from __future__ import annotations

import pytest
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


class WithUnused(Net):
    """The root owns a parameter the forward never uses (a mask embedding a head ignores)."""

    def __init__(self, cut: bool) -> None:
        super().__init__(cut)
        self.mask_emb = nn.Parameter(torch.zeros(1, 32))


def test_a_containers_unused_parameter_is_not_a_cut_and_hides_no_real_one() -> None:
    torch.manual_seed(0)
    d = _run(WithUnused(cut=False))
    assert not [f for f in d.findings if f.kind == Kind.STALLED_WEIGHTS], str(d)
    torch.manual_seed(0)
    (f,) = [f for f in _run(WithUnused(cut=True)).findings if f.kind == Kind.STALLED_WEIGHTS]
    assert f.layers == ["low.0", "low.2"]  # the root is left out, the cut behind it still found


def test_xlnets_mask_embedding_under_a_classification_head_is_not_a_cut() -> None:
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.XLNetConfig(vocab_size=64, d_model=32, n_layer=2, n_head=2, d_inner=64, num_labels=3)
    model = transformers.XLNetForSequenceClassification(cfg)
    assert model.transformer.mask_emb.requires_grad  # owned by the model's own root of layers
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, 64, (48, 12), generator=g)
    y = (x[:, 0] % 3).long()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with gw.watch(model, every=4) as watcher:
        for i in range(40):
            xb, yb = x[i % 3 * 16 : i % 3 * 16 + 16], y[i % 3 * 16 : i % 3 * 16 + 16]
            loss = model(input_ids=xb, labels=yb).loss
            opt.zero_grad()
            loss.backward()
            watcher.step(loss=loss)
            opt.step()
    assert model.transformer.mask_emb.grad is None  # the parameter really gets no gradient
    d = watcher.diagnose()
    assert not [f for f in d.findings if f.kind == Kind.STALLED_WEIGHTS], str(d)
