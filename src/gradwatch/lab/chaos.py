"""The order-to-chaos map for tanh nets: trainable depth against the depth scale 6 xi_c
(Schoenholz, Gilmer, Ganguli & Sohl-Dickstein 2017).

With weights of variance ``sigma_w^2 / fan_in`` and biases of variance ``sigma_b^2``, a
deep tanh net's inputs either all collapse onto one point (the ordered phase: gradients
vanish) or decorrelate (the chaotic phase: gradients explode). The correlation between
two inputs approaches its fixed point ``c*`` as ``exp(-l / xi_c)``, with
``xi_c = -1 / ln chi_c`` and ``chi_c = sigma_w^2 E[phi'(u1) phi'(u2)]`` at ``c*``; at the
boundary ``xi_c`` diverges. Schoenholz et al. found nets train when their depth is
below about ``6 xi_c`` and fail beyond. `depth_scale` computes ``xi_c`` with the
expectations of `gradwatch.explain.theory`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from gradwatch.explain import theory
from gradwatch.lab.data import accuracy, digits
from gradwatch.lab.demo import watched_digits
from gradwatch.lab.models import mlp
from gradwatch.lab.spec import (
    CHANCE_ACC,
    TRAINS_ACC,
    Experiment,
    Observation,
    Setting,
    problems,
    steps,
)

__all__ = ["CHAOS", "SIGMA_B2", "depth_scale"]

#: The bias variance of every net in the experiment (Schoenholz et al.'s figure 5 uses 0.05).
SIGMA_B2 = 0.05


@lru_cache(maxsize=64)
def depth_scale(sigma_w2: float, sigma_b2: float = SIGMA_B2, spec: str = "tanh", iterations: int = 200) -> dict[str, float]:
    """Mean-field fixed points and depth scale of a deep net of `spec` at (`sigma_w2`, `sigma_b2`).

    Returns ``q_star`` (the pre-activation variance's fixed point), ``c_star`` (the
    correlation's), ``chi_1`` (the per-layer gain of the squared gradient at ``q*``: below 1
    ordered, above 1 chaotic), ``chi_c`` and ``xi_c = -1 / ln chi_c`` (inf at the boundary).
    """
    act = theory.activation(spec)
    q = 1.0
    for _ in range(iterations):
        q, before = sigma_w2 * theory.moments(act, q)[0] + sigma_b2, q
        if abs(q - before) < 1e-12 * q:
            break
    # The correlation map is evaluated on a grid and iterated by interpolation: one
    # quadrature instead of one per step (it converges slowly near the boundary).
    grid = np.linspace(-1.0, 1.0, 401)
    kphi, _ = theory.bivariate_moments(act, q, grid)
    cmap = np.minimum(1.0, (sigma_w2 * kphi + sigma_b2) / q)
    c = 0.0
    for _ in range(20 * iterations):
        c, before = float(np.interp(c, grid, cmap)), c
        if abs(c - before) < 1e-12:
            break
    chi_c = sigma_w2 * float(theory.bivariate_moments(act, q, np.array([c]))[1][0])
    return {
        "q_star": q, "c_star": c, "chi_1": theory.chi(act, sigma_w2, q), "chi_c": chi_c,
        "xi_c": -1.0 / math.log(chi_c) if chi_c < 1.0 else math.inf,
    }


def _run(p: dict[str, Any], seed: int, quick: bool) -> Observation:
    scale = depth_scale(p["sigma_w2"])
    data = digits(seed=seed)
    model = mlp(data.n_features, data.n_classes, depth=p["depth"], width=64, activation="tanh",
                sigma=(p["sigma_w2"], SIGMA_B2), seed=seed)
    n = steps(p, quick, 300, 500)
    w = watched_digits(model, data, lr=0.003, steps=n, seed=seed)
    train_acc = accuracy(model, data.x_train, data.y_train)
    outcome = "trains" if train_acc >= TRAINS_ACC else "fails" if train_acc <= CHANCE_ACC else "partial"
    d = w.diagnose()
    profile = [float(r.measured_grad_norm) if r.measured_grad_norm is not None else float("nan") for r in d.layers]
    return Observation(
        outcome=outcome,
        observed={"train_accuracy": train_acc, "six_xi_c": 6 * scale["xi_c"], "chi_1": scale["chi_1"],
                  "c_star": scale["c_star"], "first_to_last_grad": profile[0] / profile[-1], "steps": n},
        verdict=problems(d),
        series={"grad_norm": profile},
    )


_VANISH = ("vanishing_gradient",)
_EXPLODE = ("exploding_gradient",)
_EITHER = _VANISH + _EXPLODE


def _setting(sigma_w2: float, depth: int, quick: bool = False) -> Setting:
    """The expected outcome is the theory's: trains iff depth < 6 xi_c; the expected verdict
    follows the phase: vanishing in the ordered phase, exploding in the chaotic one."""
    scale = depth_scale(sigma_w2)
    if depth < 6 * scale["xi_c"]:
        return Setting({"sigma_w2": sigma_w2, "depth": depth}, "trains", verdict_not=_EITHER, quick=quick)
    has = _VANISH if scale["chi_1"] < 1 else _EXPLODE
    return Setting({"sigma_w2": sigma_w2, "depth": depth}, "fails", verdict_has=has, quick=quick)


CHAOS = Experiment(
    name="chaos",
    title="Order to chaos: tanh MLPs (width 64, sigma_b^2 = 0.05) over sigma_w^2 and depth against 6 xi_c (digits, SGD momentum 0.9, lr 0.003)",
    citation="Schoenholz, Gilmer, Ganguli & Sohl-Dickstein 2017; Poole et al. 2016",
    claim="A deep tanh net trains when its depth is below about 6 xi_c, the depth scale of "
    "signal propagation, and fails beyond; xi_c diverges at the order-to-chaos boundary "
    "(sigma_w^2 ~ 1.76 at sigma_b^2 = 0.05), where nets of any depth here train.",
    judge=f"expected 'trains' when depth < 6 xi_c, else 'fails'; observed: training accuracy >= "
    f"{TRAINS_ACC} 'trains', <= {CHANCE_ACC} 'fails'. gradwatch must report vanishing_gradient for "
    "a failing net in the ordered phase (chi_1 < 1), exploding_gradient in the chaotic one, "
    "neither for a net that trains.",
    settings=(
        _setting(1.76, 50, quick=True),
        _setting(1.0, 60, quick=True),
        _setting(1.0, 8, quick=True),
        _setting(0.5, 3),
        _setting(0.5, 30, quick=True),
        _setting(4.0, 10, quick=True),
        _setting(4.0, 100),
    ),
    run=_run,
    tiny={"steps": 5, "depth": 4},
)
