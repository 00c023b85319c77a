"""A ReLU RNN whose hidden units never switch on, beside its healthy twin (IRNN), on the
adding problem: the units inside nn.RNN are measured like any other ReLU's."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import gradwatch as gw
from gradwatch import Kind, Severity
from gradwatch.lab.data import adding_problem


class Net(nn.Module):
    def __init__(self, bias: float) -> None:
        super().__init__()
        self.rnn = nn.RNN(2, 32, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(32, 1)
        with torch.no_grad():  # IRNN (Le et al. 2015): identity recurrence, zero biases
            self.rnn.weight_hh_l0.copy_(torch.eye(32))
            self.rnn.weight_ih_l0.normal_(0, 0.1)
            self.rnn.bias_ih_l0.zero_()
            self.rnn.bias_hh_l0.fill_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def _run(bias: float) -> gw.Diagnosis:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = Net(bias)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with gw.watch(model, every=10) as w:
        for _ in range(150):
            x, y = adding_problem(32, 20, g)
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    return w.diagnose()


def test_dead_units_inside_a_relu_rnn_are_found_and_the_irnn_twin_is_quiet() -> None:
    d = _run(bias=-5.0)  # every hidden unit starts below zero for any input
    (f,) = [f for f in d.findings if f.kind == Kind.DEAD_UNITS]
    assert f.severity >= Severity.WARNING and "rnn:relu" in f.message, str(d)
    twin = _run(bias=0.0)
    assert not [f for f in twin.findings if f.kind == Kind.DEAD_UNITS and f.severity >= Severity.WARNING], str(twin)
