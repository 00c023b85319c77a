"""The registry and `diagnose`: every kind covered, robust to any Timeline, live == offline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradwatch as gw
from gradwatch.detect import DETECTORS, Thresholds, diagnose
from gradwatch.lab.data import batches, digits
from gradwatch.lab.models import mlp
from tests.detect._timelines import build, chain_anatomy, grads, stuck_loss

AN = chain_anatomy(3)


def test_one_detector_per_kind() -> None:
    names = {d.__name__ for d in DETECTORS}
    assert names == {k.value for k in gw.Kind}


@pytest.mark.parametrize("records", [0, 1, 2])
def test_every_detector_tolerates_short_timelines(records: int) -> None:
    tl = build(AN, records, layers=lambda s: grads(3, [1e-9, 1e3, 1.0], update=0.0), loss=stuck_loss())
    for detector in DETECTORS:
        assert detector(tl, AN, Thresholds()) == [], detector.__name__


finite_or_not = st.one_of(
    st.floats(min_value=0, max_value=1e6), st.just(0.0), st.just(math.nan), st.just(math.inf)
)


@settings(max_examples=60, deadline=None)
@given(
    cells=st.lists(finite_or_not, min_size=7 * 3, max_size=7 * 3),
    losses=st.lists(st.one_of(st.floats(-10, 10), st.just(math.nan), st.just(math.inf)), min_size=0, max_size=40),
    spread=finite_or_not,
)
def test_no_detector_raises_on_any_numbers(cells: list[float], losses: list[float], spread: float) -> None:
    metrics = ["grad_norm", "grad_rms", "grad_zero_frac", "grad_nonfinite", "weight_norm", "update_norm", "update_ratio"]
    row = {m: cells[3 * i : 3 * i + 3] for i, m in enumerate(metrics)}
    tl = build(
        AN, 4, layers=lambda s: row,
        loss=(lambda s: losses[s % len(losses)]) if losses else None,
        values=lambda s: {"output_spread": {"output": spread}, "act_dead_frac": {"1": spread}, "act_sat_frac": {"1": spread}},
        profiles=lambda s: {"grad_t/rnn": [spread] * 5},
    )  # fmt: skip
    d = diagnose(tl, AN)
    json.dumps(d.to_dict(), allow_nan=False)
    for f in d.findings:
        assert all(isinstance(v, float) for v in f.evidence.values())


def _train(model: nn.Module, log: Path, steps: int, lr: float) -> gw.Watcher:
    data = digits(0)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    with gw.watch(model, every=10, log=log) as w:
        for x, y in batches(data.x_train, data.y_train, 64, steps, seed=0):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    return w


def test_live_and_offline_diagnoses_agree_on_a_failing_run(tmp_path: Path) -> None:
    model = mlp(64, 10, depth=12, width=32, activation="sigmoid", seed=0)
    w = _train(model, tmp_path / "run.jsonl", 200, 0.01)
    live, offline = w.diagnose(), gw.load(tmp_path / "run.jsonl").diagnose()
    assert live.to_dict() == offline.to_dict()
    assert not live.healthy
    kinds = {f.kind for f in live.findings if f.severity == gw.Severity.ERROR}
    assert gw.Kind.VANISHING_GRADIENT in kinds
    first, *rest = str(live).splitlines()
    assert first.endswith("found (200 steps looked at):")
    assert rest[0].startswith("  [error] ")  # errors are listed first
    assert any("vanishing_gradient" in line for line in rest)


def test_a_healthy_run_draws_nothing_above_info(tmp_path: Path) -> None:
    model = mlp(64, 10, depth=3, width=32, activation="relu", init="he", seed=0)
    d = _train(model, tmp_path / "run.jsonl", 200, 0.05).diagnose()
    assert d.healthy, str(d)
    assert str(d).startswith("healthy: no gradient problem found (200 steps looked at)")


def test_thresholds_are_documented_field_by_field() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "detectors.md").read_text()
    for name in Thresholds.__dataclass_fields__:
        assert f"`{name}`" in doc, name
    src = (Path(__file__).parents[2] / "src" / "gradwatch" / "detect" / "thresholds.py").read_text()
    for name in Thresholds.__dataclass_fields__:
        i = next(i for i, line in enumerate(src.splitlines()) if line.strip().startswith(f"{name}:"))
        assert src.splitlines()[i - 1].strip().startswith("#:"), f"{name} has no comment"
