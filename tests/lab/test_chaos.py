"""The order-to-chaos experiment's depth scale, against a plain numpy computation."""

from __future__ import annotations

import math

import numpy as np

from gradwatch.lab.chaos import CHAOS, SIGMA_B2, depth_scale


def _numpy_depth_scale(sw2: float, sb2: float) -> tuple[float, float, float]:
    """q*, c* and xi_c for tanh by Gauss-Hermite quadrature written out here (tanh' = sech^2)."""
    z, w = np.polynomial.hermite_e.hermegauss(120)
    w = w / w.sum()
    q = 1.0
    for _ in range(2000):
        q = sw2 * float(w @ np.tanh(math.sqrt(q) * z) ** 2) + sb2
    s = math.sqrt(q)
    u1 = s * z[:, None]

    def pair(c: float, f) -> float:
        u2 = s * (c * z[:, None] + math.sqrt(max(0.0, 1 - c * c)) * z[None, :])
        return float(np.einsum("i,j,ij->", w, w, f(u1) * f(u2)))

    def dtanh(u):
        return 1.0 / np.cosh(u) ** 2

    c = 0.0
    for _ in range(2000):
        c, before = min(1.0, (sw2 * pair(c, np.tanh) + sb2) / q), c
        if abs(c - before) < 1e-10:
            break
    chi_c = sw2 * pair(c, dtanh)
    return q, c, -1.0 / math.log(chi_c)


def test_depth_scale_matches_a_direct_quadrature_in_both_phases() -> None:
    for sw2 in (1.0, 4.0):  # ordered (c* = 1) and chaotic (c* < 1)
        q, c, xi = _numpy_depth_scale(sw2, SIGMA_B2)
        got = depth_scale(sw2)
        assert math.isclose(got["q_star"], q, rel_tol=1e-6)
        assert math.isclose(got["c_star"], c, rel_tol=1e-3, abs_tol=1e-6)
        assert math.isclose(got["xi_c"], xi, rel_tol=1e-2), (sw2, got, xi)
    assert depth_scale(1.0)["c_star"] > 1 - 1e-6 and depth_scale(4.0)["c_star"] < 0.2


def test_the_boundary_lies_where_schoenholz_et_al_draw_it() -> None:
    """At sigma_b^2 = 0.05 the order-to-chaos boundary is at sigma_w^2 ~ 1.76 (their figure 5)."""
    assert depth_scale(1.7)["chi_1"] < 1 < depth_scale(1.82)["chi_1"]
    assert depth_scale(1.76)["xi_c"] > 500 > 6 * depth_scale(4.0)["xi_c"]


def test_each_settings_expectation_is_the_theorys() -> None:
    for s in CHAOS.settings:
        scale = depth_scale(s.params["sigma_w2"])
        trains = s.params["depth"] < 6 * scale["xi_c"]
        assert s.expected == ("trains" if trains else "fails")
        if not trains:
            assert s.verdict_has == (("vanishing_gradient",) if scale["chi_1"] < 1 else ("exploding_gradient",))
