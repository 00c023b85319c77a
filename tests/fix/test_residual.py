from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradwatch.fix import norm, residual
from gradwatch.fix.residual import Residual, shape_preserving


def _chain(n: int, width: int = 6) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(3, width), nn.Tanh()]
    for _ in range(n):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, 2))


def test_run_of_blocks_is_wrapped_with_scaled_skips() -> None:
    model = _chain(4)
    new, changes = residual.transform(model)
    assert len(changes) == 1 and "4 shape-preserving blocks" in changes[0].description
    assert [type(m).__name__ for m in new] == ["Linear", "Tanh", "Residual", "Residual", "Residual", "Residual", "Linear"]
    # x + f(x)/sqrt(4) by hand (tanh is odd: zero-mean branches), with the original weights
    x = torch.randn(5, 3)
    h = torch.tanh(model[0](x))
    for i in (2, 4, 6, 8):
        h = h + 0.5 * torch.tanh(model[i](h))
    assert torch.allclose(new(x), model[10](h), atol=1e-6)


def test_a_single_block_is_not_a_run() -> None:
    _, changes = residual.transform(_chain(1))
    assert changes == []


def test_blocks_with_norm_from_the_norm_transform_are_recognised() -> None:
    normed, _ = norm.transform(_chain(3), example_input=torch.randn(4, 3))
    new, changes = residual.transform(normed)
    assert len(changes) == 1
    assert sum(isinstance(m, Residual) for m in new) == 3


@pytest.mark.parametrize(
    ("conv", "keeps"),
    [
        (nn.Conv2d(4, 4, 3, padding=1), True),
        (nn.Conv2d(4, 4, 3, padding="same"), True),
        (nn.Conv2d(4, 4, 5, padding=2, dilation=1), True),
        (nn.Conv2d(4, 4, 3, padding=2, dilation=2), True),
        (nn.Conv2d(4, 4, 3), False),
        (nn.Conv2d(4, 4, 3, padding=1, stride=2), False),
        (nn.Conv2d(4, 8, 3, padding=1), False),
        (nn.Linear(4, 4), True),
        (nn.Linear(4, 5), False),
    ],
)
def test_shape_preserving_agrees_with_running_it(conv: nn.Module, keeps: bool) -> None:
    x = torch.randn(2, 4, 9, 9) if isinstance(conv, nn.Conv2d) else torch.randn(2, 4)
    assert shape_preserving(conv) == keeps
    assert (conv(x).shape == x.shape) == keeps


@pytest.mark.parametrize(("act", "scale"), [(nn.ReLU, 1 / 32), (nn.Tanh, 1 / math.sqrt(32))])
def test_scale_bounds_forward_growth(act: type[nn.Module], scale: float) -> None:
    # 32 blocks: unscaled skips grow the signal's second moment thousands of times over;
    # with the transform's scale it stays within a small factor.
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(32):
        lin = nn.Linear(64, 64)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu" if act is nn.ReLU else "linear")
        nn.init.zeros_(lin.bias)
        layers += [lin, act()]
    model = nn.Sequential(*layers, nn.Linear(64, 64))  # a head: the last activation is a hidden one
    new, _changes = residual.transform(model)
    blocks = new[:-1]
    assert len(blocks) == 32 and all(isinstance(m, Residual) and m.scale == pytest.approx(scale) for m in blocks)
    x = torch.randn(256, 64)
    with torch.no_grad():
        grown = float(blocks(x).pow(2).mean() / x.pow(2).mean())
        unscaled = x
        for block in blocks:
            unscaled = unscaled + block.body(unscaled)
        unscaled_growth = float(unscaled.pow(2).mean() / x.pow(2).mean())
    assert 1.0 < grown < 4.0
    assert unscaled_growth > 20.0


def test_the_output_activation_stays_outside_every_skip() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Sigmoid())
    for ex in (None, torch.rand(4, 8)):
        new, changes = residual.transform(model, example_input=ex)
        assert len(changes) == 1 and "2 shape-preserving blocks" in changes[0].description
        assert [type(m).__name__ for m in new] == ["Residual", "Residual", "Linear", "Sigmoid"]
        with torch.no_grad():
            out = new(torch.randn(256, 8) * 3)
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0  # a sigmoid's range, as before


def test_blocks_next_to_frozen_layers_are_not_wrapped() -> None:
    model = _chain(4)
    model[2:6].requires_grad_(False)  # two blocks of a pretrained part kept fixed
    new, changes = residual.transform(model)
    assert len(changes) == 1 and "2 shape-preserving blocks" in changes[0].description
    assert [type(m).__name__ for m in new] == ["Linear", "Tanh", "Linear", "Tanh", "Linear", "Tanh", "Residual", "Residual", "Linear"]
