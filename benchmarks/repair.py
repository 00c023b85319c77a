"""Does gradwatch's fix make faulty runs train? `fix`, `repair` and a random-repair baseline, side by side.

For each faulty run (a model + a training recipe that fails for a known gradient reason):

- original: one full training run, watched (gw.watch with the optimizer), scored;
- fix:      gw.fix(model, diagnosis, timeline=..., example_input=...) then one full run
            with the advice applied;
- repair:   gw.repair(model, train_fn, steps=N) — its cost in steps and in wall time
            against one full run of the original;
- random:   the expected outcome of one transform picked at random (AutoTrainer's way):
            every one of the six remedies is applied alone and trained, and the share
            that trains is averaged.

A run is *healthy* when it reaches its target (digits: test accuracy >= 0.8 — a 3-layer
net reaches over 0.9; adding problem: MSE <= 0.05 against 0.167 for always answering 1).

The diagnosis comes from gradwatch's detectors when any are registered
(`gradwatch.detect.DETECTORS`); until they land, from each run's label (the findings
its mechanism produces), so the figures measure the fixer given a correct diagnosis.

    PYTHONPATH=src python benchmarks/repair.py [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

import gradwatch as gw
from gradwatch.detect import DETECTORS
from gradwatch.fix import activations, init, norm, recurrent, residual
from gradwatch.lab.data import accuracy, batches, digits
from gradwatch.lab.models import mlp
from gradwatch.types import Diagnosis, Finding

torch.set_num_threads(1)

Trainer = Callable[[nn.Module, dict[str, Any], int], float]


@dataclass
class Case:
    name: str
    make: Callable[[], nn.Module]
    train: Trainer
    steps: int
    healthy: float  # a score at or above this is a healthy result
    label: list[str]  # the finding kinds its mechanism produces
    mechanism: str


# -- data and recipes ---------------------------------------------------------------------------

_DIGITS = digits()


def _digits_trainer(opt: str, lr: float, *, image: bool = False) -> Trainer:
    x_train, x_test = _DIGITS.x_train, _DIGITS.x_test
    if image:
        x_train, x_test = x_train.view(-1, 1, 8, 8), x_test.view(-1, 1, 8, 8)

    def train(model: nn.Module, advice: dict[str, Any], steps: int) -> float:
        rate = lr * float(advice.get("lr_scale", 1.0))
        o: torch.optim.Optimizer = (
            torch.optim.SGD(model.parameters(), lr=rate, momentum=0.9)
            if opt == "sgd_momentum"
            else torch.optim.SGD(model.parameters(), lr=rate)
        )
        seed = int(torch.randint(0, 2**31 - 1, ()))
        model.train()
        for x, y in batches(x_train, _DIGITS.y_train, 64, steps, seed=seed):
            loss = nn.functional.cross_entropy(model(x), y)
            o.zero_grad()
            loss.backward()
            if "clip_grad_norm" in advice:
                nn.utils.clip_grad_norm_(model.parameters(), advice["clip_grad_norm"])
            o.step()
        acc = accuracy(model, x_test, _DIGITS.y_test)
        return acc if all(torch.isfinite(p).all() for p in model.parameters()) else 0.0

    return train


def adding_batch(n: int, t: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The adding problem: sum the two values marked in a sequence of length t."""
    values = torch.rand(n, t, generator=g)
    marks = torch.zeros(n, t)
    first = torch.randint(0, t // 2, (n,), generator=g)
    second = torch.randint(t // 2, t, (n,), generator=g)
    marks[torch.arange(n), first] = 1.0
    marks[torch.arange(n), second] = 1.0
    return torch.stack([values, marks], -1), (values * marks).sum(1)


class AddingNet(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.rnn = nn.RNN(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _adding_trainer(t: int) -> Trainer:
    g_test = torch.Generator().manual_seed(1234)
    x_test, y_test = adding_batch(1000, t, g_test)

    def train(model: nn.Module, advice: dict[str, Any], steps: int) -> float:
        o = torch.optim.Adam(model.parameters(), lr=1e-3 * float(advice.get("lr_scale", 1.0)))
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
        model.train()
        for _ in range(steps):
            x, y = adding_batch(64, t, g)
            loss = nn.functional.mse_loss(model(x), y)
            o.zero_grad()
            loss.backward()
            if "clip_grad_norm" in advice:
                nn.utils.clip_grad_norm_(model.parameters(), advice["clip_grad_norm"])
            o.step()
        model.eval()
        with torch.no_grad():
            mse = float(nn.functional.mse_loss(model(x_test), y_test))
        return -mse if math.isfinite(mse) else -math.inf

    return train


# -- the faulty models -----------------------------------------------------------------------------


class DeepSigmoidNet(nn.Module):
    """A custom (non-Sequential) deep sigmoid MLP: layers in a ModuleList, activations as attributes."""

    def __init__(self, depth: int = 14, width: int = 64) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(64 if i == 0 else width, width) for i in range(depth)])
        self.acts = nn.ModuleList([nn.Sigmoid() for _ in range(depth)])
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, act in zip(self.layers, self.acts, strict=True):
            x = act(layer(x))
        return self.head(x)


def dead_bias_mlp() -> nn.Module:
    model = mlp(64, 10, depth=6, width=64, activation="relu", init="he", seed=0)
    with torch.no_grad():
        for m in list(model)[:-1]:
            if isinstance(m, nn.Linear):
                m.bias.fill_(-3.0)  # far below the pre-activation's spread: every unit starts off
    return model


def sigmoid_cnn() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(1, 16, 3, padding=1), nn.Sigmoid()]
    for _ in range(7):
        layers += [nn.Conv2d(16, 16, 3, padding=1), nn.Sigmoid()]
    layers += [nn.Flatten(), nn.Linear(16 * 8 * 8, 10)]
    return nn.Sequential(*layers)


def _seeded(f: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return f()

    return make


def cases(quick: bool) -> list[Case]:
    n = 150 if quick else 300
    sgd = _digits_trainer("sgd_momentum", 0.01)
    return [
        Case("sigmoid MLP, 16 layers", lambda: mlp(64, 10, depth=16, width=64, activation="sigmoid", seed=0),
             sgd, n, 0.8, ["vanishing_gradient", "flat_loss"], "saturating activations"),
        Case("tanh MLP, 20 layers, default init", lambda: mlp(64, 10, depth=20, width=64, activation="tanh", seed=0),
             sgd, n, 0.8, ["vanishing_gradient", "flat_loss"], "tanh at sigma_w^2 = 1/3: chi ~ 1/3 per layer"),
        Case("ReLU MLP, 20 layers, default init", lambda: mlp(64, 10, depth=20, width=64, activation="relu", seed=0),
             sgd, n, 0.8, ["vanishing_gradient", "flat_loss"], "ReLU at sigma_w^2 = 1/3: chi = 1/6 per layer"),
        Case("ReLU MLP, 20 layers, He, SGD lr 0.1", lambda: mlp(64, 10, depth=20, width=64, activation="relu", init="he", seed=0),
             _digits_trainer("sgd_momentum", 0.1), n, 0.8, ["nonfinite_gradient", "diverging_loss"], "step size too large"),
        Case("ReLU MLP, biases -3", dead_bias_mlp, sgd, n, 0.8, ["dead_units", "flat_loss"], "biases switch every ReLU off"),
        Case("sigmoid CNN, 8 conv layers", sigmoid_cnn, _digits_trainer("sgd_momentum", 0.01, image=True),
             n, 0.8, ["vanishing_gradient", "flat_loss"], "saturating activations (conv)"),
        Case("custom sigmoid net, 14 layers", _seeded(DeepSigmoidNet), sgd, n, 0.8,
             ["vanishing_gradient", "flat_loss"], "saturating activations (attributes, not Sequential)"),
        Case("tanh RNN, adding problem T=50", _seeded(AddingNet), _adding_trainer(50), 600 if quick else 1200,
             -0.05, ["temporal_vanishing", "flat_loss"], "vanilla RNN over 50 steps"),
    ]


# -- the three ways to repair ----------------------------------------------------------------------


def labelled(case: Case) -> Diagnosis:
    return Diagnosis(
        findings=[Finding(k, "error", [], 0, {}, f"label: {case.mechanism}") for k in case.label],
        notes=["labelled diagnosis"],
    )


def watched_original(case: Case) -> tuple[float, float, Diagnosis, gw.Timeline, Any]:
    """One full watched run of the original: score, seconds, diagnosis, timeline, first input."""
    model = case.make()
    seen: list[Any] = []
    hook = model.register_forward_pre_hook(lambda m, a: seen.append(a[0]) if not seen else None)
    torch.manual_seed(0)
    t0 = time.process_time()
    # The recipe builds its own optimizer, so the watcher joins in the global step hook.
    with gw.watch(model) as w:
        handle = register_optimizer_step_pre_hook(lambda o, a, k: w.step())
        try:
            score = case.train(model, {}, case.steps)
        finally:
            handle.remove()
            hook.remove()
    seconds = time.process_time() - t0
    diag = w.diagnose() if DETECTORS else labelled(case)
    return score, seconds, diag, w.timeline, seen[0] if seen else None


def full_run(case: Case, model: nn.Module, advice: dict[str, Any]) -> tuple[float, float]:
    """Score and CPU seconds of one full training run.

    CPU time of this (single-threaded) process, not wall time: on a machine shared with
    other work, wall time measures the neighbours; CPU time is what the run itself costs,
    and equals its wall time on an idle machine.
    """
    torch.manual_seed(0)
    t0 = time.process_time()
    score = case.train(model, advice, case.steps)
    return score, time.process_time() - t0


RANDOM_CHOICES: dict[str, Callable[[nn.Module], tuple[nn.Module, dict[str, Any]]]] = {
    "activations": lambda m: (activations.transform(m)[0], {}),
    "init": lambda m: (init.transform(m)[0], {}),
    "norm": lambda m: (norm.transform(m)[0], {}),
    "residual": lambda m: (residual.transform(m)[0], {}),
    "recurrent": lambda m: (recurrent.transform(m)[0], {}),
    "lr_scale 0.1": lambda m: (copy.deepcopy(m), {"lr_scale": 0.1}),
}


def _warm_up() -> None:
    """One small repair first, so one-off costs (lazy imports, first kernels) land on no case."""
    case = cases(quick=True)[0]
    gw.repair(case.make(), case.train, steps=20, diagnosis=labelled(case), progress=False)
    full_run(case, case.make(), {})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (for a smoke test)")
    ap.add_argument("--only", nargs="*", default=None, help="run only cases whose name contains one of these")
    args = ap.parse_args(argv)
    todo = [c for c in cases(args.quick) if not args.only or any(s in c.name for s in args.only)]
    _warm_up()
    source = "gradwatch's detectors" if DETECTORS else "each run's label (no detectors registered yet)"
    print(f"diagnosis from: {source}\n")
    head = (
        f"{'faulty run':<38} {'original':>9} {'fix':>9} {'repair':>9} {'steps':>6} {'time':>6} "
        f"{'search':>6} {'random':>7}"
    )
    print(head)
    print("-" * len(head))
    totals = {"original": 0, "fix": 0, "repair": 0, "random": 0.0}
    walls: list[float] = []
    searches: list[float] = []
    costs: list[float] = []
    details: list[str] = []
    for case in todo:
        target = case.healthy

        def ok(score: float, target: float = target) -> bool:
            return score >= target

        s0, _t0, diag, timeline, example = watched_original(case)
        # the wall-time reference: one unwatched run of the original (the faster of two,
        # so a first run's warm-up does not flatter the ratio)
        base_t = min(full_run(case, case.make(), {})[1] for _ in range(2))
        result = gw.fix(case.make(), diag, timeline=timeline, example_input=example)
        numeric = {k: v for k, v in result.advice.items() if k in ("lr_scale", "clip_grad_norm")}
        s_fix, _ = full_run(case, result.model, numeric)
        torch.manual_seed(0)
        t_rep = time.process_time()
        rep = gw.repair(
            case.make(), case.train, steps=case.steps, diagnosis=None if DETECTORS else labelled(case),
            progress=False,
        )
        t_rep = time.process_time() - t_rep
        s_rep = rep.final_score if rep.final_score is not None else max(t.score for t in rep.trials)
        # what one full run of the model repair kept costs: the part of repair's wall time
        # that is the repaired model's own (dearer or cheaper) steps, not gradwatch's search
        kept_model = rep.fix.model if rep.fix is not None else case.make()
        kept_t = full_run(case, copy.deepcopy(kept_model), dict(rep.advice))[1]
        rand = []
        for choice, f in RANDOM_CHOICES.items():
            torch.manual_seed(0)
            m, adv = f(case.make())
            s_r, _ = full_run(case, m, adv)
            rand.append((choice, s_r))
        share = sum(ok(s) for _, s in rand) / len(rand)
        totals["original"] += ok(s0)
        totals["fix"] += ok(s_fix)
        totals["repair"] += ok(s_rep)
        totals["random"] += share
        walls.append(t_rep / base_t)
        searches.append((t_rep - kept_t) / base_t)
        costs.append(rep.cost)
        print(
            f"{case.name:<38} {_mark(s0, ok):>9} {_mark(s_fix, ok):>9} {_mark(s_rep, ok):>9} "
            f"{rep.cost:>5.2f}x {t_rep / base_t:>5.2f}x {(t_rep - kept_t) / base_t:>5.2f}x {share:>7.2f}",
            flush=True,
        )
        kept = next((t.name for t in rep.trials if t.kept), "original")
        details.append(
            f"{case.name}: fix = {_summary(result)}; repair kept {kept}; random: "
            + ", ".join(f"{c} {s:.3g}" for c, s in rand)
        )
    n = len(todo)
    print("-" * len(head))
    print(
        f"{'share healthy (' + str(n) + ' runs)':<38} {totals['original'] / n:>9.2f} {totals['fix'] / n:>9.2f} "
        f"{totals['repair'] / n:>9.2f} {max(costs):>5.2f}x {sum(walls) / n:>5.2f}x "
        f"{sum(searches) / n:>5.2f}x {totals['random'] / n:>7.2f}"
    )
    print(
        "  steps  = steps repair trained / steps of one run (max over runs)\n"
        "  time   = repair's time / one unwatched run of the original (mean; CPU time of this\n"
        "           single-threaded process, which is wall time on an idle machine)\n"
        "  search = (repair's time - one run of the model it kept) / one run of the original (mean):\n"
        "           the time spent searching, beyond the kept model's own training"
    )
    print()
    for d in details:
        print(d)
    return 0


def _mark(score: float, ok: Callable[[float], bool]) -> str:
    return ("ok " if ok(score) else "no ") + (f"{score:.3g}" if math.isfinite(score) else "nan")


def _summary(result: gw.FixResult) -> str:
    kinds: dict[str, int] = {}
    for c in result.changes:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    parts = [f"{k} x{v}" for k, v in kinds.items()]
    parts += [f"{k}={v}" for k, v in result.advice.items() if k in ("lr_scale", "clip_grad_norm")]
    if "manual" in result.advice:
        parts.append(f"{len(result.advice['manual'])} manual")
    return ", ".join(parts) or "no change"


if __name__ == "__main__":
    sys.exit(main())
