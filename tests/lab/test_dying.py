from __future__ import annotations

import torch
from torch import nn

from gradwatch.lab.dying import dead_share


def test_dead_share_counts_units_zero_on_every_input_and_restores_the_mode() -> None:
    first, second = nn.Linear(2, 3), nn.Linear(3, 2)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        first.bias.copy_(torch.tensor([0.0, 0.0, -1.0]))  # unit 2 never fires
        second.weight.fill_(1.0)
        second.bias.copy_(torch.tensor([0.0, -100.0]))  # unit 1 never fires
    model = nn.Sequential(first, nn.ReLU(), second, nn.ReLU(), nn.Linear(2, 1))
    x = torch.tensor([[1.0, -1.0], [-1.0, 2.0], [0.5, 0.5]])
    model.train()
    assert dead_share(model, x) == 2 / 5
    assert model.training
    # counted over the inputs given: on one image only unit 0 of each layer fires
    assert dead_share(model, x[:1]) == 3 / 5
    assert dead_share(model, -x.abs()) == 5 / 5
