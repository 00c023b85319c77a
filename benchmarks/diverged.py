"""Runs that diverge before they can be read: does `fix` do better than the step size alone?

Each recurrent run below blows up (inf/NaN) within its first ten steps under a learning
rate far too large, recorded every 10 steps, so the watcher holds fewer finite records
than a detector needs (`Thresholds.persist`). `gw.fix` then lets the explainer's
predictions from the model as built choose remedies besides the step size
(docs/fix.md, "How fix chooses", step 7). For each run, side by side, from the same
seeds and data:

- fix:        `gw.fix(model, diagnosis, timeline=..., example_input=first batch)`,
              then one full run with its advice (learning rate scaled, clipping);
- step size:  the same advice on the model as it was (what `fix` gave these runs before
              the fourth session: the step size and clipping alone).

Healthy: adding problem test MSE < 0.05 (the baseline, predicting the mean, is 1/6);
recall accuracy >= 0.6 (chance 1/8). Two controls: an LSTM whose task needs one step of
memory (recall the second-to-last symbol), and one whose forget gates already have
chrono biases (no `keep_gate_closed`: nothing is added).

    PYTHONPATH=src python benchmarks/diverged.py [--only NAME ...]     # ~3 min on one core
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import gradwatch as gw
from gradwatch.lab.data import adding_problem

sys.path.insert(0, str(Path(__file__).resolve().parent / "detection"))
from suite import SeqNet  # the labelled suite's recurrent model

torch.set_num_threads(1)

Batch = tuple[torch.Tensor, torch.Tensor]


def recall(g: torch.Generator, n: int, t: int, at: int = 0, k: int = 8) -> Batch:
    """`t` one-hot symbols of `k`; name the one at position `at`."""
    s = torch.randint(0, k, (n, t), generator=g)
    return F.one_hot(s, k).float(), s[:, at]


def chrono_forget(model: nn.Module, t: int) -> nn.Module:
    """Forget-gate biases log(U(1, T-1)) and input-gate biases their negatives, drawn at random."""
    h = model.rnn.hidden_size
    with torch.no_grad():
        b = torch.log(torch.empty(h).uniform_(1, t - 1))
        model.rnn.bias_ih_l0[h : 2 * h] = b
        model.rnn.bias_ih_l0[:h] = -b
        model.rnn.bias_hh_l0[: 2 * h] = 0.0
    return model


def forget_one(model: nn.Module) -> nn.Module:
    h = model.rnn.hidden_size
    with torch.no_grad():
        model.rnn.bias_ih_l0[h : 2 * h] = 1.0
    return model


@dataclass
class Run:
    name: str
    task: str  # "adding", "recall" (the first symbol) or "last" (the second-to-last)
    length: int
    make: Callable[[int, int], nn.Module]  # (inputs, outputs) -> model
    optimizer: str  # "sgd" (momentum 0.9) or "adam"
    lr: float
    steps: int


def runs() -> list[Run]:
    def seq(cell: str, **kw: Any) -> Callable[[int, int], nn.Module]:
        return lambda i, o: SeqNet(cell, i, 32, o, **kw)

    return [
        Run("lstm-adding30-sgd30", "adding", 30, seq("lstm"), "sgd", 30.0, 400),
        Run("lstm-adding60-sgd30", "adding", 60, seq("lstm"), "sgd", 30.0, 300),
        Run("gru-adding30-sgd30", "adding", 30, seq("gru"), "sgd", 30.0, 400),
        Run("gru-adding60-sgd30", "adding", 60, seq("gru"), "sgd", 30.0, 300),
        Run("bigru-adding30-sgd30", "adding", 30, seq("gru", bidirectional=True), "sgd", 30.0, 400),
        Run("lstm-forget1-adding30-sgd30", "adding", 30, lambda i, o: forget_one(SeqNet("lstm", i, 32, o)), "sgd", 30.0, 400),
        Run("lstm-recall30-sgd50", "recall", 30, seq("lstm"), "sgd", 50.0, 400),
        Run("lstm-recall60-adam20", "recall", 60, seq("lstm"), "adam", 20.0, 300),
        Run("control: lstm-last30-sgd50", "last", 30, seq("lstm"), "sgd", 50.0, 300),
        Run("control: lstm-chrono-recall30-sgd50", "recall", 30, lambda i, o: chrono_forget(SeqNet("lstm", i, 32, o), 30), "sgd", 50.0, 400),
    ]


def task_of(run: Run) -> tuple[Callable[[torch.Generator, int], Batch], Callable[..., torch.Tensor], Callable[[nn.Module], tuple[float, bool]], int, int]:
    """(batch, loss, score, inputs, outputs) for a run; the score is minus the MSE or the accuracy."""
    test_gen = torch.Generator().manual_seed(1234)
    if run.task == "adding":
        x_test, y_test = adding_problem(1000, run.length, test_gen)

        def score(m: nn.Module) -> tuple[float, bool]:
            with torch.no_grad():
                mse = float(F.mse_loss(m(x_test), y_test))
            mse = mse if math.isfinite(mse) else math.inf
            return -mse, mse < 0.05

        return (lambda g, n: adding_problem(n, run.length, g)), F.mse_loss, score, 2, 1
    at = 0 if run.task == "recall" else -2
    xr, yr = recall(test_gen, 1000, run.length, at)

    def accuracy(m: nn.Module) -> tuple[float, bool]:
        with torch.no_grad():
            out = m(xr)
        acc = float((out.argmax(-1) == yr).float().mean()) if bool(torch.isfinite(out).all()) else 0.0
        return acc, acc >= 0.6

    return (lambda g, n: recall(g, n, run.length, at)), F.cross_entropy, accuracy, 8, 8


def train(run: Run, model: nn.Module, batch: Callable[[torch.Generator, int], Batch], loss_fn: Callable[..., torch.Tensor],
          advice: dict[str, Any], watcher: gw.Watcher | None = None) -> torch.Tensor:
    """One full run of the recipe under `advice`; returns the first batch's input."""
    g = torch.Generator().manual_seed(7)
    lr = run.lr * float(advice.get("lr_scale", 1.0))
    opt = (torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9) if run.optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr=lr))
    clip = advice.get("clip_grad_norm")
    first: torch.Tensor | None = None
    for _ in range(run.steps):
        x, y = batch(g, 64)
        first = x if first is None else first
        loss = loss_fn(model(x), y)
        if watcher is None and not bool(torch.isfinite(loss)):
            break  # blown up: nothing more to learn from this run
        opt.zero_grad()
        loss.backward()
        if watcher is not None:
            watcher.step(loss=loss)
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    assert first is not None
    return first


def one(run: Run) -> dict[str, Any]:
    batch, loss_fn, score, n_in, n_out = task_of(run)
    torch.manual_seed(0)
    model = run.make(n_in, n_out)
    fresh = copy.deepcopy(model)
    with gw.watch(model, every=10) as w:
        first = train(run, model, batch, loss_fn, {}, watcher=w)
    diag = w.diagnose()
    result = gw.fix(copy.deepcopy(fresh), diag, timeline=w.timeline, example_input=first)
    advice = {k: v for k, v in result.advice.items() if k in ("lr_scale", "clip_grad_norm")}
    fixed, step_only = result.model, copy.deepcopy(fresh)
    train(run, fixed, batch, loss_fn, advice)
    train(run, step_only, batch, loss_fn, advice)
    blown = [f.step for f in diag.findings if f.kind in ("diverging_loss", "nonfinite_gradient") and f.step is not None]
    return {
        "blown": min(blown) if blown else None,
        "records": sum(1 for s in w.timeline.steps if blown and s < min(blown)),
        "causes": [str(c.kind) for c in diag.causes],
        "changes": sorted({f"{c.kind}({c.target})" for c in result.changes}),
        "advice": advice,
        "fix": score(fixed),
        "step": score(step_only),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="run only runs whose name contains one of these")
    args = ap.parse_args(argv)
    todo = [r for r in runs() if not args.only or any(s in r.name for s in args.only)]
    print(f"{'run':36} {'blown':>5} {'recs':>4}  {'fix':>12} {'step size':>12}  fix's changes; causes")
    rows = []
    for run in todo:
        t0 = time.process_time()
        r = one(run)
        rows.append((run, r))
        mark = lambda s: f"{'ok' if s[1] else 'no'} {s[0]:.3g}"  # noqa: E731
        print(
            f"{run.name:36} {r['blown'] if r['blown'] is not None else '-':>5} {r['records']:>4}  {mark(r['fix']):>12} "
            f"{mark(r['step']):>12}  {', '.join(r['changes']) or '-'}; {', '.join(r['causes']) or '-'}"
            f"  ({time.process_time() - t0:.0f} s)",
            flush=True,
        )
    faulty = [r for run, r in rows if not run.name.startswith("control")]
    if faulty:
        print(
            f"healthy, {len(faulty)} runs that diverged unread: after fix {sum(r['fix'][1] for r in faulty)}/{len(faulty)}, "
            f"after the step size alone {sum(r['step'][1] for r in faulty)}/{len(faulty)}"
        )
    print("  blown = first step of a divergence finding; recs = finite records before it (fewer than 3: unread)")
    print("  scores: minus the test MSE (adding) or the test accuracy (recall)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
