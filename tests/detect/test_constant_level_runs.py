"""A regression whose loss falls only to the targets' variance: the level a constant reaches.

A wide sigmoid net with Glorot weights starts with outputs far from the targets; SGD
first learns their average, and the four sigmoid layers leave the first ones ~1e-6 of
the gradient, so the output stays the same for every input. Its loss falls 100x and
stays there: far below its start, and no learning from the inputs. The twin with ReLU
units learns the function.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F

import gradwatch as gw
from gradwatch import Kind, Severity


def _net(act: type[nn.Module]) -> nn.Sequential:
    sizes = [16, 256, 256, 256, 256, 1]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        lin = nn.Linear(a, b)
        nn.init.xavier_uniform_(lin.weight)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _run(act: type[nn.Module]) -> tuple[gw.Diagnosis, float]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2, (2048, 16), generator=g).float()
    teacher = torch.randn(16, 8, generator=g) / math.sqrt(4)
    y = torch.tanh((x - 0.5) @ teacher).sum(1, keepdim=True)
    y = (y - y.mean()) / y.std()
    model = _net(act)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, every=10) as w:
        for i in range(300):
            j = i % 32 * 64
            loss = F.mse_loss(model(x[j : j + 64]), y[j : j + 64])
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    with torch.no_grad():
        r2 = 1 - float(F.mse_loss(model(x), y)) / float(y.var())
    return w.diagnose(), r2


def test_a_loss_that_sits_at_the_constants_level_is_not_converged() -> None:
    d, r2 = _run(nn.Sigmoid)
    assert r2 < 0.05  # learned the average only
    loud = {f.kind for f in d.findings if f.severity >= Severity.WARNING}
    assert {Kind.FLAT_LOSS, Kind.CONSTANT_OUTPUT} <= loud, str(d)
    assert not d.healthy and "constant prediction" in str(d)


def test_the_relu_twin_learns_and_is_not_called_constant() -> None:
    d, r2 = _run(nn.ReLU)
    assert r2 > 0.5
    assert "constant prediction" not in str(d)
    assert not [f for f in d.findings if f.kind == Kind.CONSTANT_OUTPUT and f.severity >= Severity.WARNING], str(d)
