"""Watching draws nothing from the global random generators: the same seed trains bit-identically."""

from __future__ import annotations

import random

import numpy as np
import torch

import gradwatch as gw
from tests.conftest import train_steps
from tests.explain.test_inspect import Draws, _random_states


def _train(every: int | None) -> tuple[list[torch.Tensor], tuple[object, ...]]:
    """Weights after 12 SGD steps of a model drawing from torch's, NumPy's and Python's
    generators (watched every `every` steps, or not at all), and the generators' states then."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = Draws()
    watcher = gw.watch(model, every=every) if every is not None else None
    train_steps(model, watcher, 12, n_in=6)
    if watcher is not None:
        assert watcher.timeline.sites  # the forward probes ran
        watcher.close()
    torch_state, numpy_state, python_state = _random_states()
    return [p.detach() for p in model.parameters()], (torch_state.tolist(), numpy_state, python_state)


def test_watching_every_step_trains_bit_identically() -> None:
    weights, states = _train(None)
    for every in (1, 5):  # every probe armed on every step, and on some
        watched_weights, watched_states = _train(every)
        assert all(torch.equal(a, b) for a, b in zip(weights, watched_weights, strict=True))
        assert watched_states == states
