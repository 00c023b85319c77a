"""The lab's experiments, as data: each says what it sets up, what the literature found
(with the citation), how an observation is judged against that, and which verdict
gradwatch should give.

An `Experiment` holds `Setting`s; running one setting with one seed gives an
`Observation` (numbers, the outcome they amount to, and gradwatch's findings or causes).
The runner (`gradwatch.lab.runner`) turns each into one row of ``results.json``.
Only the public API (``import gradwatch as gw``) and the lab's own data and models are used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import gradwatch as gw
from gradwatch.lab.data import accuracy, adding_problem, digits
from gradwatch.lab.demo import watched_digits
from gradwatch.lab.models import SeqLast, mlp

__all__ = ["EXPERIMENTS", "Experiment", "Observation", "Setting"]

#: Test accuracy on the 10 digit classes at or above which a net "trains", and at or below
#: which it "stays at chance" (chance is 10%).
TRAINS_ACC = 0.8
CHANCE_ACC = 0.2


@dataclass(frozen=True)
class Setting:
    """One configuration, the outcome the literature leads us to expect, and gradwatch's expected verdict.

    `verdict_has`: at least one of these kinds must be found (above `info`); `verdict_not`:
    none of these may be. For experiments judged before training, they name causes instead.
    """

    params: dict[str, Any]
    expected: str
    verdict_has: tuple[str, ...] = ()
    verdict_not: tuple[str, ...] = ()
    quick: bool = False  # part of the --quick set


@dataclass
class Observation:
    outcome: str
    observed: dict[str, Any]
    verdict: list[str]  # kinds (or causes) gradwatch reported
    series: dict[str, list[float]] = field(default_factory=dict)  # per-layer profiles, for figures


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    citation: str
    claim: str  # the literature's result, in one sentence
    judge: str  # how an observation is judged, in one sentence
    settings: tuple[Setting, ...]
    run: Callable[[dict[str, Any], int, bool], Observation]  # (params, seed, quick) -> Observation

    def selected(self, quick: bool) -> list[Setting]:
        return [s for s in self.settings if s.quick or not quick]


def _problems(d: gw.Diagnosis) -> list[str]:
    return sorted({str(f.kind) for f in d.findings if f.severity > gw.Severity.INFO})


# -- depth x activation x initialisation on digits -------------------------------------------------
def _run_depth(p: dict[str, Any], seed: int, quick: bool) -> Observation:
    data = digits(seed=seed)
    model = mlp(
        data.n_features, data.n_classes, depth=p["depth"], width=64, activation=p["activation"],
        init=p["init"], batchnorm=p.get("batchnorm", False), seed=seed,
    )
    steps = 150 if quick else 300
    w = watched_digits(model, data, lr=p["lr"], steps=steps, seed=seed)
    acc = accuracy(model, data.x_test, data.y_test)
    outcome = "trains" if acc >= TRAINS_ACC else "chance" if acc <= CHANCE_ACC else "partial"
    d = w.diagnose()
    grads = [r.measured_grad_norm for r in d.layers]
    profile = [float(g) if g is not None else float("nan") for g in grads]
    first, last = profile[0], profile[-1]
    ratio = first / last if last and np.isfinite(first) and np.isfinite(last) else float("nan")
    return Observation(
        outcome=outcome,
        observed={"test_accuracy": acc, "steps": steps, "first_to_last_grad": ratio},
        verdict=_problems(d),
        series={"grad_norm": profile},
    )


_VANISH = ("vanishing_gradient",)


def _depth_setting(act: str, init: str, depth: int, lr: float, expected: str, *, bn: bool = False,
                   has: tuple[str, ...] = (), quick: bool = False) -> Setting:
    return Setting(
        {"activation": act, "init": init, "depth": depth, "batchnorm": bn, "lr": lr},
        expected, verdict_has=has, verdict_not=() if has == _VANISH else _VANISH, quick=quick,
    )


DEPTH = Experiment(
    name="depth",
    title="Depth x activation x initialisation on 8x8 digits (MLP width 64, SGD momentum 0.9)",
    citation="Glorot & Bengio 2010; Ioffe & Szegedy 2015; He et al. 2015",
    claim="Deep sigmoid/tanh nets at small initial weights stay at chance while shallow ones "
    "train; BatchNorm rescues the deep sigmoid net; ReLU with He init trains deep; a deep He-init "
    "ReLU net at too large a step fails from the step size, not from vanishing.",
    judge=f"trains: test accuracy >= {TRAINS_ACC}; chance: <= {CHANCE_ACC}. gradwatch must report "
    "vanishing_gradient for the nets that vanish, and not for the others.",
    settings=(
        _depth_setting("sigmoid", "default", 2, 0.1, "trains", quick=True),
        _depth_setting("sigmoid", "default", 16, 0.1, "chance", has=_VANISH, quick=True),
        _depth_setting("sigmoid", "default", 16, 0.1, "trains", bn=True, quick=True),
        _depth_setting("relu", "he", 16, 0.01, "trains", quick=True),
        _depth_setting("relu", "he", 16, 0.1, "chance", has=("diverging_loss", "nonfinite_gradient"), quick=True),
        _depth_setting("relu", "default", 16, 0.01, "chance", has=_VANISH),
        _depth_setting("tanh", "default", 16, 0.01, "chance", has=_VANISH),
        _depth_setting("tanh", "xavier", 16, 0.01, "trains"),
    ),
    run=_run_depth,
)


# -- theory against measurement -----------------------------------------------------------------
#: The measured gradient of every layer must lie within this factor of the predicted one.
THEORY_FACTOR = 2.0


def _run_theory(p: dict[str, Any], seed: int, quick: bool) -> Observation:
    data = digits(seed=seed)
    model = mlp(data.n_features, data.n_classes, depth=p["depth"], width=p.get("width", 64),
                activation=p["activation"], init=p["init"], seed=seed)
    n = 128
    x, y = data.x_train[:n], data.y_train[:n]
    d = gw.inspect(model, x, loss_fn=lambda out: nn.functional.cross_entropy(out, y), jacobian=True)
    pairs = [(r.measured_grad_norm, r.predicted_grad_norm) for r in d.layers]
    pairs = [(m, q) for m, q in pairs if m and q]
    meas = np.array([m for m, _ in pairs])
    pred = np.array([q for _, q in pairs])
    err = float(np.max(np.abs(np.log10(meas / pred)))) if len(pairs) else float("inf")
    ratio_m, ratio_p = float(meas[0] / meas[-1]), float(pred[0] / pred[-1])
    outcome = "vanishes" if ratio_m < 1e-3 else "level" if ratio_m > 0.1 else "shrinks"
    if err > np.log10(THEORY_FACTOR):
        outcome += ", off theory"
    return Observation(
        outcome=outcome,
        observed={"first_to_last_measured": ratio_m, "first_to_last_predicted": ratio_p,
                  "max_log10_error": err, "layers": len(pairs),
                  # recorded for the figures, not judged: the input-output Jacobian's spectrum
                  "jacobian_mean_sq": float(np.mean(np.square(d.jacobian))) if d.jacobian else None},
        verdict=sorted({str(c.kind) for c in d.causes}),
        series={"measured": [float(v) for v in meas], "predicted": [float(v) for v in pred],
                "jacobian": [float(v) for v in d.jacobian]},
    )


_CAUSES_VANISH = ("saturating_activations", "init_mismatch")

THEORY = Experiment(
    name="theory",
    title="Predicted against measured gradient per layer at initialisation (digits, batch 128)",
    citation="Poole et al. 2016; Schoenholz et al. 2017",
    claim="The squared gradient changes per layer by chi = sigma_w^2 E[phi'(h)^2]: below 1 it "
    "vanishes with depth (sigmoid, tanh and ReLU at PyTorch's default init), at 1 it stays "
    "level (ReLU with He init, tanh with Xavier init).",
    judge=f"every layer's measured gradient norm within a factor {THEORY_FACTOR:g} of the "
    "predicted one; first-to-last ratio below 1e-3 is 'vanishes', above 0.1 'level'. gw.inspect "
    "must name saturating_activations or init_mismatch for the nets that vanish, neither for "
    "the others.",
    settings=(
        Setting({"activation": "sigmoid", "init": "default", "depth": 16}, "vanishes",
                verdict_has=_CAUSES_VANISH, quick=True),
        Setting({"activation": "relu", "init": "he", "depth": 16}, "level",
                verdict_not=_CAUSES_VANISH, quick=True),
        Setting({"activation": "relu", "init": "default", "depth": 16}, "vanishes",
                verdict_has=_CAUSES_VANISH, quick=True),
        Setting({"activation": "tanh", "init": "default", "depth": 24}, "vanishes", verdict_has=_CAUSES_VANISH),
        Setting({"activation": "tanh", "init": "xavier", "depth": 16}, "level", verdict_not=_CAUSES_VANISH),
        # deeper chains need wider layers for the mean-field (infinite-width) prediction to hold
        Setting({"activation": "relu", "init": "he", "depth": 30, "width": 256}, "level", verdict_not=_CAUSES_VANISH),
    ),
    run=_run_theory,
)

# -- the adding problem over sequence length ---------------------------------------------------
#: Test MSE below which a recurrent net has learned the adding problem, and above which it
#: has not (predicting the mean gives 1/6 ~ 0.167).
LEARNED_MSE = 0.01
FAILED_MSE = 0.1
_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def _run_adding(p: dict[str, Any], seed: int, quick: bool) -> Observation:
    torch.manual_seed(seed)
    model = SeqLast(_CELLS[p["cell"]](2, 32, batch_first=True), 1)
    g = torch.Generator().manual_seed(seed)
    steps = 400 if quick else 1500
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with gw.watch(model) as w:
        for _ in range(steps):
            x, y = adding_problem(32, p["length"], g)
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    x, y = adding_problem(512, p["length"], torch.Generator().manual_seed(10_000 + seed))
    with torch.no_grad():
        mse = float(nn.functional.mse_loss(model(x), y))
    outcome = "learns" if mse < LEARNED_MSE else "fails" if mse > FAILED_MSE else "partial"
    d = w.diagnose()
    reach = [f.evidence.get("reach_change_decades", float("nan")) for f in d.by_kind("temporal_vanishing")]
    return Observation(
        outcome=outcome,
        observed={"test_mse": mse, "steps": steps, "reach_change_decades": reach[0] if reach else None},
        verdict=_problems(d),
    )


_TIME = ("temporal_vanishing",)

ADDING = Experiment(
    name="adding",
    title="The adding problem over sequence length: tanh RNN against LSTM and GRU (hidden 32, Adam 0.01)",
    citation="Hochreiter & Schmidhuber 1997; Pascanu, Mikolov & Bengio 2013",
    claim="A tanh RNN cannot learn dependencies over long lags (its gradient through time "
    "vanishes) and stays at the baseline of 1/6; gated cells (LSTM, GRU) learn them.",
    judge=f"test MSE < {LEARNED_MSE} is 'learns', > {FAILED_MSE} 'fails' (400 steps with --quick, "
    "1500 without). gradwatch must report temporal_vanishing for the tanh RNN, not for a cell that learns.",
    settings=(
        Setting({"cell": "rnn", "length": 50}, "fails", verdict_has=_TIME, quick=True),
        Setting({"cell": "gru", "length": 50}, "learns", verdict_not=_TIME, quick=True),
        Setting({"cell": "lstm", "length": 50}, "learns", verdict_not=_TIME),
        Setting({"cell": "rnn", "length": 100}, "fails", verdict_has=_TIME),
        Setting({"cell": "gru", "length": 100}, "learns", verdict_not=_TIME),
    ),
    run=_run_adding,
)

#: Every experiment, by name, in the order the lab runs them.
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (DEPTH, THEORY, ADDING)}
