"""How much does watching cost? Median step-time ratios against an unmonitored loop.

Every variant trains its own copy of the same model, and the variants take turns in
short blocks (round robin), so a slow patch of a noisy machine hits them all alike.
Reported: median over blocks of (variant block time / unmonitored block time of the
same round). "defaults, derived" predicts the default's cost from two larger effects
measured in the same run: a step that records nothing ("never recording") plus the
per-record cost ("every=1" minus 1) divided by the default interval. On a noisy machine
it is steadier than the direct figure. "unmonitored, 2nd copy" is a second unmonitored
model: how far it is from 1.000 is the noise floor of the run. "gw.watch" runs with its forward probes (activations, output spread,
gradient through time) unless the column says "gradients only".

    python benchmarks/overhead.py            # the figures in docs/performance.md
    python benchmarks/overhead.py --quick    # a fast look
    python benchmarks/overhead.py --direct   # one record's CPU time next to a step's

"--direct" times, in this thread's CPU time (which other processes on a loaded machine do
not inflate, as they do wall time), the training step and `w.step()` alone at every=1 with
gradient statistics only, and gives 1 + record / step: the every-step cost without the
noise of the round robin, though not without the cache misses other processes cause.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import gradwatch as gw

Workload = tuple[str, Callable[[], nn.Module], Callable[[], tuple[torch.Tensor, torch.Tensor]], Callable[..., torch.Tensor]]


def mlp() -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(20):
        layers += [nn.Linear(256, 256), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(256, 10))


def cnn() -> nn.Module:
    layers: list[nn.Module] = []
    c = 1
    for _ in range(6):
        layers += [nn.Conv2d(c, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()]
        c = 32
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * 8 * 8, 10))


class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(32, 128, batch_first=True)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def workloads() -> list[Workload]:
    ce = nn.functional.cross_entropy
    return [
        ("mlp 20x256", mlp, lambda: (torch.randn(128, 256), torch.randint(0, 10, (128,))), ce),
        ("cnn 6 conv+bn, 8x8", cnn, lambda: (torch.randn(128, 1, 8, 8), torch.randint(0, 10, (128,))), ce),
        ("lstm, 64 steps", LSTMNet, lambda: (torch.randn(32, 64, 32), torch.randint(0, 10, (32,))), ce),
    ]


#: (name, kind, every, activations) of every variant; the first is the reference.
VARIANTS: list[tuple[str, str, int | None, bool]] = [
    ("unmonitored", "none", None, True),
    ("gw.watch (defaults)", "watch", None, True),
    ("gw.watch(every=1)", "watch", 1, True),
    ("every=1, gradients only", "watch", 1, False),
    ("hand-written .item() per param", "hand", None, True),
    ("never recording", "watch", 10**9, True),
    ("unmonitored, 2nd copy", "none", None, True),
]


class Variant:
    """One way of training: a fresh copy of the model, its optimizer and its monitoring."""

    def __init__(self, base: nn.Module, kind: str, every: int | None, activations: bool) -> None:
        # A fresh copy every round: where a copy lands in memory shifts its speed by a few
        # percent for good; fresh copies turn that bias into noise that the median absorbs.
        self.model = copy.deepcopy(base)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.kind = kind
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.watcher: gw.Watcher | None = None
        if kind == "watch":
            kw = {"every": every} if every else {}
            self.watcher = gw.watch(self.model, activations=activations, **kw)
        self.sink = 0.0

    def run(self, data: list[tuple[torch.Tensor, torch.Tensor]], loss_fn: Callable[..., torch.Tensor]) -> float:
        t0 = time.perf_counter()
        for x, y in data:
            loss = loss_fn(self.model(x), y)
            self.opt.zero_grad()
            loss.backward()
            if self.watcher is not None:
                self.watcher.step(loss=loss)
            elif self.kind == "hand":
                self.sink += sum(p.grad.norm().item() for p in self.params if p.grad is not None)
            self.opt.step()
        return time.perf_counter() - t0


WARMUP = 4  # untimed steps per round: first-call paths and the watcher's record at step 0


def measure(workload: Workload, rounds: int, block: int) -> dict[str, float]:
    _, make, sample, loss_fn = workload
    torch.manual_seed(0)
    base = make()
    data = [sample() for _ in range(block + WARMUP)]
    ratios: dict[str, list[float]] = {name: [] for name, *_ in VARIANTS[1:]}
    for r in range(rounds):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        times = {}
        for name, kind, every, activations in order:
            v = Variant(base, kind, every, activations)
            v.run(data[:WARMUP], loss_fn)
            # Timed: steps WARMUP .. WARMUP + block - 1, which hold block / every records.
            times[name] = v.run(data[WARMUP:], loss_fn)
            if v.watcher is not None:
                v.watcher.close()
        for name in ratios:
            ratios[name].append(times[name] / times["unmonitored"])
    out = {k: statistics.median(x) for k, x in ratios.items()}
    # The default's cost predicted from the two large, easily measured effects: the cost of a
    # step that records nothing, plus the per-record cost (every=1 minus 1) spread over `every`.
    out["defaults, derived"] = out["never recording"] + (out["gw.watch(every=1)"] - 1) / gw.DEFAULT_EVERY
    return out


def direct(workload: Workload, steps: int) -> tuple[float, float]:
    """Median CPU time (ms) of a training step and of one record (every=1, gradients only)."""
    _, make, sample, loss_fn = workload
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    data = [sample() for _ in range(8)]
    train, record = [], []
    with gw.watch(model, every=1, activations=False) as w:
        for i in range(steps + WARMUP):
            x, y = data[i % len(data)]
            t0 = time.thread_time()
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            t1 = time.thread_time()
            w.step(loss=loss)
            t2 = time.thread_time()
            opt.step()
            t3 = time.thread_time()
            if i >= WARMUP:
                train.append(t1 - t0 + t3 - t2)
                record.append(t2 - t1)
    return statistics.median(train) * 1e3, statistics.median(record) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--block", type=int, default=64, help="steps per block (a multiple of every)")
    ap.add_argument("--quick", action="store_true", help="5 rounds of 32 steps")
    ap.add_argument("--direct", action="store_true", help="CPU time of one record next to a step's")
    args = ap.parse_args()
    if args.direct:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; CPU time, median of 60 steps")
        print("| workload | training step | one record (every=1, gradients only) | 1 + record / step |")
        print("|---|---|---|---|")
        for w in workloads():
            train, record = direct(w, 60)
            print(f"| {w[0]} | {train:.2f} ms | {record:.2f} ms | {1 + record / train:.3f}x |", flush=True)
        return
    rounds, block = (5, 32) if args.quick else (args.rounds, args.block)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, default every={gw.DEFAULT_EVERY}, "
          f"{rounds} rounds of {block} steps")
    header = [
        "workload",
        "gw.watch (defaults)",
        "defaults, derived",
        "gw.watch(every=1)",
        "every=1, gradients only",
        "never recording",
        "hand-written .item() per param",
        "unmonitored, 2nd copy",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for w in workloads():
        res = measure(w, rounds, block)
        print("| " + " | ".join([w[0]] + [f"{res[h]:.3f}x" for h in header[1:]]) + " |", flush=True)


if __name__ == "__main__":
    main()
