"""The targets read back from the output's gradient (explain/targets.py), against the targets themselves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradwatch as gw
from gradwatch.explain.targets import MIN_TARGETS, Targets, read_targets
from gradwatch.probes.output import MAX_SAMPLED, SAMPLE_SIZE


def watched(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, *, steps: int = 5, batch: int | None = None,
            every: int = 1) -> gw.Watcher:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with gw.watch(model, every=every) as w:
        for _ in range(steps):
            idx = torch.randint(0, len(x), (batch,), generator=g) if batch else slice(None)
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    return w


def _data(n: int = 32, outputs: int = 2) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, outputs))
    return model, torch.randn(n, 3), 100.0 + 5.0 * torch.randn(n, outputs)


@pytest.mark.parametrize(
    ("loss_fn", "divisor"),
    [
        (F.mse_loss, 64.0),  # a mean over every element
        (lambda out, y: F.mse_loss(out, y, reduction="sum"), 1.0),
        (lambda out, y: (out - y).pow(2).sum(1).mean(), 32.0),  # summed over outputs, averaged over the batch
    ],
)
def test_targets_are_read_exactly_for_each_reduction(loss_fn, divisor: float) -> None:  # type: ignore[no-untyped-def]
    model, x, y = _data()
    w = watched(model, x, y, loss_fn, steps=2)  # full batch: each record's sample is y at known positions
    t = read_targets(w.timeline)
    assert t is not None and t.divisor == divisor and t.records == 2
    positions = torch.div(torch.arange(SAMPLE_SIZE) * y.numel(), SAMPLE_SIZE, rounding_mode="floor")
    expected = y.reshape(-1)[positions].double().numpy()
    np.testing.assert_allclose(t.values, np.concatenate([expected, expected]), rtol=1e-5)
    assert t.mean == pytest.approx(float(y.double().mean()), rel=1e-6)


def test_losses_that_are_not_a_squared_error_of_the_output_are_not_read() -> None:
    model, x, y = _data()
    labels = (y[:, 0] > 100).long()
    assert read_targets(watched(model, x, labels, F.cross_entropy).timeline) is None
    # a squared error of a transformed output, and one with a penalty added
    assert read_targets(watched(model, x, y, lambda o, t: F.mse_loss(torch.log1p(o.abs()), torch.log1p(t))).timeline) is None
    # a penalty of a few percent of the loss (one too small to matter reads the targets within it)
    penalised = watched(model, x, y, lambda o, t: F.mse_loss(o, t) + 50.0 * sum(p.pow(2).sum() for p in model.parameters()))
    assert read_targets(penalised.timeline) is None
    half = watched(model, x, y, lambda o, t: 0.5 * F.mse_loss(o, t))  # 4L / ||g||^2 = 2N: no reduction torch has
    assert read_targets(half.timeline) is None


def test_a_batch_of_one_is_pooled_over_records_and_gives_the_targets_spread() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
    x = torch.randn(400, 2)
    y = 50.0 + 20.0 * torch.randn(400, 1)
    w = watched(model, x, y, F.mse_loss, steps=200, batch=1, every=2)
    t = read_targets(w.timeline)
    assert t is not None and t.divisor == 1.0 and t.values.size == 100  # one target per record
    assert t.mean == pytest.approx(50.0, abs=3 * 20 / math.sqrt(100))
    assert t.std == pytest.approx(20.0, rel=0.25)


def test_too_few_targets_are_not_read() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 1))
    x, y = torch.randn(10, 2), torch.randn(10, 1)
    w = watched(model, x, y, F.mse_loss, steps=MIN_TARGETS - 1, batch=1)
    assert read_targets(w.timeline) is None


def test_sampling_stops_once_enough_targets_are_read() -> None:
    model, x, y = _data(n=64)
    w = watched(model, x, y, F.mse_loss, steps=10)
    sampled = np.isfinite(w.timeline.records.column("output_grad_sq", "output")).sum()
    assert sampled == MAX_SAMPLED // SAMPLE_SIZE


def test_a_blow_ups_outputs_are_left_out() -> None:
    # the run overflows on targets in the hundred thousands: the records taken while the outputs
    # are thrown far beyond them cannot hold the targets' digits, and are not read as targets
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    x = torch.randn(256, 4)
    y = 2e5 + 5e4 * torch.randn(256, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, every=1) as w:
        for i in range(8):
            loss = F.mse_loss(model(x[i * 32 : (i + 1) * 32]), y[i * 32 : (i + 1) * 32])
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    t = read_targets(w.timeline)
    assert t is not None
    assert 1e5 < t.values.min() and t.values.max() < 4e5  # every value kept is a target, none a blow-up's rubble
    assert t.mean == pytest.approx(2e5, rel=0.1)


def test_reach_of_a_range_against_hand_computation() -> None:
    t = Targets(values=np.array([-1.0, -0.5, 0.25, 0.5, 2.0]), divisor=1.0, records=1, start=np.zeros(5))
    # distances outside [0, 1]: 1, 0.5, 0, 0, 1 -> mean square (1 + 0.25 + 1) / 5
    assert t.beyond(0.0, 1.0) == pytest.approx(2.25 / 5)
    # the best constant in [0, 1] for these targets: their mean 0.25 (inside) -> the variance
    assert t.unreachable(0.0, 1.0) == pytest.approx((2.25 / 5) / np.var(t.values))
    assert t.unreachable(-1.0, 2.0) == 0.0
    # a one-sided range (a ReLU's): only the negative targets are beyond it
    assert t.beyond(0.0, math.inf) == pytest.approx(1.25 / 5)


def test_tanh_on_standardised_gaussian_targets_loses_fifteen_percent() -> None:
    # E[(|z| - 1)_+^2] for z ~ N(0, 1), by quadrature, against the sample reading
    z = np.linspace(1.0, 12.0, 200_001)
    closed = 2.0 * float(np.sum((z - 1.0) ** 2 * np.exp(-0.5 * z**2)) * (z[1] - z[0]) / math.sqrt(2 * math.pi))
    sample = Targets(values=np.random.default_rng(0).standard_normal(200_000), divisor=1.0, records=1, start=np.zeros(1))
    assert sample.unreachable(-1.0, 1.0) == pytest.approx(closed, rel=0.03)
    assert closed == pytest.approx(0.151, abs=0.002)


def test_the_reading_survives_the_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, x, y = _data()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with gw.watch(model, every=1, log=tmp_path / "run.jsonl") as w:
        for _ in range(3):
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    live, read = read_targets(w.timeline), read_targets(gw.load(tmp_path / "run.jsonl").timeline)
    assert live is not None and read is not None
    np.testing.assert_allclose(read.values, live.values)
