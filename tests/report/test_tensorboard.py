"""`gw.watch(..., tensorboard=...)`: event files read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("tensorboard", reason="the tensorboard package (the tensorboard extra) writes the event files")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import gradwatch as gw


def _net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 12), torch.nn.Sigmoid(), torch.nn.Linear(12, 3)
    )


def _train(w: gw.Watcher, model: torch.nn.Module, steps: int, opt: torch.optim.Optimizer) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        w.step(loss=loss)
        opt.step()


def _read(logdir) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.parametrize("with_optimizer", [False, True])
def test_scalars_are_the_timelines_numbers_at_the_recording_steps(tmp_path, with_optimizer: bool) -> None:
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, every=5, tensorboard=tmp_path, optimizer=opt if with_optimizer else None) as w:
        _train(w, model, 23, opt)
    acc = _read(tmp_path)
    tags = set(acc.Tags()["scalars"])
    t = w.timeline
    assert list(t.steps) == [0, 5, 10, 15, 20]
    for metric, prefix in (("grad_norm", "gradwatch.grad_norm"), ("update_ratio", "gradwatch.update_ratio")):
        values = t.layer_metric(metric)
        for j, layer in enumerate(t.layers):
            events = acc.Scalars(f"{prefix}/{layer}")
            finite = [(int(s), float(v)) for s, v in zip(t.steps, values[:, j], strict=True) if math.isfinite(v)]
            assert [e.step for e in events] == [s for s, _ in finite]
            np.testing.assert_allclose([e.value for e in events], [v for _, v in finite], rtol=1e-6)
    sites, dead = t.metric("act_dead_frac")
    assert sites == ["1"] and f"gradwatch.dead_frac/{sites[0]}" in tags
    np.testing.assert_allclose([e.value for e in acc.Scalars("gradwatch.dead_frac/1")], dead[:, 0], rtol=1e-6)
    sat_sites, _ = t.metric("act_sat_frac")
    assert {f"gradwatch.saturated_frac/{s}" for s in sat_sites} <= tags and sat_sites == ["3"]
    # nothing but the recording steps
    assert {e.step for tag in tags for e in acc.Scalars(tag)} <= set(t.steps.tolist())


def test_each_new_finding_is_written_once_as_text_at_the_step_it_was_judged(tmp_path) -> None:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(10):
        layers += [torch.nn.Linear(6, 6), torch.nn.Sigmoid()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    with gw.watch(model, every=4, tensorboard=writer) as w:
        g = torch.Generator().manual_seed(0)
        for _ in range(80):
            x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    writer.close()  # a writer passed in is the caller's to close
    final = w.diagnose()
    assert final.by_kind("vanishing_gradient")
    acc = _read(tmp_path)
    texts = acc.Tensors("gradwatch/findings/text_summary")
    written = [e.tensor_proto.string_val[0].decode() for e in texts]
    assert len(written) == len(set(written))  # each once
    vanishing = [(e.step, s) for e, s in zip(texts, written, strict=True) if "vanishing_gradient" in s]
    assert len(vanishing) == 1
    assert vanishing[0][0] in w.timeline.steps.tolist()


def test_a_writer_that_fails_stops_with_one_warning_and_training_goes_on() -> None:
    class Broken:
        def add_scalar(self, *a: object) -> None:
            raise OSError("disk full")

        def add_text(self, *a: object) -> None:
            pass

    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match=r"gradwatch stopped writing to TensorBoard \(OSError: disk full\); training and recording go on") as caught:
        with gw.watch(model, every=2, tensorboard=Broken()) as w:
            _train(w, model, 10, opt)
    assert len([c for c in caught if "TensorBoard" in str(c.message)]) == 1
    assert len(w.timeline) == 5  # recording went on


def test_tensorboard_takes_a_folder_or_a_writer_and_says_so() -> None:
    with pytest.raises(gw.GradwatchTypeError, match=r"tensorboard= takes a log folder or a writer with add_scalar and add_text \(torch.utils.tensorboard.SummaryWriter\), got builtins.int"):
        gw.watch(_net(), tensorboard=3)
