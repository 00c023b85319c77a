"""Diagnosis, FixResult and RepairResult in Jupyter: IPython's own display formatter."""

from __future__ import annotations

import base64
import html as htmllib
import re

import pytest

import gradwatch as gw
from tests.report._timelines import diagnosis

pytest.importorskip("matplotlib")
IPython = pytest.importorskip("IPython", reason="IPython (the dev extra) renders objects as Jupyter does")


def _html(obj: object) -> str:
    bundle, _ = IPython.core.formatters.DisplayFormatter().format(obj)
    assert "text/html" in bundle, "Jupyter would show only the plain text"
    return bundle["text/html"]


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(u) for u in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_a_diagnosis_shows_its_findings_and_the_gradient_flow_figure() -> None:
    d = diagnosis()
    page = _html(d)
    for f in d.findings:
        assert htmllib.escape(f.message) in page
    (png,) = _pngs(page)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "layer &#x27;in&#x27; receives 1e-7 of the last layer&#x27;s gradient (one probing pass)" in page


def test_a_fix_result_lists_its_changes_and_advice() -> None:
    fix = gw.FixResult(model=None, changes=[gw.Change("init", "0", "0: He init", "relu")], advice={"lr_scale": 0.1})
    page = _html(fix)
    assert "<li>0: He init (relu)</li>" in page and "<li>advice: lr_scale = 0.1</li>" in page
    assert "no change needed" in _html(gw.FixResult(model=None))


def test_a_repair_result_shows_its_trials_and_the_originals_gradient_flow(sigmoid_log) -> None:
    from gradwatch.fix.repair import RepairResult

    w, _ = sigmoid_log
    r = RepairResult(
        model=w.model, fix=None, advice={}, trials=[], baseline=0.5, margin=0.05, diagnosis=w.diagnose(),
        steps=80, steps_used=80, budget_steps=120, seconds=1.0, timeline=w.timeline,
    )
    page = _html(r)
    assert htmllib.escape(str(r).splitlines()[0]) in page
    assert len(_pngs(page)) == 1 and "vanishing_gradient" in page


def test_a_view_that_cannot_be_built_falls_back_to_the_text() -> None:
    d = gw.Diagnosis(layers=[gw.LayerReport("a", "Linear", measured_grad_norm=1.0)])
    d.findings = [object()]  # type: ignore[list-item]  # broken on purpose: .severity is missing
    page = _html(d)
    assert page.startswith("<pre>&lt;gradwatch.types.Diagnosis object at ") and "(HTML view failed: AttributeError)" in page
