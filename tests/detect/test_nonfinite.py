from __future__ import annotations

import math

from gradwatch import Kind, Severity
from gradwatch.detect import Thresholds, nonfinite_gradient
from tests.detect._timelines import build, chain_anatomy, grads, stuck_loss

TH = Thresholds()
AN = chain_anatomy(3)


def _bad(nan_layers: int) -> dict[str, list[float]]:
    g = grads(3, [1.0, 1.0, 1.0])
    for j in range(nan_layers):
        g["grad_norm"][j] = math.nan
        g["grad_nonfinite"][j] = 7.0
    return g


def test_persistent_nan_gradients_are_an_error_localised_at_their_origin() -> None:
    # The first two layers (in execution order) have NaN gradients: the NaN arose in `2`.
    tl = build(AN, 10, layers=lambda s: _bad(2) if s >= 30 else grads(3, [1, 1, 1]), loss=stuck_loss())
    (f,) = nonfinite_gradient(tl, AN, TH)
    assert f.kind == Kind.NONFINITE_GRADIENT and f.severity == Severity.ERROR
    assert f.step == 30
    assert f.layers == ["2", "0"]
    assert f.evidence["nonfinite_records"] == 7.0
    assert f.evidence["nonfinite_entries"] == 14.0
    assert "starting at layer `2`" in f.message


def test_isolated_overflows_with_finite_weights_look_like_amp_skips() -> None:
    tl = build(AN, 20, layers=lambda s: _bad(3) if s in (0, 100) else grads(3, [1, 1, 1]), loss=stuck_loss())
    (f,) = nonfinite_gradient(tl, AN, TH)
    assert f.severity == Severity.INFO and f.step == 0
    assert "skipped" in f.message and f.evidence["nonfinite_records"] == 2.0


def test_weights_gone_nan_is_an_error_at_once() -> None:
    def layers(s: int) -> dict[str, list[float]]:
        g = _bad(1) if s == 90 else grads(3, [1, 1, 1])
        if s == 90:
            g["weight_norm"] = [math.nan, 1.0, 1.0]
        return g

    (f,) = nonfinite_gradient(build(AN, 10, layers=layers), AN, TH)
    assert f.severity == Severity.ERROR and f.evidence["weights_nonfinite"] == 1.0


def test_quiet_when_all_finite_or_unmeasured() -> None:
    assert nonfinite_gradient(build(AN, 10, layers=lambda s: grads(3, [1, 1, 1])), AN, TH) == []
    # NaN norms without a non-finite count mean "no gradient this step", not NaN gradients.
    none = grads(3, [math.nan] * 3)
    none["grad_nonfinite"] = [math.nan] * 3
    assert nonfinite_gradient(build(AN, 10, layers=lambda s: none), AN, TH) == []
    assert nonfinite_gradient(build(AN, 0), AN, TH) == []
