from __future__ import annotations

import numpy as np
import pytest

from gradwatch.record import Table, Timeline


def test_append_and_read_columns() -> None:
    t = Table(capacity=8)
    t.append(0, {"grad_norm": {"a": 1.0, "b": 2.0}, "loss": {"loss": 3.0}})
    t.append(5, {"grad_norm": {"b": 4.0, "c": 5.0}})
    assert list(t.steps) == [0, 5]
    np.testing.assert_array_equal(t.get("grad_norm", ["a", "b", "c"]), [[1, 2, np.nan], [np.nan, 4, 5]])
    np.testing.assert_array_equal(t.column("loss", "loss"), [3.0, np.nan])
    assert t.names("grad_norm") == ["a", "b", "c"]
    assert t.get("nothing", ["x"]).shape == (2, 1)


def test_steps_cannot_go_backwards() -> None:
    t = Table(capacity=8)
    t.append(3, {"m": {"x": 1.0}})
    with pytest.raises(ValueError, match="backwards"):
        t.append(2, {"m": {"x": 1.0}})


def test_thinning_keeps_the_first_row_and_the_recent_half_whole() -> None:
    t = Table(capacity=16)
    for step in range(100):
        t.append(step, {"m": {"x": float(step)}})
    steps = t.steps
    assert len(t) <= 16 and t.appended == 100
    assert steps[0] == 0
    assert list(steps[-8:]) == list(range(92, 100))  # the most recent half, every step
    assert np.all(np.diff(steps) > 0)
    np.testing.assert_array_equal(t.column("m", "x"), steps.astype(float))  # values moved with their steps
    gaps = np.diff(steps)
    assert gaps[0] >= gaps[-1]  # older rows are sparser


def test_memory_is_bounded() -> None:
    t = Table(capacity=32)
    for step in range(5000):
        t.append(step, {"m": {"x": 1.0, "y": 2.0}})
    assert t._cols["m"].shape == (32, 2)
    assert len(t) <= 32


def test_state_dict_round_trip() -> None:
    t = Table(capacity=8)
    for step in range(20):
        t.append(step, {"m": {"x": float(step), "y": -float(step)}})
    u = Table(capacity=4)
    u.load_state_dict(t.state_dict())
    assert u.capacity == 8 and u.appended == 20
    np.testing.assert_array_equal(u.steps, t.steps)
    np.testing.assert_array_equal(u.get("m"), t.get("m"))
    u.append(20, {"m": {"x": 20.0}})  # still usable
    assert u.steps[-1] == 20


def test_ingest_checks_layer_count() -> None:
    tl = Timeline(layers=["a", "b"])
    tl.ingest({"type": "record", "step": 0, "layers": {"grad_norm": [1.0, 2.0]}, "losses": [[0, 2.5]]})
    np.testing.assert_array_equal(tl.layer_metric("grad_norm"), [[1.0, 2.0]])
    assert tl.loss()[1].tolist() == [2.5]
    with pytest.raises(ValueError, match="has 1 values for 2 layers"):
        tl.ingest({"type": "record", "step": 1, "layers": {"grad_norm": [1.0]}})


def test_profiles_are_bounded() -> None:
    tl = Timeline(capacity=8)
    for step in range(50):
        tl.profiles.add("grad_t/rnn", step, [1.0, 2.0])
    series = tl.profiles.get("grad_t/rnn")
    assert len(series) <= 8 and series[0][0] == 0 and series[-1][0] == 49
