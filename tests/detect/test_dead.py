from __future__ import annotations

from gradwatch import Kind, Severity
from gradwatch.detect import Thresholds, dead_units
from tests.detect._timelines import build, chain_anatomy, falling_loss, slow_loss, stuck_loss

TH = Thresholds()
AN = chain_anatomy(3)
SITES = {
    "1": {"fn": "relu", "module": "1", "family": "relu"},
    "block:relu#0": {"fn": "relu", "module": "block", "family": "relu"},
    "5": {"fn": "gelu", "module": "5", "family": "relu"},
}


def _values(dead: dict[str, float]) -> dict[str, dict[str, float]]:
    return {"act_dead_frac": dead}


def test_mostly_dead_sites_with_a_stuck_loss_are_an_error() -> None:
    tl = build(AN, 31, loss=stuck_loss(), sites=SITES,
               values=lambda s: _values({"1": 0.95 if s >= 20 else 0.1, "block:relu#0": 0.6, "5": 1.0}))  # fmt: skip
    (f,) = dead_units(tl, AN, TH)
    assert f.kind == Kind.DEAD_UNITS and f.severity == Severity.ERROR
    assert f.layers == ["1", "block"]  # GELU passes gradient below zero: not dead
    assert f.step == 0  # `block:relu#0` was over half dead from the first record
    assert f.evidence["dead_frac_max"] == 0.95 and f.evidence["sites"] == 2.0
    assert "95% of the units at `1` (relu)" in f.message and "1 more site" in f.message


def test_a_net_that_learns_with_some_dead_units_gets_info() -> None:
    tl = build(AN, 31, loss=falling_loss(), sites=SITES, values=lambda s: _values({"1": 0.7}))
    assert dead_units(tl, AN, TH)[0].severity == Severity.INFO


def test_a_site_that_lost_nearly_all_its_units_warns_however_the_loss_falls() -> None:
    sites = {"1": {"fn": "relu", "module": "1", "family": "relu", "units": 128}}
    tl = build(AN, 31, loss=falling_loss(), sites=sites, values=lambda s: _values({"1": 126 / 128}))
    (f,) = dead_units(tl, AN, TH)
    assert f.severity == Severity.WARNING
    assert f.message.startswith("`1` works with 2 of its 128 units: 98% of the units at `1` (relu) never switch on")
    # a log without unit counts still says what is lost
    (old,) = dead_units(build(AN, 31, loss=falling_loss(), sites=SITES, values=lambda s: _values({"1": 0.95})), AN, TH)
    assert old.severity == Severity.WARNING and old.message.startswith("`1` has lost nearly all its width")
    # a run that converged all the same keeps its info; under the bar the loss decides
    converged = build(AN, 31, loss=falling_loss(rate=0.1, floor=0.001), sites=sites, values=lambda s: _values({"1": 0.95}))
    assert dead_units(converged, AN, TH)[0].severity == Severity.INFO
    assert dead_units(build(AN, 31, loss=slow_loss(), sites=sites, values=lambda s: _values({"1": 0.7})), AN, TH)[0].severity == Severity.WARNING


def test_quiet_below_the_share_and_without_activation_metrics() -> None:
    assert dead_units(build(AN, 31, loss=stuck_loss(), values=lambda s: _values({"1": 0.3})), AN, TH) == []
    assert dead_units(build(AN, 31, loss=stuck_loss()), AN, TH) == []
    assert dead_units(build(AN, 0), AN, TH) == []


def test_a_relu_on_a_classifiers_outputs_is_found_from_one_dead_unit() -> None:
    # A real run on the digits: ReLU after the logits. A tenth of the outputs never switch
    # on (a class the model cannot predict) — far under the hidden-site bar of one half.
    import torch
    from torch import nn
    from torch.nn import functional as F

    import gradwatch as gw
    from gradwatch.lab.data import accuracy, batches, digits

    split = digits(seed=0)

    def run(final_relu: bool) -> tuple[gw.Diagnosis, float, nn.Module]:
        torch.manual_seed(0)
        layers = [nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)]
        model = nn.Sequential(*layers, *([nn.ReLU()] if final_relu else []))
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        with gw.watch(model, every=10) as w:
            for x, y in batches(split.x_train, split.y_train, 64, 200, seed=0):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                w.step(loss=loss)
                opt.step()
        assert w.timeline.sites["1"].get("output") is None  # a hidden ReLU is not the output
        return w.diagnose(), accuracy(model, split.x_test, split.y_test), model

    d, acc, model = run(final_relu=True)
    (f,) = [f for f in d.findings if f.kind == Kind.DEAD_UNITS]
    assert f.severity >= Severity.WARNING and f.layers == ["5"] and f.evidence["output_site"] == 1.0
    assert 0 < f.evidence["dead_frac_max"] < TH.dead_frac
    assert "Remove the activation after the last layer" in f.message and f.causes == []
    result = gw.fix(model, d)
    assert result.changes == [] and any("Remove the activation" in m for m in result.advice["manual"])
    healthy, acc_without, _ = run(final_relu=False)
    assert not [f for f in healthy.findings if f.kind == Kind.DEAD_UNITS] and acc_without > acc
