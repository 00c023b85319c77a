"""gw.fix: the chooser picks the smallest set of remedies for a diagnosis, and the fixed model trains."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch import GradwatchTypeError
from gradwatch.fix.init import transform as init_transform
from gradwatch.lab.data import accuracy, adding_problem, batches, digits
from gradwatch.lab.models import mlp
from gradwatch.types import Cause, Diagnosis, Finding
from gradwatch.watch import DEFAULT_EVERY
from tests.fix.zoo import RNNNet, sigmoid_mlp


def _diag(*kinds: str, severity: str = "error", causes: list[Cause] | None = None, linked: list[str] | None = None) -> Diagnosis:
    return Diagnosis(
        findings=[Finding(k, severity, [], 0, {}, "", causes=list(linked or [])) for k in kinds],
        causes=list(causes or []),
    )


def _kinds(result: gw.FixResult) -> set[str]:
    return {c.kind for c in result.changes}


def test_healthy_diagnosis_changes_nothing() -> None:
    model = sigmoid_mlp()
    for diag in (Diagnosis(), _diag("flat_loss", severity="info")):
        result = gw.fix(model, diag)
        assert result.changes == [] and result.advice == {}
        assert result.model is not model
        assert str(result.model) == str(model)
        assert all(torch.equal(a, b) for a, b in zip(result.model.state_dict().values(), model.state_dict().values(), strict=True))
        assert str(result) == "no change needed"


def test_vanishing_in_a_sigmoid_net_swaps_activations_and_reinitialises() -> None:
    result = gw.fix(sigmoid_mlp(), _diag("vanishing_gradient", "flat_loss"))
    assert _kinds(result) == {"activation", "init"}
    assert all(c.reason for c in result.changes)
    assert "saturating activations" in result.changes[0].reason


def test_vanishing_in_a_tanh_net_at_the_wrong_scale_is_fixed_by_init_alone() -> None:
    # tanh has a critical initialisation (Xavier: chi ~ 1), so the less invasive remedy suffices.
    model = mlp(8, 3, depth=6, width=16, activation="tanh", seed=0)
    result = gw.fix(model, _diag("vanishing_gradient"))
    assert _kinds(result) == {"init"}


def test_temporal_vanishing_in_an_rnn_becomes_a_gru() -> None:
    result = gw.fix(RNNNet(), _diag("temporal_vanishing"))
    assert _kinds(result) == {"recurrent", "init"}
    assert isinstance(result.model.rnn, nn.GRU)


def test_divergence_with_a_good_init_is_a_step_size_problem() -> None:
    model = mlp(8, 3, depth=4, width=16, activation="relu", init="he", seed=0)
    nn.init.xavier_normal_(model[-1].weight)
    result = gw.fix(model, _diag("nonfinite_gradient", "diverging_loss"))
    assert result.changes == []
    assert result.advice["lr_scale"] == 0.1
    assert "lr_scale" in result.advice["why"]


def test_the_explainers_causes_decide_when_given() -> None:
    cause = Cause("depth_without_skip", 0.9, [], {}, "16 layers in a row, no skip")
    result = gw.fix(sigmoid_mlp(), _diag("vanishing_gradient", causes=[cause], linked=["depth_without_skip"]))
    assert _kinds(result) == {"residual"}
    assert "16 layers in a row" in result.changes[0].reason


def test_causes_are_ranked_by_score() -> None:
    causes = [
        Cause("no_normalization", 0.3, [], {}, "no norm"),
        Cause("saturating_activations", 0.8, [], {}, "sigmoids"),
    ]
    result = gw.fix(sigmoid_mlp(), _diag("vanishing_gradient", causes=causes))
    assert _kinds(result) == {"activation", "init"}


def test_one_remedy_covers_several_findings() -> None:
    result = gw.fix(sigmoid_mlp(), _diag("vanishing_gradient", "saturated_units", "flat_loss"))
    assert _kinds(result) == {"activation", "init"}
    assert len([c for c in result.changes if c.kind == "activation"]) == 3


def test_the_input_is_untouched_unless_inplace() -> None:
    model = sigmoid_mlp()
    before = copy.deepcopy(model.state_dict())
    result = gw.fix(model, _diag("vanishing_gradient"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model[1], nn.Sigmoid)
    result = gw.fix(model, _diag("vanishing_gradient"), inplace=True)
    assert result.model is model and isinstance(model[1], nn.ReLU)


def test_bad_arguments_say_what_to_pass() -> None:
    with pytest.raises(GradwatchTypeError, match="torch.nn.Module"):
        gw.fix("model", Diagnosis())  # type: ignore[arg-type]
    with pytest.raises(GradwatchTypeError, match="gradwatch.Diagnosis"):
        gw.fix(sigmoid_mlp(), {"findings": []})  # type: ignore[arg-type]
    with pytest.raises(GradwatchTypeError, match="Timeline"):
        gw.fix(sigmoid_mlp(), Diagnosis(), timeline=[1, 2])  # type: ignore[arg-type]


def _train(model: nn.Module, data: object, advice: dict, steps: int = 300) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01 * advice.get("lr_scale", 1.0), momentum=0.9)
    for x, y in batches(data.x_train, data.y_train, 64, steps, seed=0):  # type: ignore[attr-defined]
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return accuracy(model, data.x_test, data.y_test)  # type: ignore[attr-defined]


def _watched(model: nn.Module, data: object, steps: int, *, lr: float = 0.01, every: int = 10) -> gw.Watcher:
    """`_train`'s recipe (SGD with momentum 0.9 on digits) under `gw.watch`."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    with gw.watch(model, every=every) as w:
        for x, y in batches(data.x_train, data.y_train, 64, steps, seed=0):  # type: ignore[attr-defined]
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    return w


def test_a_fixed_deep_sigmoid_mlp_trains_where_the_original_does_not() -> None:
    data = digits()
    model = mlp(64, 10, depth=16, width=64, activation="sigmoid", seed=0)
    result = gw.fix(model, _diag("vanishing_gradient", "flat_loss"), example_input=data.x_train[:64])
    torch.manual_seed(0)
    before = _train(copy.deepcopy(model), data, {})
    after = _train(result.model, data, result.advice)
    assert before < 0.2, f"the original should stay near chance, got {before:.3f}"
    assert after > 0.8, f"the fixed model should learn, got {after:.3f}"


# -- how the explainer's causes are read (issue 6: fix must reach its target on the suite) --


def test_fix_consumes_the_causes_of_a_real_diagnosis() -> None:
    # A watched run, diagnosed by the detectors and explained by gradwatch.explain: the
    # change's reason is the explainer's own message, which the structural fallback
    # (infer_causes, used only when no cause is given) never writes.
    data = digits()
    model = mlp(64, 10, depth=12, width=32, activation="sigmoid", seed=0)
    w = _watched(model, data, steps=120)
    diag = w.diagnose()
    vanishing = [f for f in diag.findings if f.kind == "vanishing_gradient"]
    assert vanishing and "saturating_activations" in vanishing[0].causes
    sat = next(c for c in diag.causes if c.kind == "saturating_activations")
    result = gw.fix(model, diag, timeline=w.timeline, example_input=data.x_train[:64])
    assert _kinds(result) == {"activation", "init"}
    assert sat.message in result.changes[0].reason


def test_a_cause_that_cannot_produce_the_finding_does_not_choose_its_remedy() -> None:
    # A ReLU net blowing up: the explainer found depth_without_skip but cannot link it to a non-finite gradient (RELATED); the finding
    # then falls back on its mechanism, a step size too large, not on the unrelated cause.
    model = mlp(8, 3, depth=4, width=16, activation="relu", init="he", seed=0)
    nn.init.xavier_normal_(model[-1].weight)
    depth = Cause("depth_without_skip", 0.53, [], {}, "21 layers, no skip")
    result = gw.fix(model, _diag("nonfinite_gradient", "diverging_loss", causes=[depth]))
    assert result.changes == []
    assert "lr_scale" in result.advice and "clip_grad_norm" not in result.changes


def test_a_faulty_part_is_fixed_before_what_the_architecture_lacks() -> None:
    # A tanh net at sigma_w^2 = 9 (chaotic): the explainer scores depth_without_skip above
    # init_mismatch because its limit, 6 xi, is computed at that very initialisation. The
    # initialisation is the faulty part: it is re-drawn, and no skip is added.
    causes = [
        Cause("depth_without_skip", 1.0, [], {}, "deeper than 6 xi"),
        Cause("init_mismatch", 0.67, [], {}, "sigma_w^2 = 9 under tanh"),
        Cause("no_normalization", 0.34, [], {}, "no norm"),
    ]
    model = mlp(8, 3, depth=12, width=16, activation="tanh", seed=0)
    result = gw.fix(model, _diag("exploding_gradient", causes=causes, linked=[str(c.kind) for c in causes]))
    assert _kinds(result) == {"init"}
    assert "sigma_w^2 = 9 under tanh" in result.changes[0].reason


def test_a_vanilla_rnn_is_swapped_whatever_the_finding() -> None:
    rnn_cause = Cause("vanilla_rnn_long_sequence", 1.0, ["rnn"], {}, "rho^T explodes")
    for kinds in (("exploding_gradient",), ("diverging_loss",), ("flat_loss",)):
        result = gw.fix(RNNNet(), _diag(*kinds, causes=[rnn_cause]))
        assert isinstance(result.model.rnn, nn.GRU), kinds
        assert "rho^T explodes" in result.changes[0].reason


def test_an_exploding_vanilla_rnn_without_an_explainer_is_swapped_not_reinitialised() -> None:
    # W_hh = 3 x orthogonal: an orthogonal re-draw would only trade the explosion for the
    # vanishing of any vanilla RNN; the gated cell removes both.
    model = RNNNet()
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)))
        model.rnn.weight_hh_l0.copy_(3.0 * q)
    result = gw.fix(model, _diag("exploding_gradient"))
    assert isinstance(result.model.rnn, nn.GRU)


def _adam_lr1(model: nn.Module, data: object, steps: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1.0)
    for x, y in batches(data.x_train, data.y_train, 64, steps, seed=0):  # type: ignore[attr-defined]
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_dead_units_from_a_large_step_get_a_smaller_step_and_fresh_weights() -> None:
    data = digits()
    fresh = mlp(64, 10, depth=3, width=64, activation="relu", init="he", seed=0)
    diag = Diagnosis(findings=[Finding("dead_units", "error", [], 10, {}, "")])  # found after step 0
    # not trained yet: nothing to revive, only the step-size advice
    result = gw.fix(fresh, diag)
    assert result.changes == [] and result.advice["lr_scale"] <= 0.1
    # after 20 steps of Adam at lr 1 the ReLUs are dead: their layers are re-drawn (the
    # head, which feeds no ReLU, is left alone), and the model learns again at the advised rate
    dead = copy.deepcopy(fresh)
    _adam_lr1(dead, data, 20)
    with torch.no_grad():
        h = dead[:-1](data.x_test)
    assert float((h > 0).any(0).float().mean()) < 0.5, "the setting should kill most of the last hidden layer"
    result = gw.fix(dead, diag)
    assert {c.target for c in result.changes} == {"0", "2", "4"}
    assert all("switched off" in c.reason for c in result.changes)
    assert "lr_scale" in result.advice
    # a smaller step alone cannot revive units whose gradient is zero; fresh weights do
    torch.manual_seed(0)
    assert _train(copy.deepcopy(dead), data, {}) < 0.2
    assert _train(copy.deepcopy(dead), data, {"lr_scale": 0.1}) < 0.2
    assert _train(result.model, data, {}) > 0.8


@pytest.mark.parametrize("traced", [False, True], ids=["static", "traced"])
def test_a_frozen_encoder_computes_what_it_did(traced: bool) -> None:
    # every saturating activation sits in the frozen part: no swap, norm or skip goes there
    class Frozen(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers = [m for _ in range(3) for m in (nn.Linear(6, 6), nn.Sigmoid())]
            self.encoder = nn.Sequential(*layers).requires_grad_(False)
            self.head = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(x))

    model, x = Frozen(), torch.randn(4, 6)
    for kinds in (["vanishing_gradient"], ["saturated_units", "flat_loss"]):
        result = gw.fix(model, _diag(*kinds), example_input=x if traced else None)
        assert str(result.model.encoder) == str(model.encoder)
        with torch.no_grad():
            assert torch.equal(result.model.encoder(x), model.encoder(x))
        # and nothing measured in the frozen part is blamed on the trainable head: the
        # encoder's default-init scale is not the head's fault, so the head is not re-drawn
        assert not [c for c in result.changes if c.kind == "init"]


def test_a_lazy_model_is_fixed_given_an_example_input_and_left_lazy() -> None:
    def lazy() -> nn.Module:
        return nn.Sequential(nn.LazyLinear(8), nn.Sigmoid(), nn.LazyLinear(8), nn.Sigmoid(), nn.LazyLinear(2))

    with pytest.raises(gw.GradwatchValueError, match="example_input"):
        gw.fix(lazy(), _diag("vanishing_gradient"))
    model, x = lazy(), torch.randn(4, 6)
    result = gw.fix(model, _diag("vanishing_gradient"), example_input=x)
    assert _kinds(result) == {"activation", "init"} and result.model(x).shape == (4, 2)
    assert all(isinstance(model[i], nn.LazyLinear) for i in (0, 2, 4))


def test_a_bidirectional_lstm_read_out_mid_sequence_is_found_and_trained_by_its_fix() -> None:
    # The class is the first of 40 tokens and the model reads its middle position: the
    # forward direction must carry the token 20 steps. At PyTorch's default init it stays
    # at chance; the gradient through time peaks at the readout (the middle) and fades
    # towards both ends, which the temporal rule must measure from there, not from the end.
    class Mid(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(12, 8)
            self.lstm = nn.LSTM(8, 16, bidirectional=True, batch_first=True)
            self.head = nn.Linear(32, 4)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            out, _ = self.lstm(self.emb(t))
            return self.head(out[:, t.shape[1] // 2])

    def task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        t, y = torch.randint(4, 12, (n, 40), generator=g), torch.randint(0, 4, (n,), generator=g)
        t[:, 0] = y
        return t, y

    x, y = task(2048, 0)
    x_test, y_test = task(400, 1)

    def train(model: nn.Module, watch: bool) -> tuple[float, gw.Watcher | None]:
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        g = torch.Generator().manual_seed(1)
        w = gw.watch(model, every=10) if watch else None
        for _ in range(200):
            j = torch.randint(0, len(x), (32,), generator=g)
            loss = nn.functional.cross_entropy(model(x[j]), y[j])
            opt.zero_grad()
            loss.backward()
            if w is not None:
                w.step(loss=loss)
            opt.step()
        if w is not None:
            w.close()
        with torch.no_grad():
            return float((model(x_test).argmax(1) == y_test).float().mean()), w

    torch.manual_seed(0)
    before, w = train(Mid(), watch=True)
    assert w is not None and before < 0.35  # chance is 0.25
    _, profile = w.timeline.profiles.get("grad_t/lstm")[-1]
    assert 5 < int(profile.argmax()) < 35  # the loss enters in the middle
    d = w.diagnose()
    (f,) = [f for f in d.findings if f.kind == gw.Kind.TEMPORAL_VANISHING]
    assert f.severity == gw.Severity.WARNING and f.evidence["time_reach"] < 1e-3
    torch.manual_seed(0)
    result = gw.fix(Mid(), d, example_input=x[:32])
    assert any("forget-gate biases log(u)" in c.description for c in result.changes)
    assert train(result.model, watch=False)[0] > 0.8


def test_an_output_sigmoid_is_not_a_saturating_cause() -> None:
    from gradwatch.anatomy.order import order_of
    from gradwatch.fix._infer import infer_causes
    from gradwatch.types import CauseKind

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(6):
        lin = nn.Linear(16, 16)
        nn.init.normal_(lin.weight, std=0.05)  # far below He: the gradient shrinks per layer
        layers += [lin, nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(16, 1), nn.Sigmoid())  # a binary classifier's output
    x = torch.randn(8, 16)
    causes = infer_causes(model, order_of(model, x), gw.Kind.VANISHING_GRADIENT)
    assert CauseKind.SATURATING_ACTIVATIONS not in causes and CauseKind.INIT_MISMATCH in causes
    result = gw.fix(model, _diag("vanishing_gradient"), example_input=x)
    assert _kinds(result) == {"init"} and isinstance(result.model[-1], nn.Sigmoid)


def _diverge(model: nn.Module, data: object, lr: float = 200.0, steps: int = 30) -> gw.Diagnosis:
    """SGD far past the edge of stability, watched: the run a user brings to `fix`."""
    return _watched(model, data, steps, lr=lr, every=DEFAULT_EVERY).diagnose()


def _nonfinite_names(model: nn.Module) -> list[str]:
    return [n for n, t in (*model.named_parameters(), *model.named_buffers())
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def test_a_model_a_divergence_left_non_finite_is_given_fresh_weights_and_trains_again() -> None:
    data = digits()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64), nn.LayerNorm(64), nn.ReLU(),
        nn.Linear(64, 10),
    )
    diag = _diverge(model, data)
    assert {"diverging_loss", "nonfinite_gradient"} & {f.kind for f in diag.findings}
    broken = _nonfinite_names(model)
    assert "0.weight" in broken and "1.running_mean" in broken and "4.weight" in broken
    result = gw.fix(model, diag, example_input=data.x_train[:64])
    assert _nonfinite_names(result.model) == []
    assert _nonfinite_names(model) == broken  # the input is untouched
    redrawn = {c.target for c in result.changes if "inf/NaN" in c.reason}
    assert redrawn == {"0", "1", "3", "4", "6"}
    assert any("build a new optimizer" in m for m in result.advice["manual"])
    # every layer is at its initial scale again: He for the ReLUs, the norms at 1 and 0
    w = result.model[0].weight.detach().double()
    assert float(w.pow(2).mean()) * 64 == pytest.approx(2.0, rel=1e-6)
    assert torch.equal(result.model[4].weight.detach(), torch.ones(64))
    assert torch.equal(result.model[1].running_var, torch.ones(64))
    # trained with the advice on a new optimizer, it learns; the model as left computes NaN
    torch.manual_seed(0)
    assert _train(result.model, data, result.advice) > 0.8
    with torch.no_grad():
        assert not bool(torch.isfinite(model(data.x_test[:8])).any())


def test_what_cannot_be_re_drawn_is_named_and_a_healthy_diagnosis_still_changes_nothing() -> None:
    class WithCustom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(8))  # a custom parameter: no initialiser known
            self.body = nn.Linear(4, 8)
            self.frozen = nn.Linear(8, 2)
            self.frozen.weight.requires_grad_(False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.frozen(torch.relu(self.body(x)) * self.scale)

    model = WithCustom()
    with torch.no_grad():
        for p in (model.scale, model.body.weight, model.frozen.weight):
            p.fill_(float("nan"))
    x = torch.randn(4, 4)
    result = gw.fix(model, _diag("diverging_loss"), example_input=x)
    assert [c.target for c in result.changes if "inf/NaN" in c.reason] == ["body"]
    assert _nonfinite_names(result.model) == ["scale", "frozen.weight"]
    manual = " ".join(result.advice["manual"])
    assert "the root module (WithCustom) still holds inf/NaN in scale" in manual
    assert "`frozen` (Linear) still holds inf/NaN in weight" in manual
    assert "Build the model afresh" in manual
    # the contract: a healthy diagnosis (or only info findings) changes nothing
    for diag in (Diagnosis(), _diag("flat_loss", severity="info")):
        untouched = gw.fix(model, diag)
        assert untouched.changes == [] and untouched.advice == {}


def test_a_tied_language_model_left_non_finite_keeps_its_tie_and_a_matching_scale() -> None:
    class TiedLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 24)
            self.rnn = nn.LSTM(24, 24, batch_first=True)
            self.head = nn.Linear(24, 50)
            self.head.weight = self.emb.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(self.emb(ids))[0])

    model = TiedLM()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    ids = torch.randint(0, 50, (8, 20), generator=torch.Generator().manual_seed(0))
    result = gw.fix(model, _diag("diverging_loss"), example_input=ids)
    new = result.model
    assert _nonfinite_names(new) == [] and new.head.weight is new.emb.weight
    assert torch.equal(new.head.bias.detach(), torch.zeros(50))
    # the LSTM is scaled to what the embedding, as restored, gives it — the head did not re-draw
    # the shared weight after that (its reset_parameters() would have)
    with torch.no_grad():
        power = float(new.emb(ids).double().pow(2).sum(-1).mean())
    assert float(new.rnn.weight_ih_l0.detach().double().pow(2).mean()) == pytest.approx(1 / power, rel=1e-6)
    assert "set to 0" in next(c.description for c in result.changes if c.target == "head")


def test_infinite_masks_are_not_damage_and_buffers_alone_do_not_reset_trained_weights() -> None:
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(8, 24)
            self.register_buffer("mask", torch.triu(torch.full((6, 6), float("-inf")), diagonal=1))
            self.register_buffer("stat", torch.zeros(8))

        def reset_parameters(self) -> None:  # re-draws the trained qkv too
            self.qkv.reset_parameters()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(x).chunk(3, -1)
            return torch.softmax(q @ k.transpose(-1, -2) + self.mask, -1) @ v + self.stat

    model = nn.Sequential(Attn(), nn.Linear(8, 2))
    x = torch.randn(2, 6, 8)
    # a -inf causal mask is meant: nothing to restore, no talk of NaN or of a new optimizer
    quiet = gw.fix(model, _diag("vanishing_gradient", severity="warning"), example_input=x)
    assert not any("inf/NaN" in c.reason for c in quiet.changes)
    assert not any("inf/NaN" in m or "new optimizer" in m for m in quiet.advice.get("manual", []))
    # a NaN buffer alone: named, and the module's finite weights are not re-drawn to reset it
    with torch.no_grad():
        model[0].stat.fill_(float("nan"))
    result = gw.fix(model, _diag("diverging_loss"), example_input=x)
    assert torch.equal(result.model[0].qkv.weight, model[0].qkv.weight)
    assert not any(c.target == "0" for c in result.changes)
    assert any("`0` (Attn) still holds inf/NaN in stat: only its buffers are NaN" in m for m in result.advice["manual"])


def test_a_weight_norm_layer_left_non_finite_is_said_to_stay_so() -> None:
    model = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 8)), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    result = gw.fix(model, _diag("diverging_loss"), example_input=torch.randn(3, 4))
    change = next(c for c in result.changes if c.target == "0")
    assert "still inf/NaN in parametrizations.weight.original0" in change.description
    assert any("computed by a parametrization" in m for m in result.advice["manual"])
    assert _nonfinite_names(result.model[2]) == []


def test_a_late_divergence_blames_the_step_before_the_weights_it_inflated() -> None:
    model = mlp(8, 3, depth=4, width=16, activation="relu", init="he", seed=0)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(30.0)  # what a run of huge steps leaves: weights far over He's scale
    late = Diagnosis(findings=[Finding("diverging_loss", "error", [], 40, {}, "")])
    result = gw.fix(model, late)
    assert result.changes == [] and result.advice["lr_scale"] <= 0.1
    assert any("Retrain from a fresh model" in m for m in result.advice["manual"])
    # found at the first step, the same scale is the initialisation's own fault
    early = Diagnosis(findings=[Finding("diverging_loss", "error", [], 0, {}, "")])
    assert _kinds(gw.fix(model, early)) == {"init"}


class _AddingLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(2, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def _adding_run(model: nn.Module, lr: float, steps: int, seed: int, *, clip: float | None = None, every: int = 0) -> tuple[float, gw.Watcher | None]:
    """SGD with momentum 0.9 on the adding problem; the test MSE (1/6 is the baseline) and the watcher."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    w = gw.watch(model, every=every) if every else None
    for _ in range(steps):
        x, y = adding_problem(32, 30, g)
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        if w is not None:
            w.step(loss=loss)
        opt.step()
    if w is not None:
        w.close()
    x, y = adding_problem(512, 30, torch.Generator().manual_seed(99))
    with torch.no_grad():
        return float((model(x) - y).pow(2).mean()), w


@pytest.mark.parametrize("seed", [1, 2])
def test_a_run_that_diverged_before_it_could_be_read_also_gets_what_theory_predicts(seed: int) -> None:
    """An LSTM under SGD at lr 20 is NaN within 10 steps. Recorded every 10 steps, the run
    left one finite record: nothing could be measured but the divergence. The explainer's
    `keep_gate_closed` (PyTorch's forget-gate biases ~0 over 30 steps) stands in for what the
    run did not show: `fix` re-initialises the LSTM besides the step size, and trains where the
    step size alone leaves it on the baseline."""
    torch.manual_seed(seed)
    model = _AddingLSTM()
    fresh = copy.deepcopy(model)
    _, w = _adding_run(model, 20.0, 30, seed, every=10)
    assert w is not None
    diag = w.diagnose()
    assert {"diverging_loss", "nonfinite_gradient"} <= {f.kind for f in diag.findings}
    assert [c.kind for c in diag.causes] == ["keep_gate_closed"]
    x, _ = adding_problem(32, 30, torch.Generator().manual_seed(5))
    result = gw.fix(fresh, diag, timeline=w.timeline, example_input=x)
    assert [c.target for c in result.changes] == ["rnn"]  # the layer blamed, not the head
    assert "predicted from the model as built" in result.changes[0].reason
    assert "after 1 finite record" in result.changes[0].reason
    assert result.advice["lr_scale"] <= 0.01
    # without the timeline the non-finite finding's own record count says the same
    assert _kinds(gw.fix(fresh, diag, example_input=x)) == {"init"}
    a = result.advice
    fixed, _ = _adding_run(result.model, 20.0 * a["lr_scale"], 300, seed, clip=a.get("clip_grad_norm"))
    step_only, _ = _adding_run(copy.deepcopy(fresh), 20.0 * a["lr_scale"], 300, seed, clip=a.get("clip_grad_norm"))
    assert fixed < 0.05 < 0.15 < step_only  # ~0.002-0.003 against ~0.17-0.25 (baseline 1/6)


def test_a_run_read_before_it_diverged_is_judged_by_what_it_showed() -> None:
    """The same divergence recorded at every step: the finite records before it were read
    (and showed no finding but the blow-up), so the prediction does not add a remedy."""
    torch.manual_seed(1)
    model = _AddingLSTM()
    fresh = copy.deepcopy(model)
    _, w = _adding_run(model, 20.0, 30, 1, every=1)
    assert w is not None
    diag = w.diagnose()
    blown = [f for f in diag.findings if f.kind in ("diverging_loss", "nonfinite_gradient")]
    assert blown and sum(1 for s in w.timeline.steps if s < min(f.step for f in blown)) >= 3
    assert "keep_gate_closed" in [c.kind for c in diag.causes]
    result = gw.fix(fresh, diag, timeline=w.timeline)
    assert result.changes == [] and "lr_scale" in result.advice


def test_a_predicted_cause_extends_an_init_already_chosen_for_a_few_layers() -> None:
    """Dead units blamed on the step re-draw only the ReLU feeders the steps moved off; a
    `keep_gate_closed` predicted for an unread divergence adds the LSTM to those layers
    rather than counting as covered by them."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(2, 16, batch_first=True)
            self.hidden = nn.Linear(16, 16)
            self.head = nn.Linear(16, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.hidden(self.rnn(x)[0][:, -1])))

    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.hidden.weight.mul_(30.0)  # what large steps left behind
    gate = Cause("keep_gate_closed", 1.0, ["rnn"], {}, "forget gates half shut over 40 steps")
    diag = Diagnosis(
        findings=[
            Finding("dead_units", "error", ["hidden"], 5, {}, ""),
            Finding("nonfinite_gradient", "error", [], 8, {"records": 3.0, "nonfinite_records": 2.0}, ""),
        ],
        causes=[gate],
    )
    x = torch.randn(4, 40, 2)
    result = gw.fix(model, diag, example_input=x)
    assert {c.target for c in result.changes} == {"rnn", "hidden"}
    assert "lr_scale" in result.advice
    # read before it diverged (3 finite records), the same run gets the feeders alone
    read = copy.deepcopy(diag)
    read.findings[1].evidence = {"records": 5.0, "nonfinite_records": 2.0}
    assert {c.target for c in gw.fix(model, read, example_input=x).changes} == {"hidden"}


def _plain_gelu(depth: int, width: int = 32) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    d = 64
    for _ in range(depth - 1):
        lin = nn.Linear(d, width)
        nn.init.xavier_normal_(lin.weight)  # too small for GELU: the gradient fades with depth
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.GELU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 10))


def test_more_than_twenty_plain_layers_get_skips_beside_the_fixed_init() -> None:
    """A 24-layer GELU MLP at Xavier's scale: its gradient fades (init_mismatch), and the
    chain is deeper than plain nets train well at any initialisation (depth_without_skip,
    past 20 layers). Re-drawn at GELU's critical scale alone it reaches ~0.3 on digits in 300
    steps; with skip connections too, ~0.94."""
    data = digits()
    model = _plain_gelu(24)
    fresh = copy.deepcopy(model)
    w = _watched(model, data, steps=300)
    diag = w.diagnose()
    depth = {c.kind: c for c in diag.causes}["depth_without_skip"]
    assert depth.evidence["depth"] == 24
    result = gw.fix(fresh, diag, timeline=w.timeline, example_input=data.x_train[:64])
    assert _kinds(result) == {"init", "residual"}
    assert any("He et al. 2016" in c.reason for c in result.changes if c.kind == "residual")
    torch.manual_seed(0)
    fixed = _train(result.model, data, result.advice)
    torch.manual_seed(0)
    init_only = _train(init_transform(copy.deepcopy(fresh), example_input=data.x_train[:64])[0], data, {})
    assert fixed > 0.85 > 0.5 > init_only


def test_twenty_plain_layers_or_fewer_keep_the_least_invasive_fix() -> None:
    model = mlp(8, 3, depth=16, width=16, activation="tanh", seed=0)
    mismatch = Cause("init_mismatch", 0.7, [], {}, "tanh at PyTorch's default scale")

    def depth(n: float) -> Cause:
        return Cause("depth_without_skip", 1.0, [], {"depth": n, "limit": 5.0}, f"{n:g} layers without a skip")

    shallow = _diag("vanishing_gradient", causes=[mismatch, depth(17.0)])
    assert _kinds(gw.fix(model, shallow)) == {"init"}  # past 6 xi only: the init's doing
    deep = _diag("vanishing_gradient", causes=[mismatch, depth(25.0)])
    assert _kinds(gw.fix(model, deep)) == {"init", "residual"}
    # a divergence is no finding depth can produce: the step size alone
    blown = _diag("diverging_loss", causes=[depth(25.0)])
    assert "residual" not in _kinds(gw.fix(model, blown))
    # nor is an explosion blamed on the step size alone, deep as the chain is
    step = Cause("step_size_too_large", 0.9, [], {"update_ratio": 0.5}, "steps of 50% of the weights")
    exploding = _diag("exploding_gradient", causes=[step, depth(25.0)], linked=["step_size_too_large"])
    fixed = gw.fix(model, exploding)
    assert fixed.changes == [] and "lr_scale" in fixed.advice
