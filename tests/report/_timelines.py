"""A hand-made Timeline and Diagnosis whose every number the figure tests know."""

from __future__ import annotations

import numpy as np

import gradwatch as gw

LAYERS = ["in", "mid", "out"]
STEPS = [0, 10, 20, 30, 40]
SITES = ["relu1", "sig1"]


def grad_norm(step_index: int) -> np.ndarray:
    """Layer 'in' falls a decade per record behind 'mid' (1e-2) and 'out' (1)."""
    return np.array([1e-3 * 10.0**-step_index, 1e-2, 1.0])


def timeline() -> gw.Timeline:
    t = gw.Timeline(layers=LAYERS)
    for i, step in enumerate(STEPS):
        g = grad_norm(i)
        t.ingest(
            {
                "type": "record",
                "step": step,
                "layers": {
                    "grad_norm": g.tolist(),
                    "grad_rms": (g / 10).tolist(),
                    "grad_max": (g * 3).tolist(),
                    "weight_norm": [2.0, 2.0, 2.0],
                    "update_ratio": [0.0 if i == 0 else 1e-6 * (i + 1), 1e-3, float("nan") if i == 0 else 2e-2],
                },
                "values": {
                    "act_dead_frac": {"relu1": 0.1 * i},
                    "act_sat_frac": {"sig1": 0.9 - 0.1 * i},
                },
                "profiles": {"grad_t/rnn": [10.0**-k for k in range(5, -1, -1)]},
                "losses": [[s, 2.3 - 0.01 * s] for s in range(step, step + 10)],
            }
        )
    return t


def diagnosis() -> gw.Diagnosis:
    return gw.Diagnosis(
        findings=[
            gw.Finding(gw.Kind.VANISHING_GRADIENT, gw.Severity.ERROR, ["in"], 20, {"ratio": 1e-5}, "layer in starves"),
            gw.Finding(gw.Kind.FLAT_LOSS, gw.Severity.WARNING, [], 30, {"loss_chance": 2.302585}, "the loss is flat"),
            gw.Finding(gw.Kind.DEAD_UNITS, gw.Severity.INFO, ["relu1"], 10, {"dead": 0.4}, "some units are dead"),
        ],
        layers=[
            gw.LayerReport("in", "Linear", measured_grad_norm=1e-7, predicted_grad_norm=2e-7),
            gw.LayerReport("mid", "Linear", measured_grad_norm=1e-2, predicted_grad_norm=None),
            gw.LayerReport("out", "Linear", measured_grad_norm=1.0, predicted_grad_norm=1.0),
        ],
        steps=50,
        jacobian=[4.0, 1.0, 0.5, 0.01],
    )
