"""Data for the labelled detection suite: digits (real), and synthetic sequence tasks.

Every generator is reproducible from its seed and small enough to train on two CPU cores
in a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradwatch.lab.data import Split, adding_problem, digits


def digits_split(seed: int = 0) -> Split:
    return digits(seed=seed)


@dataclass
class SeqTask:
    """A sequence task with a fixed test set and a batch sampler."""

    name: str
    x_test: torch.Tensor
    y_test: torch.Tensor
    generator: torch.Generator
    length: int
    kind: str  # "regression" or "classification"

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _SAMPLERS[self.name](size, self.length, self.generator)


def _adding(size: int, length: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Hochreiter & Schmidhuber's adding problem (`gradwatch.lab.data.adding_problem`):
    predicting the mean gives MSE 1/6, the baseline a model that cannot look back stays at."""
    return adding_problem(size, length, g)


#: Symbols of the recall task, and how many must be remembered.
RECALL_SYMBOLS = 6


def _recall(size: int, length: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy task cut to its core: see a symbol at t = 0, then `length - 1` noise symbols;
    name the first symbol at the end. Chance accuracy is 1/RECALL_SYMBOLS; the gradient
    that teaches it must travel through every step of the sequence."""
    k = RECALL_SYMBOLS
    first = torch.randint(0, k, (size,), generator=g)
    noise = torch.randint(0, k, (size, length - 1), generator=g)
    tokens = torch.cat([first[:, None], noise], dim=1)
    x = torch.nn.functional.one_hot(tokens, k + 1).float()
    x[:, 0, k] = 1.0  # a flag that marks the symbol to remember
    return x, first


_SAMPLERS = {"adding": _adding, "recall": _recall}


def sequence_task(name: str, length: int, seed: int = 0, n_test: int = 512) -> SeqTask:
    if name not in _SAMPLERS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(_SAMPLERS)}")
    g = torch.Generator().manual_seed(seed)
    x_test, y_test = _SAMPLERS[name](n_test, length, g)
    kind = "regression" if name == "adding" else "classification"
    return SeqTask(name, x_test, y_test, g, length, kind)


def bag_of_tokens(
    vocab: int, n_classes: int, size: int, seed: int, *, length: int = 20, keywords: int = 40
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id sequences whose class is told by a few class keywords among random tokens.

    Each class owns `keywords` ids of a `vocab`-sized vocabulary; a sample carries three
    of its class's keywords and `length - 3` random ids. With a large vocabulary most
    embedding rows get no gradient in a batch: a sparse gradient, not a dead one.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (size,), generator=g)
    x = torch.randint(0, vocab, (size, length), generator=g)
    kw = torch.randint(0, keywords, (size, 3), generator=g) + (y[:, None] * keywords)
    x[:, :3] = kw
    return x, y
