"""Why gradients misbehave: one small rule per `CauseKind`, each backed by the mechanism.

Every rule reads the enriched anatomy and `Structure` (and, for the step size, a
Timeline) and returns a `Cause` with its evidence, or None. The causes the data holds
(inputs not standardised, targets out of the output's range or scale) read the Timeline's
input and output statistics and the loss (docs/metrics.md). Rules that talk about
depth work on the model's *plain runs*: stretches of its longest chain without a skip
between weight layers that no normalisation separates, where mean-field theory
(`gradwatch.explain.theory`) predicts how the gradient changes from layer to layer.

Scores are 0..1. Where a rule measures an effect in decades of gradient change, its
score is ``decades / 6`` capped at 1: six decades (a millionth) is beyond what any
optimiser recovers from. The thresholds, with their reasons, are the constants below
and in docs/causes.md.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gradwatch._errors import GradwatchValueError
from gradwatch.anatomy import Anatomy, Layer
from gradwatch.anatomy.activations import family, parse_spec, peak_derivative
from gradwatch.anatomy.map import LayerFacts, weight_scale
from gradwatch.anatomy.structure import Structure
from gradwatch.detect._signals import nanmedian, recent_rows, time_reach
from gradwatch.detect.thresholds import Thresholds
from gradwatch.explain.targets import Targets, read_targets
from gradwatch.explain.theory import (
    Gains,
    activation,
    bias_dead_share,
    chain_layer,
    critical_sigma_w2,
    gains,
    moments,
)
from gradwatch.probes.activations import SATURATION_FRACTION
from gradwatch.record import Timeline
from gradwatch.types import Cause, CauseKind

__all__ = ["CAUSES", "Context", "find_causes"]

#: A predicted change of the gradient norm by this many decades is a problem: 1e-3 is the
#: first-to-last ratio AutoTrainer (and our vanishing detector) calls vanishing.
DECADES = 3.0
#: The same for a predicted *growth* along a plain chain: a decade, where the
#: exploding-gradient detector calls such a chain's growth the chaotic phase or a growing
#: signal (`Thresholds.chaotic_decades`). An early layer that gets 10x the head's gradient
#: overshoots under SGD long before one at 1e-3 of it stops learning.
EXPLODE_DECADES = Thresholds().chaotic_decades
#: Plain nets deeper than this train worse than shallower ones even at a critical
#: initialisation (He et al. 2016: plain 20-layer nets train, deeper plain ones degrade;
#: Balduzzi et al. 2017: gradients of plain nets decorrelate like 2^-L).
PLAIN_DEPTH_LIMIT = 20
#: The same for a chain with a normalisation beside every weight layer (but the head): there
#: neither the forward signal nor the gradient vanishes (He et al. 2016, sec. 4.1, checked
#: on their plain nets with BatchNorm), and a 34-layer plain BN net trains on ImageNet to
#: within 0.6 points of an 18-layer one (their Table 2; MobileNetV1, 28 plain BN layers,
#: is a standard design). Past it, plain BN nets degrade (their CIFAR nets of 44 and 56).
NORMALISED_DEPTH_LIMIT = 34
#: Below this many weight layers depth alone is not blamed, whatever the gain.
MIN_DEPTH = 10
#: Mean-field trainable depth: nets train when deeper than about 6 xi fails (Schoenholz et al. 2017).
XI_FACTOR = 6.0
#: An initialisation whose critical sigma_w^2 is beyond this is not a practical fix (sigmoid
#: needs ~100); the saturating-activation cause covers those.
MAX_CRITICAL_SIGMA_W2 = 10.0
#: A unit whose bias is this many pre-activation standard deviations below zero fires for
#: fewer than 0.14% of inputs: switched off from the start.
DEAD_Z = 3.0
#: A layer with at least this share of its ReLU units switched off counts (the dead-unit
#: share TheDeepChecker flags).
DEAD_SHARE = 0.5
#: Update-to-weight ratio above which a step is too large: the top of TheDeepChecker's
#: healthy band (log10 in [-4, -1]; the detectors' `Thresholds.large_update_ratio`).
MAX_UPDATE_RATIO = Thresholds().large_update_ratio
#: The typical healthy update-to-weight ratio, the band's centre: learning-rate advice aims
#: a stalled run's typical step here (`fix.advice`).
TARGET_UPDATE_RATIO = 1e-3
#: The top of the healthy band for the largest typical step: advice that scales a rate
#: down aims there (the typical steps then sit below it, around the centre).
LARGEST_UPDATE_RATIO = 1e-2
#: The bottom of the healthy band (1e-4, a decade under the centre): the detectors'
#: `Thresholds.small_update_ratio`; the fixed model's predicted first update is kept above it.
SMALLEST_UPDATE_RATIO = Thresholds().small_update_ratio
#: Inputs whose root mean square is this many decades from 1 are not standardised. Every
#: standard initialisation (LeCun, Glorot, He) draws weights for inputs of unit variance and
#: biases at unit scale, and an optimizer moves a bias by about its step size: at input scale
#: S the first layer's thresholds (where its units switch, |b| / ||w|| from the origin) stay
#: near the origin, a distance S^-1 of the data's spread, and the Hessian of that layer is
#: ~S^2 times larger along its weights than along its bias (LeCun et al. 1998, "Efficient
#: BackProp", sec. 4.3: inputs centred, with unit variance). Two decades: curvatures 1e4 apart.
INPUT_SCALE_DECADES = 2.0
#: Inputs whose mean sits this many spreads from zero (`input_offset`) leave most of the first
#: layer's units on one side of their threshold for every input. A unit's offset, in units of
#: its input-driven spread, is about N(0, offset^2) over random weight directions; it switches
#: for under 0.14% of the inputs beyond `DEAD_Z` (3) spreads, which is over half the units
#: (`DEAD_SHARE`) once 2 Phi(-3 / offset) >= 0.5: offset >= 3 / 0.674.
INPUT_OFFSET_LIMIT = DEAD_Z / 0.6745
#: A saturating unit counts as saturated where its derivative is under this share of its peak,
#: as the activation probes measure it (docs/metrics.md).
SATURATED_DERIVATIVE = SATURATION_FRACTION
#: The share of a saturating first layer's outputs in the flat tails that makes the input's
#: scale a cause: the saturated-units detector's bar.
SATURATED_SHARE = Thresholds.saturated_frac
#: Regression targets this many decades beyond the output's own scale (and beyond 1, the
#: scale a default-initialised output layer produces on unit-scale features) cannot be
#: reached: the output layer's weights must grow by that factor, and the gradient that
#: pulls them is that many times larger than the one its step size was set for (it throws
#: the weights far: the loss rises or overflows) or, under a step of fixed size (Adam),
#: takes that many times longer. Two decades, where the exploding-gradient detector draws its
#: line through depth (`Thresholds.explode_ratio`).
TARGET_DECADES = 2.0
#: A loss whose smoothed minimum stays above this share of its start has not fallen.
LOSS_NOT_FALLEN = 0.5
#: Targets read from the output's gradient (`explain.targets`) of which this share of the
#: squared error the best constant inside the output activation's range leaves lies beyond
#: anything the activation can produce (`Targets.unreachable`): whatever the training, the
#: fit explains at most three quarters of what a constant does. A tanh output on
#: standardised Gaussian targets (a third of them beyond +-1) loses 0.15 and stays quiet
#: (it fits, if not all the way); a sigmoid asked for targets of either sign loses half.
UNREACHABLE_SHARE = 0.25


@dataclass
class Context:
    """What the rules read. `q0` is the mean square of the model's input (1 for standardised data)."""

    anatomy: Anatomy
    structure: Structure
    timeline: Timeline | None = None
    q0: float = 1.0
    _runs: list[tuple[list[Layer], Gains]] | None = field(default=None, repr=False)

    def runs(self) -> list[tuple[list[Layer], Gains]]:
        """The plain runs of the longest chain, with their mean-field gains (cached)."""
        if self._runs is None:
            self._runs = _plain_runs(self)
        return self._runs


def _is_weight_layer(layer: Layer) -> bool:
    e = layer.extra
    return (
        e.get("sigma_w2") is not None
        and not e.get("recurrent")
        and layer.type not in ("Embedding", "EmbeddingBag")
        and layer.fan_in is not None
    )




def _plain_runs(ctx: Context) -> list[tuple[list[Layer], Gains]]:
    s, a = ctx.structure, ctx.anatomy
    if not chain_is_reliable(s):
        return []
    layers = [a[n] for n in s.chain if n in a and _is_weight_layer(a[n])]
    runs: list[list[Layer]] = []
    cur: list[Layer] = []
    for layer in layers:
        # A normalisation next to a layer resets the signal's scale there: the run ends.
        if cur and (layer.extra.get("norm") or cur[-1].extra.get("norm")):
            runs.append(cur)
            cur = []
        cur.append(layer)
    if cur:
        runs.append(cur)
    out = []
    for i, run in enumerate(runs):
        q0 = ctx.q0 if i == 0 else 1.0  # after a normalisation the signal has unit scale
        try:
            out.append((run, gains([chain_layer(x) for x in run], q0)))
        except GradwatchValueError:
            continue  # an activation the theory does not know: no prediction for this run
    return out


def chain_is_reliable(s: Structure) -> bool:
    """Whether `s.chain` is known to be the model's real longest chain without a skip."""
    return s.method in ("fx", "trace", "sequential", "anatomy") and bool(s.chain)


def _decades(x: float) -> float:
    return float(np.log10(max(x, 1e-300)))


def _score(decades: float) -> float:
    return float(min(1.0, abs(decades) / 6.0))


# -- the rules -----------------------------------------------------------------------------
def saturating_activations(ctx: Context) -> Cause | None:
    """Sigmoid/tanh-like units stacked without normalisation, whose derivatives alone shrink the gradient.

    Through ``n`` such layers the back-propagated signal is multiplied by ``E[phi'(h)^2]``
    per layer (``<= 1/16`` for sigmoid); fires when the product takes more than
    `DECADES` decades off the gradient norm.
    """
    best: tuple[float, list[Layer], np.ndarray] | None = None
    for run, g in ctx.runs():
        stack: list[int] = []
        for i, layer in enumerate([*run, None]):
            sat = layer is not None and i < len(run) - 1 and family(layer.extra.get("activation")) == "saturating"
            if sat:
                stack.append(i)
                continue
            if stack:
                d = -0.5 * float(np.sum(np.log10(np.maximum(g.edphi2[stack], 1e-300))))
                if best is None or d > best[0]:
                    best = (d, [run[j] for j in stack], g.edphi2[stack])
                stack = []
    if best is None or best[0] < DECADES:
        return None
    d, layers, ed = best
    acts = sorted({str(x.extra.get("activation")) for x in layers})
    return Cause(
        kind=CauseKind.SATURATING_ACTIVATIONS,
        score=_score(d),
        layers=[x.name for x in layers],
        evidence={
            "saturating_layers": float(len(layers)),
            "mean_dphi2": float(np.mean(ed)),
            "decades": -d,
        },
        message=(
            f"{len(layers)} layers of {', '.join(acts)} in a row, without normalisation: their "
            f"derivatives alone (E[phi'^2] = {np.mean(ed):.3g} per layer) shrink the gradient by "
            f"about 1e{-d:.0f} from the last of them to the first"
        ),
        remedy=(
            "use a non-saturating activation (ReLU family or GELU, with He initialisation) in the "
            "hidden layers, or put BatchNorm/LayerNorm before each saturating activation"
        ),
    )


def init_mismatch(ctx: Context) -> Cause | None:
    """Weight scales away from the critical value of their activation (chi far from 1 per layer).

    Fires when over a plain run the predicted back-propagated gradient or forward signal
    shrinks by more than `DECADES` decades, or the gradient grows by more than
    `EXPLODE_DECADES`, and the run's sigma_w^2 differs from the
    critical one (where the product of gains is 1) by more than 1.5x.
    """
    best: tuple[float, list[Layer], Gains, float, float, str | None] | None = None
    for run, g in ctx.runs():
        if len(run) < 3:
            continue
        back = 0.5 * float(np.sum(np.log10(np.maximum(g.chi[:-1], 1e-300))))
        fwd = 0.5 * (_decades(g.q[-1]) - _decades(g.q[0]))
        d = back if abs(back) >= abs(fwd) else fwd
        if abs(d) < DECADES:
            if back < EXPLODE_DECADES:
                continue
            d = back
        specs = [x.extra.get("activation") for x in run[:-1]]
        spec = max(set(specs), key=specs.count, default=None)
        crit = critical_sigma_w2(
            spec, len(run), ctx.q0, float(np.mean([chain_layer(x).sigma_b2 for x in run])), upper=MAX_CRITICAL_SIGMA_W2
        )
        if crit is None:  # none up to MAX_CRITICAL_SIGMA_W2: not a practical fix
            continue
        sw = float(np.mean([x.extra["sigma_w2"] for x in run[1:]]))
        if abs(math.log(sw / crit)) < math.log(1.5):
            continue
        if best is None or abs(d) > abs(best[0]):
            best = (d, run, g, sw, crit, spec)
    if best is None:
        return None
    d, run, g, sw, crit, spec = best
    chi_mean = float(np.exp(np.mean(np.log(np.maximum(g.chi[:-1], 1e-300)))))
    way = "vanishes" if d < 0 else "explodes"
    return Cause(
        kind=CauseKind.INIT_MISMATCH,
        score=_score(d),
        layers=[x.name for x in run],
        evidence={
            "sigma_w2": sw,
            "critical_sigma_w2": crit,
            "chi": chi_mean,
            "decades": d,
            "depth": float(len(run)),
        },
        message=(
            f"weights with sigma_w^2 = {sw:.3g} (fan_in * Var(W)) under {spec or 'no activation'}: "
            f"each layer multiplies the squared gradient by chi = {chi_mean:.3g}, so over "
            f"{len(run)} layers the signal {way} by about 1e{d:+.0f}"
        ),
        remedy=_init_remedy(spec, crit),
    )


def _init_remedy(spec: str | None, crit: float) -> str:
    name = parse_spec(spec)[0] if spec else "linear"
    std = f"nn.init.normal_(weight, std=sqrt({crit:.3g} / fan_in)), biases 0"
    if name in ("relu", "leaky_relu"):
        a = math.sqrt(max(2.0 / crit - 1.0, 0.0))
        extra = f", a={a:.3g}" if name == "leaky_relu" else ""
        return f"He initialisation: nn.init.kaiming_normal_(weight, nonlinearity='{name}'{extra}) (sigma_w^2 = {crit:.3g}), biases 0"
    if abs(math.log(crit)) < math.log(1.3):
        return f"Xavier/LeCun-scaled initialisation (sigma_w^2 = {crit:.3g}): {std}"
    return f"initialise so that sigma_w^2 = {crit:.3g}: {std}"


def depth_without_skip(ctx: Context) -> Cause | None:
    """A long chain of layers with no residual path around them.

    Fires when the longest chain exceeds `PLAIN_DEPTH_LIMIT` layers, or when it is at least
    `MIN_DEPTH` deep and deeper than `XI_FACTOR` times the mean-field depth scale xi. A chain
    normalised throughout (MobileNets: BatchNorm after every convolution) may reach
    `NORMALISED_DEPTH_LIMIT`.
    """
    s = ctx.structure
    if not chain_is_reliable(s):
        return None
    depth = s.longest_plain_chain
    runs = ctx.runs()
    xi = min((g.depth_scale for _, g in runs if len(g.chi) > 1), default=math.inf)
    limit = float(PLAIN_DEPTH_LIMIT)
    why = f"deeper than {PLAIN_DEPTH_LIMIT} layers, where plain nets train worse than shallower ones"
    if _normalised_throughout(ctx):
        limit = float(NORMALISED_DEPTH_LIMIT)
        why = f"deeper than {NORMALISED_DEPTH_LIMIT} layers, where plain nets train worse even with a normalisation at every layer"
    if depth >= MIN_DEPTH and XI_FACTOR * xi < limit:
        limit = XI_FACTOR * xi
        why = f"deeper than 6 xi = {limit:.3g}, the depth scale over which mean-field theory says the gradient survives"
    if depth <= limit:
        return None
    return Cause(
        kind=CauseKind.DEPTH_WITHOUT_SKIP,
        score=float(min(1.0, depth / (2.0 * limit))),
        layers=list(s.chain),
        evidence={"depth": float(depth), "limit": limit, "xi": xi, "skip_connections": float(s.skip_connections)},
        message=f"the gradient must cross {depth} layers with no skip connection on its shortest way back: {why}",
        remedy="add residual connections (x + f(x)) around blocks of 2-3 layers, or make the network shallower",
    )


def _normalised_throughout(ctx: Context) -> bool:
    """Whether every weight layer of the longest chain but the last (the head) has a
    normalisation right after it (or right before it: pre-norm)."""
    a = ctx.anatomy
    layers = [a[n] for n in ctx.structure.chain if n in a and _is_weight_layer(a[n])]
    return len(layers) > 1 and all(layer.extra.get("norm") for layer in layers[:-1])


def no_normalization(ctx: Context) -> Cause | None:
    """A deep plain run, no normalisation anywhere, and a predicted gain far from 1."""
    if ctx.structure.normalizations:
        return None
    worst: tuple[float, list[Layer]] | None = None
    for run, g in ctx.runs():
        if len(run) < MIN_DEPTH:
            continue
        back = 0.5 * float(np.sum(np.log10(np.maximum(g.chi[:-1], 1e-300))))
        fwd = 0.5 * (_decades(g.q[-1]) - _decades(g.q[0]))
        d = max(abs(back), abs(fwd))
        if d >= DECADES and (worst is None or d > worst[0]):
            worst = (d, run)
    if worst is None:
        return None
    d, run = worst
    return Cause(
        kind=CauseKind.NO_NORMALIZATION,
        score=0.5 * _score(d),
        layers=[x.name for x in run],
        evidence={"depth": float(len(run)), "decades": d, "normalizations": 0.0},
        message=(
            f"{len(run)} layers and no BatchNorm/LayerNorm anywhere: nothing resets the signal's "
            f"scale, which theory predicts changes by about {d:.0f} decades across them"
        ),
        remedy="add BatchNorm (or LayerNorm) after each hidden Linear/Conv layer, before its activation",
    )


def _norm_units(ctx: Context) -> list[tuple[Layer, Layer]]:
    """Every (weight layer, the normalisation right after it), in execution order (registration
    order where the forward pass was not seen).

    Weight layers without a normalisation after them (a squeeze-excitation gate, a head)
    are stepped over. Empty when not even the modules' order was read.
    """
    if ctx.structure.method not in ("fx", "trace", "sequential", "modules"):
        return []
    layers = sorted(ctx.anatomy.layers, key=lambda x: (x.order is None, x.order or 0))
    return [
        (w, n)
        for w, n in itertools.pairwise(layers)
        if _is_weight_layer(w) and w.extra.get("norm") and "norm_gain" in n.extra
    ]


def _unit(w: Layer, n: Layer, q: float, gain: float) -> tuple[float, float]:
    """One unit, input mean square `q`: ``(v / eps, the next unit's input mean square)``.

    The weight layer makes a pre-normalisation variance ``v = sigma_w^2 q``; the normalisation
    outputs ``gain^2 v / (v + eps)``, which the activation after it maps on (`theory.moments`).
    """
    v = weight_scale(w) * q
    eps = float(n.extra["norm_eps"])
    m = gain * gain * (v / (v + eps) if eps > 0 else 1.0)
    try:
        q = moments(activation(w.extra.get("activation")), m)[0]
    except GradwatchValueError:  # an activation the theory does not know: taken as linear
        q = m
    return (v / eps if eps > 0 else math.inf), q


def _floored(units: list[tuple[Layer, Layer]], q0: float, gains: list[float]) -> tuple[float, list[float]]:
    """Mean-field pass over the units: log10 of the smallest floor factor ``sqrt(v / (v + eps))``
    of a normalisation on the main path (how far the signal falls under a floor), and every
    main-path unit's ``v / eps``.

    Units inside a residual branch (weight layer ``skip``) run from the stream's mean square
    q; the stream after them is ``q + q_branch`` (independent signals add their variances),
    so a branch whose last gain is 0 (a zero-initialised residual) leaves it as it was. A
    gain of exactly 0 is taken to end such a branch where the skips were not seen (no trace):
    a draw never gives all zeros, only a zero-initialised residual does.
    """
    q, stream = q0, None
    ratios: list[float] = []
    for (w, n), g in zip(units, gains, strict=True):
        if w.extra.get("skip") or g == 0.0:
            if stream is None:
                stream = q
            _, q = _unit(w, n, q, g)
            continue
        if stream is not None:
            q, stream = stream + q, None
        r, q = _unit(w, n, q, g)
        ratios.append(r)
    low = min(ratios, default=math.inf)
    if not math.isfinite(low):
        return 0.0, ratios
    return 0.5 * _decades(low / (1.0 + low)), ratios


def norm_gain_too_small(ctx: Context) -> Cause | None:
    """Normalisation gains so small that the signal falls below the normalisations' eps.

    A normalisation divides by ``sqrt(var + eps)``. While the variance it sees is well above
    eps it resets the signal's scale, and small gains cancel out along a chain: each passes
    back ``gain / sqrt(var)`` and the next one's variance carries the same gain forward.
    Below eps it divides by ``sqrt(eps)`` instead and stops normalising: a unit (weight
    layer, normalisation, activation) then multiplies its input by about
    ``gain * phi'(0) * sqrt(sigma_w^2 / eps)``, and when that is under 1 the signal and the
    gradient (which goes back through the same factors) shrink geometrically along the
    chain. A gain drawn from N(0, 0.02) instead of 1 does that with eps = 1e-3.

    Fires when, along the model's units (`_norm_units`, `_floored`), a normalisation's input
    is predicted to sit more than `DECADES` decades (of its standard deviation) under its
    floor, and with every gain below 1 set to 1 none would.
    """
    units = _norm_units(ctx)
    if len(units) < 2:
        return None
    gains = [float(n.extra["norm_gain"]) for _, n in units]
    d, ratios = _floored(units, ctx.q0, gains)
    if d > -DECADES:
        return None
    fixed, _ = _floored(units, ctx.q0, [max(g, 1.0) for g in gains])
    if fixed <= -DECADES:
        return None  # the weights, not the gains, keep the signal under the floor
    small = [n for _, n in units if float(n.extra["norm_gain"]) < 1.0]
    gain = float(np.sqrt(np.mean([float(n.extra["norm_gain"]) ** 2 for n in small])))
    eps = float(np.median([float(n.extra["norm_eps"]) for _, n in units]))
    under = sum(1 for r in ratios if r < 1.0)
    return Cause(
        kind=CauseKind.NORM_GAIN_TOO_SMALL,
        score=_score(d),
        layers=[n.name for n in small],
        evidence={
            "norm_gain": gain,
            "norm_eps": eps,
            "units": float(len(ratios)),
            "under_eps": float(under),
            "decades": d,
            "decades_at_unit_gain": fixed,
        },
        message=(
            f"{len(small)} normalisation gains of RMS {gain:.3g}: along a chain of {len(ratios)} normalised layers "
            f"the signal falls under the normalisations' eps ({eps:.3g}) at {under} of them, where they stop "
            f"normalising; the signal is predicted to fall to 1e{d:+.0f} of its floor, and the gradient "
            "shrinks by the same factors on its way back"
        ),
        remedy="initialise normalisation gains at 1 and shifts at 0 (nn.init.ones_(norm.weight), nn.init.zeros_(norm.bias))",
    )


def vanilla_rnn_long_sequence(ctx: Context) -> Cause | None:
    """A vanilla RNN over a sequence long enough for ``rho(W_hh)^T`` to leave the 1e-3..1e3 band.

    The gradient through time multiplies ``W_hh^T diag(phi')`` per step, so its size goes
    like ``rho^T`` (rho the spectral radius of W_hh; phi' <= 1 only makes it smaller);
    Pascanu et al. (2013): largest singular value below 1/gamma guarantees vanishing. With
    rho ~ 1 (an orthogonal W_hh) rho^T stays level, yet a saturating layer within that
    condition can only lose gradient at each step: in a watched run its measured reach
    through time, when under `DECADES`, names the cause.
    """
    found: list[tuple[float, Layer]] = []
    t_of: dict[str, int] = {}
    measured = _measured_reach(ctx)
    for layer in ctx.anatomy.layers:
        e = layer.extra
        if not e.get("recurrent") or e.get("cell") != "rnn":
            continue
        t, rho = _seq_len(ctx, layer), e.get("hh_radius")
        if t is None or rho is None or t < 2:
            continue
        d = (t - 1) * _decades(rho)
        t_of[layer.name] = int(t)
        if abs(d) < DECADES and _only_shrinks(e) and measured.get(layer.name, 0.0) <= -DECADES:
            # rho ~ 1 (an orthogonal W_hh) keeps rho^T level, but no step can grow the
            # gradient and a saturating slope shrinks it at every step: the measured reach
            d = measured[layer.name]
        if abs(d) >= DECADES:
            found.append((d, layer))
    if not found:
        return None
    d, layer = max(found, key=lambda x: abs(x[0]))
    e = layer.extra
    gamma = peak_derivative(str(e.get("activation") or "tanh"))
    by_slope = abs((t_of[layer.name] - 1) * _decades(float(e["hh_radius"]))) < DECADES
    return Cause(
        kind=CauseKind.VANILLA_RNN_LONG_SEQUENCE,
        score=_score(d),
        layers=[x.name for _, x in found],
        evidence={
            "seq_len": float(t_of[layer.name]),
            "spectral_radius": float(e["hh_radius"]),
            "largest_singular_value": float(e.get("hh_norm", math.nan)),
            "vanishing_guaranteed": float(e.get("hh_norm", math.inf) < 1.0 / gamma),
            "decades": d,
        },
        message=(
            f"a vanilla RNN ('{layer.name}') over {t_of[layer.name]} steps: "
            + (
                f"W_hh's largest singular value is {e['hh_norm']:.3g}, at most 1/{gamma:.3g} (the {e.get('activation')} "
                "slope's peak), so no step can grow the gradient through time and every step off the slope's "
                f"peak shrinks it: measured, it falls by about 1e{d:+.0f} from the last step to the first"
                if by_slope
                else f"with W_hh's spectral radius {e['hh_radius']:.3g}, the gradient through time vanishes by "
                f"about 1e{d:+.0f} from the last step to the first"
                if d < 0
                else f"with W_hh's spectral radius {e['hh_radius']:.3g}, the gradient through time can grow by up "
                f"to about 1e{d:+.0f} from the last step to the first (the activation's slope, at most 1, only "
                "shrinks it): it cannot stay near 1 over the sequence"
            )
        ),
        remedy=(
            "use nn.LSTM or nn.GRU (gates that can hold the state), or an IRNN: a ReLU RNN with W_hh the identity"
            if by_slope
            else "use nn.LSTM or nn.GRU; or initialise W_hh orthogonal (or as the identity with ReLU, IRNN) and clip gradients"
        ),
    )


def _only_shrinks(facts: LayerFacts) -> bool:
    """A vanilla RNN whose step can only shrink the gradient through time: a saturating
    activation (slope under its peak everywhere but at 0) and W_hh's largest singular value
    at most 1/gamma, gamma that peak — Pascanu et al.'s (2013) condition for vanishing."""
    act = facts.get("activation")
    if act not in ("tanh", "sigmoid"):
        return False
    gamma = peak_derivative(act)
    return float(facts.get("hh_norm", math.inf)) <= (1.0 + 1e-3) / gamma


def _measured_reach(ctx: Context) -> dict[str, float]:
    """Per recurrent module of a watched run: the reach through time (log10) over its
    recent records, as the vanishing-through-time rule reads it."""
    if ctx.timeline is None:
        return {}
    th = Thresholds()
    return {
        name: float(nanmedian(recent_rows(reach, th.persist)))
        for name, (_, reach) in time_reach(ctx.timeline, th).items()
        if np.isfinite(reach).any()
    }


def _seq_len(ctx: Context, layer: Layer) -> int | None:
    """The sequence length a recurrent layer saw: on the example input, or in a watched run
    the length of its recorded gradient-through-time profile (one entry per time step)."""
    t = layer.extra.get("seq_len")
    if t is None and ctx.timeline is not None and f"grad_t/{layer.name}" in ctx.timeline.profiles:
        seen = ctx.timeline.profiles.get(f"grad_t/{layer.name}")
        t = len(seen[-1][1]) if seen else None
    return None if t is None else int(t)


def keep_gate_closed(ctx: Context) -> Cause | None:
    """An LSTM or GRU whose keep gate forgets the state long before the sequence's start.

    An LSTM's cell state carries ``c_t = f_t * c_(t-1) + ...``, a GRU's ``h_t = z_t * h_(t-1)
    + ...``: back through time along the carry, the gradient is multiplied by the keep gate
    ``sigmoid(b + W x + U h)`` per step. At initialisation the input terms average out, so
    the best-keeping unit carries about ``sigmoid(b_max)^(T-1)`` of the last step's gradient
    to the first. PyTorch's default biases are ~0 (a gate half shut): over 30 steps that is
    ~1e-9. Gers et al. (2000) and Jozefowicz et al. (2015) start the forget gate at 1;
    chrono initialisation (Tallec & Ollivier 2018) spreads spans up to T.
    """
    found: list[tuple[float, Layer, int, float]] = []
    for layer in ctx.anatomy.layers:
        e = layer.extra
        if not e.get("recurrent") or e.get("cell") not in ("lstm", "gru") or e.get("keep_bias_max") is None:
            continue
        t = _seq_len(ctx, layer)
        if t is None or t < 2:
            continue
        carry = 1.0 / (1.0 + math.exp(-float(e["keep_bias_max"])))
        d = (t - 1) * _decades(carry)
        if d <= -DECADES:
            found.append((d, layer, t, carry))
    if not found:
        return None
    d, layer, t, carry = min(found, key=lambda x: x[0])
    gate = "forget" if layer.extra["cell"] == "lstm" else "update (z)"
    b = float(layer.extra["keep_bias_max"])
    return Cause(
        kind=CauseKind.KEEP_GATE_CLOSED,
        score=_score(d),
        layers=[x[1].name for x in found],
        evidence={"seq_len": float(t), "keep_bias_max": b, "carry_per_step": carry, "decades": d},
        message=(
            f"an {layer.extra['cell'].upper()} ('{layer.name}') over {t} steps whose {gate}-gate biases are at most "
            f"{b:.2g}: each step keeps at most {carry:.2f} of the state, so the gradient "
            f"along it shrinks by about 1e{d:+.0f} from the last step to the first"
        ),
        remedy=(
            "initialise the keep-gate biases to 1 or more — chrono initialisation, log(u) with u spread over "
            "[1, T-1], gives memory spans up to the sequence length (Keras: unit_forget_bias=True sets 1)"
        ),
    )


def step_size_too_large(ctx: Context) -> Cause | None:
    """Optimizer steps that change the weights by more than `MAX_UPDATE_RATIO` of their norm.

    Reads the recorded update-to-weight ratios: the worst recording step's median over
    layers. Also reports the effective step size (update norm / gradient norm, the
    learning rate under plain SGD) and the scale that brings the ratio to `LARGEST_UPDATE_RATIO`.
    """
    tl = ctx.timeline
    if tl is None or len(tl) == 0 or not tl.layers:
        return None
    ratio = tl.layer_metric("update_ratio")
    if ratio.size == 0 or not np.isfinite(ratio).any():
        return None
    with np.errstate(all="ignore"):
        per_step = np.array([np.median(r[np.isfinite(r)]) if np.isfinite(r).any() else np.nan for r in ratio])
    if not np.isfinite(per_step).any():
        return None
    k = int(np.nanargmax(per_step))
    worst = float(per_step[k])
    if worst <= MAX_UPDATE_RATIO:
        return None
    grad = tl.layer_metric("grad_norm")
    upd = tl.layer_metric("update_norm")
    with np.errstate(all="ignore"):
        eff = upd / grad
    eff_k = eff[k][np.isfinite(eff[k])]
    layers = [n for n, r in zip(tl.layers, ratio[k], strict=True) if np.isfinite(r) and r > MAX_UPDATE_RATIO]
    scale = LARGEST_UPDATE_RATIO / worst
    step = int(tl.steps[k])
    return Cause(
        kind=CauseKind.STEP_SIZE_TOO_LARGE,
        score=float(min(1.0, 0.5 + 0.5 * _decades(worst / MAX_UPDATE_RATIO))),
        layers=layers,
        evidence={
            "update_ratio": worst,
            "step": float(step),
            "effective_step": float(np.median(eff_k)) if eff_k.size else math.nan,
            "grad_norm": float(np.nanmedian(grad[k])) if np.isfinite(grad[k]).any() else math.nan,
            "lr_scale": scale,
        },
        message=(
            f"at step {step} one optimizer step changed the weights by {worst:.0%} of their norm "
            f"(median over layers; above {MAX_UPDATE_RATIO:.0%} is too much): the step is too large for "
            "the gradient's scale"
        ),
        remedy=f"multiply the learning rate by about {scale:.2g}, or clip the gradient norm",
    )


def dead_relu_bias(ctx: Context) -> Cause | None:
    """ReLU layers whose biases sit so far below zero that most units never fire from the start."""
    # rms of each layer's input: the data's for the first layer, mean-field theory's after it,
    # unit scale right after a normalisation.
    rms_in: dict[str, float] = {}
    for k, (run, g) in enumerate(ctx.runs()):
        for i, layer in enumerate(run):
            rms_in[layer.name] = math.sqrt(g.ephi2[i - 1]) if i > 0 else math.sqrt(ctx.q0 if k == 0 else 1.0)
    hits: list[tuple[float, Layer]] = []
    first = ctx.structure.chain[0] if ctx.structure.chain else None
    for layer in ctx.anatomy.layers:
        e = layer.extra
        spec = e.get("activation")
        if not spec or parse_spec(spec)[0] not in ("relu", "relu6") or not e.get("bias_ratio_q"):
            continue
        rms = rms_in.get(layer.name, math.sqrt(ctx.q0) if layer.name == first else 1.0)
        share = bias_dead_share(e["bias_ratio_q"], rms, DEAD_Z)
        if share >= DEAD_SHARE:
            hits.append((share, layer))
    if not hits:
        return None
    share, worst = max(hits, key=lambda x: x[0])
    return Cause(
        kind=CauseKind.DEAD_RELU_BIAS,
        score=float(share),
        layers=[x.name for _, x in hits],
        evidence={
            "dead_share": share,
            "layers": float(len(hits)),
            "median_bias_over_weight_norm": float(worst.extra["bias_ratio_q"][4]),
        },
        message=(
            f"in {len(hits)} ReLU layer(s) most biases sit over {DEAD_Z:g} standard deviations of "
            f"the pre-activation below zero (about {share:.0%} of '{worst.name}''s units): those "
            "units output 0 for almost every input, so no gradient reaches their weights"
        ),
        remedy="initialise the biases of ReLU layers to 0 (or a small positive value such as 0.01)",
    )


# -- causes the data holds -------------------------------------------------------------------
def _last(tl: Timeline, metric: str, name: str) -> float | None:
    """The last finite value of a recorded scalar, or None."""
    if metric not in tl.records.metrics:
        return None
    col = tl.records.column(metric, name)
    col = col[np.isfinite(col)]
    return float(col[-1]) if col.size else None


def _first_layer(ctx: Context) -> Layer | None:
    """The weight layer that reads the model's input: the chain's first, else the first in
    execution order (an embedding takes ids, not the measured floats: None)."""
    a = ctx.anatomy
    names = list(ctx.structure.chain) if chain_is_reliable(ctx.structure) else []
    names += [x.name for x in a.layers]
    for n in names:
        if n in a and (a[n].fan_in is not None or a[n].type in ("Embedding", "EmbeddingBag")):
            layer = a[n]
            return None if layer.type in ("Embedding", "EmbeddingBag") or layer.extra.get("recurrent") else layer
    return None


def saturated_share(spec: str, q: float) -> float:
    """The share of a saturating activation's outputs in its flat tails (derivative under
    `SATURATED_DERIVATIVE` of its peak) for pre-activations ~ N(0, q)."""
    act = activation(spec)
    z = np.linspace(-8.0, 8.0, 4001)
    w = np.exp(-0.5 * z**2)
    w /= w.sum()
    peak = float(np.max(np.abs(act.dphi(np.linspace(-10.0, 10.0, 4001)))))
    flat = np.abs(act.dphi(math.sqrt(max(q, 0.0)) * z)) < SATURATED_DERIVATIVE * peak
    return float(np.sum(w[flat]))


def input_not_standardised(ctx: Context) -> Cause | None:
    """Inputs far from mean 0 and variance 1, which the first layer's activation cannot absorb.

    From the recorded input statistics (`input_rms` S, `input_offset` r; docs/metrics.md)
    and the first weight layer's activation and weight scale at initialisation
    (``sigma_w^2``, ``sigma_b^2``). Its pre-activations start with variance
    ``sigma_w^2 S^2 + sigma_b^2``. Under a saturating activation the cause is the share of
    them in the flat tails: at least `SATURATED_SHARE` with these inputs, below it with
    standardised ones. Under a ReLU-like or smooth one: S more than `INPUT_SCALE_DECADES`
    decades from 1 (thresholds at the origin, curvatures S^2 apart) or r above
    `INPUT_OFFSET_LIMIT` (most units on, or off, for every input). A first layer followed by
    a normalisation (BatchNorm re-centres and rescales its pre-activations) is not blamed; one
    with no activation is left to the step size: scale alone only stretches its curvature, which
    a smaller step absorbs (LeCun et al. 1998). Integer inputs (token ids) are not measured.
    """
    tl = ctx.timeline
    if tl is None:
        return None
    rms = _last(tl, "input_rms", "input")
    offset = _last(tl, "input_offset", "input")
    layer = _first_layer(ctx)
    if rms is None or layer is None or layer.extra.get("sigma_w2") is None:
        return None
    spec = layer.extra.get("activation")
    fam = family(spec)
    if spec is None or fam in (None, "linear") or layer.extra.get("norm"):
        return None  # no activation to misplace, or a normalisation that re-centres whatever comes in
    sw, sb = weight_scale(layer), float(layer.extra.get("sigma_b2") or 0.0)
    pre, pre_unit = math.sqrt(sw * rms**2 + sb), math.sqrt(sw + sb)
    off = f", their mean {offset:.2g} times their spread from zero" if offset is not None and math.isfinite(offset) else ""
    evidence = {"input_rms": rms, "input_offset": offset if offset is not None else math.nan, "preactivation_rms": pre}
    if fam == "saturating":
        try:
            share, share_unit = saturated_share(spec, pre**2), saturated_share(spec, pre_unit**2)
        except GradwatchValueError:
            return None
        if share < SATURATED_SHARE or share_unit >= SATURATED_SHARE:
            return None
        score = share
        evidence["saturated_share"] = share
        why = (
            f"so '{layer.name}' starts with pre-activations of root mean square {pre:.3g} and about {share:.0%} of "
            f"its {spec} outputs sit in the flat tails, where almost no gradient passes (with standardised inputs "
            f"the same weights would give {pre_unit:.2g})"
        )
    else:
        decades = abs(_decades(rms))
        offset_off = offset is not None and math.isfinite(offset) and offset >= INPUT_OFFSET_LIMIT
        if decades < INPUT_SCALE_DECADES and not offset_off:
            return None
        parts = []
        if decades >= INPUT_SCALE_DECADES:
            parts.append(
                f"the thresholds of '{layer.name}''s {spec} units, drawn and stepped at unit scale, stay near the "
                f"origin while the data spreads over {rms:.3g}"
            )
        if offset_off:
            parts.append("most of its units sit on the same side of their threshold for every input")
        share = 2.0 * 0.5 * math.erfc(INPUT_OFFSET_LIMIT / max(offset or 0.0, 1e-12) / math.sqrt(2.0)) if offset_off else 0.0
        score = max(min(1.0, decades / (2.0 * INPUT_SCALE_DECADES)), share)
        why = "so " + " and ".join(parts) + ": the layer can hardly bend its function across the data"
    return Cause(
        kind=CauseKind.INPUT_NOT_STANDARDISED,
        score=float(score),
        layers=[layer.name],
        evidence=evidence,
        message=f"the inputs are not standardised: their root mean square is {rms:.3g}{off}, {why}",
        remedy=(
            "standardise the inputs with the training set's per-feature statistics (mean 0, variance 1; "
            "LeCun et al. 1998). PyTorch: `mean, std = x_train.mean(0), x_train.std(0)`, then `x = (x - mean) / std` "
            "for every split; Keras: `norm = keras.layers.Normalization(); norm.adapt(x_train)` as the first layer"
        ),
    )


def _loss_windows(tl: Timeline) -> tuple[float, float, bool] | None:
    """(the loss at the start, its smoothed minimum, whether it went non-finite or ended above
    its start): medians over twentieths of the run (finite ones for the start), so one noisy
    example (a batch of one) neither starts nor ends it. None without two losses."""
    _, loss = tl.loss()
    if loss.size < 2:
        return None
    loss = np.where(np.isnan(loss), np.inf, loss)
    n = max(1, loss.size // 20)
    meds = np.array([float(np.median(loss[i : i + n])) for i in range(0, loss.size, n)])
    head = loss[:n][np.isfinite(loss[:n])]
    finite = loss[np.isfinite(loss)]
    if not finite.size:
        return None
    start = float(np.median(head)) if head.size else float(finite[0])
    blown = bool(not np.isfinite(loss).all() or meds[-1] > start)
    return start, float(np.min(meds)), blown


def _early_rms(tl: Timeline) -> float | None:
    """The root of the mean loss over the steps before the second record (the first recording
    interval): for a squared error against outputs that start near zero, the targets' root
    mean square. Every step's loss counts, so a batch of one (each loss one example's squared
    distance, easily ten times the median) gives the targets' spread, not one example's; the
    first interval, so the outputs have barely moved toward them. A run that went non-finite
    within it is cut there, and the rise that led to it (the losses after the last one that
    did not exceed its predecessor) is left out: a blow-up, not the targets. None without a
    finite loss."""
    steps, loss = tl.loss()
    end = int(tl.steps[1]) if len(tl) > 1 else (int(steps[-1]) + 1 if steps.size else 0)
    kept: list[float] = []
    blown = False
    for step, value in zip(steps.tolist(), loss.tolist(), strict=True):
        if step >= end:
            break
        if not math.isfinite(value) or value < 0:
            blown = True
            break
        kept.append(value)
    if blown:
        while len(kept) > 1 and kept[-1] > kept[-2]:
            kept.pop()
    return math.sqrt(float(np.mean(kept))) if kept else None


def _target_gap(tl: Timeline, records: int = 3) -> tuple[float, float, float] | None:
    """(sqrt(loss), the output's root mean square, their ratio with the output floored at 1),
    the median over the first `records` recording steps where both are finite. Loss and
    output come from the same step, so a batch of one compares one example with itself, and
    a run that blows up moves both."""
    if "output_rms" not in tl.records.metrics:
        return None
    steps, loss = tl.loss()
    at = dict(zip(steps.tolist(), loss.tolist(), strict=True))
    rows = []
    for step, out in zip(tl.steps.tolist(), tl.records.column("output_rms", "output").tolist(), strict=True):
        value = at.get(step)
        if value is None or not (math.isfinite(value) and math.isfinite(out)) or value < 0:
            continue
        gap = math.sqrt(value)
        rows.append((gap / max(out, 1.0), gap, out))
        if len(rows) == records:
            break
    if not rows:
        return None
    ratio, gap, out = sorted(rows)[len(rows) // 2]
    return gap, out, ratio


def _output_range(spec: str) -> tuple[float, float] | None:
    """(low, high) of an activation bounded on at least one side (from its function; the
    open side is infinite: a ReLU's is (0, inf)), None if it is bounded on neither."""
    try:
        act = activation(spec)
    except GradwatchValueError:
        return None
    lo, hi = (float(v) for v in act.phi(np.array([-1e6, 1e6])))
    lo, hi = (lo if abs(lo) < 1e3 else -math.inf), (hi if abs(hi) < 1e3 else math.inf)
    return None if math.isinf(lo) and math.isinf(hi) else (lo, hi)


def _target_evidence(tl: Timeline, targets: Targets | None) -> dict[str, float]:
    """How far the targets lie, for the `ScaleOutput` remedy (`fix.data`): their mean, spread
    and root mean square read from the output's gradient where the loss is a squared error,
    else ``target_rms`` from the early losses (`_early_rms`) and ``target_distance`` from
    the first records (`_target_gap`)."""
    out: dict[str, float] = {}
    seen = _target_gap(tl)
    if seen is not None:
        out["target_distance"] = seen[0]
    if targets is not None:
        out.update(target_rms=targets.rms, target_mean=targets.mean, target_std=targets.std,
                   target_min=float(targets.values.min()), target_max=float(targets.values.max()),
                   targets_read=float(targets.values.size))
    elif (rms := _early_rms(tl)) is not None:
        out["target_rms"] = rms
    return out


def target_out_of_range(ctx: Context) -> Cause | None:
    """A bounded output activation asked for targets it cannot produce.

    A site the model returns as it is (`output: true` in the recorded sites) with a function
    bounded on at least one side (sigmoid in (0, 1), tanh in (-1, 1), a ReLU in [0, inf):
    read from the function itself). Where the loss is a squared error of the output, the
    targets are read from its gradient (`explain.targets`), and the rule fires when at least
    `UNREACHABLE_SHARE` of the error the best constant in range leaves lies beyond the range
    (`Targets.unreachable`). Otherwise, for a range bounded on both sides: a squared error
    against any target inside it costs at most ``(high - low)^2`` per output, and a
    cross-entropy against such targets starts at ``log 2`` for a sigmoid at 0.5; so a loss
    whose smoothed minimum over the run stays above ``(high - low)^2`` times the outputs of a
    batch (`output_numel`: the bound holds for a summed loss too) is a loss against targets
    outside the range.
    """
    tl = ctx.timeline
    if tl is None:
        return None
    targets = read_targets(tl)
    numel = _last(tl, "output_numel", "output")
    windows = _loss_windows(tl)
    for site, info in tl.sites.items():
        if not info.get("output") or info.get("family") == "gate":
            continue
        fn = str(info.get("fn"))
        bounds = _output_range(fn)
        if bounds is None:
            continue
        lo, hi = bounds
        rng = f"between {lo:g} and {hi:g}" if math.isfinite(lo) and math.isfinite(hi) else (
            f"at or above {lo:g}" if math.isfinite(lo) else f"at or below {hi:g}"
        )
        evidence: dict[str, float] = {"low": lo, "high": hi}
        if targets is not None:
            share = targets.unreachable(lo, hi)
            if share < UNREACHABLE_SHARE:
                return None  # the targets themselves are known, and the range holds enough of them
            outside = float(np.mean((targets.values < lo) | (targets.values > hi)))
            score = min(1.0, 0.5 + share / 2.0)
            evidence.update(unreachable_share=share, outside_share=outside, least_error=targets.beyond(lo, hi))
            why = (
                f"the targets lie outside what the output's {fn} can produce: read from the output's gradient, they "
                f"run from {targets.values.min():.3g} to {targets.values.max():.3g} ({outside:.0%} of them outside), "
                f"and {share:.0%} of the error a constant leaves is beyond its reach, whatever the training"
            )
        else:
            if numel is None or windows is None or math.isinf(lo) or math.isinf(hi):
                continue
            _, floor, _ = windows
            bound = (hi - lo) ** 2 * numel
            if not floor > bound:
                continue
            score = float(min(1.0, 0.5 + _decades(floor / bound) / 6.0))
            evidence.update(loss_floor=floor, bound=bound, outputs=numel)
            why = (
                f"yet the loss never fell below {floor:.3g}: against any target inside that range a squared error "
                f"costs at most {(hi - lo) ** 2:g} per output ({bound:.3g} for the {numel:.0f} outputs of a batch), so "
                f"the targets lie outside what the output's {fn} can produce"
            )
        reach = f"({lo:g} to {hi:g})" if math.isfinite(lo) and math.isfinite(hi) else f"({rng})"
        return Cause(
            kind=CauseKind.TARGET_OUT_OF_RANGE,
            score=score,
            layers=[str(info.get("module", site))],
            evidence={**evidence, **_target_evidence(tl, targets)},
            message=f"the model's output passes through {fn} (`{site}`), which lies {rng}; {why}",
            remedy=(
                f"remove the output activation (a linear output) and standardise the targets, or scale the targets "
                f"into its range {reach} and map the predictions back"
            ),
        )
    return None


def target_scale(ctx: Context) -> Cause | None:
    """Regression targets orders of magnitude beyond what the output layer produces.

    For a squared error, ``sqrt(loss)`` at the start is the typical distance between the
    outputs and the targets. When it is more than `TARGET_DECADES` decades above the
    output's own root mean square at the first record (`output_rms`, floored at 1, the
    scale a default-initialised output layer gives on unit-scale features) and the loss
    never fell below `LOSS_NOT_FALLEN` of its start (or went non-finite, or ended above
    it), the output layer cannot bridge the gap at this step size. A cross-entropy cannot
    start there (it would need a loss of 1e4 at the first step).
    """
    tl = ctx.timeline
    if tl is None:
        return None
    windows = _loss_windows(tl)
    seen = _target_gap(tl)
    if windows is None or seen is None:
        return None
    start, floor, blown = windows
    gap, out, ratio = seen
    decades = _decades(ratio)
    if decades < TARGET_DECADES or not (blown or floor >= LOSS_NOT_FALLEN * start):
        return None
    what = "then overflowed or rose" if blown else "never fell below half of that"
    return Cause(
        kind=CauseKind.TARGET_SCALE,
        score=_score(decades),
        layers=[],
        evidence={
            "loss_start": start, "output_rms": out, "decades": decades,
            **_target_evidence(tl, read_targets(tl)),
        },
        message=(
            f"the loss starts at {start:.3g} and {what}: the targets lie about {gap:.3g} from outputs of root mean "
            f"square {out:.3g}, {decades:.0f} decades beyond the scale the output layer starts at. Reaching them takes "
            "weights that much larger, pulled by gradients that much larger than its step size was set for"
        ),
        remedy=(
            "standardise the targets with the training set's statistics and map the predictions back. PyTorch: "
            "`y_mean, y_std = y_train.mean(0), y_train.std(0)`, train on `(y - y_mean) / y_std`, predict "
            "`model(x) * y_std + y_mean`; Keras: the same arithmetic on the arrays (or a log transform for "
            "positive, skewed targets such as prices)"
        ),
    )


#: Every rule, in the order that breaks ties between equal scores.
CAUSES: list[Callable[[Context], Cause | None]] = [
    saturating_activations,
    dead_relu_bias,
    input_not_standardised,
    target_out_of_range,
    target_scale,
    vanilla_rnn_long_sequence,
    keep_gate_closed,
    step_size_too_large,
    init_mismatch,
    norm_gain_too_small,
    depth_without_skip,
    no_normalization,
]


def find_causes(anatomy: Anatomy, structure: Structure, timeline: Timeline | None = None, *, q0: float = 1.0) -> list[Cause]:
    """Run every rule; return the causes found, best first (by score, ties in `CAUSES` order)."""
    ctx = Context(anatomy=anatomy, structure=structure, timeline=timeline, q0=q0)
    found: list[tuple[int, Cause]] = []
    for i, rule in enumerate(CAUSES):
        c = rule(ctx)
        if c is not None:
            found.append((i, c))
    found.sort(key=lambda t: (-t[1].score, t[0]))
    return [c for _, c in found]
