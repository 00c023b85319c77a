"""Each gradient statistic against a plain torch computation of the same number."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from gradwatch.anatomy import Anatomy
from gradwatch.probes import GradientProbe, Transfer


class Bag(nn.Module):
    """One child module per layer; each owns the parameters of the given shapes."""

    def __init__(self, layers: list[list[tuple[int, ...]]]) -> None:
        super().__init__()
        for i, shapes in enumerate(layers):
            m = nn.Module()
            for j, shape in enumerate(shapes):
                m.register_parameter(f"p{j}", nn.Parameter(torch.randn(shape)))
            self.add_module(f"l{i}", m)


def measure(model: nn.Module) -> dict[str, np.ndarray]:
    anatomy = Anatomy.from_module(model)
    names = [layer.name for layer in anatomy.trainable]
    probe = GradientProbe(anatomy, names)
    transfer = Transfer()
    snap = probe.measure_grads(transfer)
    probe.measure_weights(transfer)
    return probe.summarise(transfer.fetch(), snap)


def reference(model: nn.Module) -> dict[str, list[float]]:
    """The same statistics, computed tensor by tensor in float64 with no cleverness."""
    out: dict[str, list[float]] = {k: [] for k in ("grad_norm", "grad_rms", "grad_max", "grad_zero_frac", "grad_nonfinite", "weight_norm")}
    for _, module in model.named_children():
        ps = [p for p in module.parameters() if p.requires_grad]
        gs = [p.grad.double().reshape(-1) for p in ps if p.grad is not None and p.grad.numel()]
        w = torch.cat([p.detach().double().reshape(-1) for p in ps])
        out["weight_norm"].append(float(torch.sqrt((w * w).sum())))
        if not gs:
            for k in ("grad_norm", "grad_rms", "grad_max", "grad_zero_frac", "grad_nonfinite"):
                out[k].append(math.nan)
            continue
        g = torch.cat(gs)
        norm = float(torch.sqrt((g * g).sum()))
        out["grad_norm"].append(norm)
        out["grad_rms"].append(norm / math.sqrt(g.numel()))
        out["grad_max"].append(float(g.abs().max()))
        out["grad_zero_frac"].append(float((g == 0).sum()) / g.numel())
        out["grad_nonfinite"].append(float((~torch.isfinite(g)).sum()))
    return out


def check(model: nn.Module) -> None:
    got, want = measure(model), reference(model)
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=0, equal_nan=True, err_msg=k)


def test_statistics_of_hand_set_gradients() -> None:
    model = Bag([[(3, 4), (3,)], [(5,)]])
    model.l0.p0.grad = torch.tensor([[3.0, 0, 0, 0], [0, -4.0, 0, 0], [0, 0, 0, 0]])
    model.l0.p1.grad = torch.tensor([0.0, 12.0, 0.0])
    model.l1.p0.grad = torch.full((5,), -2.0)
    got = measure(model)
    assert got["grad_norm"][0] == pytest.approx(13.0)  # sqrt(9 + 16 + 144)
    assert got["grad_max"][0] == pytest.approx(12.0)
    assert got["grad_zero_frac"][0] == pytest.approx(12 / 15)
    assert got["grad_rms"][1] == pytest.approx(2.0)
    assert got["grad_max"][1] == pytest.approx(2.0)
    assert got["grad_zero_frac"][1] == 0.0
    assert list(got["grad_nonfinite"]) == [0.0, 0.0]


def test_a_layer_with_no_gradient_this_step_is_nan_not_zero() -> None:
    model = Bag([[(2, 2)], [(3,)]])
    model.l0.p0.grad = torch.ones(2, 2)
    got = measure(model)
    assert got["grad_norm"][0] == pytest.approx(2.0)
    assert math.isnan(got["grad_norm"][1])
    assert math.isnan(got["grad_zero_frac"][1])
    assert not math.isnan(got["weight_norm"][1])


def test_all_zero_gradient() -> None:
    model = Bag([[(4, 4)]])
    model.l0.p0.grad = torch.zeros(4, 4)
    got = measure(model)
    assert got["grad_norm"][0] == 0.0
    assert got["grad_zero_frac"][0] == 1.0
    assert got["grad_max"][0] == 0.0


def test_nan_and_inf_are_counted() -> None:
    model = Bag([[(2, 3)], [(4,)], [(2,)]])
    model.l0.p0.grad = torch.tensor([[1.0, math.nan, 2.0], [math.inf, 0.0, 1.0]])
    model.l1.p0.grad = torch.tensor([math.inf, -math.inf, 1.0, 0.0])
    model.l2.p0.grad = torch.tensor([1e30, 1e30])  # finite entries whose float32 sum of squares overflows
    got = measure(model)
    assert list(got["grad_nonfinite"]) == [2.0, 2.0, 0.0]
    assert math.isnan(got["grad_norm"][0])
    assert got["grad_norm"][1] == math.inf
    assert got["grad_norm"][2] == pytest.approx(math.sqrt(2) * 1e30, rel=1e-6)
    check(model)


def test_frozen_parameters_are_skipped() -> None:
    model = Bag([[(3,), (3,)]])
    model.l0.p1.requires_grad_(False)
    model.l0.p0.grad = torch.tensor([3.0, 4.0, 0.0])
    model.l0.p1.grad = torch.full((3,), 100.0)  # stale, on a frozen parameter: never read
    got = measure(model)
    assert got["grad_norm"][0] == pytest.approx(5.0)
    assert got["weight_norm"][0] == pytest.approx(float(model.l0.p0.detach().norm()))


def test_sparse_gradients_of_an_embedding() -> None:
    emb = nn.Embedding(50, 4, sparse=True)
    model = nn.Sequential(emb)
    emb(torch.tensor([1, 2, 2, 7])).sum().backward()
    assert emb.weight.grad is not None and emb.weight.grad.is_sparse
    dense = emb.weight.grad.to_dense()
    got = measure(model)
    assert got["grad_norm"][0] == pytest.approx(float(dense.norm()), rel=1e-6)
    assert got["grad_max"][0] == pytest.approx(float(dense.abs().max()))
    assert got["grad_zero_frac"][0] == pytest.approx(float((dense == 0).sum()) / dense.numel())


def test_mixed_dtypes_are_grouped() -> None:
    model = Bag([[(3, 3)], [(5,)]])
    model.l1.to(torch.float64)
    model.l0.p0.grad = torch.randn(3, 3)
    model.l1.p0.grad = torch.randn(5, dtype=torch.float64)
    check(model)


def snapshot_then_step(model: nn.Module) -> tuple[GradientProbe, list[torch.Tensor]]:
    """A probe that has taken its snapshot, and the parameters then; each is then moved a little."""
    anatomy = Anatomy.from_module(model)
    probe = GradientProbe(anatomy, anatomy.names)
    before = [p.detach().clone() for p in model.parameters()]
    probe.snapshot()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return probe, before


def test_update_is_the_change_across_one_step() -> None:
    model = Bag([[(4, 4)], [(6,)]])
    probe, before = snapshot_then_step(model)
    transfer = Transfer()
    probe.measure_update(transfer)
    probe.measure_weights(transfer)
    got = probe.summarise(transfer.fetch(), None)
    for i, (p, b) in enumerate(zip(model.parameters(), before, strict=True)):
        assert got["update_norm"][i] == pytest.approx(float((p.detach() - b).norm()), rel=1e-5)
        assert got["update_ratio"][i] == pytest.approx(float((p.detach() - b).norm() / p.detach().norm()), rel=1e-5)


_values = st.one_of(
    st.floats(-1e6, 1e6, width=32),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf]),
)


@st.composite
def layers_and_grads(draw: st.DrawFn) -> tuple[list[list[tuple[int, ...]]], list[list[list[float] | None]]]:
    n_layers = draw(st.integers(1, 4))
    layers, grads = [], []
    for _ in range(n_layers):
        shapes = draw(st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple), min_size=1, max_size=3))
        layers.append(shapes)
        gl: list[list[float] | None] = []
        for shape in shapes:
            n = math.prod(shape)
            kind = draw(st.sampled_from(["none", "zeros", "random"]))
            if kind == "none":
                gl.append(None)
            elif kind == "zeros":
                gl.append([0.0] * n)
            else:
                gl.append(draw(st.lists(_values, min_size=n, max_size=n)))
        grads.append(gl)
    return layers, grads


@settings(max_examples=60, deadline=None)
@given(layers_and_grads())
def test_property_statistics_match_plain_torch(case) -> None:
    layers, grads = case
    model = Bag(layers)
    for i, shapes in enumerate(layers):
        for j, shape in enumerate(shapes):
            values = grads[i][j]
            p = getattr(getattr(model, f"l{i}"), f"p{j}")
            p.grad = None if values is None else torch.tensor(values, dtype=torch.float32).reshape(shape)
    check(model)


def test_tiny_gradients_do_not_underflow_to_zero() -> None:
    # float32 squares of entries under ~1e-22 underflow: the norm must be redone in float64
    model = Bag([[(64, 64)], [(10,)]])
    model.l0.p0.grad = torch.full((64, 64), 1e-25)
    model.l1.p0.grad = torch.full((10,), 3e-30)
    got = measure(model)
    assert got["grad_norm"][0] == pytest.approx(64e-25, rel=1e-6)
    assert got["grad_norm"][1] == pytest.approx(3e-30 * math.sqrt(10), rel=1e-6)
    assert got["grad_rms"][0] == pytest.approx(1e-25, rel=1e-6)


def test_zero_count_agrees_on_every_path() -> None:
    # CPU float tensors are counted by numpy, others (bfloat16, a lazily negated view) by torch:
    # each must count -0.0 as zero and NaN as non-zero, as torch.count_nonzero does.
    from gradwatch.probes.grads import _count_nonzero

    base = torch.tensor([0.0, -0.0, 1.0, math.nan, -2.0, math.inf, 0.0])
    for g in (base, base.double(), base.half(), base.bfloat16(), base.neg()._neg_view()):
        got = _count_nonzero([g, g[:3]])
        assert [float(x) for x in got] == [4.0, 1.0], g.dtype


@pytest.fixture(params=["numpy", "torch"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """CPU float32/float64 tensors are read by numpy in place (`probes._cpu`); every other
    tensor (a GPU's, bfloat16) by grouped torch operations. "torch" sends all of them there."""
    if request.param == "torch":
        from gradwatch.probes import _cpu

        monkeypatch.setattr(_cpu, "view", lambda t, **kw: None)
    return str(request.param)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layers_and_grads())
def test_property_both_paths_match_plain_torch(path: str, case) -> None:
    test_property_statistics_match_plain_torch.hypothesis.inner_test(case)


def test_tensors_larger_than_a_piece_on_both_paths(path: str) -> None:
    # `_cpu` reads tensors in pieces of CHUNK entries: extremes, zeros and NaN in any piece count
    from gradwatch.probes._cpu import CHUNK

    torch.manual_seed(1)
    model = Bag([[(3, CHUNK + 5)], [(2 * CHUNK + 1,)], [(7,)]])
    g = torch.randn(3, CHUNK + 5)
    g[0, :100] = 0.0
    g[2, -1] = -50.0  # the largest |g|, in the last piece
    model.l0.p0.grad = g
    h = torch.randn(2 * CHUNK + 1)
    h[CHUNK + 3] = math.nan  # a NaN in the second piece only
    model.l1.p0.grad = h
    model.l2.p0.grad = -torch.zeros(7)
    check(model)
    got = measure(model)
    assert got["grad_max"][0] == 50.0 and math.isnan(got["grad_max"][1]) and got["grad_nonfinite"][1] == 1.0
    assert got["grad_zero_frac"][2] == 1.0

    probe, before = snapshot_then_step(model)
    transfer = Transfer()
    probe.measure_params(transfer, snapshot=True)  # the update, the weights, then the next snapshot
    got = probe.summarise(transfer.fetch(), None)
    for i, (p, b) in enumerate(zip(model.parameters(), before, strict=True)):
        assert got["update_norm"][i] == pytest.approx(float((p.detach() - b).double().norm()), rel=1e-5)
        assert got["weight_norm"][i] == pytest.approx(float(p.detach().double().norm()), rel=1e-5)
    with torch.no_grad():
        model.l2.p0.mul_(2.0)
    transfer = Transfer()
    probe.measure_update(transfer)  # against the snapshot the previous call took
    got = probe.summarise(transfer.fetch(), None)
    assert got["update_norm"][0] == 0.0 and got["update_norm"][1] == 0.0
    assert got["update_norm"][2] == pytest.approx(float(model.l2.p0.detach().double().norm()) / 2, rel=1e-6)


def test_parameters_cast_or_replaced_between_snapshot_and_update(path: str) -> None:
    model = Bag([[(4, 4)], [(6,)]])
    anatomy = Anatomy.from_module(model)
    probe = GradientProbe(anatomy, anatomy.names)
    probe.snapshot()
    model.double()  # model.to(): the snapshot no longer fits, so there is no update to measure
    transfer = Transfer()
    probe.measure_params(transfer, snapshot=True)
    got = probe.summarise(transfer.fetch(), None)
    assert np.all(np.isnan(got["update_norm"]))
    assert got["weight_norm"][0] == pytest.approx(float(model.l0.p0.detach().norm()), rel=1e-6)
    old = model.l1.p0.detach().clone()
    with torch.no_grad():
        model.l1.p0.data = torch.full((6,), 2.0, dtype=torch.float64)  # new storage, read anew
    transfer = Transfer()
    probe.measure_params(transfer)
    got = probe.summarise(transfer.fetch(), None)
    assert got["weight_norm"][1] == pytest.approx(2.0 * math.sqrt(6))
    assert got["update_norm"][0] == 0.0
    assert got["update_norm"][1] == pytest.approx(float((old - 2.0).norm()))
