from __future__ import annotations

from pathlib import Path

import pytest
import torch

import gradwatch as gw

#: Where tests leave what a person may want to look at (screenshots); build/ is ignored by git.
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"


def sigmoid_run(log: Path | None = None, steps: int = 80) -> gw.Watcher:
    """A 10-layer default-init sigmoid MLP on random 3-class data: its gradient vanishes."""
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    f = 8
    for _ in range(10):
        layers += [torch.nn.Linear(f, 16), torch.nn.Sigmoid()]
        f = 16
    model = torch.nn.Sequential(*layers, torch.nn.Linear(f, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    with gw.watch(model, every=4, log=log) as w:
        for _ in range(steps):
            x, y = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    return w


@pytest.fixture(scope="module")
def sigmoid_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[gw.Watcher, Path]:
    log = tmp_path_factory.mktemp("run") / "run.jsonl"
    return sigmoid_run(log), log
