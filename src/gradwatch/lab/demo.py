"""`gradwatch demo`: the vanishing-gradient problem on real data — measured, explained, fixed.

Two 16-layer MLPs learn scikit-learn's 8x8 digits under `gw.watch`: one with sigmoid
activations and PyTorch's default initialisation, one with ReLU and He initialisation.
The demo prints each layer's gradient norm on a log scale, side by side, and both test
accuracies; then gradwatch's diagnosis of the sigmoid run, the repair `gw.fix` proposes,
and the repaired network trained the same way.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TextIO

import numpy as np
import torch
from torch import nn

import gradwatch as gw
from gradwatch.lab.data import Split, accuracy, batches, digits
from gradwatch.lab.models import mlp


@dataclass
class Trained:
    label: str
    grad_norms: list[float]
    layer_names: list[str]
    accuracy: float
    final_loss: float
    model: nn.Module
    watcher: gw.Watcher


def train(label: str, activation: str, init: str, *, depth: int, steps: int, seed: int) -> Trained:
    data = digits(seed=seed)
    model = mlp(data.n_features, data.n_classes, depth=depth, width=64, activation=activation, init=init, seed=seed)
    return train_model(label, model, steps=steps, seed=seed)


def watched_digits(model: nn.Module, data: Split, *, lr: float, steps: int, seed: int) -> gw.Watcher:
    """`steps` batches of 64 digits under SGD (momentum 0.9) at `lr`, watched: the watcher."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    with gw.watch(model) as w:
        for x, y in batches(data.x_train, data.y_train, 64, steps, seed=seed):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    return w


def train_model(label: str, model: nn.Module, *, steps: int, seed: int, lr_scale: float = 1.0) -> Trained:
    data = digits(seed=seed)
    w = watched_digits(model, data, lr=0.01 * lr_scale, steps=steps, seed=seed)
    recent = w.timeline.layer_metric("grad_norm")[-5:]
    _, losses = w.timeline.loss()
    return Trained(
        label=label,
        grad_norms=[float(v) for v in np.nanmean(recent, axis=0)],
        layer_names=list(w.timeline.layers),
        accuracy=accuracy(model, data.x_test, data.y_test),
        final_loss=float(np.mean(losses[-20:])),
        model=model,
        watcher=w,
    )


def _bar(value: float, lo: float, hi: float, width: int = 22) -> str:
    if not math.isfinite(value) or value <= 0:
        return " " * width
    frac = (math.log10(value) - lo) / max(hi - lo, 1e-9)
    n = max(1, round(frac * width))
    return ("█" * n).ljust(width)


def _what_happened(bad: Trained, good: Trained, *, classes: int) -> str:
    """The measured story, in words: each net's first-to-last gradient ratio and accuracy."""
    chance = 1 / classes

    def verdict(t: Trained) -> str:
        if t.accuracy < 2 * chance:
            return f"stays near chance: {t.accuracy:.1%} right on the test set (chance {chance:.0%}, {classes} classes)"
        return f"learns: {t.accuracy:.1%} right on the test set (chance {chance:.0%})"

    def ratio(t: Trained) -> float:
        return t.grad_norms[0] / t.grad_norms[-1]

    return "\nMeasured:\n" + "\n".join(
        f"- {t.label}: the first layer gets {ratio(t):.0e} of the last layer's gradient;\n  the network {verdict(t)}."
        for t in (bad, good)
    )


def run(
    steps: int = 300, depth: int = 16, seed: int = 0, out: TextIO | None = None, html: str | None = None
) -> tuple[Trained, Trained]:
    """Train both networks, print what happened, fix the sigmoid one; with `html`, also
    write the HTML report of the sigmoid run (its diagnosis, figures and the fix) there."""
    out = out or sys.stdout
    print(
        f"gradwatch demo: two {depth}-layer MLPs (width 64) learn scikit-learn's 8x8 digits,\n"
        f"{steps} SGD steps (lr 0.01, momentum 0.9), watched with gw.watch.\n",
        file=out,
    )
    bad = train("sigmoid, default init", "sigmoid", "default", depth=depth, steps=steps, seed=seed)
    good = train("relu, He init", "relu", "he", depth=depth, steps=steps, seed=seed)
    values = [v for t in (bad, good) for v in t.grad_norms if math.isfinite(v) and v > 0]
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    print(f"gradient norm per layer, log scale from 1e{lo} to 1e{hi} (input side at the top)\n", file=out)
    print(f"{'layer':>6}  {bad.label:<33}  {good.label:<33}", file=out)
    for i, name in enumerate(bad.layer_names):
        b, g = bad.grad_norms[i], good.grad_norms[i]
        print(f"{name:>6}  {b:8.1e} {_bar(b, lo, hi)}  {g:8.1e} {_bar(g, lo, hi)}", file=out)
    print(file=out)
    for t in (bad, good):
        print(f"{t.label:<24} test accuracy {t.accuracy:6.1%}   final loss {t.final_loss:.3f}", file=out)
    print(_what_happened(bad, good, classes=10), file=out)
    diagnosis = bad.watcher.diagnose()
    print(f"\n── gradwatch's diagnosis of the sigmoid run ──\n{diagnosis}", file=out)
    result = gw.fix(bad.model, diagnosis, timeline=bad.watcher.timeline)
    print(f"\n── gw.fix proposes ──\n{result}", file=out)
    if html:
        try:
            page = gw.report(bad.watcher, html=html, diagnosis=diagnosis, fix=result, terminal=False).html
            print(f"\nHTML report of the sigmoid run (figures, findings, the fix): {page}", file=out)
        except ImportError as e:  # the report extra (matplotlib) is not installed
            print(f"\nno HTML report ({e}): pip install 'gradwatch[report]'", file=out)
    fixed = train_model(
        "fixed", result.model, steps=steps, seed=seed, lr_scale=float(result.advice.get("lr_scale", 1.0))
    )
    print(
        f"\nThe repaired network, trained the same way: test accuracy {fixed.accuracy:.1%} "
        f"(was {bad.accuracy:.1%}), final loss {fixed.final_loss:.3f}.",
        file=out,
    )
    return bad, good
