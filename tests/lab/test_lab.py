from __future__ import annotations

import copy
import dataclasses
import html
import json
import math
from pathlib import Path

import pytest

from gradwatch.cli import main
from gradwatch.lab import runner
from gradwatch.lab.dying import DEAD_SHARE
from gradwatch.lab.experiments import (
    CHANCE_ACC,
    COPIED_ACC,
    EXPERIMENTS,
    FAILED_MSE,
    FORGOT_ACC,
    LEARNED_MSE,
    PIXEL_FAILS_ACC,
    THEORY_FACTOR,
    TRAINS_ACC,
    Experiment,
)
from gradwatch.lab.residual import DEGRADED_ACC
from gradwatch.lab.schema import validate


def tiny(e: Experiment) -> Experiment:
    """`e` with its --quick settings shrunk to a test's size (its `tiny` parameters)."""
    return dataclasses.replace(
        e, settings=tuple(dataclasses.replace(s, params={**s.params, **e.tiny}) for s in e.selected(True))
    )


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, Path]:
    """Every experiment's --quick settings at a test's size, one seed, through the real
    runner and writer (results.json, the figures and index.html)."""
    out = tmp_path_factory.mktemp("lab")
    results = runner.run([tiny(e) for e in EXPERIMENTS.values()], quick=True, progress=False)
    runner.write(results, out)
    return json.loads((out / "results.json").read_text()), out


def test_every_experiment_runs_at_a_tiny_size_and_writes_its_page(quick) -> None:
    results, out = quick
    assert [e["name"] for e in results["experiments"]] == list(EXPERIMENTS)
    assert len(results["rows"]) == sum(len(e.selected(True)) for e in EXPERIMENTS.values())
    page = (out / "index.html").read_text()
    for name in EXPERIMENTS:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'<h2 id="{name}">' in page and html.escape(EXPERIMENTS[name].citation) in page
    n = len(results["rows"])
    ok = sum(r["agrees"] and r["verdict_agrees"] for r in results["rows"])
    assert f"<b>{ok} of {n}</b> rows agree" in page
    assert page.count("<tr>") == n + len(EXPERIMENTS)  # a header and one line per row


def test_results_validate_against_the_schema(quick) -> None:
    results, _ = quick
    assert validate(results) == []
    broken = copy.deepcopy(results)
    del broken["rows"][0]["agrees"]
    broken["rows"][1]["seed"] = "0"
    broken["rows"][2]["extra"] = 1
    broken["quick"] = "yes"
    assert validate(broken) == [
        "$.quick: expected boolean, got str",
        "$.rows[0]: missing 'agrees'",
        "$.rows[1].seed: expected integer, got str",
        "$.rows[2]: unexpected key 'extra'",
    ]


def _outcome(name: str, r: dict) -> str:
    """Each experiment's judgement, recomputed from the row's observed numbers."""
    o = r["observed"]
    if name == "depth":
        acc = o["test_accuracy"]
        return "trains" if acc >= TRAINS_ACC else "chance" if acc <= CHANCE_ACC else "partial"
    if name == "adding":
        mse = o["test_mse"]
        return "learns" if mse < LEARNED_MSE else "fails" if mse > FAILED_MSE else "partial"
    if name == "copy":
        acc = o["recall_accuracy"]
        return "learns" if acc >= COPIED_ACC else "fails" if acc <= FORGOT_ACC else "partial"
    if name == "pixels":
        acc = o["test_accuracy"]
        return "learns" if acc >= TRAINS_ACC else "fails" if acc <= PIXEL_FAILS_ACC else "partial"
    if name == "dying":
        dead, acc = o["dead_share"], o["test_accuracy"]
        return ("dies" if dead >= DEAD_SHARE and acc <= CHANCE_ACC
                else "lives" if dead < DEAD_SHARE and acc >= TRAINS_ACC else "partial")
    if name == "residual":
        acc = o["train_accuracy"]
        return "trains" if acc >= TRAINS_ACC else "degrades" if acc < DEGRADED_ACC else "partial"
    if name == "chaos":
        acc = o["train_accuracy"]
        return "trains" if acc >= TRAINS_ACC else "fails" if acc <= CHANCE_ACC else "partial"
    assert name == "theory"
    ratio = o["first_to_last_measured"]
    outcome = "vanishes" if ratio < 1e-3 else "level" if ratio > 0.1 else "shrinks"
    m, p = r["series"]["measured"], r["series"]["predicted"]
    assert abs(m[0] / m[-1] - ratio) < 1e-9 * ratio
    jac = r["series"]["jacobian"]  # 4 samples x min(64 inputs, 10 outputs) singular values
    assert len(jac) == 40 and math.isclose(o["jacobian_mean_sq"], sum(v * v for v in jac) / 40, rel_tol=1e-9)
    if max(abs(math.log10(a / b)) for a, b in zip(m, p, strict=True)) > math.log10(THEORY_FACTOR):
        outcome += ", off theory"
    return outcome


def test_every_agrees_follows_from_the_numbers_and_the_spec(quick) -> None:
    """Recompute each row's judgement from its observed numbers and its experiment's spec."""
    results, _ = quick
    specs = [(e, s) for e in EXPERIMENTS.values() for s in tiny(e).settings]  # the runner's order
    assert len(specs) == len(results["rows"])
    for (e, spec), r in zip(specs, results["rows"], strict=True):
        assert (r["experiment"], r["setting"]) == (e.name, spec.params)
        assert r["outcome"] == _outcome(e.name, r), r
        assert r["expected"] == spec.expected and r["agrees"] == (r["outcome"] == spec.expected)
        found = set(r["verdict"])
        ok = (not spec.verdict_has or bool(found & set(spec.verdict_has))) and not found & set(spec.verdict_not)
        assert r["verdict_agrees"] == ok
        if "steps" in r["observed"]:
            assert r["observed"]["steps"] == e.tiny["steps"]
        if e.name == "depth":
            per_block = 2 if r["setting"]["batchnorm"] else 1  # BatchNorm layers own parameters too
            assert len(r["series"]["grad_norm"]) == per_block * r["setting"]["depth"] + 1
        if e.name == "residual":
            assert len(r["series"]["grad_norm"]) == r["observed"]["weight_layers"] == 2 * r["setting"]["blocks"] + 2


def test_the_cli_runs_an_experiment_and_says_how_many_rows_agree(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(EXPERIMENTS, "dying", tiny(EXPERIMENTS["dying"]))  # a test's size, the real runner
    rc = main(["lab", "dying", "--quick", "--no-progress", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    n = len(EXPERIMENTS["dying"].settings)
    ok = sum(r["agrees"] and r["verdict_agrees"] for r in rows)
    assert rc == (0 if ok == len(rows) == n else 1)
    out = capsys.readouterr().out
    assert f"{ok} of {n} rows agree with the literature and gradwatch's verdict; results in {tmp_path}" in out
    assert f"figures and the page next to the literature: {tmp_path / 'index.html'}" in out


def test_list_and_bad_arguments(capsys) -> None:
    assert main(["lab", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPERIMENTS)
    assert main(["lab", "nope"]) == 2
    assert capsys.readouterr().err == "gradwatch lab: no experiment 'nope'; choose from: depth, theory, adding, copy, pixels, dying, residual, chaos\n"
    assert main(["lab", "--seeds", "0"]) == 2
    assert capsys.readouterr().err == "gradwatch lab: --seeds must be at least 1, got 0\n"


def test_write_refuses_results_that_break_the_schema(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"do not match their schema: \$: missing 'gradwatch'"):
        runner.write({"quick": True, "seeds": 1, "experiments": [], "rows": []}, tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_runner_judges_a_custom_experiment_on_one_thread_and_restores_the_threads() -> None:
    import torch

    from gradwatch.lab.experiments import Experiment, Observation, Setting

    seen: list[int] = []

    def fake(params: dict, seed: int, quick: bool) -> Observation:
        seen.append(torch.get_num_threads())
        return Observation(params["outcome"], {"x": float("nan")}, verdict=["flat_loss"])

    e = Experiment(
        "fake", "a fake", "nobody", "claims", "judged", run=fake,
        settings=(
            Setting({"outcome": "a"}, "a", verdict_has=("flat_loss",)),
            Setting({"outcome": "b"}, "a", verdict_not=("flat_loss",)),
        ),
    )
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = runner.run([e], seeds=2, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1, 1, 1]
    rows = results["rows"]
    assert [(r["seed"], r["agrees"], r["verdict_agrees"]) for r in rows] == [
        (0, True, True), (1, True, True), (0, False, False), (1, False, False)
    ]
    assert rows[0]["observed"] == {"x": None}  # strict JSON: NaN becomes null
    assert rows[2]["verdict_expected"] == "none of: flat_loss"
    assert validate(results) == []
