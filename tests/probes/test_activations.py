"""Activation statistics against direct computations on hand-made activations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradwatch as gw
from gradwatch.detect._signals import site_values
from gradwatch.probes.activations import ACTIVATIONS, DeadCarry, SiteStats, derivative


def _act(name: str):
    return next(a for a in ACTIVATIONS.values() if a.name == name)


@pytest.mark.parametrize(
    ("name", "fn"),
    [
        ("sigmoid", torch.sigmoid),
        ("tanh", torch.tanh),
        ("softsign", F.softsign),
        ("hardtanh", F.hardtanh),
        ("hardsigmoid", F.hardsigmoid),
    ],
)
def test_derivative_from_the_output_matches_autograd(name: str, fn) -> None:
    x = torch.linspace(-8, 8, 2001, dtype=torch.float64).requires_grad_()
    y = fn(x)
    (autograd,) = torch.autograd.grad(y.sum(), x)
    got = derivative(name, y.detach(), (), {})
    away_from_kinks = (x.detach().abs() - 1).abs() > 1e-3 if name == "hardtanh" else (x.detach().abs() - 3).abs() > 1e-3
    torch.testing.assert_close(got[away_from_kinks].double(), autograd[away_from_kinks], atol=1e-6, rtol=1e-5)


def test_dead_and_zero_fractions_of_a_dense_layer() -> None:
    # 4 samples x 5 units; units 1 and 3 never positive; 9 zeros in all
    y = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0, 2.0],
            [0.0, 0.0, 3.0, 0.0, 1.0],
            [0.5, 0.0, 0.0, 0.0, 0.0],
            [0.0, -0.0, 1.0, 0.0, 4.0],
        ]
    )
    st = SiteStats(_act("relu"), 5)
    st.add(y, 1, (), {})
    # 4 outputs per unit: too few to call a unit dead (a live one on half the time is off
    # for all 4 with probability 1/16) — not measured
    assert math.isnan(float(st.results()["act_dead_frac"]))
    st.add(y, 1, (), {})  # a second forward of the step: 8 outputs per unit
    r = st.results()
    assert float(r["act_dead_frac"]) == pytest.approx(2 / 5)
    assert float(r["act_zero_frac"]) == pytest.approx(float((y == 0).sum()) / y.numel())


def test_a_batch_of_one_through_a_healthy_relu_mlp_is_not_read_as_dead_units() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    with torch.no_grad():  # independent: over many inputs no unit is dead
        assert bool((model[1](model[0](torch.randn(512, 16))) > 0).any(0).all())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, every=5) as w:
        for _ in range(60):
            x = torch.randn(1, 16)  # online SGD: about half the units are off for one input
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    _, frac = site_values(w.timeline, "act_dead_frac")
    # one output per unit per step: judged only once 8 recording steps are pooled
    assert bool(np.isnan(frac[:7]).all()) and np.isfinite(frac).sum() >= 1
    assert np.nanmax(frac) < 0.1  # a live unit off for 8 inputs in a row is rare
    assert not any(f.kind == "dead_units" for f in w.diagnose().findings)


def test_steps_with_too_few_outputs_are_pooled_until_a_unit_can_be_called_dead() -> None:
    carry = DeadCarry()
    alive = torch.tensor([[1.0, 0.0, 0.0]])  # unit 0 on; units 1 and 2 off for this input
    later = torch.tensor([[0.0, 2.0, 0.0]])  # unit 1 on for another input; unit 2 never
    for k in range(8):
        st = SiteStats(_act("relu"), 3)
        st.add(alive if k % 2 == 0 else later, 1, (), {})
        r = st.results(carry)
        if k < 7:
            assert math.isnan(float(r["act_dead_frac"]))  # 1..7 outputs per unit
    assert float(r["act_dead_frac"]) == pytest.approx(1 / 3)  # pooled: only unit 2 never fired
    assert carry.peak is None and carry.count == 0  # judged, so the pool starts over


def test_a_batch_of_one_through_a_dead_relu_layer_is_found() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    with torch.no_grad():
        model[2].bias.fill_(-20.0)  # the second hidden layer never switches on
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    w_true = torch.randn(16, 4, generator=g)
    with gw.watch(model, every=5) as w:
        for _ in range(200):
            x = torch.randn(1, 16, generator=g)
            loss = F.cross_entropy(model(x), (x @ w_true).argmax(1))
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    (f,) = [f for f in w.diagnose().findings if f.kind == "dead_units"]
    assert f.severity >= gw.Severity.WARNING and "`3` works with none of its 64 units" in f.message, str(f)


def test_dead_channels_of_a_feature_map_pool_batch_and_positions() -> None:
    y = torch.relu(torch.randn(3, 4, 5, 5))
    y[:, 2] = 0.0  # channel 2 dead everywhere
    y[:, 0] = 0.0
    y[1, 0, 4, 4] = 0.1  # channel 0 alive at one position of one sample
    st = SiteStats(_act("relu"), 4)
    st.add(y, 1, (), {})
    assert float(st.results()["act_dead_frac"]) == pytest.approx(1 / 4)


def test_saturation_and_mean_derivative() -> None:
    x = torch.tensor([-10.0, -6.0, 0.0, 1.0, 6.0, 10.0])
    y = torch.sigmoid(x)
    st = SiteStats(_act("sigmoid"), 6)
    st.add(y, None, (), {})
    r = st.results()
    d = y * (1 - y)
    assert float(r["act_sat_frac"]) == pytest.approx(float((d < 0.0025).sum()) / 6)
    assert float(r["act_sat_frac"]) == pytest.approx(4 / 6)  # |x| >= 6 is beyond 1% of sigmoid'(0)
    assert float(r["act_mean_deriv"]) == pytest.approx(float(d.mean()), rel=1e-6)


def test_statistics_accumulate_over_calls() -> None:
    st = SiteStats(_act("relu"), 2)
    st.add(torch.tensor([[1.0, 0.0]] * 4), 1, (), {})
    st.add(torch.tensor([[0.0, 2.0]] * 4), 1, (), {})
    r = st.results()
    assert float(r["act_dead_frac"]) == 0.0  # each unit was positive in one of the calls
    assert float(r["act_zero_frac"]) == pytest.approx(0.5)


class ModuleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 3)
        self.relu, self.sig = nn.ReLU(), nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.sig(self.b(self.relu(self.a(x)))))


class FunctionalNet(ModuleNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.sigmoid(self.b(F.relu(self.a(x)))))


def _record(model: nn.Module) -> gw.Watcher:
    torch.manual_seed(1)
    with gw.watch(model, every=1) as w:
        for _ in range(3):
            x = torch.randn(32, 6) * 3
            model.zero_grad()
            model(x).pow(2).mean().backward()
            w.step()
    return w


def test_functional_and_module_activations_give_the_same_numbers() -> None:
    torch.manual_seed(0)
    a = ModuleNet()
    b = FunctionalNet()
    b.load_state_dict(a.state_dict())
    wa, wb = _record(a), _record(b)
    assert set(wa.timeline.sites) == {"relu", "sig"}
    assert set(wb.timeline.sites) == {"(root):relu#0", "(root):sigmoid#0"}
    pairs = {"act_dead_frac": ("relu", "(root):relu#0"), "act_zero_frac": ("relu", "(root):relu#0"),
             "act_sat_frac": ("sig", "(root):sigmoid#0"), "act_mean_deriv": ("sig", "(root):sigmoid#0")}
    for metric, (ma, mb) in pairs.items():
        va = wa.timeline.records.column(metric, ma)
        vb = wb.timeline.records.column(metric, mb)
        assert len(va) == 3
        torch.testing.assert_close(torch.tensor(va), torch.tensor(vb), msg=metric)
    assert wb.timeline.sites["(root):relu#0"]["family"] == "relu"
    assert wb.timeline.sites["(root):sigmoid#0"]["line"].startswith("test_activations.py:")


def test_site_values_match_a_direct_computation() -> None:
    torch.manual_seed(0)
    model = FunctionalNet()
    x = torch.randn(32, 6) * 3
    with gw.watch(model, every=1) as w:
        model(x).pow(2).mean().backward()
        w.step()
    h = F.relu(model.a(x)).detach()
    s = torch.sigmoid(model.b(h)).detach()
    assert w.timeline.records.column("act_dead_frac", "(root):relu#0")[0] == pytest.approx(float((h.amax(0) <= 0).float().mean()))
    assert w.timeline.records.column("act_zero_frac", "(root):relu#0")[0] == pytest.approx(float((h == 0).float().mean()))
    assert w.timeline.records.column("act_mean_deriv", "(root):sigmoid#0")[0] == pytest.approx(float((s * (1 - s)).mean()), rel=1e-6)


def test_a_shared_activation_module_splits_by_call_site() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.act = nn.Linear(3, 4), nn.Linear(4, 5), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.act(self.a(x))
            return self.act(self.b(h))

    model = Shared()
    with gw.watch(model, every=1) as w:
        model(torch.randn(8, 3)).sum().backward()
        w.step()
    assert set(w.timeline.sites) == {"act", "act#1"}


def test_a_loop_over_a_functional_activation_is_one_site() -> None:
    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = torch.tanh(layer(x))
            return x

    model = Loop()
    with gw.watch(model, every=1) as w:
        model(torch.randn(8, 4)).sum().backward()
        w.step()
    assert list(w.timeline.sites) == ["(root):tanh#0"]


def test_evaluation_passes_without_grad_are_not_counted() -> None:
    torch.manual_seed(0)
    model = FunctionalNet()
    x = torch.randn(16, 6)
    with gw.watch(model, every=1) as w:
        with torch.no_grad():
            model(torch.full((16, 6), -100.0))  # would make every ReLU unit look dead
        model(x).sum().backward()
        w.step()
    h = F.relu(model.a(x)).detach()
    assert w.timeline.records.column("act_zero_frac", "(root):relu#0")[0] == pytest.approx(float((h == 0).float().mean()))


def test_a_failing_probe_switches_itself_off_and_training_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    model = FunctionalNet()

    def broken(self, *a, **k):
        raise RuntimeError("probe bug")

    monkeypatch.setattr(SiteStats, "add", broken)
    with pytest.warns(RuntimeWarning, match="switched its forward probes off"), gw.watch(model, every=1) as w:
        for _ in range(2):
            model.zero_grad()
            model(torch.randn(4, 6)).sum().backward()
            w.step()
    assert w.timeline.recorded == 2
    assert w.timeline.metric("act_dead_frac")[0] == []  # no statistics once switched off
    assert not math.isnan(w.timeline.layer_metric("grad_norm")[-1, 0])


def test_a_parameter_free_activation_wrapper_is_its_own_site() -> None:
    class Swish(nn.Module):  # a user's (or Hugging Face's) activation module
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(x)

    model = nn.Sequential(nn.Linear(3, 4), Swish(), nn.Linear(4, 2))
    with gw.watch(model, every=1) as w:
        model(torch.randn(5, 3)).sum().backward()
        w.step()
    assert list(w.timeline.sites) == ["1"]
    assert w.timeline.sites["1"]["fn"] == "sigmoid" and w.timeline.sites["1"]["module"] == "1"
    assert w.timeline.sites["1"]["family"] == "gate"  # x * sigmoid(x): the sigmoid gates x


def test_a_saturating_output_multiplied_by_another_tensor_is_a_gate() -> None:
    class HandLSTM(nn.Module):  # an LSTM cell written out, then a tanh layer and a tanh-form GELU
        def __init__(self) -> None:
            super().__init__()
            self.x, self.h = nn.Linear(4, 32), nn.Linear(8, 32)
            self.mid, self.ffn, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, xs: torch.Tensor) -> torch.Tensor:
            h = c = torch.zeros(xs.shape[0], 8)
            for t in range(xs.shape[1]):
                i, f, g, o = (self.x(xs[:, t]) + self.h(h)).chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            m = self.ffn(torch.tanh(self.mid(h)))  # tanh feeding a layer: a saturating activation
            return self.out(0.5 * m * (1.0 + torch.tanh(0.8 * m)))  # GELU's tanh form: a gate

    model = HandLSTM()
    with gw.watch(model, every=1) as w:
        model(torch.randn(6, 5, 4)).sum().backward()
        w.step()
    family = {name: info["family"] for name, info in w.timeline.sites.items()}
    gates = {name for name, fam in family.items() if fam == "gate"}
    assert len(family) == 6 and len(gates) == 5
    assert family["(root):tanh#2"] == "saturating"  # m = tanh(mid(h)), read by `out` only through the GELU
    # a plain functional tanh MLP keeps its sites saturating
    mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    with gw.watch(mlp, every=1) as w:
        mlp(torch.randn(5, 3)).sum().backward()
        w.step()
    assert {info["family"] for info in w.timeline.sites.values()} == {"saturating"}


def test_a_model_called_from_two_lines_of_the_training_loop_keeps_one_site_per_activation() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with gw.watch(model, every=1) as w:
        a = model(torch.randn(5, 3)).sum()  # e.g. a GAN's generator, called for each player
        b = model(torch.randn(5, 3)).sum()
        (a + b).backward()
        w.step()
    assert list(w.timeline.sites) == ["1"]


def _quadrant_batch(g: torch.Generator, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy 32x32 images whose bright quadrant is the class: a task a small CNN learns."""
    labels = torch.randint(0, 4, (n,), generator=g)
    x = 0.1 * torch.randn(n, 3, 32, 32, generator=g)
    for i, c in enumerate(labels.tolist()):
        r, col = divmod(c, 2)
        x[i, :, r * 16 : (r + 1) * 16, col * 16 : (col + 1) * 16] += 1.0
    return x, labels


def test_relu6_in_mobilenet_v2_is_a_relu_not_a_saturating_hardtanh() -> None:
    # regression (zoo): nn.ReLU6 runs F.hardtanh(x, 0, 6), which the probe read as a
    # saturating hardtanh: MobileNetV2's ReLU6 sites were "53% saturated (hardtanh)", an
    # error, when those outputs are the off half of a ReLU (exactly 0), not a flat tail
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.MobileNetV2Config(image_size=32, depth_multiplier=0.25, num_labels=4)
    model = transformers.MobileNetV2ForImageClassification(cfg)
    relu6 = {n for n, m in model.named_modules() if isinstance(m, nn.ReLU6)}
    assert relu6
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    with gw.watch(model, every=2) as w:
        for _ in range(10):
            x, y = _quadrant_batch(g)
            loss = model(pixel_values=x, labels=y).loss
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    sites = {s: info for s, info in w.timeline.sites.items() if info["module"] in relu6}
    assert sites and all(info["family"] == "relu" and info["fn"] == "relu6" for info in sites.values())
    saturated, _ = site_values(w.timeline, "act_sat_frac")
    assert not set(saturated) & set(sites)
    dead, values = site_values(w.timeline, "act_dead_frac")
    assert set(sites) <= set(dead) and np.nanmax(values) < 0.5  # measured as ReLUs: alive
    assert not any(f.kind == "saturated_units" for f in w.diagnose().findings)


class Clipped(nn.Module):
    """One hidden layer through each way of writing a clipped activation."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.a, self.b, self.kind = nn.Linear(8, 32), nn.Linear(32, 2), kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.kind == "hardtanh":
            h = F.hardtanh(h)  # between -1 and 1: saturates
        elif self.kind == "hardtanh(0, 6)":
            h = F.hardtanh(h, 0.0, 6.0)
        else:
            h = F.relu6(h)
        return self.b(h)


@pytest.mark.parametrize(("kind", "family"), [("hardtanh", "saturating"), ("hardtanh(0, 6)", "relu"), ("relu6", "relu")])
def test_a_hardtanh_whose_lower_bound_is_0_is_measured_as_a_relu(kind: str, family: str) -> None:
    torch.manual_seed(0)
    model = Clipped(kind)
    x = 10.0 * torch.randn(64, 8)  # pre-activations of std ~6: a (-1, 1) hardtanh is flat for most
    with gw.watch(model, every=1) as w:
        for _ in range(6):
            model(x).pow(2).mean().backward()
            w.step()
    ((site, info),) = w.timeline.sites.items()
    assert info["family"] == family
    if family == "saturating":
        h = model.a(x).detach()
        expected = float((h.abs() >= 1).float().mean())
        assert w.timeline.records.column("act_sat_frac", site)[-1] == pytest.approx(expected)
        assert expected > 0.7 and any(f.kind == "saturated_units" for f in w.diagnose().findings)
    else:
        assert info["fn"] == "relu6" and site not in site_values(w.timeline, "act_sat_frac")[0]
        assert w.timeline.records.column("act_dead_frac", site)[-1] == 0.0
