from __future__ import annotations

import copy
import math
from typing import Any

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
    # A metric that only moves once a ReLU model has trained 25 steps: in the first round
    # no candidate can pull ahead, so the diagnosis's own pick leads and is trained on.
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
        return 1.0 if relu and model.trained >= 25 else 0.0

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
