"""Small watched training runs on the digits, for the detector tests that train for real."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F

import gradwatch as gw
from gradwatch.lab.data import accuracy, batches, digits

SPLIT = digits(seed=0)


def mlp(widths: list[int], act: type[nn.Module], var: float | None = None) -> nn.Sequential:
    """Linear layers of the given widths with `act` between each pair; with `var`, every
    weight drawn from N(0, var / fan_in) and every bias zero."""
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), act()]
    model = nn.Sequential(*layers[:-1])
    if var is not None:
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, math.sqrt(var / m.in_features))
                nn.init.zeros_(m.bias)
    return model


def train_digits(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> tuple[gw.Diagnosis, float]:
    """`steps` batches of 64 digits under `gw.watch(every=10)`: the diagnosis and the test accuracy."""
    with gw.watch(model, every=10) as w:
        for x, y in batches(SPLIT.x_train, SPLIT.y_train, 64, steps, seed=0):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    return w.diagnose(), accuracy(model, SPLIT.x_test, SPLIT.y_test)
