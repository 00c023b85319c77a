"""The terminal report: plain text off a terminal or under NO_COLOR, rich colour on one."""

from __future__ import annotations

import io

import numpy as np
import pytest

import gradwatch as gw
from gradwatch.report._source import Material
from gradwatch.report._text import BLOCKS, sparkline
from gradwatch.report.terminal import render, wants_colour
from tests.report._timelines import diagnosis, timeline


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_sparkline_maps_log10_between_the_series_own_extremes() -> None:
    assert sparkline(np.array([1e-8, 1e-4, 1.0])) == BLOCKS[0] + BLOCKS[4] + BLOCKS[7]  # 4/8 of 7 rounds to 4 (half)
    assert sparkline(np.array([5.0, 5.0])) == BLOCKS[3] * 2  # level: mid-height
    assert sparkline(np.array([1.0, np.nan, 0.0, 10.0])) == BLOCKS[0] + "  " + BLOCKS[7]
    assert sparkline(np.array([np.nan])) == " "
    # longer than the width: each character is a chunk's mean of log10
    s = sparkline(10.0 ** np.repeat(np.arange(4), 25), width=4)
    assert s == BLOCKS[0] + BLOCKS[2] + BLOCKS[5] + BLOCKS[7]


def test_plain_text_holds_the_diagnosis_the_layer_table_with_sparklines_and_the_fix() -> None:
    t, d = timeline(), diagnosis()
    fix = gw.FixResult(model=None, changes=[gw.Change("activation", "in", "in: Sigmoid -> ReLU", "it saturates")])
    out = io.StringIO()
    r = gw.report(_watched_like(t, d, fix), out=out)
    text = out.getvalue()
    assert text == r.text
    assert "\x1b[" not in text
    assert str(d) in text
    g = t.layer_metric("grad_norm")
    for j, name in enumerate(t.layers):
        line = next(x for x in text.splitlines() if x.startswith(f"{name} "))
        assert sparkline(g[:, j]) in line
    assert "the fix (gw.fix):\n  - in: Sigmoid -> ReLU (it saturates)" in text


def _watched_like(t: gw.Timeline, d: gw.Diagnosis, fix: gw.FixResult) -> Material:
    return Material(title="hand-made", diagnosis=d, timeline=t, fix=fix)


def test_colour_on_a_terminal_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert wants_colour(_Tty()) and not wants_colour(io.StringIO())
    m = Material(title="hand-made", diagnosis=diagnosis(), timeline=timeline())
    tty = _Tty()
    render(m, tty)
    coloured = tty.getvalue()
    assert "\x1b[" in coloured
    for f in m.diagnosis.findings:
        assert f.message in coloured
    assert sparkline(m.timeline.layer_metric("grad_norm")[:, 0]) in coloured
    monkeypatch.setenv("NO_COLOR", "1")
    tty = _Tty()
    render(m, tty)
    assert "\x1b[" not in tty.getvalue() and str(m.diagnosis) in tty.getvalue()
