"""Run lab experiments: one row per setting and seed, with a progress bar, into ``results.json``.

Each row says what was set up, what the literature leads us to expect, what was
observed, whether the two agree (`agrees`), and whether gradwatch's verdict was the one
expected (`verdict_agrees`). ``results.json`` validates against `gradwatch.lab.schema`.

Figures and the HTML page side by side with the literature are drawn from the results
alone (each row's ``series`` holds the per-layer profiles) by `gradwatch.lab.page`,
through the `FIGURES` hooks.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

import gradwatch as gw
from gradwatch.lab.experiments import EXPERIMENTS, Experiment, Observation, Setting
from gradwatch.lab.schema import validate

__all__ = ["FIGURES", "Row", "judge", "run", "select", "short", "write"]

Row = dict[str, Any]



def _page(results: dict[str, Any], out_dir: Path) -> None:
    """The figures and ``index.html`` (`gradwatch.lab.page`), when matplotlib is installed."""
    try:
        import matplotlib  # noqa: F401  (only asking whether it is there)
    except ImportError:
        print("gradwatch lab: no figures or index.html without matplotlib: pip install 'gradwatch[report]'",
              file=sys.stderr)
        return
    from gradwatch.lab import page

    page.write(results, out_dir)


#: Called as ``hook(results, out_dir)`` after results.json is written: by default the
#: figures and the HTML page next to the literature (`gradwatch.lab.page`).
FIGURES: list[Callable[[dict[str, Any], Path], None]] = [_page]


def select(names: Sequence[str]) -> list[Experiment]:
    """The experiments named (all when none); an unknown name raises `GradwatchValueError` listing the choices."""
    if not names:
        return list(EXPERIMENTS.values())
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise gw.GradwatchValueError(
            f"no experiment {unknown[0]!r}; choose from: {', '.join(EXPERIMENTS)}"
        )
    return [EXPERIMENTS[n] for n in dict.fromkeys(names)]


def _verdict_expected(s: Setting) -> str:
    parts = []
    if s.verdict_has:
        parts.append("one of: " + ", ".join(s.verdict_has))
    if s.verdict_not:
        parts.append("none of: " + ", ".join(s.verdict_not))
    return "; ".join(parts) or "anything"


def judge(s: Setting, obs: Observation) -> tuple[bool, bool]:
    """(outcome agrees with the expectation, gradwatch's verdict is the one expected)."""
    agrees = obs.outcome == s.expected
    found = set(obs.verdict)
    verdict_ok = (not s.verdict_has or bool(found & set(s.verdict_has))) and not found & set(s.verdict_not)
    return agrees, verdict_ok


def _clean(x: Any) -> Any:
    """Strict JSON: non-finite floats become null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def run(
    experiments: Sequence[Experiment],
    *,
    quick: bool = False,
    seeds: int = 1,
    progress: bool = True,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Run every selected setting for seeds ``0..seeds-1``; returns the results (see `schema.SCHEMA`)."""
    out = out or sys.stdout
    jobs = [(e, s, seed) for e in experiments for s in e.selected(quick) for seed in range(seeds)]
    rows: list[Row] = []
    bar = _Progress(len(jobs), out, enabled=progress)
    threads = torch.get_num_threads()
    # The lab's models are tiny: one intra-op thread runs them several times faster than
    # many threads contending over small matrices (the CI timing depends on it).
    torch.set_num_threads(1)
    try:
        _run_jobs(jobs, quick, rows, bar)
    finally:
        torch.set_num_threads(threads)
    return {
        "gradwatch": gw.__version__,
        "quick": quick,
        "seeds": seeds,
        "experiments": [
            {"name": e.name, "title": e.title, "citation": e.citation, "claim": e.claim, "judge": e.judge}
            for e in experiments
        ],
        "rows": rows,
    }


def _run_jobs(jobs: list[tuple[Experiment, Setting, int]], quick: bool, rows: list[Row], bar: _Progress) -> None:
    with bar:
        for e, s, seed in jobs:
            bar.describe(f"{e.name} {short(s.params)} seed {seed}")
            t0 = time.perf_counter()
            obs = e.run(dict(s.params), seed, quick)
            agrees, verdict_ok = judge(s, obs)
            rows.append(_clean({
                "experiment": e.name,
                "setting": dict(s.params),
                "seed": seed,
                "citation": e.citation,
                "expected": s.expected,
                "observed": obs.observed,
                "outcome": obs.outcome,
                "agrees": agrees,
                "verdict_expected": _verdict_expected(s),
                "verdict": obs.verdict,
                "verdict_agrees": verdict_ok,
                "series": obs.series,
                "seconds": round(time.perf_counter() - t0, 3),
            }))
            bar.advance()


def write(results: dict[str, Any], out_dir: Path) -> Path:
    """Validate and write ``out_dir/results.json``, then call the `FIGURES` hooks."""
    problems = validate(results)
    if problems:
        raise gw.GradwatchValueError("lab results do not match their schema: " + "; ".join(problems[:5]))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    path.write_text(json.dumps(results, indent=1, allow_nan=False))
    for hook in FIGURES:
        hook(results, out_dir)
    return path


def short(params: dict[str, Any]) -> str:
    """A setting in a few words: names as they are, numbers with their key, flags by name
    when set (``sigmoid default depth=16 batchnorm lr=0.1``)."""
    return " ".join(
        k if v is True else str(v) if isinstance(v, str) else f"{k}={v}"
        for k, v in params.items() if v is not False
    )


class _Progress:
    """A rich progress bar when rich is installed and enabled; else one line per job."""

    def __init__(self, total: int, out: TextIO, enabled: bool) -> None:
        self.total, self.out, self.enabled = total, out, enabled
        self.done = 0
        self._bar: Any = None
        self._task: Any = None
        if enabled:
            try:
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                )
            except ImportError:  # pragma: no cover - rich is in the report extra
                return
            self._bar = Progress(
                TextColumn("{task.description:<48}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=Console(file=out), transient=False,
            )
            self._task = self._bar.add_task("lab", total=total)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=text)
        elif self.enabled:
            print(f"[{self.done + 1}/{self.total}] {text}", file=self.out, flush=True)

    def advance(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.advance(self._task)
