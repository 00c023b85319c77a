"""How long does building a report take? A 5,000-step log of a 100-layer model.

The log is made once by really training (a 100-Linear-layer tanh MLP, width 16, batch 32,
`gw.watch(every=EVERY, log=...)`) and kept in build/bench-report/; then `gw.report(path,
html=...)` — reading the log, judging it, drawing every figure, writing the page — is
timed, each phase apart, over a few repeats (median). Issue 17's target: at most 5 s.

    python benchmarks/report.py                # 5,000 steps, every step recorded, 3 repeats
    python benchmarks/report.py --every 32     # the default recording interval (157 records)
    python benchmarks/report.py --steps 500    # a fast look
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import gradwatch as gw

OUT = Path(__file__).resolve().parents[1] / "build" / "bench-report"


def make_log(path: Path, steps: int, layers: int, every: int) -> None:
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for _ in range(layers - 1):
        mods += [nn.Linear(16, 16), nn.Tanh()]
    model = nn.Sequential(*mods, nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    with gw.watch(model, every=every, log=path) as w:
        for _ in range(steps):
            x, y = torch.randn(32, 16, generator=g), torch.randint(0, 4, (32,), generator=g)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--layers", type=int, default=100)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / f"run-{args.steps}x{args.layers}-every{args.every}.jsonl"
    if not log.exists():
        t = time.perf_counter()
        make_log(log, args.steps, args.layers, args.every)
        print(f"made {log.name} ({log.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t:.0f} s")
    import matplotlib  # noqa: F401  (imported once, outside the timings: a one-off cost of the first report)

    from gradwatch.report import draw_all
    from gradwatch.report._source import gather
    from gradwatch.report.html import page

    # Wall time, and the process's CPU time: on a shared, loaded machine the CPU time is
    # what the same work takes when the machine is idle (one thread: nothing runs in parallel).
    phases: dict[str, list[tuple[float, float]]] = {k: [] for k in ("load", "judge", "figures", "page", "gw.report total")}

    def clock() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def since(t: tuple[float, float]) -> tuple[float, float]:
        now = clock()
        return now[0] - t[0], now[1] - t[1]

    for _ in range(args.repeats):
        t = clock()
        run = gw.load(log)
        phases["load"].append(since(t))
        t = clock()
        m = gather(run)
        phases["judge"].append(since(t))
        t = clock()
        figs = draw_all(m)
        phases["figures"].append(since(t))
        t = clock()
        (OUT / "report.html").write_text(page(m, figs), encoding="utf-8")
        phases["page"].append(since(t))
        t = clock()
        gw.report(log, html=OUT / "report.html", out=io.StringIO())
        phases["gw.report total"].append(since(t))
    print(f"{len(run)} records x {len(run.timeline.layers)} layers, {len(figs)} figures; median of {args.repeats}:")
    print(f"  {'':<16} {'wall':>7} {'CPU':>7}")
    for k, v in phases.items():
        print(f"  {k:<16} {statistics.median(w for w, _ in v):6.2f}s {statistics.median(c for _, c in v):6.2f}s")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
