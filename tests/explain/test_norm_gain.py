"""`norm_gain_too_small`: normalisation gains that leave the signal under the norms' eps.

The mechanism is checked on the model itself: the variance each BatchNorm sees is measured
with hooks and compared with the rule's mean-field prediction, and the twins separate the
gain from the floor (gain 0.02 with a negligible eps, gain 1 with the same eps, a residual
branch whose last gain is 0).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import gradwatch as gw
from gradwatch.anatomy._facts import norm_facts
from gradwatch.anatomy.structure import analyse
from gradwatch.explain.causes import find_causes
from gradwatch.types import CauseKind


def chain(gain: float, eps: float = 1e-3, depth: int = 12, width: int = 32, seed: int = 0) -> nn.Sequential:
    """Linear(std 0.02) -> BatchNorm1d(gain ~ N(0, gain^2) or exactly 1) -> SiLU, `depth` times, then a head."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(8, width)]
    for i in range(depth):
        bn = nn.BatchNorm1d(width, eps=eps)
        layers += [bn, nn.SiLU(), nn.Linear(width, width if i < depth - 1 else 3)]
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.02)
                m.bias.zero_()
            elif isinstance(m, nn.BatchNorm1d) and gain != 1.0:
                m.weight.normal_(0.0, gain)
    return model


def causes(model: nn.Module, x: torch.Tensor) -> dict[CauseKind, gw.Cause]:
    s = analyse(model, x)
    q0 = float(x.pow(2).mean()) if x.is_floating_point() else 1.0
    return {c.kind: c for c in find_causes(s.anatomy, s, q0=q0)}


def measured_floor(model: nn.Module, x: torch.Tensor) -> list[float]:
    """v / eps at every BatchNorm, v the per-feature batch variance it normalises (measured)."""
    seen: list[float] = []

    def hook(m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        assert isinstance(m, nn.BatchNorm1d)
        seen.append(float(args[0].var(dim=0, unbiased=False).mean()) / m.eps)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    model.train()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


def test_norm_facts_are_the_gains_rms_and_eps() -> None:
    bn = nn.BatchNorm2d(6, eps=1e-3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.0, 0.5, 3.0, 1.0]))
    facts = norm_facts(bn)
    assert facts["norm_gain"] == pytest.approx(math.sqrt((1 + 4 + 0 + 0.25 + 9 + 1) / 6))
    assert facts["norm_eps"] == 1e-3
    assert norm_facts(nn.LayerNorm(4, elementwise_affine=False)) == {"norm_gain": 1.0, "norm_eps": 1e-5}
    assert norm_facts(nn.RMSNorm(4))["norm_eps"] == torch.finfo(torch.float32).eps  # eps=None: the dtype's
    assert norm_facts(nn.Linear(3, 3)) == {}
    # a norm of another library may scale by something else than its weight: no facts read
    gemma_like = type("GemmaRMSNorm", (nn.Module,), {})()
    assert norm_facts(gemma_like) == {}


def test_small_gains_under_eps_are_named_and_the_floor_is_measured() -> None:
    model, x = chain(0.02), torch.randn(256, 8)
    found = causes(model, x)
    c = found[CauseKind.NORM_GAIN_TOO_SMALL]
    assert c.evidence["norm_gain"] == pytest.approx(0.02, rel=0.3)
    assert c.evidence["norm_eps"] == 1e-3
    assert c.evidence["units"] == 12 and c.evidence["under_eps"] >= 11
    assert c.evidence["decades"] <= -3 and c.evidence["decades_at_unit_gain"] > -1
    assert len(c.layers) == 12 and all(isinstance(model.get_submodule(n), nn.BatchNorm1d) for n in c.layers)
    # the prediction against the forward pass: the deepest floor factor within a decade
    low = min(measured_floor(model, x))
    assert 0.5 * math.log10(low / (1 + low)) == pytest.approx(c.evidence["decades"], abs=1.0)
    # and the gradient: the first layer's is gone (the head's is small too: its input is)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), torch.randint(0, 3, (256,))).backward()
    first = model[0].weight.grad
    assert first is not None and float(first.norm()) < 1e-12


def test_healthy_twins_draw_no_such_cause() -> None:
    x = torch.randn(256, 8)
    # gains at 1: the same eps and weights, and the variance stays near or above the floor
    assert CauseKind.NORM_GAIN_TOO_SMALL not in causes(chain(1.0), x)
    assert min(measured_floor(chain(1.0), x)) > 1e-2
    # gains at 0.02 with a negligible eps: the normalisations keep normalising, small gains cancel
    tiny_eps = chain(0.02, eps=1e-12)
    assert CauseKind.NORM_GAIN_TOO_SMALL not in causes(tiny_eps, x)
    tiny_eps.zero_grad()
    nn.functional.cross_entropy(tiny_eps(x), torch.randint(0, 3, (256,))).backward()
    first, head = tiny_eps[0].weight.grad, tiny_eps[-1].weight.grad
    assert first is not None and head is not None
    assert float(first.norm()) > 1e-3 * float(head.norm())


class ZeroInitResidual(nn.Module):
    """Residual blocks Linear-BN-ReLU-Linear-BN(gain 0) around x (Goyal et al.'s zero-init residual)."""

    def __init__(self, blocks: int = 8, width: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Linear(8, width), nn.BatchNorm1d(width), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width), nn.BatchNorm1d(width))
            for _ in range(blocks)
        )
        self.head = nn.Linear(width, 3)
        for b in self.blocks:
            nn.init.zeros_(b[4].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for b in self.blocks:
            h = torch.relu(h + b(h))
        return self.head(h)


def test_a_zero_initialised_residual_branch_is_not_blamed() -> None:
    assert CauseKind.NORM_GAIN_TOO_SMALL not in causes(ZeroInitResidual(), torch.randn(64, 8))


def test_fix_sets_the_named_gains_to_one_and_the_gradient_comes_back() -> None:
    model, x = chain(0.02), torch.randn(256, 8)
    d = gw.inspect(model, x)
    assert d.causes[0].kind == CauseKind.NORM_GAIN_TOO_SMALL
    assert any(f.severity > gw.Severity.INFO and "norm_gain_too_small" in f.causes for f in d.findings)
    r = gw.fix(model, d, example_input=x)
    named = d.causes[0].layers
    assert sorted(ch.target for ch in r.changes) == sorted(named)  # the gains only: the weights stay
    for name in named:
        bn = r.model.get_submodule(name)
        assert isinstance(bn, nn.BatchNorm1d) and bool((bn.weight == 1).all()) and bool((bn.bias == 0).all())
    assert torch.equal(r.model[0].weight, model[0].weight)
    assert CauseKind.NORM_GAIN_TOO_SMALL not in causes(r.model, x)
    r.model.zero_grad()
    nn.functional.cross_entropy(r.model(x), torch.randint(0, 3, (256,))).backward()
    first, head = r.model[0].weight.grad, r.model[-1].weight.grad
    assert first is not None and head is not None
    assert float(first.norm()) > 1e-3 * float(head.norm())


def test_hugging_face_efficientnet_gains_from_n0_002_are_named_and_its_gain_one_twin_is_not() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.EfficientNetConfig(image_size=32, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, num_labels=3)
    model, x = transformers.EfficientNetForImageClassification(cfg), 0.3 * torch.randn(2, 3, 32, 32)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for m in twin.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
    c = causes(model, x)[CauseKind.NORM_GAIN_TOO_SMALL]
    assert c.evidence["norm_eps"] == 1e-3 and c.evidence["decades"] < -10
    assert all(isinstance(model.get_submodule(n), nn.BatchNorm2d) for n in c.layers)
    assert CauseKind.NORM_GAIN_TOO_SMALL not in causes(twin, x)


def test_layer_norm_transformers_with_unit_gains_draw_no_such_cause() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=64)
    ids = torch.randint(4, 64, (4, 16))
    for model in (
        transformers.BertForSequenceClassification(transformers.BertConfig(max_position_embeddings=64, num_labels=3, **small)),
        transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=64, bos_token_id=1, eos_token_id=2)),
    ):
        assert CauseKind.NORM_GAIN_TOO_SMALL not in causes(model, ids)


def test_fix_stays_with_the_gains_when_several_findings_name_them() -> None:
    # regression: a second finding naming the cause widened `init` to every weight layer
    model, x = chain(0.02), torch.randn(256, 8)
    cause = causes(model, x)[CauseKind.NORM_GAIN_TOO_SMALL]
    d = gw.Diagnosis(
        findings=[
            gw.Finding(gw.Kind.VANISHING_GRADIENT, gw.Severity.ERROR, ["0"], 0, {}, "vanished", [str(cause.kind)]),
            gw.Finding(gw.Kind.FLAT_LOSS, gw.Severity.WARNING, [], 0, {}, "flat", [str(cause.kind)]),
        ],
        causes=[cause],
    )
    r = gw.fix(model, d, example_input=x)
    assert sorted(ch.target for ch in r.changes) == sorted(cause.layers)
