"""The `lab` verb of the `gradwatch` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def lab(args: argparse.Namespace) -> int:
    from gradwatch.lab import runner
    from gradwatch.lab.experiments import EXPERIMENTS

    if args.list:
        for e in EXPERIMENTS.values():
            n, q = len(e.settings), len(e.selected(True))
            print(f"{e.name:<10} {e.title}\n{'':<10} {n} settings ({q} in --quick); {e.citation}")
        return 0
    if args.seeds < 1:
        print(f"gradwatch lab: --seeds must be at least 1, got {args.seeds}", file=sys.stderr)
        return 2
    try:
        chosen = runner.select(args.names)
    except ValueError as e:
        print(f"gradwatch lab: {e}", file=sys.stderr)
        return 2
    results = runner.run(chosen, quick=args.quick, seeds=args.seeds, progress=not args.no_progress)
    path = runner.write(results, Path(args.out))
    rows = results["rows"]
    print(f"\n{'experiment':<10} {'setting':<40} {'seed':>4}  {'expected':<9} {'observed':<18} agrees  gradwatch")
    for r in rows:
        setting = runner.short(r["setting"])
        print(
            f"{r['experiment']:<10} {setting[:40]:<40} {r['seed']:>4}  {r['expected']:<9} {r['outcome'][:18]:<18} "
            f"{'yes' if r['agrees'] else 'NO':<6}  {'yes' if r['verdict_agrees'] else 'NO'} "
            f"({', '.join(r['verdict']) or 'nothing'})"
        )
    bad = [r for r in rows if not (r["agrees"] and r["verdict_agrees"])]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} rows agree with the literature and gradwatch's verdict; "
          f"results in {path}")
    if (path.parent / "index.html").exists():
        print(f"figures and the page next to the literature: {path.parent / 'index.html'}")
    return 1 if bad else 0


def add_parser(sub: Any) -> None:
    """Add `lab` to the `gradwatch` command's subparsers."""
    p = sub.add_parser(
        "lab", help="rerun the classic experiments on vanishing gradients and check gradwatch against them",
        description="Run lab experiments; write results.json (one row per setting and seed), "
        "a figure per experiment and index.html next to the literature.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="experiments to run (default: all; see --list)")
    p.add_argument("--quick", action="store_true", help="the small set, fewer steps (CI-sized)")
    p.add_argument("--out", default="lab-results", metavar="DIR", help="where results.json, the figures and index.html go (default lab-results)")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--seeds", type=int, default=1, help="seeds per setting (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=lab)
