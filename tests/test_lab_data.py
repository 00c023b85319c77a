from __future__ import annotations

import pytest
import torch

pytest.importorskip("sklearn")

from gradwatch.lab.data import adding_problem, copy_task, digits


def test_digits_are_standardised_on_the_training_split_without_blowing_up_the_test_split() -> None:
    from sklearn.datasets import load_digits

    raw = torch.tensor(load_digits().data, dtype=torch.float32)
    split = digits(seed=0)
    assert split.x_train.shape[1] == 64 and len(split.x_train) + len(split.x_test) == len(raw)
    varying = split.x_train.std(0) > 1e-3
    assert torch.allclose(split.x_train.mean(0), torch.zeros(64), atol=1e-4)
    assert torch.allclose(split.x_train.std(0)[varying], torch.ones(int(varying.sum())), atol=1e-4)
    # pixels constant in the training split are only centred; every test feature lies in
    # the range the training split spans (before, a test image inked where one training
    # image in a hundred is sat 54 standard deviations out, and where none is, 1e6)
    constant = split.x_train.std(0) == 0
    assert constant.any()  # seed 0 has such pixels
    assert float(split.x_train[:, constant].abs().max()) == 0
    lo, hi = split.x_train.min(0).values, split.x_train.max(0).values
    assert bool(((split.x_test >= lo) & (split.x_test <= hi)).all())


def test_adding_problem_marks_one_value_in_each_half_and_sums_them() -> None:
    x, y = adding_problem(2000, 30, torch.Generator().manual_seed(0))
    assert x.shape == (2000, 30, 2) and y.shape == (2000, 1)
    values, marks = x[..., 0], x[..., 1]
    assert bool(((values >= 0) & (values < 1)).all())
    assert torch.equal(marks[:, :15].sum(1), torch.ones(2000)) and torch.equal(marks[:, 15:].sum(1), torch.ones(2000))
    assert torch.allclose(y[:, 0], (values * (marks == 1)).sum(1))
    # predicting the mean (1.0) scores the baseline, 1/6: the sum of two U[0, 1] has variance 2/12
    assert float((y - 1.0).pow(2).mean()) == pytest.approx(1 / 6, rel=0.1)
    again, _ = adding_problem(2000, 30, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_copy_task_shows_the_symbols_then_blanks_then_the_delimiter() -> None:
    x, y = copy_task(500, 7, torch.Generator().manual_seed(0), symbols=4, k=3)
    assert x.shape == (500, 3 + 7 + 1 + 3, 6) and y.shape == (500, 3)
    assert torch.equal(x.sum(-1), torch.ones(500, 14))  # one-hot at every step
    tokens = x.argmax(-1)
    assert torch.equal(tokens[:, :3], y + 1)  # the symbols, 1..4
    assert bool((tokens[:, 3:10] == 0).all()) and bool((tokens[:, 10] == 5).all())
    assert bool((tokens[:, 11:] == 0).all())  # nothing to see while the answer is due
    assert set(y.unique().tolist()) == {0, 1, 2, 3}
    assert torch.equal(x, copy_task(500, 7, torch.Generator().manual_seed(0), symbols=4, k=3)[0])
