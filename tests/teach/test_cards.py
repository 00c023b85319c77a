from __future__ import annotations

import warnings

import pytest
import torch

import gradwatch as gw
from gradwatch.cli import main
from gradwatch.explain.link import RELATED
from gradwatch.lab.data import batches, digits
from gradwatch.lab.models import mlp
from gradwatch.teach.cards import CARDS, card, render


def test_every_kind_and_cause_has_a_card_and_nothing_else() -> None:
    keys = {k.value for k in gw.Kind} | {c.value for c in gw.CauseKind}
    assert set(CARDS) == keys, f"missing: {keys - set(CARDS)}, unknown: {set(CARDS) - keys}"


@pytest.mark.parametrize("key", sorted(CARDS))
def test_card_is_complete_and_its_snippet_runs(key: str) -> None:
    c = CARDS[key]
    assert c.title
    for text in (c.what, c.where, c.math, c.fix_keras):
        assert len(text) > 30
    assert c.symptoms and c.side in ("vanishing", "exploding", "both")
    torch.manual_seed(0)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ... and cleanly
        exec(compile(c.fix_torch, f"<card {key}>", "exec"), namespace)  # the snippet runs as written
    assert "torch" in namespace


def test_causes_and_findings_come_from_the_link_table() -> None:
    assert CARDS["temporal_vanishing"].related == [str(c) for c in RELATED[gw.Kind.TEMPORAL_VANISHING]]
    # a cause lists every finding kind whose related causes name it
    found = CARDS["keep_gate_closed"].related
    assert found == [str(k) for k, cs in RELATED.items() if gw.CauseKind.KEEP_GATE_CLOSED in cs]
    assert "temporal_vanishing" in found and "exploding_gradient" not in found
    text = render(CARDS["keep_gate_closed"])
    assert "Can produce these findings:" in text and "temporal_vanishing" in text
    assert "vanishing" in text and "exploding" in text  # the side-by-side table


def test_card_lookup_forgives_case_and_hyphens_and_names_the_choices() -> None:
    assert card("Vanishing-Gradient").key == "vanishing_gradient"
    with pytest.raises(gw.GradwatchValueError, match="no card for 'vanish'; choose one of: constant_output"):
        card("vanish")


def test_cli_lists_cards_and_rejects_an_unknown_one(capsys) -> None:
    assert main(["explain"]) == 0
    out = capsys.readouterr().out
    assert all(k in out for k in CARDS)
    assert main(["explain", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gradwatch explain: no card for 'nope'")
    assert main(["explain", "vanishing_gradient", "--run", "/nonexistent/run.jsonl"]) == 2
    assert "no such run log: /nonexistent/run.jsonl" in capsys.readouterr().err


def test_run_ties_the_card_to_the_runs_own_numbers(tmp_path, capsys) -> None:
    log = tmp_path / "run.jsonl"
    data = digits(seed=0)
    model = mlp(64, 10, depth=12, width=32, activation="sigmoid", seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with gw.watch(model, every=4, log=log) as w:
        for x, y in batches(data.x_train, data.y_train, 64, 40, seed=0):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    d = gw.load(log).diagnose()
    (f,) = d.by_kind("vanishing_gradient")
    assert main(["explain", "vanishing_gradient", "--run", str(log)]) == 0
    out = capsys.readouterr().out
    assert f"In your run ({log})" in out and str(f) in out
    first_key, first_value = next(iter(f.evidence.items()))
    assert f"{first_key}={first_value:.3g}" in out
    # a cause card shows the cause as the run's diagnosis ranks it, and the findings behind it
    assert main(["explain", "saturating_activations", "--run", str(log)]) == 0
    out = capsys.readouterr().out
    (c,) = [c for c in d.causes if c.kind == "saturating_activations"]
    assert f"[{c.score:.2f}] {c}" in out and f"behind: {f}" in out
    # a kind the run does not show says so
    assert main(["explain", "dead_units", "--run", str(log)]) == 0
    assert "no dead_units finding" in capsys.readouterr().out
