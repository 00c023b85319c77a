from __future__ import annotations

import copy
import math
import re
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch import GradwatchTypeError, GradwatchValueError
from gradwatch.fix import Trial
from gradwatch.lab.data import accuracy, batches, digits
from gradwatch.lab.models import mlp
from gradwatch.types import Diagnosis, Finding

VANISHING = Diagnosis(findings=[Finding("vanishing_gradient", "error", [], 0, {}, "label")])


def _digits_train(data: Any, log: list[int] | None = None) -> Any:
    def train(model: nn.Module, advice: dict[str, Any], steps: int) -> float:
        if log is not None:
            log.append(steps)
        opt = torch.optim.SGD(model.parameters(), lr=0.01 * advice.get("lr_scale", 1.0), momentum=0.9)
        seed = int(torch.randint(0, 10**6, ()))
        for x, y in batches(data.x_train, data.y_train, 64, steps, seed=seed):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return accuracy(model, data.x_test, data.y_test)

    return train


def test_repair_keeps_a_fix_that_beats_the_original_and_stays_in_budget() -> None:
    data = digits()
    model = mlp(64, 10, depth=12, width=32, activation="sigmoid", seed=0)
    before = copy.deepcopy(model.state_dict())
    log: list[int] = []
    result = gw.repair(model, _digits_train(data, log), steps=200, diagnosis=VANISHING, progress=False)
    assert result.improved and result.fix is not None and result.fix.changes
    kept = [t for t in result.trials if t.kept]
    assert len(kept) == 1 and kept[0].score > result.baseline + result.margin
    assert result.final_score is not None and result.final_score > 0.6
    assert sum(log) == result.steps_used <= result.budget_steps == 300
    assert result.trials[0].name == "original" and result.trials[0].score < 0.2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the input model changed"
    assert not any(isinstance(m, nn.Sigmoid) for m in result.model.modules()) or any(
        type(m).__name__ == "Residual" for m in result.model.modules()
    )
    text = str(result)
    assert "kept" in text and "original" in text and "cost:" in text


def _tiny_task(log: list[int], score: Any) -> Any:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)

    def train(model: nn.Module, advice: dict[str, Any], steps: int) -> float:
        log.append(steps)
        opt = torch.optim.SGD(model.parameters(), lr=0.05 * advice.get("lr_scale", 1.0))
        for _ in range(steps):
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return score(model)

    return train


def _tiny_sigmoid() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 1))


def test_a_metric_that_cannot_tell_models_apart_keeps_the_original() -> None:
    log: list[int] = []
    result = gw.repair(_tiny_sigmoid(), _tiny_task(log, lambda m: 0.5), steps=100, diagnosis=VANISHING, progress=False)
    assert not result.improved and result.fix is None and result.advice == {}
    assert len(result.trials) > 2, "candidates were tried"
    assert "kept the original" in str(result)
    assert sum(log) == result.steps_used <= 150


@pytest.mark.parametrize(
    ("steps", "budget", "trial_steps", "finish"),
    [(100, 1.5, None, True), (100, 1.5, 30, True), (60, 1.2, 5, True), (100, 1.5, None, False), (40, 1.0, None, True), (7, 1.5, 1, True)],
)
def test_steps_trained_never_exceed_the_budget(steps: int, budget: float, trial_steps: int | None, finish: bool) -> None:
    log: list[int] = []
    loss_score = lambda m: -float(m(torch.ones(1, 4)).detach().abs().sum())  # noqa: E731
    result = gw.repair(
        _tiny_sigmoid(), _tiny_task(log, loss_score), steps=steps, budget=budget, trial_steps=trial_steps,
        finish=finish, diagnosis=VANISHING, progress=False,
    )
    assert sum(log) == result.steps_used <= math.floor(budget * steps)
    # with finish=True the kept model is trained on to a full run, so a final score exists
    assert (result.final_score is not None) == finish


def test_without_a_diagnosis_the_original_run_is_watched() -> None:
    losses: list[float] = []
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g)

    def train(model: nn.Module, advice: dict[str, Any], steps: int) -> float:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(steps):
            loss = nn.functional.mse_loss(model(x), y)
            losses.append(float(loss.detach()))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return -float(nn.functional.mse_loss(model(x), y))

    result = gw.repair(_tiny_sigmoid(), train, steps=40, trial_steps=10, progress=False)
    assert result.timeline is not None
    steps, values = result.timeline.loss()
    assert list(steps) == list(range(10))
    assert values == pytest.approx(losses[:10], rel=1e-6)  # caught at loss.backward()
    assert result.timeline.layers == ["0", "2", "4", "6"]
    assert result.diagnosis.steps == 10


def test_loss_backward_is_restored_after_watching_also_when_train_fn_raises() -> None:
    original = torch.Tensor.backward
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    seen: list[Any] = []

    def train(model: nn.Module, advice: dict[str, Any], steps: int) -> float:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = nn.functional.mse_loss(model(x), y)
        seen.append(torch.Tensor.backward)
        loss.backward()
        opt.step()
        raise RuntimeError("the user's loop failed")

    with pytest.raises(RuntimeError, match="the user's loop failed"):
        gw.repair(_tiny_sigmoid(), train, steps=20, trial_steps=5, progress=False)
    assert seen and seen[0] is not original  # wrapped while the original was watched
    assert torch.Tensor.backward is original


def test_progress_is_reported_per_run(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[Trial] = []
    gw.repair(_tiny_sigmoid(), _tiny_task([], lambda m: 0.0), steps=40, diagnosis=VANISHING, progress=seen.append)
    assert [t.name for t in seen][:2] == ["original", "original (repeat, another seed)"]
    gw.repair(_tiny_sigmoid(), _tiny_task([], lambda m: 0.0), steps=40, diagnosis=VANISHING)
    out = capsys.readouterr().out
    assert out.count("repair: ") == len(seen)


def test_a_candidate_that_raises_is_a_failed_candidate() -> None:
    def score(model: nn.Module) -> float:
        if any(isinstance(m, nn.ReLU) for m in model.modules()):
            raise RuntimeError("this pipeline cannot export ReLU")
        return 0.0

    result = gw.repair(_tiny_sigmoid(), _tiny_task([], score), steps=40, diagnosis=VANISHING, progress=False)
    failed = [t for t in result.trials if t.error]
    assert failed and "cannot export ReLU" in failed[0].error and failed[0].score == -math.inf
    assert not any(t.kept for t in failed)


def test_bad_arguments() -> None:
    model, train = _tiny_sigmoid(), _tiny_task([], lambda m: 0.0)
    with pytest.raises(GradwatchValueError, match="steps must be"):
        gw.repair(model, train, steps=0)
    with pytest.raises(GradwatchValueError, match="budget must be at least 1.0"):
        gw.repair(model, train, steps=10, budget=0.5)
    with pytest.raises(GradwatchValueError, match="trial_steps"):
        gw.repair(model, train, steps=10, trial_steps=11)
    with pytest.raises(GradwatchTypeError, match="train_fn must be a callable"):
        gw.repair(model, "train", steps=10)  # type: ignore[arg-type]
    with pytest.raises(GradwatchTypeError, match="must return a number"):
        gw.repair(model, lambda m, a, s: "good", steps=10, progress=False)  # type: ignore[arg-type, return-value]


def test_a_fix_that_shows_only_after_a_plateau_is_confirmed_in_the_second_round() -> None:
    # A metric that only moves once a ReLU model has trained 20 steps: in the first round
    # (s = 5) no candidate can pull ahead, so the diagnosis's own pick leads and is trained
    # on. The second round has what the first left: 150 - 100 (the kept run) - 5 x 5
    # (original, repeat, three other candidates) - 2 x 5 (the lr axis) = 15 steps for the
    # original to catch up, so the leader reaches 5 + 15 = 20.
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)

    def train(model: nn.Module, advice: dict[str, Any], steps: int) -> float:
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(steps):
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.trained = getattr(model, "trained", 0) + steps  # type: ignore[assignment]
        relu = any(isinstance(m, nn.ReLU) for m in model.modules())
        return 1.0 if relu and model.trained >= 20 else 0.0

    result = gw.repair(_tiny_sigmoid(), train, steps=100, diagnosis=VANISHING, progress=False)
    names = [t.name for t in result.trials]
    assert "original, continued" in names and "activations+init, continued" in names
    assert result.improved and result.trials[-1].kept and result.trials[-1].name == "activations+init, continued"
    assert result.final_score == 1.0
    assert result.steps_used <= 150


def test_a_healthy_looking_original_is_watched_on_at_no_extra_cost() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g)
    log: list[int] = []

    def train(model: nn.Module, advice: dict[str, Any], steps: int) -> float:
        log.append(steps)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(steps):
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return -float(nn.functional.mse_loss(model(x), y))

    torch.manual_seed(0)
    healthy = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    result = gw.repair(healthy, train, steps=200, trial_steps=10, progress=False)
    assert result.diagnosis.healthy and not result.improved
    assert [t.name for t in result.trials][:2] == ["original", "original, watched on"]
    watched = sum(t.steps for t in result.trials)
    assert result.timeline is not None and len(result.timeline.loss()[0]) == watched > 10
    assert sum(log) == result.steps_used == 200, "watching a healthy original on costs nothing extra"


def test_an_architectural_candidate_is_also_tried_at_larger_learning_rates() -> None:
    seen: list[tuple[int, float]] = []
    inner = _tiny_task([], lambda m: 0.5)

    def train(model: nn.Module, advice: dict[str, Any], steps: int) -> float:
        seen.append((steps, advice.get("lr_scale", 1.0)))
        return inner(model, advice, steps)

    result = gw.repair(_tiny_sigmoid(), train, steps=100, diagnosis=VANISHING, progress=False)
    by_name = {t.name: t for t in result.trials}
    # the scores tie, so the chooser's own pick (it swaps the activations) gets the axis
    assert by_name["activations+init @ lr x3"].lr_factor == 3.0
    assert by_name["activations+init @ lr x3"].lr_scale == 3.0
    assert by_name["activations+init @ lr x10"].lr_scale == 10.0
    assert [t.name for t in result.trials].index("activations+init @ lr x3") > [t.name for t in result.trials].index(
        "residual"
    ), "the axis follows the screening that prunes it"
    assert (5, 3.0) in seen and (5, 10.0) in seen, "train_fn was handed the scaled rate"
    assert not any(t.name.startswith("init @") for t in result.trials), "re-drawn weights keep the recipe's rate"
    assert sum(n for n, _ in seen) == result.steps_used <= result.budget_steps == 150
    text = str(result)
    for f in ("3", "10"):  # the table's lr column shows the rate each run trained at
        assert re.search(rf"activations\+init @ lr x{f} +x{f} +5 +0\.5 ", text), text
    assert "learning-rate axis: 'activations+init'" in text and "it competes at x1" in text  # a tie: the advised rate
    plain = gw.repair(_tiny_sigmoid(), _tiny_task([], lambda m: 0.5), steps=100, diagnosis=VANISHING,
                      lr_factors=(), progress=False)
    assert not any("@ lr" in t.name for t in plain.trials)


def _halfway_task() -> Any:
    """Full-batch gradient descent on y = 2 x_0; the score is 1 once the MSE is below 1.5 (half its start)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = 2.0 * x[:, :1]

    def mse_after(model: nn.Module, advice: dict[str, Any], steps: int, lr: float = 0.01) -> float:
        opt = torch.optim.SGD(model.parameters(), lr=lr * advice.get("lr_scale", 1.0))
        for _ in range(steps):
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return float(nn.functional.mse_loss(model(x), y))

    return mse_after


def test_a_fix_that_works_only_at_a_larger_learning_rate_is_found() -> None:
    # Plain gradient descent at 0.003: within the 10-step screen only the ReLU fix at x10
    # gets the fit halfway; the rate must be measured, and confirmed at length, to be kept.
    mse_after = _halfway_task()
    result = gw.repair(
        _tiny_sigmoid(), lambda m, a, n: float(mse_after(m, a, n, lr=0.003) < 1.5), steps=200, diagnosis=VANISHING,
        progress=False,
    )
    assert result.improved and result.fix is not None and result.final_score == 1.0
    kept = next(t for t in result.trials if t.kept)
    assert kept.name == "activations+init @ lr x10, continued" and result.advice["lr_scale"] == 10.0
    assert "lr_scale" in result.fix.advice and "axis" in result.fix.advice["why"]["lr_scale"]
    # no candidate reached the threshold at its advised rate, nor at x3: the rate made the difference
    assert all(t.score == 0.0 for t in result.trials if "x10" not in t.name and not t.name.startswith("original"))
    # independently: the kept (untrained) fix, trained s steps at the recipe's rate and at the kept one
    s = result.trials[0].steps
    assert mse_after(copy.deepcopy(result.fix.model), {}, s, lr=0.003) >= 1.5
    assert mse_after(copy.deepcopy(result.fix.model), {"lr_scale": 3.0}, s, lr=0.003) >= 1.5
    assert mse_after(copy.deepcopy(result.fix.model), result.advice, s, lr=0.003) < 1.5
    assert "train with lr_scale = 10.0" in str(result)


def test_a_first_step_up_that_makes_things_worse_turns_the_axis_down() -> None:
    # At lr 1.0 every fix diverges or blows up; the best-screened architectural one gets
    # worse at x3 still, so the axis turns around and tries x1/3.
    mse_after = _halfway_task()

    def train(model: nn.Module, advice: dict[str, Any], steps: int) -> float:
        mse = mse_after(model, advice, steps, lr=1.0)
        return -mse if math.isfinite(mse) else math.nan

    result = gw.repair(_tiny_sigmoid(), train, steps=200, diagnosis=VANISHING, progress=False)
    axis = [t for t in result.trials if "@ lr" in t.name and not t.name.endswith("continued")]
    assert [t.lr_factor for t in axis] == [3.0, pytest.approx(1 / 3)]
    explored = next(t for t in result.trials if t.name == axis[0].name.split(" @ ")[0])
    assert not axis[0].score >= explored.score - 0.02, "x3 was worse than x1"
    kept = next(t for t in result.trials if t.kept)
    # a rate other than the advised one is confirmed at length before it is kept
    assert kept.name == f"{axis[1].name}, continued" and kept.lr_factor == pytest.approx(1 / 3)
    assert result.advice["lr_scale"] == pytest.approx(1 / 3, rel=1e-5)
    assert result.final_score is not None and result.final_score > max(t.score for t in result.trials[:2])


def test_bad_lr_factors() -> None:
    for bad in ((1.0,), (0.0, 3.0), (float("nan"),), "3", (True,)):
        with pytest.raises(GradwatchValueError, match="lr_factors must be"):
            gw.repair(_tiny_sigmoid(), _tiny_task([], lambda m: 0.0), steps=10, lr_factors=bad)  # type: ignore[arg-type]


def test_a_rate_that_loses_ground_at_length_falls_back_to_the_advised_rate() -> None:
    # The recipe warms its rate up over 80 steps (resumed from the model's own step count),
    # so a larger factor looks best after 10 steps and crosses the edge of stability soon
    # after: the axis's leader must be confirmed at length, and falls back when it loses ground.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = 2.0 * x[:, :1]

    def train(model: nn.Module, advice: dict[str, Any], steps: int) -> float:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(steps):
            done = getattr(model, "trained", 0)
            model.trained = done + 1  # type: ignore[assignment]
            for group in opt.param_groups:
                group["lr"] = 0.05 * advice.get("lr_scale", 1.0) * min(1.0, (done + 1) / 80)
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            mse = float(nn.functional.mse_loss(model(x), y))
        return -mse if math.isfinite(mse) else math.nan

    result = gw.repair(_tiny_sigmoid(), train, steps=200, diagnosis=VANISHING, progress=False)
    names = [t.name for t in result.trials]
    best = max((t for t in result.trials if "@ lr" in t.name), key=lambda t: t.score)
    advised = next(t for t in result.trials if t.name == best.name.split(" @ ")[0])
    assert best.score > advised.score + 0.02, "a larger rate led the short run"
    continued = result.trials[names.index(f"{best.name}, continued")]
    assert continued.score < best.score - result.margin, "and lost ground with more steps"
    assert advised.kept and result.advice.get("lr_scale", 1.0) == 1.0
    assert "too large to hold" in str(result)
    assert result.steps_used <= result.budget_steps
    # independently: trained for a full run from scratch, the advised rate holds and the leader's does not
    assert result.fix is not None
    at = {f: train(copy.deepcopy(result.fix.model), {"lr_scale": f}, 200) for f in (1.0, best.lr_factor)}
    assert at[1.0] > -0.05 > at[best.lr_factor]


def test_a_best_rate_next_to_a_worse_larger_one_is_at_the_edge_and_backs_off() -> None:
    # At 0.01, x3 gets the fit halfway in the 10-step screen and x10 overshoots: x3 sits
    # next to a rate that did worse, so the advised rate stands for the candidate.
    mse_after = _halfway_task()
    result = gw.repair(
        _tiny_sigmoid(), lambda m, a, n: float(mse_after(m, a, n, lr=0.01) < 1.5), steps=200, diagnosis=VANISHING,
        progress=False,
    )
    by_name = {t.name: t for t in result.trials}
    assert by_name["activations+init @ lr x3"].score == 1.0 and by_name["activations+init @ lr x10"].score == 0.0
    assert by_name["activations+init"].score == 0.0
    assert "it competes at x1 (x3 is at the edge: a larger rate did worse)" in str(result)
    assert all(t.lr_factor == 1.0 for t in result.trials if "continued" in t.name)
    # independently: the kept fix reaches the mark at x3 in s steps, not at x1 or x10
    assert result.fix is not None
    s = result.trials[0].steps
    reached = {f: mse_after(copy.deepcopy(result.fix.model), {"lr_scale": f}, s, lr=0.01) < 1.5 for f in (1.0, 3.0, 10.0)}
    assert reached == {1.0: False, 3.0: True, 10.0: False}


def test_a_larger_rate_behind_the_best_by_less_than_the_margin_is_not_an_edge() -> None:
    from gradwatch.fix._ledger import Trial
    from gradwatch.fix._rounds import rate as _rate

    def trials(*scores: float) -> list[Trial]:
        return [Trial("gru", [], {}, 15, sc, 0.0, lr_factor=f) for sc, f in zip(scores, (1.0, 3.0, 10.0), strict=True)]

    # the tanh RNN made a GRU on the adding problem: x10 0.03 behind x3, chance moved the original by 0.1
    assert _rate(trials(-0.87, -0.16, -0.19), [0, 1, 2], 0.02, margin=0.2) == (1, "")
    # the same scores where chance moves a score by less than 0.03: x3 is at the edge, x1 stands
    chosen, why = _rate(trials(-0.87, -0.16, -0.19), [0, 1, 2], 0.02, margin=0.02)
    assert chosen == 0 and "edge" in why
    # the custom 14-layer sigmoid net made ReLU (margin 0.02): x3 diverged in a full run
    assert _rate(trials(0.14, 0.24, 0.19), [0, 1, 2], 0.02, margin=0.02)[0] == 0


def test_repairs_watch_reads_a_closure_steps_own_gradients() -> None:
    from gradwatch.fix._watching import Watching as _Watching

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(4)]
    expected: list[float] = []
    with _Watching(model, diagnose=True, every=1) as watching:
        for x, y in data:

            def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                expected.append(float(model[0].weight.grad.norm() ** 2 + model[0].bias.grad.norm() ** 2) ** 0.5)
                return loss

            opt.step(closure)
    assert watching.timeline is not None
    np.testing.assert_allclose(watching.timeline.layer_metric("grad_norm")[:, 0], expected, rtol=1e-5)


def test_when_the_original_fails_the_diagnosis_pick_is_confirmed_against_the_leader() -> None:
    """The original blows up (no step-size advice: NaN), so every finite candidate is ahead of
    it. The step size alone starts ahead (0.1 at once) of the diagnosis's own pick (ReLUs and
    the step size), which only scores once it has trained 20 steps; a short run would keep the
    step size alone. Round 2 trains both on, and the pick wins there."""
    fit = _tiny_task([], lambda m: 0.0)  # the training; the score is read below

    def train(model: nn.Module, advice: dict[str, Any], steps: int) -> float:
        fit(model, advice, steps)
        model.trained = getattr(model, "trained", 0) + steps  # type: ignore[assignment]
        if "lr_scale" not in advice:
            return math.nan  # the recipe's own step blows up
        relu = any(isinstance(m, nn.ReLU) for m in model.modules())
        return 1.0 if relu and model.trained >= 20 else (0.0 if relu else 0.1)

    blown = Diagnosis(
        findings=[
            Finding("nonfinite_gradient", "error", [], 3, {}, "label"),
            Finding("vanishing_gradient", "error", [], 0, {}, "label"),
        ]
    )
    result = gw.repair(_tiny_sigmoid(), train, steps=100, diagnosis=blown, progress=False)
    names = [t.name for t in result.trials]
    own = names[2]  # after the original and its repeat: the diagnosis's own pick
    assert "lr" in own and "activations" in own
    assert f"{own}, continued" in " | ".join(names) and "lr, continued" in names
    assert result.improved and result.trials[-2].kept and result.final_score == 1.0
    assert result.steps_used <= 150
    # the same start with a pick that never catches up: the leader is kept, no worse off
    def stuck(model: nn.Module, advice: dict[str, Any], steps: int) -> float:
        score = train(model, advice, steps)
        return 0.0 if score == 1.0 else score

    result = gw.repair(_tiny_sigmoid(), stuck, steps=100, diagnosis=blown, progress=False)
    kept = [t for t in result.trials if t.kept]
    assert len(kept) == 1 and kept[0].name == "lr, continued" and result.final_score == 0.1


def test_a_non_finite_score_the_watcher_did_not_see_is_a_divergence() -> None:
    """A train_fn that stops at the first non-finite loss, before its backward, hides the
    blow-up from the watcher. Its score says the run failed: repair must not call the
    original healthy (it used to, and try nothing)."""
    data = digits()

    def train(model: nn.Module, advice: dict[str, Any], steps: int) -> float:
        opt = torch.optim.SGD(model.parameters(), lr=50.0 * advice.get("lr_scale", 1.0), momentum=0.9)
        for x, y in batches(data.x_train, data.y_train, 64, steps, seed=0):
            loss = nn.functional.cross_entropy(model(x), y)
            if not torch.isfinite(loss):
                return math.nan  # common practice: give up at the first NaN
            opt.zero_grad()
            loss.backward()
            opt.step()
        return accuracy(model, data.x_test, data.y_test)

    model = mlp(64, 10, depth=3, width=32, activation="relu", init="he", seed=0)
    result = gw.repair(model, train, steps=100, progress=False)
    (f,) = result.diagnosis.by_kind("diverging_loss")
    assert f.severity == "error" and f.evidence["score_nonfinite"] == 1.0
    assert "non-finite score" in f.message
    assert len(result.trials) > 2 and "the original is healthy" not in str(result)
    # the step size is what it tries: kept against a failed original
    assert result.improved and result.advice["lr_scale"] <= 0.1
