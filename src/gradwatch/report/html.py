"""One self-contained HTML page: summary, findings with their evidence, causes, the fix,
the figures (inline PNG), the per-layer table. No script, no network: it opens anywhere.

`fragment` is the same content without the page around it, for Jupyter's ``_repr_html_``.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gradwatch.detect._signals import num
from gradwatch.report._source import Material
from gradwatch.report._text import fix_lines, layer_rows
from gradwatch.types import Severity

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.gw-verdict{font-size:1.15em;font-weight:600;padding:.5em .8em;border-radius:6px;display:inline-block}
.gw-healthy{background:#e8f8f0;color:#1e8449} .gw-problem{background:#fdedec;color:#a93226}
.gw-finding{border-left:5px solid #bbb;padding:.4em .8em;margin:.8em 0;background:#fafafa}
.gw-error{border-color:#c0392b} .gw-warning{border-color:#d68910} .gw-info{border-color:#95a5a6}
.gw-sev{font-weight:700;text-transform:uppercase;font-size:.8em;margin-right:.5em}
.gw-evidence{font-size:.85em;color:#555;margin-top:.3em} .gw-evidence code{background:#eee;padding:0 .25em;border-radius:3px}
table.gw-layers{border-collapse:collapse;font-size:.9em} .gw-layers td,.gw-layers th{padding:.15em .6em;border-bottom:1px solid #eee;text-align:right}
.gw-layers td:first-child,.gw-layers th:first-child,.gw-layers td:nth-child(2),.gw-layers th:nth-child(2){text-align:left}
.gw-spark{font-family:monospace;color:#2e86c1;text-align:left!important;white-space:pre}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555} .gw-notes{font-size:.85em;color:#666}
"""


def png_data_uri(fig: Figure, dpi: int = 90) -> str:
    """The figure as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _evidence(ev: Mapping[str, float]) -> str:
    parts = []
    for k, v in ev.items():
        value = num(float(v)) if isinstance(v, int | float) and not isinstance(v, bool) else str(v)
        parts.append(f"<code>{_e(k)}</code> {_e(value)}")
    return ", ".join(parts)


def fragment(m: Material, figures: Mapping[str, Figure] | None = None, *, heading: int = 2) -> str:
    """The report's body: everything but the page around it."""
    d = m.diagnosis
    h = f"h{heading}"
    out: list[str] = []
    shown = [f for f in d.findings if f.severity > Severity.INFO]
    if d.healthy:
        verdict = f"healthy: no gradient problem found ({d.steps} steps looked at)"
    else:
        verdict = f"{len(shown)} problem{'s' if len(shown) != 1 else ''} found ({d.steps} steps looked at)"
    out.append(f'<p class="gw-verdict {"gw-healthy" if d.healthy else "gw-problem"}">{_e(verdict)}</p>')
    if d.findings:
        out.append(f"<{h}>Findings</{h}>")
        for f in sorted(d.findings, key=lambda f: -f.severity.rank):
            where = f" at step {f.step}" if f.step is not None else ""
            layers = f" — layers: {_e(', '.join(f.layers[:12]))}{' …' if len(f.layers) > 12 else ''}" if f.layers else ""
            out.append(
                f'<div class="gw-finding gw-{f.severity}"><span class="gw-sev">{_e(f.severity)}</span>'
                f"<b>{_e(f.kind)}</b>{_e(where)}{layers}<br>{_e(f.message)}"
                + (f'<div class="gw-evidence">evidence: {_evidence(f.evidence)}</div>' if f.evidence else "")
                + (f'<div class="gw-evidence">causes: {_e(", ".join(f.causes))}</div>' if f.causes else "")
                + "</div>"
            )
    if d.causes:
        out.append(f"<{h}>{'Risks in the structure' if d.healthy else 'Likely causes'}</{h}><ol>")
        for c in d.causes[:5]:
            out.append(
                f"<li><b>{_e(c.kind)}</b> (score {c.score:.2f}): {_e(c.message)}"
                + (f"<br><i>Fix:</i> {_e(c.remedy)}" if c.remedy else "")
                + (f'<div class="gw-evidence">evidence: {_evidence(c.evidence)}</div>' if c.evidence else "")
                + "</li>"
            )
        out.append("</ol>")
    todo = fix_lines(m.fix)
    if todo:
        out.append(f"<{h}>The fix (gw.fix)</{h}><ul>")
        out.extend(f"<li>{_e(t)}</li>" for t in todo)
        out.append("</ul>")
    if figures:
        out.append(f"<{h}>Figures</{h}>")
        for name, fig in figures.items():
            title = fig.axes[0].get_title() if fig.axes else name
            out.append(
                f'<figure id="fig-{_e(name)}"><img alt="{_e(title)}" src="{png_data_uri(fig)}">'
                f"<figcaption>{_e(name.replace('_', ' '))}</figcaption></figure>"
            )
    rows = layer_rows(d, m.timeline)
    if rows:
        out.append(f"<{h}>Per layer</{h}>")
        trend = m.timeline is not None and len(m.timeline) > 0
        head = ["layer", "type", "grad norm", "theory", "update ratio"] + (["gradient over time", "range"] if trend else [])
        out.append('<table class="gw-layers"><tr>' + "".join(f"<th>{_e(x)}</th>" for x in head) + "</tr>")
        for r in rows:
            cells = [r.name, r.type, r.grad_norm, r.predicted, r.update_ratio]
            tds = "".join(f"<td>{_e(c)}</td>" for c in cells)
            if trend:
                tds += f'<td class="gw-spark">{_e(r.trend)}</td><td>{_e(r.span)}</td>'
            out.append(f"<tr>{tds}</tr>")
        out.append("</table>")
    if d.notes:
        out.append(f'<div class="gw-notes"><{h}>Notes</{h}><ul>')
        out.extend(f"<li>{_e(n)}</li>" for n in d.notes)
        out.append("</ul></div>")
    return "\n".join(out)


def page(m: Material, figures: Mapping[str, Figure] | None = None) -> str:
    """The whole self-contained HTML page."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(m.title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{_e(m.title)}</h1>\n{fragment(m, figures)}\n</body></html>\n"
    )
