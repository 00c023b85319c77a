"""The framework-neutral Recorder: driven by events, it records what gw.watch records."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.recorder import Recorder
from tests.conftest import tiny_mlp


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


def same_timeline(a: gw.Timeline, b: gw.Timeline) -> None:
    assert list(a.steps) == list(b.steps)
    assert a.layers == b.layers
    for metric in ("grad_norm", "grad_max", "grad_zero_frac", "weight_norm", "update_norm"):
        np.testing.assert_array_equal(a.layer_metric(metric), b.layer_metric(metric), err_msg=metric)
    np.testing.assert_array_equal(a.loss()[1], b.loss()[1])


def test_gradients_ready_records_what_watch_step_records() -> None:
    torch.manual_seed(0)
    base = tiny_mlp()
    runs = []
    for driver in ("watch", "recorder"):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        w = gw.watch(model, every=2) if driver == "watch" else None
        rec = w.recorder if w is not None else Recorder(model, every=2)
        for x, y in batches(7):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            if w is not None:
                w.step(loss=loss)
            else:
                rec.add_loss(loss)
                rec.gradients_ready()
            opt.step()
        rec.close()
        runs.append(rec.timeline)
    same_timeline(*runs)
    assert list(runs[1].steps) == [0, 2, 4, 6]


def train_with_optimizer_events(base: nn.Module, driver: str, closure: bool) -> Recorder:
    """7 SGD steps of a copy of `base`, watched by gw.watch(optimizer=) or by a Recorder driven by hand."""
    model = copy.deepcopy(base)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gw.watch(model, every=3, optimizer=opt) if driver == "watch" else None
    rec = w.recorder if w is not None else Recorder(model, every=3, optimizer_name="SGD")
    batch: list[tuple[torch.Tensor, torch.Tensor]] = []

    def step_closure() -> torch.Tensor:
        x, y = batch[0]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if w is not None:
            w.step(loss=loss)
        else:
            rec.add_loss(loss)
        return loss

    for xy in batches(7):
        batch[:] = [xy]
        if not closure:
            step_closure()
        if w is None:
            rec.optimizer_step_begins(grads_ready=not closure)
        opt.step(step_closure if closure else None)
        if w is None:
            rec.optimizer_step_ends()
    rec.close()
    return rec


@pytest.mark.parametrize("closure", [False, True])
def test_optimizer_events_record_what_watch_with_an_optimizer_records(closure: bool) -> None:
    torch.manual_seed(0)
    base = tiny_mlp()
    runs = [train_with_optimizer_events(base, driver, closure) for driver in ("watch", "recorder")]
    assert [r.step_count for r in runs] == [7, 7]
    same_timeline(runs[0].timeline, runs[1].timeline)
    assert list(runs[1].timeline.steps) == [0, 3, 6]


def test_a_failing_measurement_stops_recording_with_one_warning_and_training_goes_on(monkeypatch) -> None:
    from gradwatch.probes.grads import GradientProbe

    model = tiny_mlp()
    rec = Recorder(model, every=1)
    calls = []

    def broken(self, transfer):  # type: ignore[no-untyped-def]
        calls.append(1)
        raise RuntimeError("probe broke")

    for step in range(4):
        if step == 2:
            monkeypatch.setattr(GradientProbe, "measure_grads", broken)
        model(torch.randn(2, 4)).sum().backward()
        if step == 2:
            with pytest.warns(RuntimeWarning, match="stopped recording at step 2 .*probe broke"):
                rec.gradients_ready()
        else:
            rec.gradients_ready()
    rec.close()
    assert calls == [1]
    assert rec.stopped == "RuntimeError: probe broke"
    assert list(rec.timeline.steps) == [0, 1]
    assert rec.step_count == 4


def test_no_gradient_is_a_usage_error_with_the_driver_s_message() -> None:
    model = tiny_mlp()
    with pytest.raises(gw.UsageError, match="call it after backward"):
        rec = Recorder(model, every=1, no_gradient_message="no gradients: call it after backward")
        try:
            rec.gradients_ready()
        finally:
            rec.close()
    assert rec.timeline.recorded == 0


def test_close_leaves_no_hook_on_the_model_and_a_user_hook_still_fires() -> None:
    model = tiny_mlp()
    fired = []
    model.register_forward_hook(lambda m, a, o: fired.append(1))
    rec = Recorder(model, every=1)
    model(torch.randn(2, 4)).sum().backward()
    rec.gradients_ready()
    rec.close()
    rec.close()  # twice is fine
    assert fired == [1]
    assert len(model._forward_hooks) == 1
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert rec.timeline.recorded == 1


def test_a_recorder_refuses_what_is_not_a_module() -> None:
    with pytest.raises(gw.GradwatchTypeError, match="Recorder expects a torch.nn.Module"):
        Recorder(object())  # type: ignore[arg-type]
