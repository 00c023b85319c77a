from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import pytest

from gradwatch.cli import main
from gradwatch.lab import runner
from gradwatch.lab.experiments import (
    CHANCE_ACC,
    EXPERIMENTS,
    FAILED_MSE,
    LEARNED_MSE,
    THEORY_FACTOR,
    TRAINS_ACC,
)
from gradwatch.lab.schema import validate


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, str]:
    """The --quick lab as CI runs it (every experiment, one seed), through the CLI."""
    out = tmp_path_factory.mktemp("lab")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["lab", "--quick", "--out", str(out)])
    return {"rc": rc, **json.loads((out / "results.json").read_text())}, buf.getvalue()


def test_quick_lab_agrees_everywhere_and_says_so(quick) -> None:
    results, printed = quick
    assert results["rc"] == 0
    n = sum(len(e.selected(True)) for e in EXPERIMENTS.values())
    assert len(results["rows"]) == n and f"{n}/{n}" in printed  # the progress bar finished
    assert f"{n} of {n} rows agree" in printed


def test_results_validate_against_the_schema(quick) -> None:
    results, _ = quick
    results = {k: v for k, v in results.items() if k != "rc"}
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


def test_every_agrees_follows_from_the_numbers_and_the_spec(quick) -> None:
    """Recompute each row's judgement from its observed numbers and its experiment's spec."""
    results, _ = quick
    for r in results["rows"]:
        e = EXPERIMENTS[r["experiment"]]
        (spec,) = [s for s in e.selected(True) if s.params == r["setting"]]
        o = r["observed"]
        if e.name == "depth":
            acc = o["test_accuracy"]
            outcome = "trains" if acc >= TRAINS_ACC else "chance" if acc <= CHANCE_ACC else "partial"
            per_block = 2 if r["setting"]["batchnorm"] else 1  # BatchNorm layers own parameters too
            assert len(r["series"]["grad_norm"]) == per_block * r["setting"]["depth"] + 1
        elif e.name == "adding":
            mse = o["test_mse"]
            outcome = "learns" if mse < LEARNED_MSE else "fails" if mse > FAILED_MSE else "partial"
            assert o["steps"] == 400
        else:
            ratio = o["first_to_last_measured"]
            outcome = "vanishes" if ratio < 1e-3 else "level" if ratio > 0.1 else "shrinks"
            m, p = r["series"]["measured"], r["series"]["predicted"]
            assert abs(m[0] / m[-1] - ratio) < 1e-9 * ratio
            jac = r["series"]["jacobian"]  # 4 samples x min(64 inputs, 10 outputs) singular values
            assert len(jac) == 40 and math.isclose(o["jacobian_mean_sq"], sum(v * v for v in jac) / 40, rel_tol=1e-9)
            if max(abs(math.log10(a / b)) for a, b in zip(m, p, strict=True)) > math.log10(THEORY_FACTOR):
                outcome += ", off theory"
        assert r["outcome"] == outcome
        assert r["expected"] == spec.expected and r["agrees"] == (outcome == spec.expected)
        found = set(r["verdict"])
        ok = (not spec.verdict_has or bool(found & set(spec.verdict_has))) and not found & set(spec.verdict_not)
        assert r["verdict_agrees"] == ok
        assert r["agrees"] and r["verdict_agrees"], r


def test_list_and_bad_arguments(capsys) -> None:
    assert main(["lab", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPERIMENTS)
    assert main(["lab", "nope"]) == 2
    assert capsys.readouterr().err == "gradwatch lab: no experiment 'nope'; choose from: depth, theory, adding\n"
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
