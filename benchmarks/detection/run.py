"""The labelled detection benchmark: record the suite's runs, then score the detectors.

    python benchmarks/detection/run.py            # record missing runs, score, print
    python benchmarks/detection/run.py --fresh    # re-record every run first
    python benchmarks/detection/run.py --only mlp16-sigmoid-sgd lstm-adding-adam

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

from scoring import print_report, score_suite  # noqa: E402
from suite import Outcome, Spec, specs  # noqa: E402

import gradwatch as gw  # noqa: E402

CACHE = HERE / ".cache"
#: Bump when a run's recipe changes, so stale logs are re-recorded.
SUITE_VERSION = 2


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
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    args.cache.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in specs() if args.only is None or s.name in args.only]
    t0 = time.perf_counter()
    recorded = []
    for spec in chosen:
        log, outcome = record(spec, args.cache, args.every, args.fresh)
        recorded.append((spec, gw.load(log), outcome))
    t_record = time.perf_counter() - t0
    results = score_suite(recorded)
    print_report(results, verbose=not args.quiet)
    print(f"\n{len(recorded)} runs; recording {t_record:.1f} s (cached runs are not retrained), "
          f"every={args.every}, torch threads 1")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
