"""Small models of every shape surgery meets, each with an input it accepts."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


class AttrNet(nn.Module):
    """A custom module whose layers and activations are named attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(8, 8)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(8, 2)
        self.out = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.head(self.act2(self.fc2(self.act1(self.fc1(x))))))


class FunctionalNet(nn.Module):
    """Saturating activations written as function calls inside forward()."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.fc1(x))
        h = torch.sigmoid(self.fc2(h))
        return self.head(h)


class RNNNet(nn.Module):
    def __init__(self, cell: type[nn.Module] = nn.RNN) -> None:
        super().__init__()
        self.rnn = cell(3, 8, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class CellNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.RNNCell(3, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = None
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        assert h is not None
        return self.head(h)


class SeqMLP(nn.Module):
    """Linear layers applied per position of a (batch, time, features) input."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def sigmoid_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Sigmoid(),
        nn.Linear(8, 3),
    )


def binary_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Hardtanh(), nn.Linear(8, 1), nn.Sigmoid())


def conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(),
        nn.Conv2d(4, 4, 3, padding=1), nn.Softsign(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3),
    )


def normed_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 8), nn.BatchNorm1d(8),
        nn.ReLU(), nn.Linear(8, 3),
    )


def double_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _silence(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x)


#: name -> (factory, example input)
ZOO: dict[str, tuple[Callable[[], nn.Module], Callable[[], torch.Tensor]]] = {
    "sigmoid_mlp": (sigmoid_mlp, lambda: torch.randn(5, 6)),
    "binary_mlp": (binary_mlp, lambda: torch.randn(5, 6)),
    "attr_net": (AttrNet, lambda: torch.randn(5, 6)),
    "functional_net": (FunctionalNet, lambda: torch.randn(5, 6)),
    "conv_net": (conv_net, lambda: torch.randn(5, 1, 6, 6)),
    "normed_mlp": (normed_mlp, lambda: torch.randn(5, 6)),
    "double_mlp": (double_mlp, lambda: torch.randn(5, 6, dtype=torch.float64)),
    "rnn_net": (RNNNet, lambda: torch.randn(5, 7, 3)),
    "lstm_net": (lambda: RNNNet(nn.LSTM), lambda: torch.randn(5, 7, 3)),
    "cell_net": (CellNet, lambda: torch.randn(5, 7, 3)),
    "seq_mlp": (SeqMLP, lambda: torch.randn(5, 7, 4)),
}
