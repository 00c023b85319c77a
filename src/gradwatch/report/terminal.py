"""The terminal report: the diagnosis, a per-layer table with each layer's gradient over
time as a sparkline, the causes and the fix.

In colour with rich on a terminal; plain text (no escape codes) when the output is not a
TTY or ``NO_COLOR`` is set (https://no-color.org).
"""

from __future__ import annotations

import io
import os
import sys
from typing import TextIO

from gradwatch.report._source import Material
from gradwatch.report._text import fix_lines, layer_rows
from gradwatch.types import Severity

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "dim"}


def wants_colour(out: TextIO) -> bool:
    """Colour only on a terminal, and never with ``NO_COLOR`` set (to anything non-empty)."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


def plain_text(m: Material) -> str:
    """The report as plain text: the diagnosis as it prints, the per-layer table, the fix."""
    d = m.diagnosis
    lines = [m.title, "", str(d)]
    rows = layer_rows(d, m.timeline)
    if rows:
        lines += ["", f"{'layer':<24} {'type':<14} {'grad norm':>9} {'theory':>9} {'update':>9}  gradient over time"]
        for r in rows:
            lines.append(
                f"{r.name[-24:]:<24} {r.type[:14]:<14} {r.grad_norm:>9} {r.predicted:>9} {r.update_ratio:>9}  "
                f"{r.trend} {r.span}".rstrip()
            )
    todo = fix_lines(m.fix)
    if todo:
        lines += ["", "the fix (gw.fix):"]
        lines += [f"  - {t}" for t in todo]
    return "\n".join(lines) + "\n"


def render(m: Material, out: TextIO | None = None, *, colour: bool | None = None) -> None:
    """Write the terminal report to `out` (stdout by default); `colour` None decides by `wants_colour`."""
    out = out or sys.stdout
    if colour is None:
        colour = wants_colour(out)
    if colour:
        try:
            import rich  # noqa: F401
        except ImportError:  # the report extra is not installed: plain text it is
            colour = False
    if colour:
        _render_rich(m, out)
    else:
        out.write(plain_text(m))


def _render_rich(m: Material, out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=out, force_terminal=True, highlight=False, soft_wrap=False)
    d = m.diagnosis
    console.rule(Text(m.title, style="bold"))
    shown = [f for f in d.findings if f.severity > Severity.INFO]
    if d.healthy:
        console.print(Text(f"healthy: no gradient problem found ({d.steps} steps looked at)", style="bold green"))
    else:
        n = len(shown)
        console.print(Text(f"{n} problem{'s' if n != 1 else ''} found ({d.steps} steps looked at)", style="bold red"))
    for f in sorted(d.findings, key=lambda f: -f.severity.rank):
        where = f" at step {f.step}" if f.step is not None else ""
        line = Text(f"  [{f.severity}] ", style=_STYLE[f.severity])
        line.append(f"{f.kind}{where}: ", style="bold")
        line.append(f.message)
        console.print(line)
    if d.causes:
        console.print(Text("risks in the model's structure:" if d.healthy else "likely causes, most likely first:", style="bold"))
        for c in d.causes[:3]:
            console.print(Text(f"  - {c}"))
    rows = layer_rows(d, m.timeline)
    if rows:
        table = Table(title="per layer", title_justify="left", show_lines=False)
        for head, justify in (("layer", "left"), ("type", "left"), ("grad norm", "right"), ("theory", "right"),
                              ("update", "right"), ("gradient over time", "left"), ("range", "left")):
            table.add_column(head, justify=justify)  # type: ignore[arg-type]
        for r in rows:
            table.add_row(r.name, r.type, r.grad_norm, r.predicted, r.update_ratio, Text(r.trend, style="cyan"), r.span)
        console.print(table)
    todo = fix_lines(m.fix)
    if todo:
        console.print(Text("the fix (gw.fix):", style="bold"))
        for t in todo:
            console.print(Text(f"  - {t}"))
    for note in d.notes:
        console.print(Text(f"note: {note}", style="dim"))


def render_to_string(m: Material, *, colour: bool = False) -> str:
    buf = io.StringIO()
    render(m, buf, colour=colour)
    return buf.getvalue()
