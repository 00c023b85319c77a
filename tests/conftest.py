from __future__ import annotations

import os

import pytest
import torch

# Nothing in the suite may reach a network: Hugging Face models are built from configs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Small models and two cores: one intra-op thread per test process keeps timings steady.
torch.set_num_threads(int(os.environ.get("GRADWATCH_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny_mlp(depth: int = 3, width: int = 8, n_in: int = 4, n_out: int = 3, act: type[torch.nn.Module] = torch.nn.Tanh) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    f = n_in
    for _ in range(depth):
        layers += [torch.nn.Linear(f, width), act()]
        f = width
    layers.append(torch.nn.Linear(f, n_out))
    return torch.nn.Sequential(*layers)


def train_steps(model, watcher, steps: int, *, lr: float = 0.1, batch: int = 16, n_in: int = 4, n_out: int = 3, seed: int = 0):
    """A plain SGD loop calling watcher.step(loss=...) between backward and the optimizer step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        x = torch.randn(batch, n_in, generator=g)
        y = torch.randint(0, n_out, (batch,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if watcher is not None:
            watcher.step(loss=loss)
        opt.step()
    return opt
