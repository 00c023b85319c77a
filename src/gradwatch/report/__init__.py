"""`gw.report`: see what gradwatch found — figures, a terminal report, one HTML page.

::

    gw.report(w, html="report.html")              # a Watcher, after (or during) training
    gw.report("run.jsonl", png_dir="figures/")    # a log, even one a killed process left
    gw.report(gw.inspect(model, x, jacobian=True), html="before.html")

Everything is drawn from a `Timeline`, a `Diagnosis` and, before training, an `inspect`
result; matplotlib and rich (the ``report`` extra) are imported only when a report is made.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gradwatch.detect.thresholds import Thresholds
from gradwatch.report._source import Material, gather
from gradwatch.types import Diagnosis, FixResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Report", "draw_all", "report"]


@dataclass
class Report:
    """What `report` made: the diagnosis it showed, the figures by name, the files written."""

    diagnosis: Diagnosis
    figures: dict[str, Figure] = field(default_factory=dict)
    html: Path | None = None
    pngs: list[Path] = field(default_factory=list)
    text: str = ""


def draw_all(m: Material) -> dict[str, Figure]:
    """Every figure that has something to show for this material, by name (the PNG's stem)."""
    from gradwatch.report import figures as f

    d, t, th = m.diagnosis, m.timeline, m.thresholds
    out: dict[str, Figure] = {}
    if t is not None and len(t):
        out["gradient_flow"] = f.gradient_flow(t, d)
        out["gradient_heatmap"] = f.gradient_heatmap(t, d)
    elif d.layers:
        out["gradient_flow"] = f.gradient_flow(None, d)
    if t is not None and len(t.losses):
        out["loss"] = f.loss_curve(t, d, chance=m.chance)
    if t is not None and len(t):
        if t.layer_metric("update_ratio").size and (t.layer_metric("update_ratio") > 0).any():
            out["update_ratio"] = f.update_ratios(t, d, th)
        if t.metric("act_dead_frac")[0] or t.metric("act_sat_frac")[0]:
            out["activations"] = f.activation_health(t, d, th)
        if any(n.startswith("grad_t/") for n in t.profiles.names()):
            out["gradient_through_time"] = f.gradient_through_time(t, d)
    if d.jacobian:
        out["jacobian"] = f.jacobian_spectrum(d)
    return out


def report(
    source: Any,
    html: str | os.PathLike[str] | None = None,
    png_dir: str | os.PathLike[str] | None = None,
    *,
    out: TextIO | None = None,
    terminal: bool = True,
    thresholds: Thresholds | None = None,
    diagnosis: Diagnosis | None = None,
    fix: FixResult | None = None,
) -> Report:
    """Show what gradwatch found about `source`.

    Args:
        source: a `Watcher` (``gw.watch``), a `Run` (``gw.load``), the path of a JSONL log,
            or a `Diagnosis` from ``gw.inspect`` (per-layer and Jacobian figures only).
        html: write one self-contained HTML page here (figures inline, no network).
        png_dir: write each figure here as ``<name>.png`` (the folder is created).
        out: where the terminal report goes (stdout by default); colour on a terminal,
            plain text otherwise or when ``NO_COLOR`` is set.
        terminal: False to print nothing.
        thresholds: judge with these numbers (``gw.Thresholds()`` by default).
        diagnosis: show this diagnosis instead of judging `source` again.
        fix: a `FixResult` (``gw.fix``) to show as the proposed fix; without it the
            causes' remedies are listed.

    Returns:
        A `Report`: the diagnosis, the figures (matplotlib `Figure`s by name), the paths written.

    Example::

        r = gw.report("run.jsonl", html="report.html", png_dir="figures", terminal=False)
        r.figures["gradient_flow"]        # a matplotlib Figure
    """
    material = gather(source, thresholds=thresholds, diagnosis=diagnosis, fix=fix)
    from gradwatch.report import terminal as term

    result = Report(diagnosis=material.diagnosis)
    if html is not None or png_dir is not None:
        result.figures = draw_all(material)
    if png_dir is not None:
        folder = Path(png_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for name, fig in result.figures.items():
            path = folder / f"{name}.png"
            fig.savefig(path, dpi=100)
            result.pngs.append(path)
    if html is not None:
        from gradwatch.report.html import page

        path = Path(html)
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page(material, result.figures), encoding="utf-8")
        result.html = path
    result.text = term.plain_text(material)
    if terminal:
        term.render(material, out or sys.stdout)
    return result
