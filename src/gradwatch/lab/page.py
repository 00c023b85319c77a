"""The lab's figures and its HTML page, drawn from ``results.json`` alone.

`write(results, out_dir)` draws one figure per experiment (``<name>.png``) and writes
``index.html``: for each experiment the literature's claim and citation, how a row is
judged, the figure, and a table of what the literature leads us to expect next to what
happened here and what gradwatch said. Needs matplotlib (the ``report`` extra); the
runner calls it through `gradwatch.lab.runner.FIGURES`.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradwatch.report.html import png_data_uri

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["FIGURE_OF", "write"]

_GREEN, _RED, _GREY = "#1e8449", "#c0392b", "#7f8c8d"

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.lit{border-left:5px solid #2e86c1;background:#f4f8fb;padding:.4em .8em} .judge{font-size:.9em;color:#555}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0} td,th{padding:.15em .6em;border-bottom:1px solid #eee;text-align:left}
.yes{color:#1e8449;font-weight:600} .no{color:#c0392b;font-weight:600}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _figure(width: float = 8.0, height: float = 4.0) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _label(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in row["setting"].items())


def _first_seed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting: the lowest seed's."""
    seen: dict[str, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: r["seed"]):
        seen.setdefault(_label(r), r)
    return list(seen.values())


def _profiles(ax: Axes, rows: list[dict[str, Any]], key: str, ylabel: str) -> None:
    """Per-layer series on a log axis, one line per setting, solid where the row agrees."""
    for r in _first_seed(rows):
        ys = [v if v is not None and v > 0 else math.nan for v in r["series"].get(key, [])]
        if ys:
            ax.semilogy(range(len(ys)), ys, "-" if r["agrees"] else ":", marker=".", label=_label(r))
    ax.set_xlabel("layer (input side at 0)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6, loc="best")


def _bars(ax: Axes, rows: list[dict[str, Any]], key: str, ylabel: str, lines: dict[str, float], log: bool = False) -> None:
    """One bar per row (setting and seed), green where the row agrees with the literature."""
    values = [r["observed"].get(key) for r in rows]
    heights = [v if isinstance(v, int | float) and math.isfinite(v) else 0.0 for v in values]
    ax.bar(range(len(rows)), heights, color=[_GREEN if r["agrees"] else _RED for r in rows])
    ax.set_xticks(range(len(rows)), [f"{_label(r)}\nseed {r['seed']}" for r in rows], rotation=60, ha="right", fontsize=6)
    for name, y in lines.items():
        ax.axhline(y, ls="--", color=_GREY, lw=1)
        ax.annotate(name, (0, y), fontsize=7, color=_GREY, va="bottom")
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)


def _depth(rows: list[dict[str, Any]]) -> Figure:
    fig = _figure()
    ax = fig.subplots()
    _profiles(ax, rows, "grad_norm", "gradient norm, mean of the last 5 records")
    ax.set_title("Gradient per layer after training (dotted: disagrees with the literature)")
    return fig


def _theory(rows: list[dict[str, Any]]) -> Figure:
    fig = _figure()
    ax = fig.subplots()
    for r in _first_seed(rows):
        m, p = r["series"].get("measured", []), r["series"].get("predicted", [])
        (line,) = ax.semilogy(m, marker=".", label=f"{_label(r)} measured")
        ax.semilogy(p, "--", color=line.get_color(), label="predicted")
    ax.set_xlabel("layer (input side at 0)")
    ax.set_ylabel("gradient norm at initialisation")
    ax.set_title("Measured (solid) against mean-field theory (dashed)")
    ax.legend(fontsize=6, ncol=2)
    return fig


def _adding(rows: list[dict[str, Any]]) -> Figure:
    from gradwatch.lab.experiments import FAILED_MSE, LEARNED_MSE

    fig = _figure()
    _bars(fig.subplots(), rows, "test_mse", "test MSE (log)",
          {"learns below": LEARNED_MSE, "fails above": FAILED_MSE, "predict the mean": 1 / 6}, log=True)
    return fig


def _copy(rows: list[dict[str, Any]]) -> Figure:
    from gradwatch.lab.experiments import COPIED_ACC, FORGOT_ACC

    fig = _figure()
    _bars(fig.subplots(), rows, "recall_accuracy", "recall accuracy",
          {"learns": COPIED_ACC, "fails": FORGOT_ACC, "chance": 0.25})
    return fig


def _pixels(rows: list[dict[str, Any]]) -> Figure:
    from gradwatch.lab.experiments import PIXEL_FAILS_ACC
    from gradwatch.lab.spec import TRAINS_ACC

    fig = _figure()
    _bars(fig.subplots(), rows, "test_accuracy", "test accuracy",
          {"learns": TRAINS_ACC, "fails": PIXEL_FAILS_ACC, "chance": 0.1})
    return fig


def _dying(rows: list[dict[str, Any]]) -> Figure:
    from gradwatch.lab.dying import DEAD_SHARE

    fig = _figure()
    _bars(fig.subplots(), rows, "dead_share", "share of hidden units dead on every training image",
          {"dies at": DEAD_SHARE})
    return fig


def _residual(rows: list[dict[str, Any]]) -> Figure:
    fig = _figure(10.0, 4.0)
    left, right = fig.subplots(1, 2)
    _profiles(left, rows, "grad_norm", "gradient norm of each Linear")
    left.set_title("Gradient per weight layer after training")
    for residual, colour in ((False, _RED), (True, _GREEN)):
        pts = sorted((r["observed"]["weight_layers"], r["observed"]["train_accuracy"])
                     for r in rows if r["setting"].get("residual") == residual
                     and isinstance(r["observed"].get("train_accuracy"), float))
        if pts:
            right.plot(*zip(*pts, strict=True), "o-", color=colour, label="residual" if residual else "plain")
    right.set_xlabel("weight layers")
    right.set_ylabel("training accuracy")
    right.set_title("Degradation: plain nets train worse as they deepen")
    right.legend()
    return fig


def _chaos(rows: list[dict[str, Any]]) -> Figure:
    import numpy as np

    from gradwatch.lab.chaos import depth_scale

    fig = _figure(7.0, 4.5)
    ax = fig.subplots()
    # denser near the boundary (sigma_w^2 ~ 1.76), where 6 xi_c peaks
    grid = np.concatenate([np.linspace(0.3, 1.6, 10), [1.7, 1.74, 1.76, 1.78, 1.82], np.linspace(1.9, 4.5, 8)])
    six_xi = [6 * depth_scale(float(s))["xi_c"] for s in grid]
    ax.semilogy(grid, six_xi, color="#2e86c1", label="6 xi_c (theory)")
    for outcome, marker, colour in (("trains", "o", _GREEN), ("fails", "x", _RED), ("partial", "s", _GREY)):
        pts = [(r["setting"]["sigma_w2"], r["setting"]["depth"]) for r in rows if r["outcome"] == outcome]
        if pts:
            ax.semilogy(*zip(*pts, strict=True), marker, color=colour, ms=8, ls="none", label=f"{outcome} here")
    ax.axvline(1.76, ls=":", color=_GREY)
    ax.set_ylim(1, 1000)
    ax.set_xlabel("sigma_w^2 (sigma_b^2 = 0.05)")
    ax.set_ylabel("depth")
    ax.set_title("Trainable depth against the depth scale (Schoenholz et al. 2017, fig. 5)")
    ax.legend(fontsize=8)
    return fig


#: The figure drawn for each experiment, by name; an experiment without one gets none.
FIGURE_OF: dict[str, Callable[[list[dict[str, Any]]], Figure]] = {
    "depth": _depth, "theory": _theory, "adding": _adding, "copy": _copy, "pixels": _pixels,
    "dying": _dying, "residual": _residual, "chaos": _chaos,
}


def _table(rows: list[dict[str, Any]]) -> str:
    def yes(b: bool) -> str:
        return '<span class="yes">yes</span>' if b else '<span class="no">NO</span>'

    out = ["<table><tr><th>setting</th><th>seed</th><th>literature</th><th>here</th><th>agrees</th>"
           "<th>gradwatch should say</th><th>gradwatch said</th><th>agrees</th></tr>"]
    for r in rows:
        out.append(
            f"<tr><td>{_e(_label(r))}</td><td>{r['seed']}</td><td>{_e(r['expected'])}</td><td>{_e(r['outcome'])}</td>"
            f"<td>{yes(r['agrees'])}</td><td>{_e(r['verdict_expected'])}</td>"
            f"<td>{_e(', '.join(r['verdict']) or 'nothing')}</td><td>{yes(r['verdict_agrees'])}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def write(results: dict[str, Any], out_dir: Path) -> Path:
    """Draw each experiment's figure into `out_dir` and write ``out_dir/index.html``; its path."""
    rows = results["rows"]
    agree = sum(r["agrees"] and r["verdict_agrees"] for r in rows)
    body = [
        f"<h1>gradwatch lab</h1><p>gradwatch {_e(results['gradwatch'])}, "
        f"{'--quick, ' if results['quick'] else ''}{results['seeds']} seed(s): "
        f"<b>{agree} of {len(rows)}</b> rows agree with the literature and with gradwatch's expected verdict.</p>"
    ]
    for e in results["experiments"]:
        mine = [r for r in rows if r["experiment"] == e["name"]]
        body.append(f"<h2 id=\"{_e(e['name'])}\">{_e(e['name'])}: {_e(e['title'])}</h2>")
        body.append(f"<div class=\"lit\"><b>The literature</b> ({_e(e['citation'])}): {_e(e['claim'])}</div>")
        body.append(f"<p class=\"judge\"><b>Judged:</b> {_e(e['judge'])}</p>")
        draw = FIGURE_OF.get(e["name"])
        if draw is not None and mine:
            fig = draw(mine)
            uri = png_data_uri(fig)
            (out_dir / f"{e['name']}.png").write_bytes(base64.b64decode(uri.split(",", 1)[1]))
            body.append(f"<figure><img alt=\"{_e(e['name'])}\" src=\"{uri}\"></figure>")
        body.append(_table(mine))
    path = out_dir / "index.html"
    path.write_text(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>gradwatch lab</title>"
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    return path
