"""The input statistics (probes/inputs.py) and the output's scale, against plain computations."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

import gradwatch as gw
from gradwatch.probes.inputs import MAX_FEATURES, InputStats
from gradwatch.probes.output import scale


def _reference(batches: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray, float, float]:
    x = torch.cat(batches).double().numpy()
    mean, std = x.mean(0), x.std(0, ddof=1)
    rms = math.sqrt(float((x**2).mean()))
    offset = math.sqrt(float((mean**2).mean())) / math.sqrt(float((std**2).mean()))
    return mean, std, rms, offset


def test_pooled_over_batches_matches_numpy() -> None:
    batches = [torch.randn(7, 3) * torch.tensor([1.0, 10.0, 100.0]) + torch.tensor([0.0, 5.0, 1000.0]) for _ in range(4)]
    st = InputStats()
    for b in batches:
        st.add(b)
    out = {k: v.numpy() for k, v in st.results().items()}
    mean, std, rms, offset = _reference(batches)
    np.testing.assert_allclose(out["input_mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(out["input_std"], std, rtol=1e-5)
    assert math.isclose(float(out["input_rms"][0]), rms, rel_tol=1e-5)
    assert math.isclose(float(out["input_offset"][0]), offset, rel_tol=1e-5)
    assert float(out["input_features"][0]) == 3


def test_batch_of_one_is_pooled_and_single_example_has_no_offset() -> None:
    st = InputStats()
    st.add(torch.tensor([[2.0, -2.0]]))
    assert math.isnan(float(st.results()["input_offset"][0]))  # one example: no spread yet
    st.add(torch.tensor([[4.0, 2.0]]))
    *_, offset = _reference([torch.tensor([[2.0, -2.0]]), torch.tensor([[4.0, 2.0]])])
    assert math.isclose(float(st.results()["input_offset"][0]), offset, rel_tol=1e-5)


def test_channels_first_images_use_the_channel_axis() -> None:
    x = torch.randn(5, 3, 4, 4) + torch.tensor([0.0, 1.0, 2.0]).reshape(1, 3, 1, 1)
    st = InputStats(channels_first=True)
    st.add(x)
    out = st.results()
    ref = x.permute(0, 2, 3, 1).reshape(-1, 3).double()
    torch.testing.assert_close(out["input_mean"], ref.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["input_std"], ref.std(0), rtol=1e-5, atol=1e-6)


def test_many_features_give_scalars_only_and_integers_nothing() -> None:
    st = InputStats()
    st.add(torch.randn(4, MAX_FEATURES + 1))
    assert set(st.results()) == {"input_rms", "input_offset", "input_features"}
    ids = InputStats()
    ids.add(torch.tensor([[1, 2, 3]]))
    assert ids.results() == {}


def test_output_scale_is_the_root_mean_square() -> None:
    y = torch.randn(6, 2) * 3
    assert math.isclose(float(scale(y)), float(y.double().pow(2).mean().sqrt()), rel_tol=1e-6)  # type: ignore[arg-type]
    assert scale(torch.tensor([1, 2])) is None


def test_watcher_records_input_and_output_statistics() -> None:
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    xs = [torch.randn(8, 2) * 50 + 10 for _ in range(4)]
    outs = []
    with gw.watch(model, every=2) as w:
        for x in xs:
            y = model(x)
            outs.append(y.detach())
            y.pow(2).mean().backward()
            w.step(loss=y.pow(2).mean())
            model.zero_grad()
    tl = w.timeline
    _, rms = tl.metric("input_rms")
    _, numel = tl.metric("output_numel")
    _, out_rms = tl.metric("output_rms")
    _, _, ref_rms, _ = _reference([xs[0], xs[2]])  # recording steps 0 and 2, pooled
    assert math.isclose(float(rms[-1, 0]), ref_rms, rel_tol=1e-6)
    assert float(numel[-1, 0]) == 8
    assert math.isclose(float(out_rms[0, 0]), float(outs[0].double().pow(2).mean().sqrt()), rel_tol=1e-6)
    names, mean = tl.metric("input_mean")
    assert names == ["0", "1"] and list(tl.steps) == [0, 2]
    np.testing.assert_allclose(mean[-1], torch.cat([xs[0], xs[2]]).double().mean(0).numpy(), rtol=1e-6)
    assert tl.profiles.names() == []  # profiles are vectors over time (grad_t/...), not these


def test_embedding_inputs_are_not_measured() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 1))
    with gw.watch(model, every=1) as w:
        out = model(torch.randint(0, 10, (6,)))
        out.sum().backward()
        w.step(loss=out.sum())
    assert "input_rms" not in w.timeline.records.metrics
