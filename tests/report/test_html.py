"""The HTML page: self-contained, and read by a real headless Chromium."""

from __future__ import annotations

import base64
import html as htmllib
import io
import os
import re

import pytest

pytest.importorskip("matplotlib")

import gradwatch as gw
from tests.report._chromium import WIDTH, find_chromium, open_page
from tests.report.conftest import ARTIFACTS


def _images(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]+)"', page)


def test_page_is_self_contained_and_shows_findings_causes_fix_figures_and_layers(sigmoid_log, tmp_path) -> None:
    w, _log = sigmoid_log
    d = w.diagnose()
    assert not d.healthy  # the page below must show real problems
    fix = gw.fix(w.model, d, timeline=w.timeline)
    r = gw.report(w, html=tmp_path / "r.html", fix=fix, terminal=False)
    page = r.html.read_text(encoding="utf-8")
    # nothing is fetched: no URL anywhere but the inline images
    assert not re.search(r"(src|href)=\"(?!data:)", page)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    images = _images(page)
    assert len(images) == len(r.figures) >= 4
    import matplotlib.image

    for uri in images:
        assert uri.startswith("data:image/png;base64,")
        png = matplotlib.image.imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])), format="png")
        assert png.shape[0] > 100 and png.shape[1] > 100
    for f in d.findings:
        assert htmllib.escape(f.message) in page
        assert htmllib.escape(str(f.kind)) in page
        for k in f.evidence:
            assert f"<code>{htmllib.escape(k)}</code>" in page
    for c in d.causes[:5]:
        assert htmllib.escape(c.message) in page
    assert fix.changes
    for line in str(fix).splitlines():  # the fix as it prints: repeated edits grouped
        assert f"<li>{htmllib.escape(line.removeprefix('- '))}</li>" in page
    for layer in d.layers:
        assert f"<td>{htmllib.escape(layer.name)}</td>" in page


def test_a_message_with_markup_is_escaped(tmp_path) -> None:
    d = gw.Diagnosis(findings=[gw.Finding("flat_loss", "warning", [], 3, {"a<b": 1.0}, "<img src=x onerror=alert(1)>")])
    page = gw.report(d, html=tmp_path / "x.html", terminal=False).html.read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<code>a&lt;b</code>" in page


def test_page_in_headless_chromium(sigmoid_log, tmp_path) -> None:
    binary = find_chromium()
    if binary is None:
        if os.environ.get("GRADWATCH_REQUIRE_CHROMIUM"):
            pytest.fail("GRADWATCH_REQUIRE_CHROMIUM is set but no chromium binary is on PATH")
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium; `make test` installs it as root)")
    _w, log = sigmoid_log
    r = gw.report(gw.load(log), html=tmp_path / "report.html", terminal=False)
    d = r.diagnosis
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report-chromium.png"
    value, events = open_page(
        binary,
        r.html,
        "({images: Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]),"
        " text: document.body.innerText})",
        shot,
    )
    errors = [
        e for e in events
        if e["method"] == "Runtime.exceptionThrown"
        or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
        or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    assert errors == []
    assert len(value["images"]) == len(r.figures) >= 4
    assert all(complete and width > 0 and height > 0 for complete, width, height in value["images"])
    for f in d.findings:
        assert f.message in value["text"]
    import matplotlib.image

    png = matplotlib.image.imread(shot)
    assert png.shape[0] > 1000 and png.shape[1] == WIDTH  # the whole page, not the first screen
