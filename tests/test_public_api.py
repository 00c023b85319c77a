from __future__ import annotations

import subprocess
import sys

import gradwatch as gw


def test_everything_exported_exists() -> None:
    for name in gw.__all__:
        assert hasattr(gw, name), name


def test_the_contract_names() -> None:
    assert {k.value for k in gw.Kind} == {
        "vanishing_gradient", "exploding_gradient", "nonfinite_gradient", "temporal_vanishing",
        "dead_units", "saturated_units", "flat_loss", "diverging_loss", "stalled_weights", "constant_output",
    }
    assert [s.value for s in sorted(gw.Severity)] == ["info", "warning", "error"]
    assert str(gw.Kind.FLAT_LOSS) == "flat_loss" and gw.Kind("flat_loss") == "flat_loss"


def test_a_typo_in_a_kind_lists_the_choices() -> None:
    import pytest

    with pytest.raises(ValueError, match="not a valid Kind; choose one of: vanishing_gradient"):
        gw.Kind.parse("vanishing")


def test_import_needs_only_torch_and_numpy() -> None:
    code = (
        "import sys, gradwatch, gradwatch.integrations, gradwatch.integrations.distributed; "
        "bad = [m for m in ('matplotlib', 'rich', 'lightning', 'transformers', 'sklearn', 'pytorch_lightning', 'keras', 'tensorflow') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_diagnosis_and_finding_print_and_serialise() -> None:
    import json
    import math

    f = gw.Finding(kind="flat_loss", severity="warning", layers=["0"], step=40, evidence={"loss": math.nan}, message="stuck")
    d = gw.Diagnosis(findings=[f], layers=[gw.LayerReport(name="0", type="Linear", measured_grad_norm=1e-3)], steps=100)
    assert not d.healthy
    assert "[warning] flat_loss at step 40: stuck" in str(d)
    json.dumps(d.to_dict(), allow_nan=False)
    assert d.to_dict()["findings"][0]["evidence"]["loss"] == "nan"
    assert gw.Diagnosis(findings=[gw.Finding("dead_units", "info", [], None, {}, "fyi")]).healthy


def test_a_fix_repeated_on_many_layers_prints_as_one_line() -> None:
    changes = [gw.Change("activation", str(i), f"{i}: Sigmoid -> ReLU", "vanishing") for i in range(1, 33, 2)]
    changes += [gw.Change("init", "0", "0: He init (sigma_w^2 0.33 -> 2.00)", "match"),
                gw.Change("init", "2", "2: He init (sigma_w^2 0.34 -> 2.00)", "match"),
                gw.Change("init", "32", "32: Xavier init (sigma_w^2 0.34 -> 1.73)", "match")]
    text = str(gw.FixResult(model=None, changes=changes, advice={"lr_scale": 0.5, "manual": ["change line 3"]}))
    assert text.splitlines() == [
        "- 1: Sigmoid -> ReLU (vanishing); likewise on 3, 5, 7, 9, 11, 13, ... (16 layers in all)",
        "- 0: He init (sigma_w^2 0.33 -> 2.00) (match)",
        "- 2: He init (sigma_w^2 0.34 -> 2.00) (match)",
        "- 32: Xavier init (sigma_w^2 0.34 -> 1.73) (match)",
        "- advice: lr_scale = 0.5",
        "- by hand: change line 3",
    ]


def test_diagnose_takes_thresholds_live_and_offline(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), 1e-4)  # every update ~1e-5 of the weights: below the band
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    with gw.watch(model, every=5, log=tmp_path / "run.jsonl") as w:
        for _ in range(150):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            opt.step()
    run = gw.load(tmp_path / "run.jsonl")
    assert w.diagnose().by_kind(gw.Kind.STALLED_WEIGHTS)
    strict = gw.Thresholds(small_update_ratio=1e-7, stall_update_ratio=1e-8)  # nothing is small to these
    for d in (w.diagnose(thresholds=strict), run.diagnose(thresholds=strict)):
        assert not d.by_kind(gw.Kind.STALLED_WEIGHTS)
    assert str(run.diagnose()) == str(w.diagnose())
    with pytest.raises(gw.GradwatchTypeError, match=r"thresholds= expects a gradwatch.Thresholds \(e.g. gw.Thresholds"):
        w.diagnose(thresholds={"vanish_ratio": 1e-4})  # type: ignore[arg-type]
