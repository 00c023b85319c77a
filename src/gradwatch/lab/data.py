"""Real data that needs no download: scikit-learn's bundled 8x8 digits, and the adding problem."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradwatch.anatomy._guard import Preserved


@dataclass
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        return int(torch.cat([self.y_train, self.y_test]).max()) + 1


def digits(seed: int = 0, test_fraction: float = 0.2) -> Split:
    """The 1,797 8x8 digit images as 64 standardised features, split at random with `seed`."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "the digits data comes from scikit-learn: pip install 'gradwatch[lab]'"
        ) from e
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    n_test = round(len(x) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    mean, std = x[train].mean(0), x[train].std(0)
    # A pixel that never varies in the training split (a corner always 0) is only centred.
    x = (x - mean) / torch.where(std > 1e-6, std, torch.ones_like(std))
    # A pixel inked in one training image in a hundred has a tiny spread, so a test image
    # inked there would lie hundreds of standard deviations out (214 in one split): test
    # features are held to the range the training split spans, as a model only ever saw it.
    lo, hi = x[train].min(0).values, x[train].max(0).values
    return Split(x[train], y[train], torch.minimum(torch.maximum(x[test], lo), hi), y[test])


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, steps: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`steps` minibatches drawn by shuffled passes over (x, y), reproducible from `seed`."""
    g = torch.Generator().manual_seed(seed)
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    while len(out) < steps:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = perm[i : i + batch_size]
            out.append((x[idx], y[idx]))
            if len(out) == steps:
                break
    return out


def adding_problem(n: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Hochreiter & Schmidhuber's adding problem: sum the two values marked in a sequence.

    ``x`` is ``(n, length, 2)``: a value drawn from U[0, 1] and a marker, one marker in each
    half; ``y`` is ``(n, 1)``, the sum of the two marked values. Predicting the mean (1.0)
    gives MSE 1/6 ~ 0.167, the baseline of a model that cannot look back.
    """
    values = torch.rand(n, length, generator=generator)
    marks = torch.zeros(n, length)
    half = length // 2
    rows = torch.arange(n)
    marks[rows, torch.randint(0, half, (n,), generator=generator)] = 1.0
    marks[rows, torch.randint(half, length, (n,), generator=generator)] = 1.0
    return torch.stack([values, marks], dim=-1), (values * marks).sum(dim=1, keepdim=True)


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad(), Preserved(model):  # each module back to its own mode afterwards
        model.eval()
        return float((model(x).argmax(-1) == y).float().mean())


def copy_task(
    n: int, lag: int, generator: torch.Generator, *, symbols: int = 4, k: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """The copy task (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016): remember `k`
    symbols over `lag` blank steps and write them out after a delimiter.

    ``x`` is ``(n, 2k + lag + 1, symbols + 2)``, one-hot: `k` symbols drawn from
    ``1..symbols``, `lag` blanks (0), the delimiter (``symbols + 1``), `k` blanks. ``y`` is
    ``(n, k)``: the symbols to write at the last `k` steps, as classes ``0..symbols-1``.
    A net that cannot remember gets 1/`symbols` of them right.
    """
    y = torch.randint(0, symbols, (n, k), generator=generator)
    tokens = torch.zeros(n, 2 * k + lag + 1, dtype=torch.long)
    tokens[:, :k] = y + 1
    tokens[:, k + lag] = symbols + 1
    return torch.nn.functional.one_hot(tokens, symbols + 2).float(), y
