"""HTML for Jupyter: what ``Diagnosis``, ``FixResult`` and ``RepairResult`` show as ``_repr_html_``.

Each is the HTML report's body (`html.fragment`) with the gradient-flow figure inline;
without matplotlib the figure is left out. Nothing here raises: if building the HTML fails,
the object's plain text (or, failing that, its bare repr) is shown, with a line saying so.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from gradwatch.record import Timeline
from gradwatch.report._source import Material
from gradwatch.types import Diagnosis, FixResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _flow(diagnosis: Diagnosis | None, timeline: Timeline | None) -> dict[str, Figure]:
    try:
        from gradwatch.report.figures import gradient_flow
    except ImportError:  # matplotlib (the report extra) not installed: text only
        return {}
    if timeline is not None and len(timeline):
        return {"gradient_flow": gradient_flow(timeline, diagnosis)}
    if diagnosis is not None and any(r.measured_grad_norm for r in diagnosis.layers):
        return {"gradient_flow": gradient_flow(None, diagnosis)}
    return {}


def _safe(build: Any, obj: object) -> str:
    try:
        return str(build())
    except Exception as e:  # a notebook must show something, never a traceback for a repr
        try:
            text = str(obj)
        except Exception:
            text = object.__repr__(obj)
        return f"<pre>{html.escape(text)}</pre><p><i>(HTML view failed: {html.escape(type(e).__name__)})</i></p>"


def diagnosis_html(diagnosis: Diagnosis, timeline: Timeline | None = None) -> str:
    from gradwatch.report.html import fragment

    def build() -> str:
        m = Material(title="gradwatch diagnosis", diagnosis=diagnosis, timeline=timeline)
        return f'<div class="gradwatch">{fragment(m, _flow(diagnosis, timeline), heading=4)}</div>'

    return _safe(build, diagnosis)


def fix_html(fix: FixResult) -> str:
    def build() -> str:
        if not fix.changes and not fix.advice:
            return "<p><b>gw.fix</b>: no change needed</p>"
        items = "".join(f"<li>{html.escape(line.removeprefix('- '))}</li>" for line in str(fix).splitlines())
        return f'<div class="gradwatch"><p><b>gw.fix</b> made {len(fix.changes)} change(s):</p><ul>{items}</ul></div>'

    return _safe(build, fix)


def repair_html(result: Any) -> str:
    """`RepairResult`: its trials as it prints, then the diagnosis of the original's short run."""

    def build() -> str:
        head = f"<pre>{html.escape(str(result))}</pre>"
        return head + diagnosis_html(result.diagnosis, result.timeline)

    return _safe(build, result)
