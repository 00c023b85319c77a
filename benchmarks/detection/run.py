"""The labelled detection benchmark: record the suite's runs, then score the detectors.

    python benchmarks/detection/run.py            # record missing runs, score, print
    python benchmarks/detection/run.py --fresh    # re-record every run first
    python benchmarks/detection/run.py --only mlp16-sigmoid-sgd lstm-adding-adam
    python benchmarks/detection/run.py --seeds 0 1 2 --quiet   # each seed, then mean and worst

Runs are recorded with ``gw.watch(..., log=...)`` into an ignored cache folder
(``benchmarks/detection/.cache/``), each with its outcome beside it, so scoring can be
re-run in a second. Printed: each run's outcome and findings; per-kind recall, the
false-positive rate on healthy runs and detection latency, for gradwatch and for
AutoTrainer's and DeepDiagnosis's published rules (ported in `baselines.py`) fed the
same runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import suite  # noqa: E402
from outside import seed_line  # noqa: E402
from scoring import RunResult, print_report, score_suite  # noqa: E402
from suite import Outcome, Spec, specs  # noqa: E402

import gradwatch as gw  # noqa: E402

CACHE = HERE / ".cache"
#: Bump when a run's recipe changes, so stale logs are re-recorded.
SUITE_VERSION = 3


def record(spec: Spec, cache: Path, every: int, fresh: bool) -> tuple[Path, Outcome]:
    log = cache / f"{spec.name}.jsonl"
    meta = cache / f"{spec.name}.outcome.json"
    if not fresh and log.exists() and meta.exists():
        saved = json.loads(meta.read_text())
        if saved.get("version") == SUITE_VERSION and saved.get("every") == every:
            return log, Outcome(**saved["outcome"])
    log.unlink(missing_ok=True)
    outcome = spec.train(log, every)
    meta.write_text(json.dumps({"version": SUITE_VERSION, "every": every, "outcome": asdict(outcome)}))
    return log, outcome


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fresh", action="store_true", help="re-record every run")
    p.add_argument("--only", nargs="*", default=None, help="run names to include")
    p.add_argument("--every", type=int, default=10, help="recording interval passed to gw.watch")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--quiet", action="store_true", help="only the summary tables")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (default 0, the suite as written)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    per_seed: dict[int, list[RunResult]] = {}
    for seed in args.seeds:
        suite.SEED = seed
        cache = args.cache if seed == 0 else args.cache / f"seed{seed}"
        cache.mkdir(parents=True, exist_ok=True)
        chosen = [s for s in specs() if args.only is None or s.name in args.only]
        t0 = time.perf_counter()
        recorded = []
        for spec in chosen:
            log, outcome = record(spec, cache, args.every, args.fresh)
            recorded.append((spec, gw.load(log), outcome))
        t_record = time.perf_counter() - t0
        results = per_seed[seed] = score_suite(recorded)
        if len(args.seeds) > 1:
            print(f"\n=== seed {seed}")
        print_report(results, verbose=not args.quiet)
        print(f"\n{len(recorded)} runs; recording {t_record:.1f} s (cached runs are not retrained), "
              f"every={args.every}, torch threads 1")
    if len(args.seeds) > 1:
        print_over_seeds(per_seed)
    return 0


def print_over_seeds(per_seed: dict[int, list[RunResult]]) -> None:
    """gradwatch's figures per seed, their mean and the worst seed. A run whose outcome
    contradicts its label on a seed (a faulty recipe that trained) is left out there."""
    rows: dict[str, list[float]] = {"faulty runs, every label found": [], "false alarms, at the end": [],
                                    "false alarms, at any point": []}
    left_out = []
    for seed, results in per_seed.items():
        kept = [r for r in results if r.outcome_agrees]
        left_out += [f"{r.spec.name} (seed {seed})" for r in results if not r.outcome_agrees]
        faulty = [r for r in kept if not r.spec.healthy]
        healthy = [r for r in kept if r.spec.healthy]
        rows["faulty runs, every label found"].append(sum(r.scored_labels <= r.found["gradwatch"] for r in faulty) / max(len(faulty), 1))
        rows["false alarms, at the end"].append(sum(bool(r.found["gradwatch"]) for r in healthy) / max(len(healthy), 1))
        rows["false alarms, at any point"].append(sum(bool(r.ever["gradwatch"]) for r in healthy) / max(len(healthy), 1))
    print(f"\ngradwatch over seeds {' '.join(map(str, per_seed))}:")
    for name, values in rows.items():
        seed_line(name, values, min if name.startswith("faulty") else max, 32)
    print(f"  outcome contradicts the label (not scored): {', '.join(left_out) or 'none'}")


if __name__ == "__main__":
    raise SystemExit(main())
