"""gw.watch end to end: what it records, when, and that it leaves the model as it found it."""

from __future__ import annotations

import gc
import math
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw
from tests.conftest import tiny_mlp, train_steps


def layer_norms(model: nn.Module, names: list[str]) -> list[float]:
    mods = dict(model.named_modules())
    out = []
    for n in names:
        gs = [p.grad.reshape(-1) for p in mods[n].parameters(recurse=False) if p.grad is not None]
        out.append(float(torch.cat(gs).double().norm()))
    return out


def test_records_on_schedule_and_losses_every_step() -> None:
    model = tiny_mlp()
    with gw.watch(model, every=3) as w:
        train_steps(model, w, 10)
    assert list(w.timeline.steps) == [0, 3, 6, 9]
    steps, losses = w.timeline.loss()
    assert list(steps) == list(range(10))
    assert np.all(np.isfinite(losses))
    assert w.step_count == 10


def test_a_callable_schedule() -> None:
    model = tiny_mlp()
    with gw.watch(model, every=lambda s: s in (1, 4)) as w:
        train_steps(model, w, 6)
    assert list(w.timeline.steps) == [1, 4]


@pytest.mark.parametrize("every", [2, 1])  # 1: the snapshot is taken within the record (fused)
def test_recorded_gradients_and_updates_match_a_hand_computation(every: int) -> None:
    model = tiny_mlp(depth=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    expected_grad, expected_update = {}, {}
    names = ["0", "2", "4"]
    mods = dict(model.named_modules())
    with gw.watch(model, every=every) as w:
        for step in range(7):
            x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            expected_grad[step] = layer_norms(model, names)
            before = {n: torch.cat([p.detach().reshape(-1).clone() for p in mods[n].parameters()]) for n in names}
            opt.step()
            after = {n: torch.cat([p.detach().reshape(-1) for p in mods[n].parameters()]) for n in names}
            expected_update[step] = [float((after[n] - before[n]).double().norm() / after[n].double().norm()) for n in names]
    g = w.timeline.layer_metric("grad_norm")
    u = w.timeline.layer_metric("update_ratio")
    for row, step in enumerate(w.timeline.steps):
        np.testing.assert_allclose(g[row], expected_grad[step], rtol=1e-5)
        if step == 0:
            assert np.all(np.isnan(u[row]))  # no step before the first one
        else:  # a record carries the update of the optimizer step just before it
            np.testing.assert_allclose(u[row], expected_update[step - 1], rtol=1e-4)


def test_loss_tensors_cost_no_host_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gw.watch(model, every=5)
    calls = {"cpu": 0}
    real_cpu = torch.Tensor.cpu

    def forbidden(self, *a, **k):
        raise AssertionError("host sync in the hot path")

    def counting_cpu(self, *a, **k):
        calls["cpu"] += 1
        return real_cpu(self, *a, **k)

    per_step = []
    for _ in range(12):
        loss = nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,)))
        opt.zero_grad()
        loss.backward()
        with monkeypatch.context() as m:
            m.setattr(torch.Tensor, "item", forbidden)
            m.setattr(torch.Tensor, "tolist", forbidden)
            m.setattr(torch.Tensor, "__float__", forbidden)
            m.setattr(torch.Tensor, "cpu", counting_cpu)
            calls["cpu"] = 0
            w.step(loss=loss)
            per_step.append(calls["cpu"])
        opt.step()
    w.close()
    assert per_step == [1 if s % 5 == 0 else 0 for s in range(12)]  # one copy per recording step


def test_optimizer_mode_with_accumulation_records_once_per_optimizer_step() -> None:
    model = tiny_mlp(depth=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    names = ["0", "2", "4"]
    expected, micro_losses = {}, {}
    with gw.watch(model, every=1, optimizer=opt) as w:
        for step in range(3):
            opt.zero_grad()
            micro_losses[step] = []
            for _ in range(4):
                loss = nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))) / 4
                loss.backward()
                w.step(loss=loss)
                micro_losses[step].append(float(loss.detach()))
            expected[step] = layer_norms(model, names)  # the accumulated gradient
            opt.step()
    assert list(w.timeline.steps) == [0, 1, 2]
    for row in range(3):
        np.testing.assert_allclose(w.timeline.layer_metric("grad_norm")[row], expected[row], rtol=1e-5)
    steps, losses = w.timeline.loss()
    assert list(steps) == [0, 1, 2]
    np.testing.assert_allclose(losses, [np.mean(micro_losses[s]) for s in range(3)], rtol=1e-6)
    assert np.all(w.timeline.layer_metric("update_ratio") > 0)


def test_optimizer_mode_reads_unscaled_gradients_and_skips_overflow_steps() -> None:
    model = tiny_mlp(depth=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    names = ["0", "2"]
    expected = []
    with gw.watch(model, every=1, optimizer=opt) as w:
        for step in range(4):
            loss = nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,)))
            opt.zero_grad()
            scaler.scale(loss).backward()
            w.step(loss=loss)
            if step == 2:
                model[0].weight.grad[0, 0] = math.inf  # an fp16-style overflow: the scaler skips this step
            else:
                expected.append([v / scaler.get_scale() for v in layer_norms(model, names)])
            scaler.step(opt)
            scaler.update()
    assert w.step_count == 3  # the skipped step is not an optimizer step
    assert list(w.timeline.steps) == [0, 1, 2]
    np.testing.assert_allclose(w.timeline.layer_metric("grad_norm"), expected, rtol=1e-5)
    assert np.all(w.timeline.layer_metric("grad_nonfinite") == 0)


def _all_hooks(model: nn.Module, opt: torch.optim.Optimizer | None = None) -> int:
    n = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    if opt is not None:
        n += len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks)
    return n


def test_close_removes_every_hook() -> None:
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gw.watch(model, optimizer=opt)
    assert _all_hooks(model, opt) > 0
    w.close()
    assert _all_hooks(model, opt) == 0
    w.close()  # twice is fine


def test_hooks_are_removed_when_the_training_loop_raises() -> None:
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    with pytest.raises(RuntimeError, match="boom"), gw.watch(model, optimizer=opt, every=1) as w:
        train_steps(model, w, 2)
        raise RuntimeError("boom")
    assert _all_hooks(model, opt) == 0
    assert w.closed and model.training


def test_the_users_own_hooks_keep_firing() -> None:
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fired = {"fwd": 0, "pre": 0, "opt": 0, "grad": 0}
    model[0].register_forward_hook(lambda m, i, o: fired.__setitem__("fwd", fired["fwd"] + 1))
    model[0].register_forward_pre_hook(lambda m, i: fired.__setitem__("pre", fired["pre"] + 1))
    opt.register_step_post_hook(lambda o, a, k: fired.__setitem__("opt", fired["opt"] + 1))
    model[0].weight.register_hook(lambda g: fired.__setitem__("grad", fired["grad"] + 1))
    with gw.watch(model, every=1, optimizer=opt) as w:
        for _ in range(3):
            loss = model(torch.randn(2, 4)).sum()
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    assert fired == {"fwd": 3, "pre": 3, "opt": 3, "grad": 3}
    assert _all_hooks(model, opt) == 3  # the user's three module/optimizer hooks remain


def test_training_is_bit_identical_with_and_without_the_watcher() -> None:
    a = tiny_mlp()
    b = tiny_mlp()
    b.load_state_dict(a.state_dict())
    train_steps(a, None, 25)
    with gw.watch(b, every=1) as w:
        train_steps(b, w, 25)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_a_layer_unused_on_a_step_has_no_gradient_that_step() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor, use_b: bool) -> torch.Tensor:
            x = self.a(x)
            return self.b(x) if use_b else x

    model = Branchy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, every=1) as w:
        for use_b in (True, False):
            opt.zero_grad()
            model(torch.randn(2, 3), use_b).sum().backward()
            w.step()
            opt.step()
    g = w.timeline.layer_metric("grad_norm")
    assert w.timeline.layers == ["a", "b"]
    assert np.isfinite(g[0]).all()
    assert np.isfinite(g[1, 0]) and np.isnan(g[1, 1])


def test_tied_weights_are_measured_once_with_their_whole_gradient() -> None:
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    with gw.watch(model, every=1) as w:
        model(torch.tensor([1, 2, 3])).sum().backward()
        w.step()
    assert w.timeline.layers == ["0"]
    assert w.timeline.layer_metric("grad_norm")[0, 0] == pytest.approx(float(emb.weight.grad.norm()), rel=1e-6)


# -- bad input -------------------------------------------------------------------------------


def test_watch_refuses_what_is_not_a_module() -> None:
    with pytest.raises(TypeError, match=r"expects a torch.nn.Module .* got builtins.list"):
        gw.watch([1, 2])  # type: ignore[arg-type]


def test_watch_refuses_a_model_without_parameters() -> None:
    with pytest.raises(ValueError, match="has no parameters"):
        gw.watch(nn.ReLU())


def test_watch_refuses_a_fully_frozen_model() -> None:
    model = tiny_mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="every parameter .* is frozen"):
        gw.watch(model)


@pytest.mark.parametrize(("every", "error", "message"), [(0, ValueError, "at least 1"), ("10", TypeError, "positive int"), (True, TypeError, "positive int")])
def test_bad_every(every: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        gw.watch(tiny_mlp(), every=every)  # type: ignore[arg-type]


def test_bad_optimizer() -> None:
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        gw.watch(tiny_mlp(), optimizer="adam")  # type: ignore[arg-type]


def test_step_before_backward_says_so() -> None:
    model = tiny_mlp()
    with gw.watch(model) as w, pytest.raises(gw.UsageError, match="after loss.backward"):
        w.step(loss=1.0)


def test_bad_losses() -> None:
    model = tiny_mlp()
    with gw.watch(model) as w:
        with pytest.raises(ValueError, match=r"single number .* shape \(3,\)"):
            w.step(loss=torch.ones(3))
        with pytest.raises(TypeError, match="tensor or a number, got str"):
            w.step(loss="2.3")  # type: ignore[arg-type]


def test_step_after_close() -> None:
    w = gw.watch(tiny_mlp())
    w.close()
    with pytest.raises(gw.UsageError, match="after the watcher was closed"):
        w.step()


def test_all_errors_share_one_base_class() -> None:
    for exc in (gw.GradwatchTypeError, gw.GradwatchValueError, gw.UsageError, gw.LogFormatError, gw.ModelError):
        assert issubclass(exc, gw.GradwatchError)


# -- the log ---------------------------------------------------------------------------------


def test_watcher_and_log_give_the_same_diagnosis(tmp_path: Path) -> None:
    model = tiny_mlp()
    log = tmp_path / "run.jsonl"
    with gw.watch(model, every=2, log=log) as w:
        train_steps(model, w, 9)
    run = gw.load(log)
    assert len(run) == 5 == w.timeline.recorded
    assert run.timeline.layers == w.timeline.layers
    for metric in ("grad_norm", "update_ratio", "grad_zero_frac"):
        np.testing.assert_array_equal(run.timeline.layer_metric(metric), w.timeline.layer_metric(metric))
    np.testing.assert_array_equal(run.timeline.loss()[1], w.timeline.loss()[1])
    assert run.diagnose().to_dict() == w.diagnose().to_dict()
    assert run.header["settings"]["every"] == 2
    assert run.header["versions"]["torch"] == torch.__version__


KILLED = textwrap.dedent(
    """
    import sys, time, torch
    import gradwatch as gw
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gw.watch(model, every=1, log=sys.argv[1])
    step = 0
    while True:
        loss = nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,)))
        opt.zero_grad(); loss.backward(); w.step(loss=loss); opt.step()
        step += 1
        if step == 20:
            print("ready", flush=True)
        if step > 20:
            time.sleep(0.001)
    """
)


def test_a_process_killed_with_sigkill_leaves_a_readable_log(tmp_path: Path) -> None:
    log = tmp_path / "killed.jsonl"
    script = tmp_path / "train.py"
    script.write_text(KILLED)
    proc = subprocess.Popen([sys.executable, str(script), str(log)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
    finally:
        proc.kill()  # SIGKILL: no finally blocks, no atexit, no flush
        proc.wait()
    run = gw.load(log)
    assert len(run) >= 20
    assert list(run.timeline.steps) == list(range(len(run)))


def test_memory_stays_flat_over_5000_steps() -> None:
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 2), torch.randn(4, 1)
    w = gw.watch(model, every=1, capacity=256)
    tracemalloc.start()
    try:
        sizes = []
        for step in range(5000):
            loss = ((model(x) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
            if step in (1000, 4999):
                gc.collect()
                sizes.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
        w.close()
    assert w.timeline.recorded == 5000 and len(w.timeline) <= 256
    assert sizes[1] - sizes[0] < 64 * 1024, sizes


def test_state_dict_resumes_a_run(tmp_path: Path) -> None:
    import json

    model = tiny_mlp()
    with gw.watch(model, every=2) as w:
        train_steps(model, w, 5)
        state = w.state_dict()
    state = json.loads(json.dumps(state))  # plain data: survives JSON (and torch.save)
    with gw.watch(model, every=2) as w2:
        w2.load_state_dict(state)
        train_steps(model, w2, 4, seed=1)
    assert w2.step_count == 9
    assert list(w2.timeline.steps) == [0, 2, 4, 6, 8]
    assert list(w2.timeline.loss()[0]) == list(range(9))
    np.testing.assert_array_equal(w2.timeline.layer_metric("grad_norm")[:3], w.timeline.layer_metric("grad_norm"))


def test_state_dict_of_another_model_is_refused() -> None:
    with gw.watch(tiny_mlp(depth=2)) as w:
        state = w.state_dict()
    with gw.watch(tiny_mlp(depth=4)) as w2, pytest.raises(ValueError, match="other layers"):
        w2.load_state_dict(state)


def test_a_schedule_that_never_records_keeps_nothing_piling_up() -> None:
    model = tiny_mlp()
    with gw.watch(model, every=lambda s: False) as w:
        train_steps(model, w, 1100)
        assert len(w.recorder._losses) < 1024
        assert not w.recorder._order.handles  # the order hooks went after the first forward pass
    assert len(w.timeline.loss()[0]) == 1100
    assert w.timeline.recorded == 0


@pytest.mark.parametrize("watched", ["compiled", "original"])
def test_a_torch_compiled_model_trains_and_its_gradients_are_recorded(watched: str) -> None:
    # torch.compile traces the process-wide module hooks of the forward probes into its
    # graph; unguarded, dynamo failed on them and the training step raised. Now the hooks
    # vanish inside compiled code, and the gradient statistics are read as usual.
    import warnings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    by_hand: list[list[float]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note that global hooks fire for the wrapper too
        with gw.watch(compiled if watched == "compiled" else model, every=2) as w:
            for step in range(10):
                loss = compiled(torch.randn(4, 8)).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                if step % 2 == 0:
                    by_hand.append([
                        math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model[i].parameters()))
                        for i in (0, 2)
                    ])  # fmt: skip
                w.step(loss=loss)
                opt.step()
            tl = w.timeline
    assert tl.layers == ["0", "2"]  # the wrapped module's names, without `_orig_mod.`
    np.testing.assert_allclose(tl.layer_metric("grad_norm"), np.array(by_hand), rtol=1e-5)


def test_inspect_and_fix_take_a_compiled_model_and_work_on_the_module_it_wraps() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(16, 16), nn.Sigmoid())], nn.Linear(16, 3))
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(8, 16)
    d = gw.inspect(compiled, x)  # raised a ModelError from inside dynamo before
    assert gw.Kind.VANISHING_GRADIENT in {f.kind for f in d.findings}
    assert [layer.name for layer in d.layers][:2] == ["0", "2"]
    r = gw.fix(compiled, d, example_input=x)
    assert isinstance(r.model, nn.Sequential) and r.changes and r.model(x).shape == (8, 3)
    assert isinstance(model[1], nn.Sigmoid)  # the compiled model's module is left untouched


def test_each_transform_edits_the_module_a_compiled_model_wraps_without_compiling_it() -> None:
    from gradwatch.fix import activations, init, norm, recurrent, residual

    graphs: list[object] = []

    def counting(gm: torch.fx.GraphModule, example_inputs: object) -> object:
        graphs.append(gm)
        return gm.forward

    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(16, 16), nn.Sigmoid())], nn.Linear(16, 3))
    compiled = torch.compile(model, backend=counting)
    x = torch.randn(8, 16)
    compiled(x)
    before = len(graphs)
    for transform in (activations, init, norm, residual, recurrent):
        new, changes = transform.transform(compiled, example_input=x)
        assert type(new).__name__ != "OptimizedModule" and new(x).shape == (8, 3)
        assert all(not c.target.startswith("_orig_mod") for c in changes)
    assert len(graphs) == before  # tracing went through the eager module, not dynamo
    assert isinstance(model[1], nn.Sigmoid)  # and the user's model is left as it was


def test_optimizer_mode_reads_a_closure_steps_own_gradients() -> None:
    # step(closure) (L-BFGS, Lightning's automatic optimisation) runs backward inside the
    # step, after the pre-step hook: the record must hold this step's gradients, not the last's.
    torch.manual_seed(0)
    model = tiny_mlp(depth=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    names = ["0", "2"]
    expected: list[list[float]] = []
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(4)]
    with gw.watch(model, every=1, optimizer=opt) as w:
        for x, y in data:

            def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                expected.append(layer_norms(model, names))
                w.step(loss=loss)
                return loss

            opt.step(closure)
    assert list(w.timeline.steps) == [0, 1, 2, 3]
    np.testing.assert_allclose(w.timeline.layer_metric("grad_norm"), expected, rtol=1e-5)
    assert np.all(w.timeline.layer_metric("update_ratio") > 0)
