from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import gradwatch as gw
from gradwatch.anatomy.structure import Structure, analyse
from gradwatch.explain import explain, link
from gradwatch.lab.models import mlp


def _finding(kind: str, layers: list[str]) -> gw.Finding:
    return gw.Finding(kind=kind, severity="warning", layers=layers, step=10, evidence={}, message="")


def test_findings_get_the_causes_that_can_produce_them() -> None:
    model = mlp(8, 3, depth=16, width=32, activation="sigmoid", seed=0)
    s = analyse(model)
    d = gw.Diagnosis(
        findings=[_finding("vanishing_gradient", ["0", "2"]), _finding("temporal_vanishing", ["0"]), _finding("diverging_loss", [])]
    )
    link(d, s.anatomy, s)
    kinds = [str(c.kind) for c in d.causes]
    assert kinds[0] == "saturating_activations"
    assert [c.score for c in d.causes] == sorted((c.score for c in d.causes), reverse=True)
    vanishing, temporal, diverging = d.findings
    assert vanishing.causes[0] == "saturating_activations"
    assert set(vanishing.causes) <= set(kinds) and "depth_without_skip" in vanishing.causes
    assert temporal.causes == []  # no recurrent layer: nothing explains it
    assert diverging.causes == []  # no timeline: no step-size evidence, and the init is not exploding
    assert d.to_dict()["findings"][0]["causes"] == vanishing.causes


def test_a_local_cause_explains_only_findings_in_its_layers() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(2, 16, batch_first=True)
            self.head = nn.Linear(16, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x)[0][:, -1])

    s = analyse(Net(), torch.randn(2, 80, 2))
    d = gw.Diagnosis(findings=[_finding("temporal_vanishing", ["rnn"]), _finding("temporal_vanishing", ["head"])])
    link(d, s.anatomy, s)
    assert d.findings[0].causes == ["vanilla_rnn_long_sequence"]
    assert d.findings[1].causes == []


def test_watch_and_load_give_the_same_causes(tmp_path: Path) -> None:
    model = mlp(8, 3, depth=16, width=16, activation="sigmoid", seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    log = tmp_path / "deep.jsonl"
    with gw.watch(model, every=2, log=log) as w:
        for _ in range(4):
            loss = nn.functional.cross_entropy(model(torch.randn(16, 8)), torch.randint(0, 3, (16,)))
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    live = w.diagnose()
    assert live.causes and str(live.causes[0].kind) == "saturating_activations"
    assert gw.load(log).diagnose().to_dict() == live.to_dict()


def test_explain_never_hides_the_findings() -> None:
    a = gw.Anatomy.from_module(nn.Linear(2, 2))
    d = gw.Diagnosis(findings=[_finding("flat_loss", [])])
    out = explain(d, a, facts={"method": "fx", "chain": ["nope"], "longest_plain_chain": "not a number"})
    assert out is d and out.findings and any("causes not explained" in n for n in out.notes)
    assert Structure.from_anatomy(a).method == "none"


def test_dead_units_at_activation_sites_are_linked_to_the_bias_that_killed_them() -> None:
    import torch
    from torch import nn

    import gradwatch as gw

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].bias.fill_(-5.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gw.watch(model, every=1) as w:
        for _ in range(80):
            loss = nn.functional.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 2, (16,)))
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    d = w.diagnose()
    dead = d.by_kind("dead_units")
    assert dead and "1" in dead[0].layers  # the ReLU site, not the Linear before it
    assert "dead_relu_bias" in dead[0].causes
