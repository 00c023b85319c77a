"""Exploding gradients: the gradient grows on its way back, through depth or through time.

Through depth: an earlier layer's gradient, relative to its weights, is more than
`th.explode_ratio` times the last weight layer's (the chaotic phase of mean-field theory,
chi > 1), on a trend along the chain: the gradient grows from layer to layer, not at one
layer whose weights are tiny. A plain chain (no skip, no normalisation) on such a trend
that gains over a decade from its last layer to its first is in the chaotic phase even
below that bar: its forward map is chaotic, which a falling loss does not excuse
(`severity.raised`, lost capacity). Through time: a recurrent layer's gradient at the first time steps is that many
times the gradient at the last ones. Gradients that are merely large everywhere, or that
grow because the weights blew up under a too-large step, are the diverging-loss
detector's business, not this one's. Severity: `error` while the loss is not improving,
`warning` while it improves, `info` once the run has converged.
"""

from __future__ import annotations

import math

import numpy as np

from gradwatch.anatomy import Anatomy
from gradwatch.anatomy.activations import PIECEWISE_LINEAR, parse_spec
from gradwatch.detect._signals import (
    depth_log_ratio,
    episode,
    latched_episode,
    nanmedian,
    num,
    quiet_numpy,
    recent_rows,
    site_series,
    step_at,
    tied,
    time_profiles,
)
from gradwatch.detect.loss import LossStatus, LossView, loss_view
from gradwatch.detect.severity import raised
from gradwatch.detect.thresholds import Thresholds
from gradwatch.record import Timeline
from gradwatch.types import Finding, Kind, Severity


def _severity(loss: LossView) -> Severity:
    # Unlike a weak early gradient (those layers merely learn slowly while the rest of the
    # net carries on), an amplified one makes the early layers overshoot under SGD and marks
    # a chaotic forward map, which generalises badly: worth a warning while the loss still
    # falls, and harmless only once the run has converged.
    if loss.failing:
        return Severity.ERROR
    if loss.status == LossStatus.CONVERGED:
        return Severity.INFO
    return Severity.WARNING


def exploding_gradient(timeline: Timeline, anatomy: Anatomy, th: Thresholds) -> list[Finding]:
    """Gradient amplified more than `th.explode_ratio` across depth or across time."""
    limit = math.log10(th.explode_ratio)
    findings: list[Finding] = []
    loss: LossView | None = None

    chain, ratio = depth_log_ratio(timeline, anatomy)
    if chain:
        # a layer tied to the output head gets the head's gradient too: no evidence of growth
        ratio = np.where(tied(timeline, anatomy, chain[:-1]), np.nan, ratio)
        with quiet_numpy():
            top = np.nanmax(ratio, axis=1)
        conc = np.array([_concordance(row) for row in ratio])
        trend = ~(conc < th.depth_trend)  # a chain too short for a trend (NaN) passes
        release = limit - th.release_decades
        start = latched_episode((top > limit) & trend, (top > release) & trend, th.persist)
        if start is not None:
            now = nanmedian(recent_rows(ratio, th.persist), axis=0)
            big = [j for j in range(len(now)) if np.isfinite(now[j]) and now[j] > limit]
            big = big or [j for j in range(len(now)) if np.isfinite(now[j]) and now[j] > release]
            if big:
                loss = loss_view(timeline, anatomy, th)
                j_max = big[int(np.argmax(now[big]))]
                highest = float(now[j_max])
                names = [timeline.layers[chain[j]] for j in big]
                findings.append(
                    Finding(
                        kind=Kind.EXPLODING_GRADIENT,
                        severity=_severity(loss),
                        layers=names,
                        step=step_at(timeline, start),
                        evidence={"ratio_max": float(10**highest), "layers_above": float(len(names)), **loss.evidence()},
                        message=(
                            f"layer `{timeline.layers[chain[j_max]]}` receives {num(10**highest)} times the "
                            f"last layer's (`{timeline.layers[chain[-1]]}`) gradient, relative to its weights: "
                            f"the gradient grows on its way back through depth; {loss.describe()}"
                        ),
                    )
                )
        elif _plain(timeline, anatomy, chain):
            findings += _chaotic(timeline, anatomy, th, chain, ratio) or _growing_signal(timeline, anatomy, th, chain)

    for module, (steps, reach) in time_profiles(timeline, th).items():
        start = episode(reach > limit, th.persist)
        if start is None:
            continue
        loss = loss or loss_view(timeline, anatomy, th)
        now = float(nanmedian(recent_rows(reach, th.persist)))
        findings.append(
            Finding(
                kind=Kind.EXPLODING_GRADIENT,
                severity=_severity(loss),
                layers=[module],
                step=int(steps[start]),
                evidence={"time_reach": float(10**now), **loss.evidence()},
                message=(
                    f"`{module}`: the gradient at the first time steps is {num(10**now)} times the "
                    f"gradient at the last: it grows on its way back through time; {loss.describe()}"
                ),
            )
        )
    return findings


def _concordance(row: np.ndarray, reference: bool = True) -> float:
    """How consistently the gradient grows towards the input along one record's chain: the
    share of layer pairs (the reference layer at 0 included, with `reference`) in which the
    layer nearer the input has the larger relative gradient. 1 for a steady growth; about
    one half for a flat chain with one outlier layer (a tiny-weight embedding); NaN for
    fewer than three layers measured."""
    v = row[np.isfinite(row)]
    v = np.append(v, 0.0) if reference else v
    if len(v) < 3:
        return math.nan
    i, j = np.triu_indices(len(v), k=1)
    return float(np.mean(v[i] > v[j]))


def _plain(timeline: Timeline, anatomy: Anatomy, chain: list[int]) -> bool:
    """Every layer of the chain read by the structure analysis and found with neither a skip
    nor a normalisation around it: the chain mean-field theory describes."""
    layers = [anatomy[timeline.layers[c]] for c in chain]
    return all("skip" in layer.extra and not layer.extra["skip"] and not layer.extra.get("norm") for layer in layers)


def _growth(row: np.ndarray) -> float:
    """Decades the relative gradient gains from the last hidden layer back to the first, on a
    least-squares line through one record's hidden layers (the head left out: the loss's
    gradient enters there, and its fan-out differs); NaN for fewer than three measured."""
    finite = np.flatnonzero(np.isfinite(row))
    if len(finite) < 3:
        return math.nan
    slope = float(np.polyfit(finite, row[finite], 1)[0])
    return -slope * float(finite[-1] - finite[0])


def _chaotic(timeline: Timeline, anatomy: Anatomy, th: Thresholds, chain: list[int], ratio: np.ndarray) -> list[Finding]:
    """A plain chain whose hidden layers' relative gradient grows steadily towards the input by
    over `th.chaotic_decades` from the first record on: initialised in the chaotic phase.

    Mean-field theory describes the network at its random initialisation; training moves the
    weights away from it (a critical tanh net grows a trend of its own as it learns), so the
    phase is read from the first `persist` records. The head is left out of the trend.
    """
    if ratio.shape[1] < 3 or len(ratio) < th.persist:
        return []
    first = ratio[: th.persist]  # the hidden layers: every chain layer but the head
    growth = np.array([_growth(row) for row in first])
    steady = np.array([_concordance(row, reference=False) for row in first])
    if not bool(np.all((growth > th.chaotic_decades) & (steady >= th.depth_trend))):
        return []
    at_start = nanmedian(first, axis=0)
    per_layer = float(np.median(growth)) / max(1, int(np.isfinite(at_start).sum()) - 1)
    loss = loss_view(timeline, anatomy, th)
    severity = raised(_severity(loss), loss, lost_capacity=True)
    names = [timeline.layers[chain[j]] for j in range(ratio.shape[1]) if np.isfinite(at_start[j])]
    return [
        Finding(
            kind=Kind.EXPLODING_GRADIENT,
            severity=severity,
            layers=names,
            step=step_at(timeline, 0),
            evidence={"growth_decades": float(np.median(growth)), "gain_per_layer": 10**per_layer, "chaotic": 1.0, **loss.evidence()},
            message=(
                f"at initialisation the gradient, relative to the weights, grew by {num(10**per_layer)}x per "
                f"layer on its way back through a plain chain of {len(names)} hidden layers ({num(10 ** float(np.median(growth)))}x "
                f"from `{names[-1]}` to `{names[0]}`): the chaotic phase, whose forward map scrambles its inputs "
                f"(re-initialise at a smaller weight scale); {loss.describe()}"
            ),
        )
    ]


def _growing_signal(timeline: Timeline, anatomy: Anatomy, th: Thresholds, chain: list[int]) -> list[Finding]:
    """A plain chain of piecewise-linear units (ReLU, leaky ReLU) drawn so that every layer
    multiplies the signal's mean square by chi > 1 (He's variance gives chi = 1): the forward
    signal and the gradient on its way back both grow by sqrt(chi) a layer.

    A layer's weight gradient is its input times the back-propagated signal; along such a
    chain one grows as the other shrinks, so the relative gradients stay level and the depth
    ratio cannot see the growth. The mean-field chi of the layers' weight scales can, and the
    forward gain measured at the first record (the output's RMS over the input's) confirms
    it: each over `th.chaotic_decades` decades across the chain.
    """
    from gradwatch.explain import theory  # explain imports detect: read the theory here

    layers = [anatomy[timeline.layers[c]] for c in chain]
    hidden = layers[:-1]
    if len(hidden) < 2 or any(layer.extra.get("sigma_w2") is None for layer in layers):
        return []
    if any(parse_spec(layer.extra.get("activation") or "none")[0] not in PIECEWISE_LINEAR for layer in hidden):
        return []
    chi = theory.gains([theory.chain_layer(layer) for layer in layers]).chi[:-1]
    grows = 0.5 * float(np.sum(np.log10(chi)))
    if not (bool(np.all(chi > 1.0)) and grows > th.chaotic_decades):
        return []
    out_rms = site_series(timeline, "output_rms", "output")
    in_rms = site_series(timeline, "input_rms", "input")
    if out_rms is None or in_rms is None:
        return []
    with quiet_numpy():
        forward = float(np.log10(out_rms[0] / in_rms[0]))
    if not forward > th.chaotic_decades:
        return []
    loss = loss_view(timeline, anatomy, th)
    per_layer = 10 ** (grows / len(hidden))
    names = [layer.name for layer in hidden]
    return [
        Finding(
            kind=Kind.EXPLODING_GRADIENT,
            severity=_severity(loss),
            layers=names,
            step=step_at(timeline, 0),
            evidence={"growth_decades": grows, "gain_per_layer": per_layer, "forward_gain": 10**forward, **loss.evidence()},
            message=(
                f"the signal grows {num(per_layer)}x per layer through a plain chain of {len(names)} ReLU-family "
                f"layers whose weights are drawn above He's variance: the outputs began {num(10**forward)} times "
                f"the inputs' scale, and the gradient grows as much on its way back, from `{names[-1]}` to "
                f"`{names[0]}` (re-initialise at He's variance); {loss.describe()}"
            ),
        )
    ]
