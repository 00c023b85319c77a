"""A fast subset of the labelled detection suite (benchmarks/detection), trained for real.

Each run is labelled by design and outcome; the diagnosis must contain every label, no
kind that is neither labelled nor allowed, and nothing above `info` on a healthy run.
The whole suite and its comparison with earlier tools: `python benchmarks/detection/run.py`.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

import gradwatch as gw

BENCH = Path(__file__).parents[2] / "benchmarks" / "detection"
sys.path.insert(0, str(BENCH))
suite = importlib.import_module("suite")
sys.path.remove(str(BENCH))

QUICK = [s for s in suite.specs() if s.quick]


def test_the_suite_meets_its_own_design_rules() -> None:
    specs = suite.specs()
    healthy = [s for s in specs if s.healthy]
    assert len(specs) >= 24 and len(healthy) * 3 >= len(specs)
    assert {k for s in specs for k in s.labels} == set(gw.Kind)  # a faulty run for every kind
    assert len({s.name for s in specs}) == len(specs)
    assert {s.family for s in specs} >= {"mlp", "cnn", "rnn", "lstm", "gru", "transformer"}


@pytest.mark.slow
@pytest.mark.parametrize("spec", QUICK, ids=[s.name for s in QUICK])
def test_quick_run(spec, tmp_path: Path) -> None:
    outcome = spec.train(tmp_path / "run.jsonl", 10)
    assert outcome.trained == spec.healthy, f"the outcome contradicts the label: {outcome}"
    d = gw.load(tmp_path / "run.jsonl").diagnose()
    found = {f.kind for f in d.findings if f.severity >= gw.Severity.WARNING}
    assert set(spec.labels) <= found, str(d)
    assert found <= set(spec.labels) | set(spec.allowed), str(d)
    if spec.healthy:
        assert d.healthy, str(d)
