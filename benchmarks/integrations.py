"""What do the framework adapters cost? Step-time ratios of each Trainer with and without them.

For Lightning (`lightning.Trainer.fit`, the 20-layer ReLU MLP of overhead.py) and the
Hugging Face Trainer (`transformers.Trainer.train`, a 4-layer BERT built from a config),
each round fits a fresh copy of the same model twice, without and with `GradwatchCallback`
at its defaults (every=32), and times the steps [32, 160): 128 steps holding 4 recorded
steps, so the per-record cost is counted at its share (the first record, which also
reads the model's structure once, and Trainer start-up are left out for both). Reported:
the median over rounds of (with / without) step time, side by side, and the same for a
second unmonitored fit ("noise": how far the machine's noise moves a ratio). "derived"
comes from the watched fit alone, so the noise between fits does not enter it: one
period of 32 steps is 31 steps that record nothing plus one recorded step (their median
times, the recorded one with its forward probes), against 32 steps without the time
spent in gradwatch's hooks.

    python benchmarks/integrations.py            # the figures in docs/performance.md
    python benchmarks/integrations.py --quick    # a fast look
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import gradwatch as gw

FIRST, LAST = 32, 160  # timed steps: [FIRST, LAST)
HOOKS = ("on_fit_start", "on_before_optimizer_step", "on_train_batch_end", "on_train_begin",
         "on_pre_optimizer_step", "on_optimizer_step", "on_log")


def timed(cb: Any) -> list[tuple[float, float]]:
    """Time every hook of adapter `cb` (its own work, without the forward probes' share)."""
    spans: list[tuple[float, float]] = []
    for name in HOOKS:
        fn = getattr(cb, name, None)
        if fn is None:
            continue

        def wrapper(*args: Any, _fn: Callable[..., Any] = fn, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                spans.append((t0, time.perf_counter()))

        setattr(cb, name, wrapper)
    return spans


class Timing:
    """Per-step start and end times of one fit, and the spans spent in gradwatch's hooks."""

    def __init__(self, start: dict[int, float], end: dict[int, float], spans: list[tuple[float, float]]) -> None:
        self.start, self.end, self.spans = start, end, spans

    def step(self) -> float:
        """Mean wall time of the timed steps (recorded ones at their share)."""
        return (self.end[LAST - 1] - self.start[FIRST]) / (LAST - FIRST)

    def derived(self) -> float:
        """The adapter's cost from this (watched) fit alone: a period of 32 steps holds one
        recorded step (its median time) and 31 others (median), against 32 steps without the
        time spent in gradwatch's hooks on the steps that record nothing."""
        rec, other, hooks = [], [], []
        for s in range(FIRST, LAST):
            t0, t1 = self.start[s], self.end[s]
            (rec if s % gw.DEFAULT_EVERY == 0 else other).append(t1 - t0)
            if s % gw.DEFAULT_EVERY:
                hooks.append(sum(b - a for a, b in self.spans if a >= t0 and b <= t1))
        n, base = gw.DEFAULT_EVERY, statistics.median(other)
        return ((n - 1) * base + statistics.median(rec)) / (n * (base - statistics.median(hooks)))


# -- Lightning --------------------------------------------------------------------------------
def lightning_fit(watched: bool, out: str) -> Timing:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from gradwatch.integrations.lightning import GradwatchCallback

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            for _ in range(20):
                layers += [nn.Linear(256, 256), nn.ReLU()]
            self.net = nn.Sequential(*layers, nn.Linear(256, 10))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class Clock(pl.Callback):  # last in the callback list: a step ends after gradwatch's hook
        def __init__(self) -> None:
            self.start: dict[int, float] = {}
            self.end: dict[int, float] = {}

        def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
            self.start[trainer.global_step] = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            self.end[trainer.global_step - 1] = time.perf_counter()

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64 * LAST, 256, generator=g), torch.randint(0, 10, (64 * LAST,), generator=g))
    clock = Clock()
    cb = GradwatchCallback(verbose=False)
    spans = timed(cb)
    callbacks: list[Any] = ([cb] if watched else []) + [clock]
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=LAST, callbacks=callbacks, logger=pl.loggers.CSVLogger(out),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Net(), DataLoader(data, batch_size=64))
    return Timing(clock.start, clock.end, spans)


# -- Hugging Face -----------------------------------------------------------------------------
def huggingface_fit(watched: bool, out: str) -> Timing:
    import transformers

    from gradwatch.integrations.huggingface import GradwatchCallback

    class Clock(transformers.TrainerCallback):
        def __init__(self) -> None:
            self.start: dict[int, float] = {}
            self.end: dict[int, float] = {}

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start[state.global_step] = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.end[state.global_step - 1] = time.perf_counter()

    config = transformers.BertConfig(
        vocab_size=1000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=512, max_position_embeddings=64, num_labels=2,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (16 * LAST, 32), generator=g)
    data = [{"input_ids": ids[i], "labels": ids[i, 0] % 2} for i in range(len(ids))]
    clock = Clock()
    cb = GradwatchCallback(verbose=False)
    spans = timed(cb)
    callbacks: list[Any] = [clock] + ([cb] if watched else [])
    args = transformers.TrainingArguments(
        output_dir=out, per_device_train_batch_size=16, max_steps=LAST, logging_steps=10,
        save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
    )
    transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks).train()
    return Timing(clock.start, clock.end, spans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 5")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    rounds = 2 if args.quick else 5
    frameworks: dict[str, Callable[[bool, str], tuple[float, float]]] = {"Lightning": lightning_fit, "Hugging Face": huggingface_fit}
    rows: dict[str, dict[str, list[float]]] = {k: {"ms": [], "direct": [], "derived": [], "noise": []} for k in frameworks}
    with tempfile.TemporaryDirectory() as out:
        for r in range(rounds):
            for name, fit in frameworks.items():
                plain, watched, again = fit(False, out), fit(True, out), fit(False, out)
                row = rows[name]
                row["ms"].append(plain.step() * 1e3)
                row["direct"].append(watched.step() / plain.step())
                row["derived"].append(watched.derived())
                row["noise"].append(again.step() / plain.step())
                print(
                    f"round {r + 1}/{rounds} {name}: {plain.step() * 1e3:.1f} ms/step, with gradwatch "
                    f"x{row['direct'][-1]:.3f} (derived x{row['derived'][-1]:.3f}), unmonitored again x{row['noise'][-1]:.3f}",
                    flush=True,
                )
    print()
    print("| trainer | step (ms) | with GradwatchCallback (every=32) | derived | unmonitored, 2nd fit (noise) |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        m = {k: statistics.median(v) for k, v in row.items()}
        print(f"| {name} | {m['ms']:.1f} | {m['direct']:.3f}x | {m['derived']:.3f}x | {m['noise']:.3f}x |")


if __name__ == "__main__":
    main()
