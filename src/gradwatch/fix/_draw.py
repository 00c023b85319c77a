"""Drawing weights at a target scale, and checking one: what `init` and its recurrent rules share."""

from __future__ import annotations

import math

import torch

__all__ = ["SCALE_TOLERANCE", "draw", "fans", "matches_scale", "target_variance"]

#: Relative error in sigma_w^2 tolerated before a layer counts as mis-initialised.
SCALE_TOLERANCE = 0.10


def fans(w: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight stored (out, in, *kernel)."""
    receptive = math.prod(w.shape[2:]) if w.dim() > 2 else 1
    return int(w.shape[1]) * receptive, int(w.shape[0]) * receptive


def target_variance(scheme: str, fan_in: int, fan_out: int, sigma_w2: float = 2.0) -> float:
    """``Var(W)`` for a scheme; `sigma_w2` is `scheme_for`'s target (unused by Xavier)."""
    if scheme == "xavier":
        return 2.0 / (fan_in + fan_out)
    return sigma_w2 / fan_in


def matches_scale(w: torch.Tensor, var: float) -> bool:
    ms = float(w.detach().double().pow(2).mean())
    return abs(ms / var - 1.0) <= SCALE_TOLERANCE


@torch.no_grad()
def draw(w: torch.Tensor, var: float) -> None:
    """Normal entries of variance `var`, rescaled so their mean square is exactly `var`, except
    for a weight of one entry: there the rescaling would fix its magnitude at sqrt(var), and
    a chain of 1x1 layers (a width-1 linear net) would start with equal magnitudes, whose
    sign pattern decides alone whether it sits on a saddle's stable manifold (w1 = -w2 with
    centred targets: gradient descent takes it to 0 and leaves it there)."""
    w.normal_(0.0, math.sqrt(var))
    ms = w.double().pow(2).mean()
    if float(ms) > 0 and w.numel() > 1:
        w.mul_(torch.sqrt(var / ms).to(w.dtype))
