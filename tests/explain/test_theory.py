from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from gradwatch.explain.theory import (
    ChainLayer,
    activation,
    bivariate_moments,
    chi,
    critical_sigma_w2,
    forward_map,
    gains,
    jacobian_singular_values,
    moments,
    predict_chain,
)

PIECEWISE = ["relu", "leaky_relu(negative_slope=0.2)", "linear"]


@pytest.mark.parametrize("spec", PIECEWISE)
@pytest.mark.parametrize("q", [0.1, 1.0, 7.0])
def test_closed_forms_match_quadrature(spec: str, q: float) -> None:
    act = activation(spec)
    closed, quad = moments(act, q), moments(act, q, quadrature=True)
    assert closed == pytest.approx(quad, rel=1e-9)
    rho = np.linspace(-1, 1, 11)
    c_phi, c_d = bivariate_moments(act, q, rho)
    q_phi, q_d = bivariate_moments(act, q, rho, quadrature=True)
    # Gauss–Hermite converges slowly across the kink at 0, fastest away from rho = +-1
    np.testing.assert_allclose(c_phi, q_phi, atol=5e-3 * q)
    np.testing.assert_allclose(c_d, q_d, atol=2.5e-2)
    np.testing.assert_allclose(c_d[3:8], q_d[3:8], atol=1.2e-2)


def test_moments_against_monte_carlo() -> None:
    g = np.random.default_rng(0)
    z = g.standard_normal(2_000_000)
    for spec, q in [("tanh", 2.0), ("sigmoid", 0.5), ("gelu", 1.5), ("elu", 1.0), ("tanh", 400.0), ("sigmoid", 90.0)]:
        act = activation(spec)
        u = math.sqrt(q) * z
        e2, ed2 = moments(act, q)
        # 1%: Gauss–Hermite is exact for smooth activations, and off by ~0.5% across ELU's kinked derivative
        assert e2 == pytest.approx(float(np.mean(act.phi(u) ** 2)), rel=1e-2)
        assert ed2 == pytest.approx(float(np.mean(act.dphi(u) ** 2)), rel=1e-2)


def test_the_chi_table_of_references() -> None:
    relu = activation("relu")
    assert [round(chi(relu, s, 1.0), 3) for s in (1 / 3, 1.0, 2.0)] == [0.167, 0.5, 1.0]
    assert chi(activation("leaky_relu(negative_slope=0.5)"), 2.0, 1.0) == pytest.approx(1.25)
    assert chi(activation(None), 1.7, 3.0) == pytest.approx(1.7)
    tanh = activation("tanh")
    assert chi(tanh, 1 / 3, 1e-6) == pytest.approx(1 / 3, rel=1e-4)  # tanh ~ identity near 0
    assert chi(tanh, 2.0, 1.0) < 2.0
    sig = activation("sigmoid")
    assert moments(sig, 1e-8)[1] == pytest.approx(1 / 16, rel=1e-6)  # sigmoid' <= 1/4
    assert moments(sig, 3.0)[1] < 1 / 16


def test_forward_map_for_relu() -> None:
    relu = activation("relu")
    q = forward_map([relu] * 4, [2.0, 1.0, 0.5, 2.0], [0.0, 0.1, 0.0, 0.0], q0=3.0)
    expected, prev = [], 3.0
    for sw, sb in [(2.0, 0.0), (1.0, 0.1), (0.5, 0.0), (2.0, 0.0)]:
        expected.append(sw * prev + sb)
        prev = expected[-1] / 2
    np.testing.assert_allclose(q, expected)


def _linear_net(widths: list[int], scales: list[float], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(n_out, n_in, generator=g, dtype=torch.float64) * math.sqrt(s / n_in)
        for n_in, n_out, s in zip(widths[:-1], widths[1:], scales, strict=True)
    ]


def test_deep_linear_net_profile_matches_the_product_of_its_weight_matrices() -> None:
    widths = [128, 256, 256, 192, 256, 256, 256, 10]
    scales = [1.0, 0.8, 1.3, 1.1, 0.9, 1.2, 1.0]
    ws = _linear_net(widths, scales)
    chain = [
        ChainLayer(str(i), w.shape[1], float(w.shape[1] * w.pow(2).mean()), 0.0, None, bias=False)
        for i, w in enumerate(ws)
    ]
    # back-propagated signal: ||M^T v||^2 / ||v||^2 for random v is ||M||_F^2 / n_out, M = W_L ... W_{l+1}
    sig = gains(chain).backward
    for layer in range(len(ws) - 1):
        m = torch.eye(ws[-1].shape[0], dtype=torch.float64)
        for w in reversed(ws[layer + 1 :]):
            m = m @ w
        exact = float(m.pow(2).sum()) / ws[-1].shape[0]
        assert sig[layer] == pytest.approx(exact, rel=0.1), layer
    # weight gradients for a batch: G_l = delta_l^T a_{l-1}, exactly, from the matrices
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, widths[0], generator=g, dtype=torch.float64)
    d_out = torch.randn(64, widths[-1], generator=g, dtype=torch.float64)
    acts = [x]
    for w in ws[:-1]:
        acts.append(acts[-1] @ w.T)
    deltas = [d_out]
    for w in reversed(ws[1:]):
        deltas.insert(0, deltas[0] @ w)
    exact_norms = np.array([float((d.T @ a).norm()) for d, a in zip(deltas, acts, strict=True)])
    pred = predict_chain(chain, x.numpy(), d_out.numpy())
    np.testing.assert_allclose(np.log10(pred.grad_norm), np.log10(exact_norms), atol=0.05)


def test_prediction_tracks_autograd_on_a_tanh_mlp() -> None:
    torch.manual_seed(0)
    widths = [64, 128, 128, 128, 128, 128, 5]
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(widths):
        lin = nn.Linear(n_in, n_out)
        nn.init.normal_(lin.weight, std=math.sqrt(1.5 / n_in))
        nn.init.normal_(lin.bias, std=0.1)
        layers += [lin, nn.Tanh()]
    model = nn.Sequential(*layers[:-1]).double().requires_grad_(True)
    x = torch.randn(64, widths[0], dtype=torch.float64)
    out = model(x)
    out.retain_grad()
    (0.5 * out.pow(2).sum()).backward()
    lins = [m for m in model if isinstance(m, nn.Linear)]
    measured = np.array([math.hypot(float(m.weight.grad.norm()), float(m.bias.grad.norm())) for m in lins])
    chain = [
        ChainLayer(str(i), m.in_features, float(m.in_features * m.weight.detach().pow(2).mean()), float(m.bias.detach().pow(2).mean()),
                   "tanh" if i < len(lins) - 1 else None)
        for i, m in enumerate(lins)
    ]
    pred = predict_chain(chain, x.numpy(), out.grad.numpy())
    np.testing.assert_allclose(np.log10(pred.grad_norm), np.log10(measured), atol=0.15)
    # the single-sample prediction misses the batch's coherence; the batch one does not
    single = predict_chain(chain).relative
    assert np.all(np.isfinite(single))


def test_critical_weight_scale() -> None:
    assert critical_sigma_w2("relu", 10) == 2.0
    assert critical_sigma_w2("leaky_relu(negative_slope=0.5)", 10) == pytest.approx(1.6)
    assert critical_sigma_w2(None, 10) == 1.0
    s = critical_sigma_w2("tanh", 12)
    assert s is not None
    chain = [ChainLayer(str(i), 1, s, 0.0, "tanh") for i in range(12)]
    assert float(np.prod(gains(chain).chi[:-1])) == pytest.approx(1.0, rel=1e-6)
    # sigmoid needs a scale far above any standard initialisation
    sig = critical_sigma_w2("sigmoid", 12)
    assert sig is not None and sig > 10
    chain = [ChainLayer(str(i), 1, sig, 0.0, "sigmoid") for i in range(12)]
    assert float(np.prod(gains(chain).chi[:-1])) == pytest.approx(1.0, rel=1e-6)
    # with biases (sigma_b^2 = 0.3) the product is 1 as well, at a larger scale than without
    sb = critical_sigma_w2("tanh", 20, 1.0, 0.3)
    assert sb is not None and sb > s
    chain = [ChainLayer(str(i), 1, sb, 0.3, "tanh") for i in range(20)]
    assert float(np.prod(gains(chain).chi[:-1])) == pytest.approx(1.0, rel=1e-6)
    # nothing up to `upper`: None, and quickly (the bracket's ends decide)
    assert critical_sigma_w2("sigmoid", 12, upper=10.0) is None
    assert critical_sigma_w2("relu", 10, upper=1.5) is None


def test_jacobian_singular_values_of_a_linear_net_are_those_of_the_weight_product() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 9, bias=False), nn.Linear(9, 5, bias=False)).double()
    s = jacobian_singular_values(model, torch.randn(3, 6, dtype=torch.float64), samples=2)
    exact = torch.linalg.svdvals(model[1].weight @ model[0].weight).detach().numpy()
    np.testing.assert_allclose(np.sort(s), np.sort(np.concatenate([exact, exact])), rtol=1e-10)
    with pytest.raises(ValueError, match="floating-point input"):
        jacobian_singular_values(model, torch.zeros(2, 6, dtype=torch.long))


def test_unknown_activation_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="no theory for activation 'swishy'; known: .*relu"):
        activation("swishy")
    with pytest.raises(ValueError, match="at least one layer"):
        predict_chain([])
