"""What does the Keras callback cost? Step time of ``model.fit`` with and without it, side by side.

Each round builds the same Keras model (an MLP of `--depth` ReLU layers of `--width` units
on 64 inputs, 10 classes, Adam, the model's default ``jit_compile``) twice from one seed and
fits it on the same random data: once with a timing callback alone, once with the timing
callback and `GradwatchCallback` at its defaults (every=32). The steps [32, 32 + 128) are
timed in both (tracing and the first record, which also reads the model's structure, are
left out). Each fit's step time is robust to the machine's load spikes: the median of its
steps that record nothing, plus for the watched fit a 32nd of the median extra time of its
recorded steps (4 in the window), so a record counts at its share. Reported: the median
over rounds of (with / without) ("direct"), and the same for two fits without gradwatch
("noise": how far the machine's own noise moves a ratio). "derived" comes from the watched
fit alone, so the noise between fits does not enter it: the steps that record nothing run
the model's own training function (only the callback's hooks are added), so the watched
step time over the median of those steps is the cost of the records and hooks.

    nice -n 5 python benchmarks/keras_overhead.py            # the figure in docs/performance.md
    python benchmarks/keras_overhead.py --rounds 2           # a fast look
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

from gradwatch.integrations.keras import GradwatchCallback

FIRST, TIMED = 32, 128


class StepClock(keras.callbacks.Callback):
    """The CPU time of each training step (all threads of the process), from one batch's end to the next's."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.ends.append(time.process_time())

    def step_time(self, every: int = 32) -> tuple[float, float]:
        """Median time of the steps [FIRST, FIRST + TIMED) that record nothing, plus 1/every of
        the median extra time of those that do (steps that are multiples of `every`); and the
        median of those that record nothing alone."""
        t = np.diff(np.asarray(self.ends[FIRST - 1 : FIRST + TIMED]))
        steps = np.arange(FIRST, FIRST + TIMED)
        recorded = steps % every == 0
        base = float(np.median(t[~recorded]))
        return base + max(0.0, float(np.median(t[recorded])) - base) / every, base


def model(depth: int, width: int) -> keras.Model:
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(width, activation="relu", kernel_initializer="he_normal") for _ in range(depth)]
    m = keras.Sequential([keras.Input((64,)), *layers, keras.layers.Dense(10)])
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def step_time(depth: int, width: int, batch: int, watched: bool) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    n = batch * (FIRST + TIMED + 2)
    x = rng.standard_normal((n, 64)).astype("float32")
    y = rng.integers(0, 10, n)
    clock = StepClock()
    callbacks: list[keras.callbacks.Callback] = [clock]
    if watched:
        callbacks.append(GradwatchCallback(verbose=False))
    model(depth, width).fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    return clock.step_time()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="TensorFlow's intra- and inter-op threads")
    args = p.parse_args()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    ratios, derived, noise, base = [], [], [], []
    for r in range(args.rounds):
        plain, _ = step_time(args.depth, args.width, args.batch, watched=False)
        watched, unrecorded = step_time(args.depth, args.width, args.batch, watched=True)
        again, _ = step_time(args.depth, args.width, args.batch, watched=False)
        ratios.append(watched / plain)
        derived.append(watched / unrecorded)
        noise.append(again / plain)
        base.append(plain)
        print(f"round {r}: without {plain * 1e3:.2f} ms/step, with {watched * 1e3:.2f} ms/step, "
              f"direct {watched / plain:.3f}x, derived {watched / unrecorded:.3f}x "
              f"(noise {again / plain:.3f}x)", flush=True)  # fmt: skip
    print(f"\nKeras {keras.__version__} ({keras.backend.backend()}, {args.threads} thread(s)), MLP {args.depth}x{args.width}, batch {args.batch}, "
          f"GradwatchCallback at every=32: step {statistics.median(base) * 1e3:.2f} ms without; "
          f"median ratio with/without: direct {statistics.median(ratios):.3f}x, derived "
          f"{statistics.median(derived):.3f}x ({min(derived):.3f}-{max(derived):.3f}); noise {statistics.median(noise):.3f}x "
          f"over {args.rounds} rounds")  # fmt: skip


if __name__ == "__main__":
    main()
