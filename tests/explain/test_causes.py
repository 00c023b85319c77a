"""Each cause fires on a model built to have it and stays quiet on its healthy twin."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.anatomy.structure import analyse
from gradwatch.explain.causes import find_causes
from gradwatch.fix import init
from gradwatch.lab.models import mlp
from gradwatch.types import CauseKind


def kinds(model: nn.Module, example: object = None, timeline: gw.Timeline | None = None) -> dict[CauseKind, gw.Cause]:
    s = analyse(model, example)
    return {c.kind: c for c in find_causes(s.anatomy, s, timeline)}


class ResidualMLP(nn.Module):
    """`blocks` blocks of Linear-ReLU-Linear with x + f(x) around each: 2 * blocks + 2 layers."""

    def __init__(self, blocks: int, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Linear(8, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width)) for _ in range(blocks)
        )
        self.head = nn.Linear(width, 3)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        for b in self.blocks:
            h = torch.relu(h + b(h))
        return self.head(h)


def test_saturating_activations() -> None:
    deep = kinds(mlp(8, 3, depth=16, width=32, activation="sigmoid", seed=0))
    c = deep[CauseKind.SATURATING_ACTIVATIONS]
    assert c.score == 1.0 and len(c.layers) == 16 and c.evidence["saturating_layers"] == 16
    assert 0 < c.evidence["mean_dphi2"] <= 1 / 16  # sigmoid' <= 1/4
    # the evidence is the product of E[phi'^2]: 16 layers at <= 1/16 each take >= 9.6 decades off
    assert c.evidence["decades"] == pytest.approx(0.5 * 16 * math.log10(c.evidence["mean_dphi2"]), rel=0.05)
    assert next(iter(deep)) == CauseKind.SATURATING_ACTIVATIONS  # ranked first
    assert CauseKind.SATURATING_ACTIVATIONS not in kinds(mlp(8, 3, depth=3, width=32, activation="sigmoid", seed=0))
    assert CauseKind.SATURATING_ACTIVATIONS not in kinds(
        mlp(8, 3, depth=16, width=32, activation="sigmoid", batchnorm=True, seed=0)
    )
    # tanh near its linear regime (small weights) is not saturated: the mismatch is the init
    tanh = kinds(mlp(8, 3, depth=16, width=64, activation="tanh", seed=0))
    assert CauseKind.SATURATING_ACTIVATIONS not in tanh and CauseKind.INIT_MISMATCH in tanh


def test_init_mismatch_names_the_gain_and_the_fix() -> None:
    model = mlp(8, 3, depth=20, width=64, activation="relu", seed=0)
    c = kinds(model)[CauseKind.INIT_MISMATCH]
    w2 = [64 * float(m.weight.detach().double().pow(2).mean()) for m in model if isinstance(m, nn.Linear)]
    assert c.evidence["sigma_w2"] == pytest.approx(float(np.mean(w2[1:])), rel=1e-6)
    assert c.evidence["chi"] == pytest.approx(float(np.exp(np.mean(np.log(np.array(w2[1:]) / 2)))), rel=1e-6)
    assert c.evidence["critical_sigma_w2"] == 2.0 and c.evidence["decades"] < -3
    assert "kaiming_normal_" in c.remedy and "nonlinearity='relu'" in c.remedy
    assert CauseKind.INIT_MISMATCH not in kinds(mlp(8, 3, depth=20, width=64, activation="relu", init="he", seed=0))
    assert CauseKind.INIT_MISMATCH not in kinds(mlp(8, 3, depth=5, width=64, activation="relu", seed=0))


def test_init_mismatch_calls_a_growth_of_two_decades_an_explosion() -> None:
    def chaotic(depth: int, var: float) -> nn.Module:
        model = mlp(8, 3, depth=depth, width=64, activation="tanh", seed=0)
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=math.sqrt(var / m.in_features))
        return model

    # 20 tanh layers at sigma_w^2 = 9: chi ~ 1.85 per layer, ~2.7 decades of growth (the
    # exploding-gradient detector's bar is 2; a shrinkage would need 3 to count)
    c = kinds(chaotic(20, 9.0))[CauseKind.INIT_MISMATCH]
    assert 2.0 <= c.evidence["decades"] < 3.0 and c.evidence["chi"] > 1.5
    assert "explodes" in c.message and 1.0 <= c.evidence["critical_sigma_w2"] < 2.0
    assert f"sigma_w^2 = {c.evidence['critical_sigma_w2']:.3g}" in c.remedy
    # the same depth at sigma_w^2 = 1.5 (chi ~ 1.05: 0.2 decades) is near critical: quiet
    assert CauseKind.INIT_MISMATCH not in kinds(chaotic(20, 1.5))


def test_depth_without_skip() -> None:
    plain = mlp(8, 3, depth=30, width=32, activation="relu", init="he", seed=0)
    c = kinds(plain)[CauseKind.DEPTH_WITHOUT_SKIP]
    assert c.evidence["depth"] == 31 and c.evidence["skip_connections"] == 0 and len(c.layers) == 31
    residual = ResidualMLP(blocks=15)  # as many layers, skips around every two
    assert CauseKind.DEPTH_WITHOUT_SKIP not in kinds(residual)
    assert CauseKind.DEPTH_WITHOUT_SKIP not in kinds(mlp(8, 3, depth=12, width=32, activation="relu", init="he", seed=0))


def test_mobilenet_v2_is_not_told_to_add_residual_connections() -> None:
    # regression (zoo): MobileNetV2's shortest way back crosses 23 convolutions (the first
    # block of each stage changes shape and has no skip), each followed by BatchNorm: a
    # standard design, yet inspect said "add residual connections" from the depth alone
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.MobileNetV2Config(image_size=32, depth_multiplier=0.25, num_labels=4)
    model = transformers.MobileNetV2ForImageClassification(cfg)
    s = analyse(model, torch.randn(4, 3, 32, 32))
    assert s.longest_plain_chain > 20 and s.skip_connections > 0  # the depth is real
    assert all(c.kind != CauseKind.DEPTH_WITHOUT_SKIP for c in find_causes(s.anatomy, s))


def test_a_chain_normalised_throughout_may_be_deeper_before_depth_is_blamed() -> None:
    # 25 weight layers: too deep for a plain chain, not for one with BatchNorm at every layer
    plain = kinds(mlp(8, 3, depth=24, width=32, activation="relu", init="he", seed=0))
    assert plain[CauseKind.DEPTH_WITHOUT_SKIP].evidence["limit"] == 20
    assert CauseKind.DEPTH_WITHOUT_SKIP not in kinds(mlp(8, 3, depth=24, width=32, activation="relu", batchnorm=True, seed=0))
    # normalised throughout, but deeper than the 34 layers plain BatchNorm nets still train at
    deep = kinds(mlp(8, 3, depth=40, width=32, activation="relu", batchnorm=True, seed=0))
    c = deep[CauseKind.DEPTH_WITHOUT_SKIP]
    assert c.evidence["limit"] == 34 and c.evidence["depth"] == 41 and "normalisation at every layer" in c.message


def test_no_normalization() -> None:
    c = kinds(mlp(8, 3, depth=20, width=32, activation="relu", seed=0))[CauseKind.NO_NORMALIZATION]
    assert c.evidence["depth"] == 21 and c.evidence["decades"] >= 3
    assert CauseKind.NO_NORMALIZATION not in kinds(mlp(8, 3, depth=20, width=32, activation="relu", batchnorm=True, seed=0))
    # deep but at the critical init: nothing for a normalisation to fix
    assert CauseKind.NO_NORMALIZATION not in kinds(mlp(8, 3, depth=20, width=32, activation="relu", init="he", seed=0))


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn = cell(2, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def test_vanilla_rnn_long_sequence() -> None:
    model = Recurrent(nn.RNN)
    c = kinds(model, torch.randn(4, 100, 2))[CauseKind.VANILLA_RNN_LONG_SEQUENCE]
    rho = float(torch.linalg.eigvals(model.rnn.weight_hh_l0.detach().double()).abs().max())
    assert c.evidence["spectral_radius"] == pytest.approx(rho, rel=1e-9)
    assert c.evidence["decades"] == pytest.approx(99 * math.log10(rho))
    assert c.evidence["seq_len"] == 100 and c.layers == ["rnn"]
    assert CauseKind.VANILLA_RNN_LONG_SEQUENCE not in kinds(Recurrent(nn.LSTM), torch.randn(4, 100, 2))
    assert CauseKind.VANILLA_RNN_LONG_SEQUENCE not in kinds(model, torch.randn(4, 5, 2))
    assert "vanishes by about" in c.message
    # past radius 1 theory gives a bound, not a verdict: the slopes (at most 1) may still
    # make it vanish, so the message says what is certain — it cannot stay near 1
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(3.0)
    grow = kinds(model, torch.randn(4, 100, 2))[CauseKind.VANILLA_RNN_LONG_SEQUENCE]
    assert grow.evidence["decades"] > 3 and "can grow by up to about" in grow.message


@pytest.mark.parametrize(("cell", "gates"), [(nn.LSTM, 4), (nn.GRU, 3)])
def test_keep_gate_closed(cell: type[nn.RNNBase], gates: int) -> None:
    torch.manual_seed(0)
    model = Recurrent(cell)
    c = kinds(model, torch.randn(4, 100, 2))[CauseKind.KEEP_GATE_CLOSED]
    # independent: the keep gate is the second block of rows (LSTM i,f,g,o; GRU r,z,n)
    keep = (model.rnn.bias_ih_l0.detach().double() + model.rnn.bias_hh_l0.detach().double()).chunk(gates)[1]
    b = float(keep.max())
    assert c.evidence["keep_bias_max"] == pytest.approx(b, rel=1e-9)
    assert c.evidence["decades"] == pytest.approx(99 * math.log10(1 / (1 + math.exp(-b))), rel=1e-9)
    assert c.layers == ["rnn"] and c.evidence["seq_len"] == 100
    assert CauseKind.VANILLA_RNN_LONG_SEQUENCE not in kinds(model, torch.randn(4, 100, 2))
    # the mechanism: along the best-keeping unit the gradient is multiplied by its gate per step;
    # on random inputs the product of the gates the LSTM computes is near the bias-only prediction
    if cell is nn.LSTM:
        x = torch.randn(64, 100, 2)
        h = c_ = torch.zeros(64, 32)
        unit = int(keep.argmax())
        logs = []
        with torch.no_grad():
            for t in range(100):
                z = x[:, t] @ model.rnn.weight_ih_l0.T + model.rnn.bias_ih_l0 + h @ model.rnn.weight_hh_l0.T + model.rnn.bias_hh_l0
                i, f, g, o = z.chunk(4, dim=1)
                c_ = torch.sigmoid(f) * c_ + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c_)
                if t > 0:
                    logs.append(torch.log10(torch.sigmoid(f[:, unit])))
        measured = float(torch.stack(logs).sum(0).mean())
        assert measured == pytest.approx(c.evidence["decades"], abs=1.0)  # -23.4 against -23.5
    # a layer that keeps its state (forget bias 3: sigmoid 0.95, 1e-2 over 100 steps), or one
    # over a short sequence, is quiet
    assert CauseKind.KEEP_GATE_CLOSED not in kinds(model, torch.randn(4, 5, 2))
    with torch.no_grad():
        model.rnn.bias_ih_l0.chunk(gates)[1].fill_(3.0)
        model.rnn.bias_hh_l0.chunk(gates)[1].zero_()
    assert CauseKind.KEEP_GATE_CLOSED not in kinds(model, torch.randn(4, 100, 2))
    # and `init`'s chrono biases (spans up to T) leave nothing to blame
    fresh = Recurrent(cell)
    fixed, _ = init.transform(fresh, example_input=torch.randn(4, 100, 2))
    assert CauseKind.KEEP_GATE_CLOSED not in kinds(fixed, torch.randn(4, 100, 2))
    assert CauseKind.KEEP_GATE_CLOSED in kinds(fresh, torch.randn(4, 100, 2))


def _train(lr: float) -> gw.Watcher:
    model = mlp(8, 3, depth=4, width=32, activation="relu", init="he", seed=0)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    with gw.watch(model, every=1) as w:
        for _ in range(12):
            x, y = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    return w


def test_step_size_too_large_from_a_real_run() -> None:
    w = _train(lr=3.0)
    s = analyse(w.model)
    c = {c.kind: c for c in find_causes(s.anatomy, s, w.timeline)}[CauseKind.STEP_SIZE_TOO_LARGE]
    ratios = w.timeline.layer_metric("update_ratio")
    worst = float(np.nanmax(np.nanmedian(ratios[1:], axis=1)))
    assert c.evidence["update_ratio"] == pytest.approx(worst) and worst > 0.1
    assert c.evidence["lr_scale"] == pytest.approx(0.01 / worst)
    # under SGD with momentum the effective step is update / gradient, of the order of lr
    assert 0.1 < c.evidence["effective_step"] < 100
    healthy = _train(lr=0.05)
    s = analyse(healthy.model)
    assert CauseKind.STEP_SIZE_TOO_LARGE not in {c.kind for c in find_causes(s.anatomy, s, healthy.timeline)}
    assert CauseKind.STEP_SIZE_TOO_LARGE not in {c.kind for c in find_causes(s.anatomy, s, None)}


def test_dead_relu_bias() -> None:
    model = mlp(8, 3, depth=3, width=64, activation="relu", seed=0)
    with torch.no_grad():
        model[0].bias.fill_(-3.0)
    c = kinds(model)[CauseKind.DEAD_RELU_BIAS]
    assert c.layers[0] == "0" and c.evidence["dead_share"] > 0.5
    # independent check: with standard-normal inputs, how many units of layer 0 ever fire
    x = torch.randn(4096, 8)
    fired = (model[0](x) > 0).float().mean(0)
    assert float((fired < 0.01).float().mean()) >= 0.5
    assert CauseKind.DEAD_RELU_BIAS not in kinds(mlp(8, 3, depth=3, width=64, activation="relu", seed=0))


def test_vanilla_rnn_sequence_length_from_a_watched_run() -> None:
    """A watcher has no example input: the length comes from the gradient-through-time profile."""
    model = Recurrent(nn.RNN)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, every=1) as w:
        for _ in range(2):
            loss = model(torch.randn(4, 60, 2)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    assert len(w.timeline.profiles.get("grad_t/rnn")[-1][1]) == 60
    c = {c.kind: c for c in w.diagnose().causes}[CauseKind.VANILLA_RNN_LONG_SEQUENCE]
    assert c.evidence["seq_len"] == 60


def _watched_orthogonal(steps: int, nonlinearity: str = "tanh") -> gw.Diagnosis:
    """A vanilla RNN over 100 steps with W_hh orthogonal (radius 1: rho^T stays level), watched."""
    torch.manual_seed(0)
    model = Recurrent(nn.RNN)
    model.rnn = nn.RNN(2, 32, batch_first=True, nonlinearity=nonlinearity)
    nn.init.orthogonal_(model.rnn.weight_hh_l0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gw.watch(model, every=1) as w:
        for _ in range(steps):
            loss = model(torch.randn(8, 100, 2) * 2.0).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    return w.diagnose()


def test_an_orthogonal_tanh_rnn_is_named_from_its_measured_reach() -> None:
    # radius 1: the structure alone predicts no vanishing, but tanh's slope is under 1 off 0
    # and W_hh's largest singular value is 1, so no step can grow the gradient through time
    d = _watched_orthogonal(4)
    c = {c.kind: c for c in d.causes}[CauseKind.VANILLA_RNN_LONG_SEQUENCE]
    assert c.evidence["spectral_radius"] == pytest.approx(1.0, abs=1e-4)
    assert c.evidence["decades"] <= -3 and "measured, it falls by about" in c.message
    assert "IRNN" in c.remedy and "orthogonal" not in c.remedy
    # an IRNN-like ReLU layer is not bound to shrink (its slope is 1 where it is on)
    relu = _watched_orthogonal(4, nonlinearity="relu")
    assert CauseKind.VANILLA_RNN_LONG_SEQUENCE not in {c.kind for c in relu.causes}
