"""`gw.report`: sources, files, and a log read back drawing what the live watcher drew."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import gradwatch as gw


def _plotted(fig) -> list[np.ndarray]:
    """Every number a figure plots: line data, bar heights, mesh cells, in drawing order."""
    out = []
    for ax in fig.axes:
        for a in ax.get_children():
            if hasattr(a, "get_xydata") and a.get_gid():
                out.append(np.asarray(a.get_xydata(), dtype=float))
            elif hasattr(a, "get_height") and a.get_gid():
                out.append(np.array([a.get_height()], dtype=float))
            elif hasattr(a, "get_array") and a.get_gid() and a.get_array() is not None:
                out.append(np.ma.filled(a.get_array(), np.nan).astype(float).ravel())
    return out


def test_a_log_read_back_draws_the_same_figures_as_the_live_watcher(sigmoid_log) -> None:
    w, log = sigmoid_log
    live = gw.report(w, png_dir=None, html=None, terminal=False)
    assert live.figures == {}  # nothing drawn unless a file is asked for
    from gradwatch.report import draw_all
    from gradwatch.report._source import gather

    a, b = draw_all(gather(w)), draw_all(gather(gw.load(log)))
    assert list(a) == list(b) == ["gradient_flow", "gradient_heatmap", "loss", "update_ratio", "activations"]
    for name in a:
        assert [ax.get_title() for ax in a[name].axes] == [ax.get_title() for ax in b[name].axes], name
        pa, pb = _plotted(a[name]), _plotted(b[name])
        assert len(pa) == len(pb) > 0, name
        for x, y in zip(pa, pb, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6, err_msg=name)


def test_png_dir_gets_one_png_per_figure_through_the_cli(sigmoid_log, tmp_path, capsys) -> None:
    from gradwatch.cli import main

    _, log = sigmoid_log
    assert main(["report", str(log), "--png", str(tmp_path / "figs")]) == 0
    written = sorted((tmp_path / "figs").iterdir())
    assert [p.name for p in written] == sorted(f"{n}.png" for n in ("gradient_flow", "gradient_heatmap", "loss", "update_ratio", "activations"))
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    assert "figures: " + ", ".join(str(tmp_path / "figs" / n) for n in ("gradient_flow.png",)) in capsys.readouterr().out


def test_the_chance_level_on_the_loss_figure_is_the_detectors_ln_c(sigmoid_log) -> None:
    from gradwatch.report import figures as f
    from gradwatch.report._source import gather

    _, log = sigmoid_log
    m = gather(gw.load(log))
    assert m.chance == pytest.approx(np.log(3))  # 3 classes
    (chance,) = [line for line in f.loss_curve(m.timeline, chance=m.chance).axes[0].get_lines() if line.get_gid() == "chance"]
    assert chance.get_ydata()[0] == m.chance


def test_an_inspect_result_draws_the_per_layer_and_jacobian_figures(tmp_path) -> None:
    from gradwatch.lab.models import mlp

    model = mlp(8, 4, depth=6, width=16, activation="tanh", seed=0)
    d = gw.inspect(model, torch_randn(16, 8), jacobian=True)
    assert len(d.jacobian) == 4 * 4  # 4 samples x min(8 inputs, 4 outputs)
    r = gw.report(d, html=tmp_path / "i.html", terminal=False)
    assert list(r.figures) == ["gradient_flow", "jacobian"]
    (line,) = [x for x in r.figures["jacobian"].axes[0].get_lines() if x.get_gid() == "singular_values"]
    np.testing.assert_allclose(line.get_ydata(), sorted(d.jacobian, reverse=True))
    assert d.to_dict()["jacobian"] == d.jacobian


def torch_randn(*shape: int):
    import torch

    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def test_report_rejects_what_it_cannot_draw_and_names_the_sources_it_takes() -> None:
    with pytest.raises(gw.GradwatchTypeError, match=r"report\(\) takes a Watcher \(gw.watch\), a Run \(gw.load\), the path of a JSONL log or a Diagnosis from gw.inspect, got builtins.int"):
        gw.report(3)
    with pytest.raises(FileNotFoundError):
        gw.report("no-such-run.jsonl")


def test_import_gradwatch_imports_neither_matplotlib_nor_rich() -> None:
    code = "import sys, gradwatch as gw; gw.report; print('matplotlib' in sys.modules, 'rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
