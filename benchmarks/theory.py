"""Does mean-field theory predict how a gradient's size changes with depth?

For MLPs of width 256 ({sigmoid, tanh, relu, leaky_relu, gelu} x {default, xavier, he,
orthogonal} x depth {10, 30}, built by `gradwatch.lab.models.mlp`), `gw.inspect` runs one
forward/backward pass on a batch of 256 standard-normal inputs (loss: half the sum of
squares of the output) and reports, per layer, the measured weight-gradient norm and the
one theory predicts from the input batch and the gradient at the output alone. Compared:
log10(first / last hidden layer's weight-gradient norm), averaged over seeds.

Target: |predicted - measured| <= 0.5 + 0.2 |measured| decades in at least 90% of settings.
The "per-sample" column is the same theory without the batch's pair correlations (one
sample, unit output gradient): it shows why they are needed.

    python benchmarks/theory.py            # the table in docs/performance.md (3 seeds)
    python benchmarks/theory.py --seeds 1  # a fast look
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

import gradwatch as gw
from gradwatch.explain.theory import ChainLayer, predict_chain
from gradwatch.lab.models import mlp

ACTIVATIONS = ["sigmoid", "tanh", "relu", "leaky_relu", "gelu"]
INITS = ["default", "xavier", "he", "orthogonal"]
DEPTHS = [10, 30]
WIDTH, BATCH = 256, 256


def one(act: str, init: str, depth: int, seed: int) -> tuple[float, float, float]:
    """(measured, predicted, per-sample predicted) log10 first/last hidden weight-gradient norm."""
    model = mlp(WIDTH, 10, depth=depth, width=WIDTH, activation=act, init=init, seed=seed)
    x = torch.randn(BATCH, WIDTH, generator=torch.Generator().manual_seed(10_000 + seed))
    d = gw.inspect(model, x)
    hidden = d.layers[:-1]  # the last layer is the head
    first, last = hidden[0], hidden[-1]
    assert first.measured_grad_norm and last.measured_grad_norm
    assert first.predicted_grad_norm and last.predicted_grad_norm
    measured = math.log10(first.measured_grad_norm / last.measured_grad_norm)
    predicted = math.log10(first.predicted_grad_norm / last.predicted_grad_norm)
    chain = [
        ChainLayer(r.name, WIDTH, r.extra["sigma_w2"], r.extra["sigma_b2"] or 0.0, r.extra["activation"])
        for r in d.layers
    ]
    single = predict_chain(chain).grad_norm
    return measured, predicted, math.log10(single[0] / single[-2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    print(f"width {WIDTH}, batch {BATCH} standard-normal inputs, loss sum(y^2)/2, {args.seeds} seed(s)")
    print("log10(first / last hidden layer weight-gradient norm), mean over seeds\n")
    header = "| activation | init | depth | measured | predicted | error | tolerance | within | per-sample |"
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|:---:|---:|")
    ok = ok_single = total = 0
    errors = []
    for act in ACTIVATIONS:
        for init in INITS:
            for depth in DEPTHS:
                runs = np.array([one(act, init, depth, s) for s in range(args.seeds)])
                m, p, single = runs.mean(axis=0)
                tol = 0.5 + 0.2 * abs(m)
                err = p - m
                within = abs(err) <= tol
                ok += within
                ok_single += abs(single - m) <= tol
                total += 1
                errors.append(abs(err))
                print(
                    f"| {act} | {init} | {depth} | {m:.2f} | {p:.2f} | {err:+.2f} | {tol:.2f} | "
                    f"{'yes' if within else 'NO'} | {single:.2f} |"
                )
    print(
        f"\nwithin tolerance: {ok}/{total} settings ({ok / total:.0%}; target >= 90%); "
        f"median |error| {np.median(errors):.2f} decades, max {max(errors):.2f}; "
        f"per-sample theory: {ok_single}/{total}"
    )
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
