"""Small models the lab, the demo and the benchmarks share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "gelu": nn.GELU,
    "linear": nn.Identity,
}


def init_linear(layer: nn.Linear, init: str, activation: str) -> None:
    """Re-initialise `layer` in place: ``default`` (PyTorch's), ``xavier``, ``he`` or ``orthogonal``."""
    if init == "default":
        return
    gain_name: Any = {"leaky_relu": "leaky_relu", "relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}.get(
        activation, "linear"
    )
    if init == "xavier":
        nn.init.xavier_normal_(layer.weight)
    elif init == "he":
        nn.init.kaiming_normal_(layer.weight, nonlinearity=gain_name)
    elif init == "orthogonal":
        nn.init.orthogonal_(layer.weight, gain=nn.init.calculate_gain(gain_name))
    else:
        raise ValueError(f"unknown init {init!r}; choose default, xavier, he or orthogonal")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def mlp(
    n_in: int,
    n_out: int,
    *,
    depth: int,
    width: int,
    activation: str = "relu",
    init: str = "default",
    batchnorm: bool = False,
    seed: int | None = None,
) -> nn.Sequential:
    """`depth` hidden layers of `width` units, each Linear (+ BatchNorm) + activation, then a Linear head."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    if seed is not None:
        torch.manual_seed(seed)
    layers: list[nn.Module] = []
    fan_in = n_in
    for _ in range(depth):
        lin = nn.Linear(fan_in, width)
        init_linear(lin, init, activation)
        layers.append(lin)
        if batchnorm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(ACTIVATIONS[activation]())
        fan_in = width
    layers.append(nn.Linear(fan_in, n_out))
    return nn.Sequential(*layers)


class SeqLast(nn.Module):
    """A recurrent layer (batch first) read at the last time step by a Linear head."""

    def __init__(self, rnn: nn.RNNBase, n_out: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])
