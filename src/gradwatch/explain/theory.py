"""Mean-field theory of signal propagation: how a gradient's size changes from layer to layer.

For a layer ``h_l = W_l a_{l-1} + b_l``, ``a_l = phi(h_l)`` with weights of variance
``sigma_w^2 / fan_in`` and biases of variance ``sigma_b^2`` (Poole et al. 2016,
Schoenholz et al. 2017):

- forward map: ``q_l = sigma_w,l^2 E[phi(sqrt(q_{l-1}) z)^2] + sigma_b,l^2`` (``z ~ N(0,1)``);
  ``q_1 = sigma_w,1^2 * mean(x^2) + sigma_b,1^2`` for the input ``x``;
- gradient gain: the squared norm of the back-propagated signal ``delta_l = dL/dh_l`` shrinks
  or grows per layer by ``chi_l = sigma_w,l+1^2 E[phi'(h_l)^2]``;
- for a batch, the same holds per pair of samples with the bivariate expectations
  ``E[phi(u1) phi(u2)]`` and ``E[phi'(u1) phi'(u2)]`` of correlated pre-activations: the
  kernel ``K_l(b, b')`` is carried forward and the gradient kernel backward.

The weight gradient of layer ``l`` over a batch is ``G_l = sum_b delta_l^b (a_{l-1}^b)^T``,
so ``||G_l||^2 = sum_{b,b'} (a_{l-1}^b . a_{l-1}^b') (delta_l^b . delta_l^b')``: it needs both
the forward kernel and the backward one. That is why ReLU or linear nets without bias
show flat weight-gradient norms while the back-propagated signal vanishes (REFERENCES §1).

Expectations use closed forms for linear, ReLU and LeakyReLU and Gauss–Hermite quadrature
(numpy) for any other elementwise activation; the activation itself is evaluated with the
same torch function the model runs, and its derivative by autograd. See docs/theory.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gradwatch._errors import GradwatchValueError
from gradwatch.anatomy.activations import parse_spec
from gradwatch.anatomy.map import Layer, weight_scale

__all__ = [
    "Activation",
    "ChainLayer",
    "Gains",
    "Prediction",
    "activation",
    "bias_dead_share",
    "bivariate_moments",
    "chain_layer",
    "chi",
    "critical_sigma_w2",
    "forward_map",
    "gains",
    "jacobian_singular_values",
    "moments",
    "predict_chain",
]

_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "linear": lambda x: x,
    "relu": F.relu,
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "hardtanh": F.hardtanh,
    "softsign": F.softsign,
    "hardsigmoid": F.hardsigmoid,
    "gelu": F.gelu,
    "silu": F.silu,
    "elu": F.elu,
    "celu": F.celu,
    "selu": F.selu,
    "softplus": F.softplus,
    "mish": F.mish,
    "hardswish": F.hardswish,
}

#: Gauss–Hermite points for one-dimensional expectations and per axis for two-dimensional ones.
N_QUAD_1D = 100  # even: no node at 0, where ReLU-like derivatives jump
N_QUAD_2D = 48


@dataclass(frozen=True)
class Activation:
    """An elementwise activation: its function, derivative, and closed forms where they exist."""

    spec: str
    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def slope(self) -> float | None:
        """The negative-side slope of a piecewise-linear activation (0 for ReLU, 1 for linear)."""
        if self.name == "relu":
            return 0.0
        if self.name == "linear":
            return 1.0
        if self.name == "leaky_relu":
            return float(dict(self.params).get("negative_slope", 0.01))
        return None

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return _FUNCTIONS[self.name](x, **dict(self.params))

    def phi(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.fn(torch.as_tensor(x, dtype=torch.float64)).numpy()

    def dphi(self, x: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(np.array(x, dtype=np.float64)).requires_grad_(True)
        (g,) = torch.autograd.grad(self.fn(t).sum(), t)
        return g.numpy()


def activation(spec: str | None) -> Activation:
    """The `Activation` for a spec (``None`` or ``"linear"``: the identity)."""
    if spec is None:
        return Activation("linear", "linear")
    name, params = parse_spec(spec)
    if name not in _FUNCTIONS:
        raise GradwatchValueError(
            f"no theory for activation {spec!r}; known: {', '.join(sorted(_FUNCTIONS))}"
        )
    return Activation(spec, name, tuple(sorted(params.items())))


@lru_cache(maxsize=8)
def _hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for E[f(z)], z ~ N(0, 1): probabilists' Gauss–Hermite, weights summing to 1."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return z, w / w.sum()


# -- one-dimensional expectations ---------------------------------------------------------
def moments(act: Activation, q: float, *, quadrature: bool = False) -> tuple[float, float]:
    """``(E[phi(u)^2], E[phi'(u)^2])`` for ``u ~ N(0, q)``; closed forms unless `quadrature`."""
    q = max(float(q), 0.0)
    a = act.slope
    if a is not None and not quadrature:
        k = (1.0 + a * a) / 2.0
        return k * q, k
    u, w = _nodes_1d(q)
    return float(w @ act.phi(u) ** 2), float(w @ act.dphi(u) ** 2)


def _nodes_1d(q: float) -> tuple[np.ndarray, np.ndarray]:
    """Points and weights for E[f(u)], u ~ N(0, q).

    Gauss–Hermite while sqrt(q) <= 2; beyond that its nodes near 0 lie further apart than
    the width (~1) of a sigmoid's or tanh's derivative, so a midpoint rule over +-10 sqrt(q)
    is used instead, with steps of 1/16 (coarser, up to 8000 points, for very wide ones,
    where such features no longer matter). Midpoints keep 0 off the grid, where ReLU-like
    derivatives jump.
    """
    s = math.sqrt(q)
    if s <= 2.0:
        z, w = _hermite(N_QUAD_1D)
        return s * z, w
    h = max(1.0 / 16.0, 20.0 * s / 8000.0)
    n = math.ceil(10.0 * s / h)
    u = (np.arange(-n, n) + 0.5) * h
    w = np.exp(-(u**2) / (2.0 * q))
    return u, w / w.sum()


def chi(act: Activation, sigma_w2: float, q: float) -> float:
    """Per-layer gain of the squared back-propagated gradient: ``sigma_w^2 E[phi'(h)^2]``, ``h ~ N(0, q)``."""
    return float(sigma_w2) * moments(act, q)[1]


def forward_map(acts: Sequence[Activation], sigma_w2: Sequence[float], sigma_b2: Sequence[float], q0: float) -> np.ndarray:
    """Pre-activation variances ``q_l`` of a chain: ``acts[l]`` follows layer ``l``; `q0` = mean(x^2)."""
    q = np.empty(len(sigma_w2))
    prev = float(q0)
    for i, (sw, sb) in enumerate(zip(sigma_w2, sigma_b2, strict=True)):
        q[i] = sw * prev + sb
        prev = moments(acts[i], q[i])[0]
    return q


# -- two-dimensional expectations ----------------------------------------------------------
def _relu_pair(rho: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray]:
    """E[phi(u1)phi(u2)]/q and E[phi'(u1)phi'(u2)] for LeakyReLU(a) at correlation rho (arc-cosine kernels)."""
    rho = np.clip(rho, -1.0, 1.0)
    th = np.arccos(rho)
    same = (np.sqrt(1 - rho**2) + (np.pi - th) * rho) / (2 * np.pi)  # E[relu(u1) relu(u2)]/q
    th_neg = np.arccos(-rho)
    cross = (np.sqrt(1 - rho**2) + (np.pi - th_neg) * (-rho)) / (2 * np.pi)  # E[relu(u1) relu(-u2)]/q
    kphi = (1 + a * a) * same - 2 * a * cross
    p_same = (np.pi - th) / (2 * np.pi)  # P(u1 > 0, u2 > 0) = P(u1 < 0, u2 < 0)
    p_diff = th / (2 * np.pi)
    kd = p_same * (1 + a * a) + 2 * a * p_diff
    return kphi, kd


def bivariate_moments(act: Activation, q: float, rho: np.ndarray, *, quadrature: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``E[phi(u1)phi(u2)]`` and ``E[phi'(u1)phi'(u2)]`` for ``u1, u2 ~ N(0, q)`` with correlation `rho` (array)."""
    rho = np.clip(np.asarray(rho, dtype=float), -1.0, 1.0)
    q = max(float(q), 0.0)
    a = act.slope
    if a is not None and not quadrature:
        kphi, kd = _relu_pair(rho, a)
        return kphi * q, kd
    s = math.sqrt(q)
    # more nodes for wide pre-activations, for the reason given in _nodes_1d (even: none at 0)
    n = N_QUAD_2D if s <= 2.0 else min(200, 2 * math.ceil(N_QUAD_2D * s / 4.0))
    z, w = _hermite(n)
    u1 = s * z  # (n,)
    u2 = s * (rho[:, None, None] * z[None, :, None] + np.sqrt(1 - rho**2)[:, None, None] * z[None, None, :])
    ww = w[:, None] * w[None, :]
    p1, d1 = act.phi(u1), act.dphi(u1)
    p2, d2 = act.phi(u2), act.dphi(u2)
    kphi = np.einsum("ij,i,rij->r", ww, p1, p2)
    kd = np.einsum("ij,i,rij->r", ww, d1, d2)
    if s > 2.0:
        # Wide pre-activations: a tensor grid this size under-resolves features of width ~1
        # (tanh', sigmoid'). Calibrate to the finer one-dimensional rule, which the pair
        # expectation must equal at rho = 1.
        e2, ed2 = moments(act, q, quadrature=True)
        at_one = (float(w @ p1**2), float(w @ d1**2))
        if at_one[0] > 0:
            kphi = kphi * (e2 / at_one[0])
        if at_one[1] > 0:
            kd = kd * (ed2 / at_one[1])
    return kphi, kd


# -- a chain of layers -----------------------------------------------------------------------
@dataclass(frozen=True)
class ChainLayer:
    """One weight layer of a plain chain, as the theory sees it."""

    name: str
    fan_in: int
    sigma_w2: float
    sigma_b2: float = 0.0
    activation: str | None = None  # what follows this layer (None: nothing)
    bias: bool = True


def chain_layer(layer: Layer) -> ChainLayer:
    """A weight layer of the model map as the theory sees it: its fan-in, weight and bias
    scales as the map read them, and the activation that follows it."""
    e = layer.extra
    return ChainLayer(
        name=layer.name,
        fan_in=int(layer.fan_in or 1),
        sigma_w2=weight_scale(layer),
        sigma_b2=float(e.get("sigma_b2") or 0.0),
        activation=e.get("activation"),
        bias=e.get("sigma_b2") is not None,
    )


@dataclass
class Gains:
    """Single-sample mean-field quantities along a chain (index = layer)."""

    q: np.ndarray  # pre-activation variance
    ephi2: np.ndarray  # E[phi(h)^2]: mean square of the layer's output activation
    edphi2: np.ndarray  # E[phi'(h)^2]
    chi: np.ndarray  # gain of ||delta||^2 from layer l+1 back to l (last entry NaN)

    @property
    def backward(self) -> np.ndarray:
        """||delta_l||^2 / ||delta_last||^2 for every layer."""
        c = self.chi[:-1]
        out = np.ones(len(self.chi))
        out[:-1] = np.cumprod(c[::-1])[::-1]
        return out

    @property
    def depth_scale(self) -> float:
        """``xi = -1 / ln(chi)`` from the geometric mean chi (inf at chi = 1)."""
        c = self.chi[:-1]
        if len(c) == 0:
            return math.inf
        lg = float(np.mean(np.log(np.maximum(c, 1e-300))))
        return math.inf if abs(lg) < 1e-12 else -1.0 / lg if lg < 0 else 1.0 / lg


def gains(chain: Sequence[ChainLayer], q0: float = 1.0) -> Gains:
    """Forward map and per-layer gradient gain of a chain for inputs of mean square `q0`."""
    acts = [activation(layer.activation) for layer in chain]
    q = forward_map(acts, [c.sigma_w2 for c in chain], [c.sigma_b2 for c in chain], q0)
    m = [moments(a, qi) for a, qi in zip(acts, q, strict=True)]
    ephi2 = np.array([x[0] for x in m])
    edphi2 = np.array([x[1] for x in m])
    chis = np.full(len(chain), np.nan)
    for i in range(len(chain) - 1):
        chis[i] = chain[i + 1].sigma_w2 * edphi2[i]
    return Gains(q=q, ephi2=ephi2, edphi2=edphi2, chi=chis)


@lru_cache(maxsize=256)
def critical_sigma_w2(
    spec: str | None, depth: int, q0: float = 1.0, sigma_b2: float = 0.0, upper: float = 1e3
) -> float | None:
    """The weight scale ``sigma_w^2`` at which a `depth`-layer chain of `spec` keeps the gradient norm.

    Solves ``prod_l chi_l = 1`` (every layer with the same sigma_w^2 and sigma_b^2) on
    ``log sigma_w^2`` in ``[1e-2, upper]`` by regula falsi (the Illinois variant: the
    log-gain is smooth and increasing, so it converges in a handful of evaluations where
    bisection takes thirty); None when no value there does.
    For ReLU this is 2 (He), for LeakyReLU(a) ``2 / (1 + a^2)``, for linear and tanh 1.
    """
    act = activation(spec)
    a = act.slope
    if a is not None:
        crit = 2.0 / (1.0 + a * a)
        return crit if 1e-2 <= crit <= upper else None
    depth = max(int(depth), 2)

    def log_gain(log_s: float) -> float:
        s = math.exp(log_s)
        chain = [ChainLayer(str(i), 1, s, sigma_b2, spec) for i in range(depth)]
        g = gains(chain, q0)
        return float(np.sum(np.log(np.maximum(g.chi[:-1], 1e-300))))

    lo, hi = math.log(1e-2), math.log(upper)
    f_lo, f_hi = log_gain(lo), log_gain(hi)
    if not (f_lo <= 0 <= f_hi and math.isfinite(f_lo) and math.isfinite(f_hi)):
        return None
    mid, side = (lo + hi) / 2, 0
    for _ in range(100):
        if hi - lo < 1e-12:
            break
        mid = hi - f_hi * (hi - lo) / (f_hi - f_lo) if f_hi != f_lo else (lo + hi) / 2
        f = log_gain(mid)
        if not math.isfinite(f):
            return None
        if abs(f) < 1e-10:
            break
        if f < 0:
            lo, f_lo = mid, f
            if side < 0:  # the same end moved twice: halve the other's weight (Illinois)
                f_hi /= 2
            side = -1
        else:
            hi, f_hi = mid, f
            if side > 0:
                f_lo /= 2
            side = 1
    return math.exp(mid)


@dataclass
class Prediction:
    """Predicted weight-gradient norms of a chain's layers.

    ``grad_norm`` is in the units of the output gradient given to `predict_chain` (so it
    is absolute when that was the real one); ``relative`` divides by the last layer's.
    """

    layers: list[str]
    grad_norm: np.ndarray
    signal: np.ndarray  # ||delta_l||^2 per sample, relative to the last layer's
    gains: Gains
    notes: list[str] = field(default_factory=list)

    @property
    def relative(self) -> np.ndarray:
        return self.grad_norm / self.grad_norm[-1]


def _gram_pairs(x: np.ndarray, rng: np.random.Generator, max_rows: int) -> tuple[np.ndarray, float]:
    """Rows to use for the pair sums and the factor that scales their sums up to the whole batch."""
    n = x.shape[0]
    if n <= max_rows:
        return np.arange(n), 1.0
    idx = np.sort(rng.choice(n, size=max_rows, replace=False))
    return idx, 1.0


def predict_chain(
    chain: Sequence[ChainLayer],
    inputs: np.ndarray | None = None,
    output_grads: np.ndarray | None = None,
    *,
    grid: int = 81,
    max_rows: int = 256,
) -> Prediction:
    """Predict each layer's weight-gradient norm (weight and bias together) for a batch.

    Args:
        chain: the layers, input side first; ``chain[i].activation`` follows layer ``i``.
        inputs: the chain's input, ``(batch, fan_in of the first layer)``; None: one sample
            of mean square 1.
        output_grads: ``dL/dh`` at the last layer's output, ``(batch, fan_out)``; None:
            independent unit-size gradients per sample.
        grid: correlation grid points on which the pair kernels are computed.
        max_rows: larger batches are subsampled (fixed seed) to this many rows for the pair sums.

    The forward kernel starts from the inputs' Gram matrix, the backward one from the
    output gradients' Gram matrix; in between, every pair of samples is carried through
    the mean-field maps as a function of its input correlation (assuming samples of equal
    norm, weights independent of the back-propagated signal, and wide layers).
    """
    chain = list(chain)
    if not chain:
        raise GradwatchValueError("predict_chain needs at least one layer")
    x = np.ones((1, chain[0].fan_in)) if inputs is None else np.asarray(inputs, dtype=np.float64).reshape(-1, chain[0].fan_in)
    n = x.shape[0]
    g_out = np.ones((n, 1)) if output_grads is None else np.asarray(output_grads, dtype=np.float64).reshape(n, -1)
    if inputs is not None and output_grads is None:
        g_out = np.eye(n)  # independent gradients per sample
    rng = np.random.default_rng(0)
    rows, _ = _gram_pairs(x, rng, max_rows)
    xs, gs = x[rows], g_out[rows]
    m = len(rows)
    gram_x = xs @ xs.T  # a_0 . a_0'
    gram_d = gs @ gs.T  # delta_L . delta_L'
    sq = np.diag(gram_x).copy()
    q0 = float(np.mean(sq)) / chain[0].fan_in
    norms = np.sqrt(np.maximum(sq, 1e-300))
    c0 = np.clip(gram_x / np.outer(norms, norms), -1.0, 1.0)
    off = ~np.eye(m, dtype=bool)
    c_pairs = c0[off]
    d_pairs = gram_d[off]
    d_diag = np.diag(gram_d)
    # Scale pair sums from the subsample up to the whole batch.
    s_diag = n / m
    s_off = (n * (n - 1)) / max(m * (m - 1), 1)

    g = gains(chain, q0)
    acts = [activation(layer.activation) for layer in chain]
    cgrid = np.linspace(-1.0, 1.0, grid)
    L = len(chain)
    # Forward: pre-activation covariance k_l(c) of a pair whose inputs had correlation c.
    k = np.empty((L, grid))
    a_off = np.empty((L, grid))  # a_{l-1} . a_{l-1}' (per unit of fan_in) feeding layer l
    d_off = np.empty((L, grid))  # E[phi'(u1) phi'(u2)] of layer l
    a_off[0] = cgrid * q0
    for i, layer in enumerate(chain):
        k[i] = layer.sigma_w2 * a_off[i] + layer.sigma_b2
        rho = k[i] / max(g.q[i], 1e-300)
        kphi, kd = bivariate_moments(acts[i], g.q[i], rho)
        d_off[i] = kd
        if i + 1 < L:
            a_off[i + 1] = kphi
    # Backward: product of gains from the last layer down, diagonal and per correlation.
    p_diag = np.ones(L)
    p_off = np.ones((L, grid))
    for i in range(L - 2, -1, -1):
        p_diag[i] = p_diag[i + 1] * chain[i + 1].sigma_w2 * g.edphi2[i]
        p_off[i] = p_off[i + 1] * chain[i + 1].sigma_w2 * d_off[i]
    out = np.empty(L)
    for i, layer in enumerate(chain):
        if i == 0:
            a_diag_pairs = sq  # exact input norms
            a_off_pairs = gram_x[off]
            w_diag = float(np.sum(a_diag_pairs * d_diag)) * p_diag[i]
            w_off = float(np.sum(a_off_pairs * d_pairs * np.interp(c_pairs, cgrid, p_off[i])))
        else:
            a_diag = layer.fan_in * g.ephi2[i - 1]
            w_diag = a_diag * float(np.sum(d_diag)) * p_diag[i]
            w_off = float(np.sum(d_pairs * np.interp(c_pairs, cgrid, layer.fan_in * a_off[i] * p_off[i])))
        b_diag = float(np.sum(d_diag)) * p_diag[i] if layer.bias else 0.0
        b_off = float(np.sum(d_pairs * np.interp(c_pairs, cgrid, p_off[i]))) if layer.bias else 0.0
        total = s_diag * (w_diag + b_diag) + s_off * (w_off + b_off)
        out[i] = math.sqrt(max(total, 0.0))
    notes = []
    if n > m:
        notes.append(f"pair sums estimated from {m} of {n} rows")
    return Prediction(layers=[c.name for c in chain], grad_norm=out, signal=p_diag, gains=g, notes=notes)


# -- the input-output Jacobian -----------------------------------------------------------------
def jacobian_singular_values(model: torch.nn.Module, inputs: torch.Tensor, samples: int = 4) -> np.ndarray:
    """Singular values of d output / d input, one Jacobian per sample, for the first `samples` rows.

    `inputs` must be a floating tensor with a batch dimension first. The model is run as
    it is (call it in eval mode for a deterministic answer). Returns all singular values
    pooled (``samples * min(n_in, n_out)`` of them). Mean-field theory predicts their mean
    square ``prod chi``; dynamical isometry is their concentration near 1.
    """
    if not (isinstance(inputs, torch.Tensor) and inputs.is_floating_point()):
        raise GradwatchValueError("jacobian_singular_values needs a floating-point input tensor (batch first)")
    out: list[np.ndarray] = []
    for b in range(min(samples, inputs.shape[0])):
        x = inputs[b : b + 1].detach()

        def f(v: torch.Tensor, shape: torch.Size = x.shape) -> torch.Tensor:
            y = model(v.reshape(shape))
            return y.reshape(-1)

        j = torch.autograd.functional.jacobian(f, x.reshape(-1))
        out.append(torch.linalg.svdvals(j.double()).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def bias_dead_share(ratio_q: list[float], input_rms: float, z: float) -> float:
    """Share of units whose bias sits more than `z` pre-activation std below zero.

    A unit's pre-activation is ``W_i . a + b_i`` with std about ``||W_i|| * rms(a)``, so it
    is below ``-z`` std when ``b_i / ||W_i|| < -z * rms(a)``. `ratio_q` holds the deciles
    of ``b_i / ||W_i||`` (10%..90%); the share is read off them by linear interpolation.
    """
    q = np.asarray(ratio_q, dtype=float)
    probs = np.linspace(0.1, 0.9, len(q))
    cut = -z * input_rms
    if cut <= q[0]:
        return 0.0 if cut < q[0] else 0.1
    if cut >= q[-1]:
        return 1.0 if cut > q[-1] else 0.9
    return float(np.interp(cut, q, probs))
