from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

import gradwatch as gw


class Seq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 6, batch_first=True)
        self.head = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.lstm(x)[0][:, -1]))


def test_probe_data_survives_the_log(tmp_path: Path) -> None:
    model = Seq()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    log = tmp_path / "seq.jsonl"
    with gw.watch(model, every=2, log=log) as w:
        for _ in range(5):
            loss = model(torch.randn(8, 5, 3)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    run = gw.load(log)
    assert run.timeline.sites == w.timeline.sites
    assert {"lstm:forget_gate", "head.1", "(root):tanh#0"} <= set(run.timeline.sites)
    for metric in ("act_dead_frac", "act_sat_frac", "act_mean_deriv", "output_spread"):
        names, values = w.timeline.metric(metric)
        assert names and run.timeline.metric(metric)[0] == names
        np.testing.assert_array_equal(run.timeline.metric(metric)[1], values)
    live, read = w.timeline.profiles.get("grad_t/lstm"), run.timeline.profiles.get("grad_t/lstm")
    assert [s for s, _ in live] == [s for s, _ in read] == [0, 2, 4]
    for (_, a), (_, b) in zip(live, read, strict=True):
        np.testing.assert_array_equal(a, b)
    assert run.diagnose().to_dict() == w.diagnose().to_dict()


def test_len_counts_recorded_steps(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    log = tmp_path / "r.jsonl"
    with gw.watch(model, every=3, log=log) as w:
        for _ in range(7):
            model.zero_grad()
            model(torch.randn(4, 2)).sum().backward()
            w.step()
    assert len(gw.load(log)) == 3 == w.timeline.recorded
    assert "3 records" in repr(gw.load(log))
