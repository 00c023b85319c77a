"""Wild: training failures people reported in public, reproduced, and controls; a frozen set.

    PYTHONPATH=src python benchmarks/wild/run.py                    # 15 failures + 6 controls x seeds 0 1 2
    PYTHONPATH=src python benchmarks/wild/run.py --seeds 0 --only pt-cubic-raw nyu-rnn-longer
    PYTHONPATH=src python benchmarks/wild/run.py --remedy           # the threads' own fixes, no gradwatch

What it is. Each run in `reports.py` (its citation and the thread's words in `threads.json`) rebuilds a failure somebody reported on a forum, a Q&A
site or an issue tracker (Stack Overflow, Cross Validated, AI/Data Science Stack Exchange,
the PyTorch forums, GitHub issues, course notes), with the thread's model, data scale and
recipe (synthetic or bundled data at the thread's scale; details the thread leaves out are
marked "(assumed)" in the report). Controls are runs whose cause was not a gradient problem:
a converged fit, a loss that merely slows, too little data, a run that needed more epochs,
labels misaligned with their inputs, a cost that is large only because the targets are.

Frozen. The set was written before the rule changes it judges (Part 8, issue 15), without
reading gradwatch's detection, explanation or repair code, and no run was added, dropped or
altered because of what gradwatch says about it. Recipes were checked on outcomes only
(`--remedy`: does the run fail as the thread says, does the thread's own fix reach the
healthy level). It is never changed to suit a rule; a new sweep goes into a new file, so its
figures stay comparable from one change of the rules to the next.

Labels come from the thread: its accepted answer or the poster's own conclusion. Each report
maps that conclusion to what a right diagnosis must say (`reports.Expect`): finding kinds,
cause kinds among the first three, words in what gradwatch shows a person (findings, causes,
notes, the changes `fix` makes and its advice), or `fix` advice (a lower rate, clipping).

Protocol, per run and seed (seeds set torch's seed and the data's):
1. Train the recipe under `gw.watch(model, every=10)`; `diagnose()`. "right" when the
   diagnosis has a finding at `warning` or above, of the expected kinds if any are listed,
   and says something from every group of clues.
2. `gw.fix(model, diagnosis, timeline=..., example_input=...)` on the trained model (what a
   user holds), then train the fixed model with the same recipe and data, the learning rate
   multiplied by `lr_scale` and gradients clipped at `clip_grad_norm` where advised. Manual
   advice is printed, not applied. "fixed" when the test metric (R² for regressions, in the
   target's own units; accuracy otherwise) reaches the thread's healthy level.
3. "fixed+manual": the same, except that when the manual advice asks to standardise the
   inputs or the targets (words matched as in `reports.INPUT_SCALE` / `TARGET_SCALE`) the
   benchmark does so (train statistics; predictions mapped back before scoring). A run whose
   advice asks for no data step scores as in "fixed".
A failure that did not fail on a seed (its metric already at the healthy level) is flagged
and left out of the scores. Controls pass when no finding at `error` blames the gradient
(every kind but `flat_loss` and `constant_output`); whether the words say to check the labels
is shown beside.

Printed: a row per run and seed, the manual advice, what a wrong diagnosis missed, then per
seed and over seeds (mean, worst seed): diagnosis right (target >= 0.9), fixed (target >= 0.8),
fixed+manual, controls passed; and the time. Runs on one thread.
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from reports import (
    INPUT_SCALE,
    REPORTS,
    TARGET_SCALE,
    Clue,
    Data,
    Expect,
    Remedy,
    Report,
)
from torch import nn

import gradwatch as gw
from gradwatch.lab.data import batches

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "detection"))
from outside import EVERY, SHORT

K = gw.Kind
#: Kinds that blame the gradient (a control must not draw one at `error`).
GRADIENT_KINDS = frozenset(K) - {K.FLAT_LOSS, K.CONSTANT_OUTPUT}
LABELS = re.compile(r"\blabels?\b", re.I)


# -- data steps ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A run's data after the data steps, and the map from outputs back to the target's units."""

    data: Data
    unscale: Callable[[torch.Tensor], torch.Tensor]


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dims = tuple(range(x.dim() - 1))  # every axis but the features
    mean, std = x.mean(dims, keepdim=True), x.std(dims, keepdim=True)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


def prepare(data: Data, x_std: bool = False, y_std: bool = False, y_log: bool = False,
            y_div: float | None = None) -> Prepared:
    x_tr, x_te, y_tr = data.x_train, data.x_test, data.y_train
    unscale: Callable[[torch.Tensor], torch.Tensor] = lambda out: out  # noqa: E731
    if x_std:
        mean, std = _moments(x_tr)
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    if data.task == "reg":
        if y_log:
            y_tr, unscale = y_tr.log(), torch.exp
        if y_div:
            k = float(y_div)
            y_tr, unscale = y_tr / k, lambda out: out * k
        if y_std:
            m, s = _moments(y_tr)
            y_tr = (y_tr - m) / s
            inner = unscale
            unscale = lambda out: inner(out * s + m)  # noqa: E731
    return Prepared(Data(x_tr, y_tr, x_te, data.y_test, data.task), unscale)


# -- training and scoring -----------------------------------------------------------------------------


def train(model: nn.Module, r: Report, data: Data, seed: int, *, lr_scale: float = 1.0,
          clip: float | None = None, lr: float | None = None, loss: str | None = None,
          watch: bool = False) -> gw.Watcher | None:
    """The thread's recipe: its optimizer, rate, steps and batch size, on `data`."""
    recipe = replace(r.recipe, lr=lr or r.recipe.lr, loss=loss or r.recipe.loss)
    opt = recipe.make(model.parameters(), lr_scale)
    size = recipe.batch or len(data.x_train)
    schedule = batches(data.x_train, data.y_train, size, recipe.steps, seed=1_000 + seed)
    w = gw.watch(model, every=EVERY) if watch else None
    model.train()
    try:
        for x, y in schedule:
            loss = recipe.loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            if w is not None:
                w.step(loss=loss)
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), float(clip))
            opt.step()
    finally:
        if w is not None:
            w.close()
    return w


def score(model: nn.Module, prepared: Prepared) -> float:
    """R² in the target's own units (regression) or accuracy; -inf when the outputs are not finite."""
    data = prepared.data
    with torch.no_grad():
        model.eval()
        out = model(data.x_test)
    if not torch.isfinite(out).all():
        return -math.inf
    if data.task == "multi":
        return float((out.argmax(-1) == data.y_test).float().mean())
    if data.task == "binary":
        return float(((out > 0.5).float() == data.y_test).float().mean())
    pred = prepared.unscale(out)
    if not torch.isfinite(pred).all():
        return -math.inf
    y = data.y_test.double()
    sse = float(((pred.double() - y) ** 2).sum())
    sst = float(((y - y.mean()) ** 2).sum())
    return 1.0 - sse / sst


def shown(d: gw.Diagnosis, fix: gw.FixResult | None) -> str:
    """Every word gradwatch shows a person about the run: findings, causes, notes, fix."""
    parts = [str(f) for f in d.findings] + [str(c) for c in d.causes[:3]] + list(d.notes)
    if fix is not None:
        parts += [str(c) for c in fix.changes]
        for key in ("manual", "why"):
            value = fix.advice.get(key)
            if isinstance(value, str):
                parts.append(value)
            elif isinstance(value, (list, tuple)):
                parts += [str(v) for v in value]
    return "\n".join(parts)


def said(clue: Clue, d: gw.Diagnosis, fix: gw.FixResult | None, text: str) -> bool:
    if clue.kind is not None:
        return any(f.kind == clue.kind and f.severity >= gw.Severity.WARNING for f in d.findings)
    if clue.cause is not None:
        return any(c.kind == clue.cause for c in d.causes[:3])
    if clue.text is not None:
        return re.search(clue.text, text, re.I) is not None
    advice = fix.advice if fix is not None else {}
    if clue.advice == "lr_down":
        return float(advice.get("lr_scale", 1.0)) < 1.0
    return bool(advice.get("clip_grad_norm"))


def judge(expect: Expect, d: gw.Diagnosis, fix: gw.FixResult | None) -> tuple[bool, str]:
    """Right or not, and what was missing."""
    loud = [f for f in d.findings if f.severity >= gw.Severity.WARNING]
    if not loud:
        return False, "no finding at warning or above"
    if expect.kinds and not any(f.kind in expect.kinds for f in loud):
        return False, "none of " + ", ".join(sorted(SHORT[k] for k in expect.kinds))
    text = shown(d, fix)
    missing = [g for g in expect.groups if not any(said(c, d, fix, text) for c in g)]
    if missing:
        return False, "; ".join("none of: " + " | ".join(str(c) for c in g) for g in missing)
    return True, ""


def manual(fix: gw.FixResult | None) -> list[str]:
    value = fix.advice.get("manual", []) if fix is not None else []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def data_steps(lines: list[str], task: str) -> dict[str, bool]:
    """The data steps the manual advice asks for (inputs and/or targets standardised)."""
    text = "\n".join(lines)
    return {"x_std": re.search(INPUT_SCALE, text, re.I) is not None,
            "y_std": task == "reg" and re.search(TARGET_SCALE, text, re.I) is not None}


# -- one run ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    report: Report
    seed: int
    before: float
    reproduced: bool = True
    right: bool | None = None
    missed: str = ""
    fixed: bool | None = None
    after: float = math.nan
    fixed_manual: bool | None = None
    after_manual: float = math.nan
    steps: str = ""  # the data steps applied for fixed+manual
    passed: bool | None = None  # controls
    says_labels: bool = False
    findings: str = ""
    causes: str = ""
    fix_summary: str = ""
    advice: list[str] | None = None
    error: str = ""


def fresh_fix(model: nn.Module, d: gw.Diagnosis, w: gw.Watcher, data: Data) -> tuple[gw.FixResult | None, str]:
    try:
        return gw.fix(model, d, timeline=w.timeline, example_input=data.x_train[:64]), ""
    except Exception as e:  # a benchmark records a crash as a failure to fix, and goes on
        return None, f"fix raised {type(e).__name__}: {e}"


def retrain(r: Report, model: nn.Module, data: Data, seed: int, fix: gw.FixResult, steps: dict[str, bool]) -> float:
    prepared = prepare(data, **steps)
    lr_scale = float(fix.advice.get("lr_scale", 1.0))
    clip = fix.advice.get("clip_grad_norm")
    try:
        torch.manual_seed(seed)
        train(model, r, prepared.data, seed, lr_scale=lr_scale, clip=float(clip) if clip else None)
    except Exception:  # a fixed model that cannot even train is not fixed
        return -math.inf
    return score(model, prepared)


def run_one(r: Report, seed: int) -> Row:
    data = r.data(seed)
    model = r.make(seed)
    torch.manual_seed(seed)
    w = train(model, r, data, seed, watch=True)
    assert w is not None
    before = score(model, prepare(data))
    row = Row(r, seed, before)
    d = w.diagnose()
    row.findings = ", ".join(f"{SHORT[f.kind]}:{str(f.severity)[0].upper()}" for f in d.findings) or "-"
    row.causes = ", ".join(str(c.kind) for c in d.causes[:3]) or "-"
    fix, row.error = fresh_fix(model, d, w, data)
    if fix is not None:
        kinds = sorted({c.kind for c in fix.changes})
        extra = {k: round(float(v), 4) for k, v in fix.advice.items() if k in ("lr_scale", "clip_grad_norm")}
        row.fix_summary = (", ".join(kinds) or "-") + (f" {extra}" if extra else "")
        row.advice = manual(fix)
    if r.expect is None:
        row.passed = not any(f.severity >= gw.Severity.ERROR and f.kind in GRADIENT_KINDS for f in d.findings)
        row.says_labels = LABELS.search(shown(d, fix)) is not None
        return row
    row.reproduced = not before >= r.healthy.level
    row.right, row.missed = judge(r.expect, d, fix)
    if fix is None:
        row.fixed = row.fixed_manual = False
        return row
    spare = copy.deepcopy(fix.model)
    row.after = retrain(r, fix.model, data, seed, fix, {})
    row.fixed = row.after >= r.healthy.level
    steps = data_steps(row.advice or [], data.task)
    if any(steps.values()):
        row.steps = "+".join(k for k, v in steps.items() if v)
        row.after_manual = retrain(r, spare, data, seed, fix, steps)
        row.fixed_manual = row.after_manual >= r.healthy.level
    else:
        row.after_manual, row.fixed_manual = row.after, row.fixed
    return row


# -- printing ---------------------------------------------------------------------------------------------


def fmt(x: float) -> str:
    if math.isnan(x):
        return "  -   "
    if math.isinf(x):
        return "  nan " if x < 0 else "  inf "
    return f"{max(x, -9.99):6.3f}"


def yes(b: bool | None) -> str:
    return "-" if b is None else "yes" if b else "NO"


def print_row(row: Row) -> None:
    r = row.report
    head = f"{r.name:<30} {row.seed:>2} {fmt(row.before)} /{r.healthy.level:<5}"
    if r.control:
        print(f"{head} control  passed={yes(row.passed):<3} labels={'yes' if row.says_labels else 'no':<3} "
              f"| {row.findings} | causes: {row.causes} | fix: {row.fix_summary or '-'}")
    else:
        flag = "" if row.reproduced else " (did not fail: left out)"
        manual_col = f"{yes(row.fixed_manual)} {fmt(row.after_manual)}" + (f" [{row.steps}]" if row.steps else "")
        print(f"{head} right={yes(row.right):<3} fixed={yes(row.fixed):<3} {fmt(row.after)} "
              f"fixed+manual={manual_col}{flag} | {row.findings} | causes: {row.causes} | fix: {row.fix_summary or '-'}")
    if row.error:
        print(f"{'':<34}! {row.error}")
    for line in row.advice or []:
        print(f"{'':<34}manual: {line[:200]}")


def summarise(rows: list[Row], seeds: list[int]) -> None:
    print("\nwrong diagnoses (what they missed):")
    for row in rows:
        if row.right is False and row.reproduced:
            print(f"  {row.report.name} seed {row.seed}: {row.missed}")
    print("\nper seed:            right   fixed   fixed+manual   controls")
    table: dict[str, list[float]] = {"right": [], "fixed": [], "fixed+manual": [], "controls": []}
    for s in seeds:
        fails = [r for r in rows if r.seed == s and not r.report.control and r.reproduced]
        ctls = [r for r in rows if r.seed == s and r.report.control]
        vals = {
            "right": sum(bool(r.right) for r in fails) / max(1, len(fails)),
            "fixed": sum(bool(r.fixed) for r in fails) / max(1, len(fails)),
            "fixed+manual": sum(bool(r.fixed_manual) for r in fails) / max(1, len(fails)),
            "controls": sum(bool(r.passed) for r in ctls) / max(1, len(ctls)),
        }
        for k, v in vals.items():
            table[k].append(v)
        print(f"  seed {s}: {len(fails):>2} failures  {vals['right']:.2f}    {vals['fixed']:.2f}    "
              f"{vals['fixed+manual']:.2f}           {sum(bool(r.passed) for r in ctls)}/{len(ctls)}")
    targets = {"right": 0.9, "fixed": 0.8, "fixed+manual": math.nan, "controls": 1.0}
    print("\nover seeds:          mean   worst seed   target")
    for k, v in table.items():
        target = "-" if math.isnan(targets[k]) else f">= {targets[k]:.1f}"
        print(f"  {k:<16} {sum(v) / len(v):.2f}   {min(v):.2f}         {target}")
    left_out = sorted({f"{r.report.name}/{r.seed}" for r in rows if not r.reproduced})
    if left_out:
        print(f"\nleft out (did not fail on that seed): {', '.join(left_out)}")


def check_remedies(reports: list[Report], seeds: list[int]) -> None:
    """Outcomes only, no gradwatch: the recipe as posted, and with the thread's own fix."""
    print(f"{'run':<30} {'seed':>4} {'posted':>7} {'remedy':>7}  level  remedy")
    for r in reports:
        for seed in seeds:
            data = r.data(seed)
            model = r.make(seed)
            torch.manual_seed(seed)
            train(model, r, data, seed)
            before = score(model, prepare(data))
            fix: Remedy = r.remedy or Remedy()
            after = math.nan
            if r.remedy is not None:
                prepared = prepare(data, fix.x_std, fix.y_std, fix.y_log, fix.y_div)
                model = (fix.make or r.make)(seed)
                torch.manual_seed(seed)
                train(model, r, prepared.data, seed, lr=fix.lr, loss=fix.loss)
                after = score(model, prepared)
            print(f"{r.name:<30} {seed:>4} {fmt(before)} {fmt(after)}  {r.healthy.level:<5}  {fix.note}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", default=None, help="run names")
    parser.add_argument("--remedy", action="store_true", help="the threads' own fixes, no gradwatch")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    reports = [r for r in REPORTS if args.only is None or r.name in args.only]
    start = time.perf_counter()
    if args.remedy:
        check_remedies(reports, args.seeds)
        print(f"\n{time.perf_counter() - start:.0f} s")
        return
    print(f"{'run':<30} {'seed':>2} {'before':>6} /level\n")
    rows: list[Row] = []
    for r in reports:
        print(f"# {r.name}: {r.title}\n#   {r.url}\n#   label: {r.label}")
        for seed in args.seeds:
            rows.append(run_one(r, seed))
            print_row(rows[-1])
    summarise(rows, args.seeds)
    print(f"\n{len(reports)} runs x {len(args.seeds)} seeds in {time.perf_counter() - start:.0f} s on one thread")


if __name__ == "__main__":
    main()
