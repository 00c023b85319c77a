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
    sigma: tuple[float, float] | None = None,
    bias: float | None = None,
) -> nn.Sequential:
    """`depth` hidden layers of `width` units, each Linear (+ BatchNorm) + activation, then a Linear head.

    `sigma` ``(sigma_w^2, sigma_b^2)`` draws every hidden layer's weights from
    ``N(0, sigma_w^2 / fan_in)`` and biases from ``N(0, sigma_b^2)`` (mean-field theory's
    parametrisation) instead of `init`; `bias` then sets every hidden bias to that constant.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    if seed is not None:
        torch.manual_seed(seed)
    layers: list[nn.Module] = []
    fan_in = n_in
    for _ in range(depth):
        lin = nn.Linear(fan_in, width)
        if sigma is not None:
            nn.init.normal_(lin.weight, std=(sigma[0] / fan_in) ** 0.5)
            nn.init.normal_(lin.bias, std=sigma[1] ** 0.5)
        else:
            init_linear(lin, init, activation)
        if bias is not None:
            nn.init.constant_(lin.bias, bias)
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


class Residual(nn.Module):
    """``x + f(x)``: an identity shortcut around `f` (He et al. 2016)."""

    def __init__(self, f: nn.Module) -> None:
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


def resnet_mlp(
    n_in: int, n_out: int, *, blocks: int, width: int, residual: bool = True, seed: int | None = None
) -> nn.Sequential:
    """A stem Linear + ReLU, then `blocks` blocks of two He-initialised Linear + BatchNorm
    layers (ReLU between and after), each wrapped in an identity shortcut when `residual`,
    then a Linear head: He et al. 2016's plain and residual nets, as MLPs. ``2 * blocks + 2``
    weight layers in all."""
    if seed is not None:
        torch.manual_seed(seed)

    def linear(a: int, b: int) -> nn.Linear:
        lin = nn.Linear(a, b)
        init_linear(lin, "he", "relu")
        return lin

    layers: list[nn.Module] = [linear(n_in, width), nn.ReLU()]
    for _ in range(blocks):
        f = nn.Sequential(linear(width, width), nn.BatchNorm1d(width), nn.ReLU(),
                          linear(width, width), nn.BatchNorm1d(width))
        layers += [Residual(f) if residual else f, nn.ReLU()]
    layers.append(linear(width, n_out))
    return nn.Sequential(*layers)


def recurrent(cell: str, n_in: int, hidden: int) -> nn.RNNBase:
    """A one-layer recurrent net, batch first: ``rnn`` (tanh), ``irnn`` (ReLU with the identity
    as recurrent weights, zero biases and input weights from N(0, 0.001^2): Le, Jaitly & Hinton
    2015), ``lstm`` or ``gru``."""
    if cell == "irnn":
        r = nn.RNN(n_in, hidden, batch_first=True, nonlinearity="relu")
        p = dict(r.named_parameters())
        with torch.no_grad():
            p["weight_hh_l0"].copy_(torch.eye(hidden))
            p["bias_hh_l0"].zero_()
            p["bias_ih_l0"].zero_()
            p["weight_ih_l0"].normal_(0.0, 0.001)
        return r
    kinds: dict[str, Callable[..., nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
    if cell not in kinds:
        raise ValueError(f"unknown cell {cell!r}; choose rnn, irnn, lstm or gru")
    return kinds[cell](n_in, hidden, batch_first=True)


class SeqAll(nn.Module):
    """A recurrent layer (batch first) with a Linear head at every time step."""

    def __init__(self, rnn: nn.RNNBase, n_out: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out)
