"""Does gradwatch's fix make faulty runs train? `fix`, `repair` and a random-repair baseline, side by side.

The faulty runs are those of Part 3's labelled suite (`benchmarks/detection/suite.py`):
each model and recipe is read from the suite's own run closures, so they are the same
runs the detectors are judged on. `--own` uses this file's own smaller set instead.

For each faulty run:

- original: the suite's own recording of the run (`gw.watch(..., log=...)`, every=10);
            its diagnosis (`gw.load(log).diagnose()`) and timeline feed `fix`;
- fix:      gw.fix(model, diagnosis, timeline=..., example_input=first batch), then one
            full run with the advice applied;
- repair:   gw.repair(model, train_fn, steps=N) — diagnosing the run itself from its own
            first short run, no diagnosis given — its cost in steps and in time against
            one full run of the original;
- random:   the expected outcome of one remedy picked at random (AutoTrainer's way):
            each of the six remedies is applied alone and trained, and the share that
            trains is averaged.

A run is *healthy* when it meets the suite's own "trained" criterion (digits: test
accuracy >= 0.5; recall: >= 0.6; adding problem: test MSE < 0.05). A second bar, *at a
healthy net's level*, asks for the score a healthy net of the same shape reaches (digits
0.8, recall 0.9, adding problem MSE < 0.01); the summary reports both.

    PYTHONPATH=src python benchmarks/repair.py [--quick] [--own] [--only NAME ...] [--grid | --final | --time K]

`--grid` asks instead whether a run is in reach at all: fix's model and each remedy alone,
trained at learning-rate scales 1e-3 .. 30. `--final` applies `fix` to the model each
diverged run left behind (inf/NaN weights), as its user would, beside a fresh copy.
`--time K` measures repair's time alone, every run K times longer, so that gradwatch's
fixed costs are amortised as on a run of minutes.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

import gradwatch as gw
from gradwatch.detect import DETECTORS
from gradwatch.fix import activations, init, norm, recurrent, residual
from gradwatch.lab.data import accuracy, adding_problem, batches, digits
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
    # the suite's own recorded run: () -> (score, diagnosis, timeline); None for --own cases
    recorded: Callable[[], tuple[float, Diagnosis, gw.Timeline]] | None = None
    example: Any = None  # the first batch, for gw.fix
    reach: str = ""  # why no model surgery or training advice can fix it, if so
    beyond: str = ""  # why nothing fix can do trains it under its own recipe (see --grid), if so
    bar: float | None = None  # the score a healthy net of this shape reaches (`healthy` if None)


# -- Part 3's suite, read from its run closures -------------------------------------------------

SUITE = Path(__file__).resolve().parent / "detection"

#: Faulty runs of the suite whose cause is not in the model's gradients, so no surgery or
#: step-size advice can repair them; they are counted, and reported apart.
OUT_OF_REACH = {
    "mlp-zero-input-sgd": "a data bug (inputs zeroed)",
    "mlp-detached-optimizer": "a code bug (the optimizer holds copies of the parameters)",
    "mlp-shuffled-labels-sgd": "random labels: nothing to learn",
    "mlp-where-sqrt-nan": "a code bug (NaN from the discarded branch of torch.where)",
}
#: Faulty runs whose cause is in the gradients but that nothing `fix` can do trains under
#: the run's own recipe: no cell of `--grid` (fix's model and each remedy alone, at
#: learning-rate scales 1e-3 .. 30) reaches a healthy score. Reported apart, as a third line.
#: (Empty since `init` scales a recurrent layer's input weights to the data: the grid's
#: re-initialised LSTM trains `lstm-adding-sgd-lr` at x0.001 and x0.01, where it had been
#: listed here — no cell trained it before.)
BEYOND_RECIPE: dict[str, str] = {}


def suite_cases(quick: bool) -> list[Case]:
    """The suite's faulty runs as Cases: model factory, train_fn and the suite's own recording."""
    sys.path.insert(0, str(SUITE))
    import suite as S
    from tasks import digits_split, sequence_task

    out: list[Case] = []
    for spec in S.specs():
        if spec.healthy:
            continue
        env = inspect.getclosurevars(spec.train).nonlocals
        if not {"make", "make_opt", "steps"} <= env.keys():
            continue  # a special loop (AMP, embedding): none of the faulty runs
        steps = int(env["steps"]) // (2 if quick else 1)
        seed = S.SEED if env["seed"] is None else int(env["seed"])  # None: the suite's seed
        if "task_name" in env:
            case = _suite_seq(spec, env, steps, seed, sequence_task)
        else:
            case = _suite_digits(spec, env, steps, seed, digits_split)

        def recorded(spec: Any = spec) -> tuple[float, Diagnosis, gw.Timeline]:
            with tempfile.TemporaryDirectory() as tmp:
                log = Path(tmp) / "run.jsonl"
                outcome = spec.train(log, 10)
                run = gw.load(log)
                value = -outcome.value if outcome.metric == "test MSE" else outcome.value
                return value, run.diagnose(), run.timeline

        case.recorded = recorded
        case.reach = OUT_OF_REACH.get(spec.name, "")
        case.beyond = BEYOND_RECIPE.get(spec.name, "")
        out.append(case)
    return out


def _scaled(opt: torch.optim.Optimizer, advice: dict[str, Any]) -> torch.optim.Optimizer:
    for group in opt.param_groups:
        group["lr"] = group["lr"] * float(advice.get("lr_scale", 1.0))
    return opt


def _suite_digits(spec: Any, env: dict[str, Any], steps: int, seed: int, digits_split: Any) -> Case:
    split = digits_split(seed)

    def shape(x: torch.Tensor) -> torch.Tensor:
        if env["transform"] is not None:
            x = env["transform"](x)
        if env["image"]:
            x = x.view(-1, 1, 8, 8)
        if env["tokens"]:
            x = x.view(-1, 8, 8)
        return x

    x_test = split.x_test.view(-1, 1, 8, 8) if env["image"] else split.x_test
    x_test = x_test.view(-1, 8, 8) if env["tokens"] else x_test

    def train(model: nn.Module, advice: dict[str, Any], n: int) -> float:
        opt = _scaled(env["make_opt"](model), advice)
        run_seed = int(torch.randint(0, 2**31 - 1, ()))
        model.train()
        last = 0.0
        for x, y in batches(split.x_train, split.y_train, env["batch"], n, seed=run_seed):
            if env["labels"] is not None:
                y = env["labels"](y)
            loss = nn.functional.cross_entropy(model(shape(x)), y)
            opt.zero_grad()
            loss.backward()
            if "clip_grad_norm" in advice:
                nn.utils.clip_grad_norm_(model.parameters(), advice["clip_grad_norm"])
            opt.step()
            last = float(loss.detach())
        return accuracy(model, x_test, split.y_test) if math.isfinite(last) else 0.0

    def make() -> nn.Module:
        torch.manual_seed(seed)
        return env["make"]()

    first = next(iter(batches(split.x_train, split.y_train, env["batch"], 1, seed=seed)))[0]
    return Case(spec.name, make, train, steps, 0.5, sorted(str(k) for k in spec.labels), spec.story,
                example=shape(first), bar=0.8)


def _suite_seq(spec: Any, env: dict[str, Any], steps: int, seed: int, sequence_task: Any) -> Case:
    test = sequence_task(env["task_name"], env["length"], seed=seed)
    regression = test.kind == "regression"
    n_in = int(test.x_test.shape[-1])
    from tasks import RECALL_SYMBOLS

    n_out = 1 if regression else RECALL_SYMBOLS

    def train(model: nn.Module, advice: dict[str, Any], n: int) -> float:
        opt = _scaled(env["make_opt"](model), advice)
        task = sequence_task(env["task_name"], env["length"], seed=int(torch.randint(0, 2**31 - 1, ())))
        loss_fn = nn.functional.mse_loss if regression else nn.functional.cross_entropy
        clip = advice.get("clip_grad_norm", env["clip"])
        model.train()
        last = 0.0
        for _ in range(n):
            x, y = task.batch(env["batch"])
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            last = float(loss.detach())
        model.eval()
        with torch.no_grad():
            out = model(test.x_test)
        if not math.isfinite(last) or not torch.isfinite(out).all():
            return -math.inf if regression else 0.0
        if regression:
            return -float(nn.functional.mse_loss(out, test.y_test))
        return float((out.argmax(-1) == test.y_test).float().mean())

    def make() -> nn.Module:
        torch.manual_seed(seed)
        return env["make"](n_in, n_out)

    healthy, bar = (-0.05, -0.01) if regression else (0.6, 0.9)
    return Case(spec.name, make, train, steps, healthy, sorted(str(k) for k in spec.labels), spec.story,
                example=test.batch(env["batch"])[0], bar=bar)


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
    """The adding problem (`gradwatch.lab.data.adding_problem`), its targets flat for `AddingNet`."""
    x, y = adding_problem(n, t, g)
    return x, y.squeeze(1)


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
        # a label names the mechanism, not when it showed: the step is unknown (None)
        findings=[Finding(k, "error", [], None, {}, f"label: {case.mechanism}") for k in case.label],
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


#: Each remedy alone, given the example input `fix` gets (what a transform reads from a
#: forward pass: the activations that run, a sequence's length and input scale).
RANDOM_CHOICES: dict[str, Callable[[nn.Module, Any], tuple[nn.Module, dict[str, Any]]]] = {
    "activations": lambda m, x: (activations.transform(m, example_input=x)[0], {}),
    "init": lambda m, x: (init.transform(m, example_input=x)[0], {}),
    "norm": lambda m, x: (norm.transform(m, example_input=x)[0], {}),
    "residual": lambda m, x: (residual.transform(m, example_input=x)[0], {}),
    "recurrent": lambda m, x: (recurrent.transform(m, example_input=x)[0], {}),
    "lr_scale 0.1": lambda m, x: (copy.deepcopy(m), {"lr_scale": 0.1}),
}


def _warm_up() -> None:
    """One small repair first, so one-off costs (lazy imports, first kernels) land on no case."""
    case = cases(quick=True)[0]
    gw.repair(case.make(), case.train, steps=20, diagnosis=labelled(case), progress=False)
    full_run(case, case.make(), {})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="half-length runs (a smoke test)")
    ap.add_argument("--own", action="store_true", help="this file's own faulty runs, with labelled diagnoses")
    ap.add_argument("--only", nargs="*", default=None, help="run only cases whose name contains one of these")
    ap.add_argument(
        "--grid", action="store_true",
        help="instead: is a run in reach at all? fix's model, and each remedy alone, at learning-rate scales 1e-3..30",
    )
    ap.add_argument(
        "--final", action="store_true",
        help="instead: fix applied to the model as each run left it, for the runs that ended non-finite",
    )
    ap.add_argument(
        "--time", type=int, default=0, metavar="K",
        help="instead: repair's time against one run with every run K times longer (fixed costs amortised)",
    )
    args = ap.parse_args(argv)
    todo = cases(args.quick) if args.own else suite_cases(args.quick)
    todo = [c for c in todo if not args.only or any(s in c.name for s in args.only)]
    if args.grid:
        return grid(todo)
    if args.final:
        return from_final(todo)
    if args.time:
        return timed(todo, args.time)
    _warm_up()
    if args.own:
        print("faulty runs: this file's own set; diagnoses from each run's label\n")
    else:
        print(f"faulty runs: Part 3's labelled suite ({len(todo)} faulty runs); diagnoses by gradwatch's detectors\n")
    head = (
        f"{'faulty run':<28} {'original':>9} {'fix':>9} {'repair':>9} {'steps':>6} {'time':>6} "
        f"{'search':>6} {'random':>7}"
    )
    print(head)
    print("-" * len(head))
    rows: list[dict[str, Any]] = []
    details: list[str] = []
    for case in todo:
        target = case.healthy

        def ok(score: float, target: float = target) -> bool:
            return score >= target

        if case.recorded is not None:
            s0, diag, timeline = case.recorded()
            example = case.example
        else:
            s0, _t, _d, timeline, example = watched_original(case)
            diag = labelled(case)
        # the time reference: one unwatched run of the original (the faster of two, so a
        # first run's warm-up does not flatter the ratio)
        base_t = min(full_run(case, case.make(), {})[1] for _ in range(2))
        result = gw.fix(case.make(), diag, timeline=timeline, example_input=example)
        numeric = {k: v for k, v in result.advice.items() if k in ("lr_scale", "clip_grad_norm")}
        s_fix, _ = full_run(case, result.model, numeric)
        torch.manual_seed(0)
        t_rep = time.process_time()
        rep = gw.repair(
            case.make(), case.train, steps=case.steps,
            diagnosis=labelled(case) if case.recorded is None else None, progress=False,
        )
        t_rep = time.process_time() - t_rep
        s_rep = rep.final_score if rep.final_score is not None else max(t.score for t in rep.trials)
        # what one full run of the model repair kept costs: the part of repair's time that is
        # the repaired model's own (dearer or cheaper) steps, not gradwatch's search
        kept_model = rep.fix.model if rep.fix is not None else case.make()
        kept_t = full_run(case, copy.deepcopy(kept_model), dict(rep.advice))[1]
        rand = []
        for choice, f in RANDOM_CHOICES.items():
            torch.manual_seed(0)
            m, adv = f(case.make(), example)
            s_r, _ = full_run(case, m, adv)
            rand.append((choice, s_r))
        share = sum(ok(s) for _, s in rand) / len(rand)
        bar = case.healthy if case.bar is None else case.bar
        row = {
            "original": ok(s0), "fix": ok(s_fix), "repair": ok(s_rep), "random": share,
            "original_bar": s0 >= bar, "fix_bar": s_fix >= bar, "repair_bar": s_rep >= bar,
            "cost": rep.cost, "time": t_rep / base_t, "search": (t_rep - kept_t) / base_t, "reach": case.reach,
            "beyond": case.beyond,
        }
        rows.append(row)
        name = case.name + (" *" if case.reach else " +" if case.beyond else "")
        print(
            f"{name:<28} {_mark(s0, ok):>9} {_mark(s_fix, ok):>9} {_mark(s_rep, ok):>9} "
            f"{rep.cost:>5.2f}x {row['time']:>5.2f}x {row['search']:>5.2f}x {share:>7.2f}",
            flush=True,
        )
        kept = next((t.name for t in rep.trials if t.kept), "original")
        found = ", ".join(sorted({str(f.kind) for f in diag.findings if f.severity > gw.Severity.INFO})) or "healthy"
        own = ", ".join(sorted({str(f.kind) for f in rep.diagnosis.findings if f.severity > gw.Severity.INFO})) or "healthy"
        details.append(
            f"{case.name}: diagnosis [{found}]; fix = {_summary(result)}; repair saw [{own}], kept {kept}; "
            "random: " + ", ".join(f"{c} {s:.3g}" for c, s in rand)
        )
    print("-" * len(head))
    for label, subset in (
        ("all", rows),
        ("in reach", [r for r in rows if not r["reach"]]),
        ("reachable", [r for r in rows if not r["reach"] and not r["beyond"]]),
    ):
        n = len(subset)
        if not n or (label == "reachable" and not BEYOND_RECIPE):
            continue
        print(
            f"{'healthy, ' + label + ' (' + str(n) + ')':<28} {_share(subset, 'original'):>9.2f} "
            f"{_share(subset, 'fix'):>9.2f} {_share(subset, 'repair'):>9.2f} "
            f"{max(r['cost'] for r in subset):>5.2f}x {_mean(subset, 'time'):>5.2f}x "
            f"{_mean(subset, 'search'):>5.2f}x {_mean(subset, 'random'):>7.2f}"
        )
        print(
            f"{'  at a healthy net level':<28} {_share(subset, 'original_bar'):>9.2f} "
            f"{_share(subset, 'fix_bar'):>9.2f} {_share(subset, 'repair_bar'):>9.2f}"
        )
    print(
        "  * out of reach: the cause is not in the model's gradients (a data or code bug, random labels)\n"
        + ("  + in reach, but nothing fix can do trains it under its own recipe (--grid): left out of 'reachable'\n"
           if BEYOND_RECIPE else "")
        + "  at a healthy net level: the score a healthy net of the shape reaches (digits 0.8, recall 0.9,\n"
        "           adding MSE < 0.01), not only the suite's 'trained'\n"
        + "  steps  = steps repair trained / steps of one run (max over runs)\n"
        "  time   = repair's time / one unwatched run of the original (mean; CPU time of this\n"
        "           single-threaded process, which is wall time on an idle machine)\n"
        "  search = (repair's time - one run of the model it kept) / one run of the original (mean):\n"
        "           the time spent searching, beyond the kept model's own training"
    )
    print()
    for d in details:
        print(d)
    return 0


def timed(todo: list[Case], k: int) -> int:
    """Repair's CPU time against one unwatched run of the original, every run `k` times longer.

    The suite's runs last 0.1–2 s, so gradwatch's fixed costs (watching the first runs,
    the explainer, copies of the model) weigh on them; on longer runs they are amortised
    and what is left is the steps trained and the kept model's own cost per step.
    """
    _warm_up()
    print(f"every run {k}x its suite length; CPU time of this single-threaded process\n")
    head = f"{'faulty run':<28} {'N':>6} {'one run':>8} {'steps':>6} {'time':>6} {'search':>7}  kept"
    print(head)
    print("-" * len(head))
    rows = []
    for case in todo:
        n = case.steps * k
        torch.manual_seed(0)
        t0 = time.process_time()
        case.train(case.make(), {}, n)
        base_t = time.process_time() - t0
        torch.manual_seed(0)
        t0 = time.process_time()
        diag = labelled(case) if case.recorded is None else None
        rep = gw.repair(case.make(), case.train, steps=n, diagnosis=diag, progress=False)
        t_rep = time.process_time() - t0
        kept_model = rep.fix.model if rep.fix is not None else case.make()
        torch.manual_seed(0)
        t0 = time.process_time()
        case.train(copy.deepcopy(kept_model), dict(rep.advice), n)
        kept_t = time.process_time() - t0
        kept = next((t.name for t in rep.trials if t.kept), "original")
        rows.append((rep.cost, t_rep / base_t, (t_rep - kept_t) / base_t))
        print(
            f"{case.name:<28} {n:>6} {base_t:>7.1f}s {rep.cost:>5.2f}x {t_rep / base_t:>5.2f}x "
            f"{(t_rep - kept_t) / base_t:>6.2f}x  {kept}",
            flush=True,
        )
    print("-" * len(head))
    print(
        f"{'mean':<28} {'':>6} {'':>8} {max(r[0] for r in rows):>5.2f}x {sum(r[1] for r in rows) / len(rows):>5.2f}x "
        f"{sum(r[2] for r in rows) / len(rows):>6.2f}x"
    )
    print("  steps = steps repair trained / N (max); time = repair's time / one unwatched run of the original;")
    print("  search = (repair's time - one run of the model it kept) / one run of the original")
    return 0


#: Learning-rate scales of the reach grid: three decades down (the most `lr_scale` ever
#: advises) to thirty times up.
GRID_SCALES = (1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def grid(todo: list[Case]) -> int:
    """For each run: the best score of fix's model, and of each remedy alone, over `GRID_SCALES`.

    A run no cell of this grid trains is out of reach of everything `fix` can do under the
    run's own recipe (its optimizer, batch and number of steps): no choice among fix's
    transforms and no step size makes it train.
    """
    print(f"{'faulty run':<28} {'model':<12} " + " ".join(f"{x:>7g}" for x in GRID_SCALES))
    for case in todo:
        _, diag, timeline = case.recorded() if case.recorded is not None else (math.nan, labelled(case), None)
        fixed = gw.fix(case.make(), diag, timeline=timeline, example_input=case.example)
        rows: dict[str, nn.Module] = {"fix": fixed.model, "original": case.make()}
        for name, f in RANDOM_CHOICES.items():
            torch.manual_seed(0)
            model = f(case.make(), case.example)[0]
            if (name != "lr_scale 0.1" and str(model) != str(rows["original"])) or name == "init":
                rows[name] = model  # only the remedies that change this model (init: new weights)
        reached = False
        for label, model in rows.items():
            scores = []
            for scale in GRID_SCALES:
                advice = {"lr_scale": scale}
                if "clip_grad_norm" in fixed.advice:
                    advice["clip_grad_norm"] = fixed.advice["clip_grad_norm"]
                scores.append(full_run(case, copy.deepcopy(model), advice)[0])
            ok = [x >= case.healthy for x in scores]
            reached |= any(ok)
            cells = " ".join(f"{('*' if o else '') + f'{x:.2g}':>7}" for x, o in zip(scores, ok, strict=True))
            print(f"{case.name:<28} {label:<12} {cells}", flush=True)
        print(f"{case.name:<28} {'in reach' if reached else 'OUT OF REACH under its recipe'}\n", flush=True)
    print("  * healthy; each cell one full run of the recipe with the learning rate scaled (and fix's clip, if any)")
    return 0


def from_final(todo: list[Case]) -> int:
    """`fix` on the model a diverged run left behind, as its user would call it.

    The main table gives `fix` a fresh copy of each model (training restarts from the
    same initial state for every column). A user whose run diverged holds a model with
    inf/NaN parameters instead; `fix` re-draws those (docs/fix.md). This trains each
    suite run that ends non-finite, applies `fix` to what it left, and trains that for
    one full run with fix's advice, beside fix on a fresh copy.
    """
    print(f"{'faulty run':<28} {'fix on a fresh copy':>20} {'fix on the run as left':>24}   left non-finite")
    for case in todo:
        if case.recorded is None:
            continue
        _, diag, timeline = case.recorded()
        torch.manual_seed(0)
        final = case.make()
        case.train(final, {}, case.steps)
        broken = [n for n, t in (*final.named_parameters(), *final.named_buffers())
                  if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if not broken:
            continue
        scores = []
        for start in (case.make(), final):
            result = gw.fix(start, diag, timeline=timeline, example_input=case.example)
            advice = {k: v for k, v in result.advice.items() if k in ("lr_scale", "clip_grad_norm")}
            still = [n for n, t in result.model.named_parameters() if not bool(torch.isfinite(t).all())]
            scores.append(full_run(case, result.model, advice)[0])
        def ok(score: float, target: float = case.healthy) -> bool:
            return score >= target

        print(f"{case.name:<28} {_mark(scores[0], ok):>20} {_mark(scores[1], ok):>24}   "
              + (", ".join(still) if still else "-"))
    print("\n  ok/no = healthy or not (the suite's criterion); 'left non-finite': parameters fix could not "
          "re-draw (named in its manual advice)")
    return 0


def _share(rows: list[dict[str, Any]], key: str) -> float:
    return sum(float(r[key]) for r in rows) / len(rows)


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(float(r[key]) for r in rows) / len(rows)


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
