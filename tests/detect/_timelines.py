"""Hand-made Timelines for detector tests, built through `Timeline.ingest` (the log format)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gradwatch.anatomy import Anatomy, Layer
from gradwatch.record import Timeline


def chain_anatomy(n: int, width: int = 16, classes: int = 10) -> Anatomy:
    """n Linear layers `0`, `2`, ... in execution order, the last with `classes` outputs."""
    layers = [
        Layer(
            name=str(2 * i), type="Linear", fan_in=width, fan_out=classes if i == n - 1 else width,
            n_params=width * width, param_names=[f"{2 * i}.weight"], trainable=True, order=i,
        )
        for i in range(n)
    ]  # fmt: skip
    return Anatomy(layers, "Sequential")


def build(
    anatomy: Anatomy,
    records: int,
    *,
    every: int = 10,
    layers: Callable[[int], dict[str, Sequence[float]]] | None = None,
    loss: Callable[[int], float] | None = None,
    values: Callable[[int], dict[str, dict[str, float]]] | None = None,
    profiles: Callable[[int], dict[str, Sequence[float]]] | None = None,
    sites: dict[str, dict[str, Any]] | None = None,
) -> Timeline:
    """`records` recording steps 0, every, 2*every, ...; a loss at every step if `loss` is given.

    Each callable gets the recording step (or, for `loss`, the training step) and returns
    that record's part, in the log-format shapes of docs/log-format.md.
    """
    names = [layer.name for layer in anatomy.layers if layer.trainable]
    tl = Timeline(layers=names)
    if sites is not None:
        tl.sites.update(sites)
    prev = -1
    for r in range(records):
        step = r * every
        rec: dict[str, Any] = {"type": "record", "step": step}
        if loss is not None:
            rec["losses"] = [[s, float(loss(s))] for s in range(prev + 1, step + 1)]
        rec["layers"] = {k: [float(x) for x in v] for k, v in (layers(step) if layers else {}).items()}
        if values is not None:
            rec["values"] = values(step)
        if profiles is not None:
            rec["profiles"] = {k: [float(x) for x in v] for k, v in profiles(step).items()}
        tl.ingest(rec)
        prev = step
    return tl


def grads(n: int, rel: Sequence[float], *, update: float = 1e-3, zero: float = 0.0) -> dict[str, list[float]]:
    """Per-layer metrics with weight norms 1, so each layer's relative gradient is `rel[i]`."""
    return {
        "grad_norm": list(rel),
        "grad_rms": [x / 16 for x in rel],
        "grad_zero_frac": [zero] * n,
        "grad_nonfinite": [0.0] * n,
        "weight_norm": [1.0] * n,
        "update_norm": [update] * n,
        "update_ratio": [update] * n,
    }


def stuck_loss(level: float = float(np.log(10))) -> Callable[[int], float]:
    """A loss sitting at `level` with small deterministic wiggles (batch noise)."""
    return lambda s: level + 0.02 * np.sin(1.7 * s)


def falling_loss(start: float = 2.3, rate: float = 0.01, floor: float = 0.05) -> Callable[[int], float]:
    """A loss decaying exponentially from `start` towards `floor`, with small wiggles."""
    return lambda s: floor + (start - floor) * np.exp(-rate * s) + 0.01 * np.sin(1.7 * s)


def slow_loss(start: float = 2.3, rate: float = 3e-4) -> Callable[[int], float]:
    """A loss falling steadily but slowly (by `rate` a step), with small wiggles: at 300 steps
    it is ~2.2 and needs over 20 times the steps run so far to converge at that pace."""
    return lambda s: start - rate * s + 0.01 * np.sin(1.7 * s)
