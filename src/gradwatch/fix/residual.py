"""Wrap runs of shape-preserving blocks in residual connections: ``x + alpha * f(x)``.

Why: through a skip connection the gradient reaches early layers by an identity path,
whatever the blocks do to it; in plain deep nets the correlation of gradients decays
like 2^-L, with residual connections like 1/sqrt(L) (Balduzzi et al. 2017), and
plain nets degrade with depth where ResNets do not (He et al. 2016).

What counts as a block, inside any `nn.Sequential`: a Linear with ``in == out``, or a
convolution with equal in/out channels, stride 1 and size-keeping padding, then
optionally normalisation layers, then an activation module (or the
``Sequential(norm, activation)`` that `gradwatch.fix.norm` leaves), then optionally a
dropout. A *run* is two or more such blocks in a row; each block of a run becomes
``Residual(block)``. A block whose activation is the model's output activation (after
its last parametric layer, as `gradwatch.fix.activations` finds it) is not wrapped:
``x + f(x)`` would take a final sigmoid's output out of ``[0, 1]``, and the output's
range is what the loss expects (a binary cross-entropy fails outside it). Nor is a
block whose activation is next to a frozen layer (`Order.beside_frozen`): a skip around
frozen weights changes what they compute, and they cannot adapt. Nor one whose activation
is a gate (`Order.gates`): ``x + gate`` is no gate. Custom modules whose ``forward`` is code are not rewired (the data
flow is not known); `gradwatch.fix.manual` says where to add the skip by hand.

The branch is scaled down, because each unscaled ``x + f(x)`` adds the branch's
variance to the stream, so n blocks would multiply it by about 2^n (the reasoning
behind Fixup and SkipInit):

- ``alpha = 1 / sqrt(n)`` for a run of n blocks whose activation is odd (tanh, softsign,
  hardtanh): zero-mean branches add up like a random walk, so the variance grows by at
  most ``(1 + 1/n)^n < e``;
- ``alpha = 1 / n`` when the activation's output has a nonzero mean (ReLU family,
  sigmoid, GELU): those means add up coherently, block after block, and with
  ``1 / sqrt(n)`` the signal still grows like ``exp(c sqrt(n))`` (measured: 180x over 32
  He-initialised ReLU blocks); with ``1 / n`` it stays within a small constant factor.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from gradwatch.anatomy.activations import is_activation
from gradwatch.anatomy.modules import PASS_THROUGH
from gradwatch.anatomy.order import order_of
from gradwatch.fix._surgery import copy_model, sequentials
from gradwatch.types import Change

REASON = (
    "a skip connection gives the gradient an identity path around each block, so its size "
    "no longer shrinks with the product of every block's gain"
)

#: Shortest run of blocks worth wrapping: one block on its own is not a deep chain.
MIN_RUN = 2


class Residual(nn.Module):
    """``x + scale * body(x)``: a block with a skip connection around it."""

    def __init__(self, body: nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        self.body = body
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.body(x)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.3g}"


def shape_preserving(m: nn.Module) -> bool:
    """True for a Linear(d, d) or a convolution that keeps channels and spatial size."""
    if isinstance(m, nn.Linear):
        return m.in_features == m.out_features
    if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
        if m.in_channels != m.out_channels or any(s != 1 for s in m.stride):
            return False
        if m.padding == "same":
            return True
        if isinstance(m.padding, str):
            return False
        return all(2 * p == d * (k - 1) for p, d, k in zip(m.padding, m.dilation, m.kernel_size, strict=True))
    return False


def _is_act_slot(m: nn.Module) -> bool:
    if is_activation(m):
        return True
    # the Sequential(norm, activation) that the norm transform leaves
    if type(m) is nn.Sequential and len(m) >= 1:
        items = list(m)
        return is_activation(items[-1]) and all(isinstance(x, PASS_THROUGH) for x in items[:-1])
    return False


def _activation_of(act_slot: nn.Module) -> nn.Module:
    return list(act_slot)[-1] if type(act_slot) is nn.Sequential else act_slot


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm | nn.RMSNorm)


def _block_at(items: list[nn.Module], i: int, kept: set[int]) -> int:
    """Length of the block starting at `items[i]`, or 0 if none starts there.

    `kept`: ids of activations no block may hold (the model's output activations, those
    next to a frozen layer).
    """
    if not shape_preserving(items[i]):
        return 0
    j = i + 1
    while j < len(items) and _is_norm(items[j]):
        j += 1
    if j >= len(items) or not _is_act_slot(items[j]) or id(_activation_of(items[j])) in kept:
        return 0
    j += 1
    if j < len(items) and isinstance(items[j], nn.modules.dropout._DropoutNd):
        j += 1
    return j - i


def _zero_mean(act_slot: nn.Module) -> bool:
    act = _activation_of(act_slot)
    if isinstance(act, nn.Hardtanh) and not isinstance(act, nn.ReLU6):
        return act.min_val == -act.max_val
    return isinstance(act, nn.Tanh | nn.Softsign)


def _scale(items: list[nn.Module], run: list[tuple[int, int]]) -> float:
    """The branch scale for a run (see the module docstring)."""
    odd = True
    for start, length in run:
        odd &= any(_zero_mean(m) for m in items[start : start + length] if _is_act_slot(m))
    return 1.0 / math.sqrt(len(run)) if odd else 1.0 / len(run)


def transform(
    model: nn.Module,
    *,
    example_input: Any = None,
    reason: str = REASON,
    inplace: bool = False,
    **_: Any,
) -> tuple[nn.Module, list[Change]]:
    """Wrap every run of >= 2 shape-preserving blocks in `nn.Sequential`s in `Residual`.

    Args:
        model: any module; only its `nn.Sequential` chains are rewired.
        example_input: if given, one forward pass decides which activations come after
            the last parametric layer (the output activation, never wrapped) and which
            are next to a frozen layer (not wrapped either); otherwise the order in which
            modules were registered decides.
        inplace: change `model` itself instead of a deep copy.

    Returns ``(new_model, changes)``: one change per run. Parameter names inside the
    changed Sequential change (a wrapped Linear ``"3"`` becomes ``"2.body.0"``).
    """
    new = copy_model(model, inplace)
    order = order_of(new, example_input)
    kept = order.beside_frozen() | order.gates() | order.output_modules()
    changes: list[Change] = []
    for name, seq in sequentials(new):
        items = list(seq)
        blocks: list[tuple[int, int]] = []  # (start, length)
        i = 0
        while i < len(items):
            n = _block_at(items, i, kept)
            if n:
                blocks.append((i, n))
                i += n
            else:
                i += 1
        runs: list[list[tuple[int, int]]] = []
        for b in blocks:
            if runs and runs[-1][-1][0] + runs[-1][-1][1] == b[0]:
                runs[-1].append(b)
            else:
                runs.append([b])
        runs = [r for r in runs if len(r) >= MIN_RUN]
        if not runs:
            continue
        starts = {b[0]: (b[1], _scale(items, r)) for r in runs for b in r}
        out: list[nn.Module] = []
        i = 0
        while i < len(items):
            if i in starts:
                n, scale = starts[i]
                out.append(Residual(nn.Sequential(*items[i : i + n]), scale).train(seq.training))
                i += n
            else:
                out.append(items[i])
                i += 1
        keys = list(seq._modules)
        for r in runs:
            first, last = r[0][0], r[-1][0] + r[-1][1] - 1
            where = f"{name}[{keys[first]}..{keys[last]}]" if name else f"[{keys[first]}..{keys[last]}]"
            changes.append(
                Change(
                    kind="residual",
                    target=name,
                    description=(
                        f"{where}: wrapped {len(r)} shape-preserving blocks in skip connections "
                        f"(x + {_scale(items, r):.2g} * f(x))"
                    ),
                    reason=reason,
                )
            )
        seq._modules.clear()
        for k, m in enumerate(out):
            seq.add_module(str(k), m)
    return new, changes
