"""Every figure, built from a hand-made Timeline: the plotted data are the timeline's numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from gradwatch.detect.thresholds import Thresholds
from gradwatch.report import figures as f
from tests.report._timelines import LAYERS, STEPS, diagnosis, grad_norm, timeline


def _by_gid(fig, gid):
    found = [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == gid]
    assert found, f"no artist with gid {gid!r}"
    return found


def _onset_steps(ax) -> dict[str, float]:
    return {line.get_gid(): float(line.get_xdata()[0]) for line in ax.get_lines() if (line.get_gid() or "").startswith("onset:")}


def test_gradient_flow_bars_are_the_recorded_values_on_a_log_axis() -> None:
    t, d = timeline(), diagnosis()
    fig = f.gradient_flow(t, d)  # the last recording step by default
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    rms = [p.get_height() for p in ax.patches if p.get_gid() == "grad_rms"]
    gmax = [p.get_height() for p in ax.patches if p.get_gid() == "grad_max"]
    np.testing.assert_allclose(rms, t.layer_metric("grad_rms")[-1])
    np.testing.assert_allclose(gmax, t.layer_metric("grad_max")[-1])
    assert [tick.get_text() for tick in ax.get_xticklabels()] == LAYERS
    # theory's prediction in the bars' unit: predicted norm x (this step's RMS / norm)
    (pred,) = _by_gid(fig, "predicted")
    y = np.asarray(pred.get_ydata(), dtype=float)
    np.testing.assert_allclose(y[[0, 2]], [2e-7 / 10, 1.0 / 10])
    assert math.isnan(y[1])
    # the title says what is wrong, with the measured ratio of first to last layer (1e-7 / 1 at step 40)
    assert ax.get_title() == "layer 'in' receives 1e-7 of the last layer's gradient (step 40)"


def test_gradient_flow_at_a_chosen_step_and_before_the_first() -> None:
    t = timeline()
    ax = f.gradient_flow(t, step=25).axes[0]  # the record at or before step 25: step 20
    rms = [p.get_height() for p in ax.patches if p.get_gid() == "grad_rms"]
    np.testing.assert_allclose(rms, grad_norm(2) / 10)
    assert "(step 20)" in ax.get_title()
    with pytest.raises(ValueError, match="no recording step at or before step -1; the first is 0"):
        f.gradient_flow(t, step=-1)
    with pytest.raises(ValueError, match="needs a timeline, a diagnosis, or both"):
        f.gradient_flow()
    import gradwatch as gw

    with pytest.raises(ValueError, match="the timeline holds no recording step yet, and no diagnosis was given"):
        f.gradient_flow(gw.Timeline(layers=["a"]))


def test_gradient_flow_from_an_inspect_diagnosis_draws_measured_and_predicted_norms() -> None:
    d = diagnosis()
    ax = f.gradient_flow(None, d).axes[0]
    bars = [p.get_height() for p in ax.patches if p.get_gid() == "grad_norm"]
    np.testing.assert_allclose(bars, [1e-7, 1e-2, 1.0])
    (pred,) = [line for line in ax.get_lines() if line.get_gid() == "predicted"]
    np.testing.assert_allclose(np.asarray(pred.get_ydata(), dtype=float)[[0, 2]], [2e-7, 1.0])
    assert ax.get_yscale() == "log"
    assert "(one probing pass)" in ax.get_title()


def test_heatmap_cells_are_log10_of_each_layer_relative_to_the_last_and_onsets_sit_at_the_findings_steps() -> None:
    t, d = timeline(), diagnosis()
    fig = f.gradient_heatmap(t, d)
    (mesh,) = _by_gid(fig, "relative_gradient")
    cells = np.ma.filled(mesh.get_array(), np.nan).reshape(len(LAYERS), len(STEPS))
    expected = np.log10(np.array([grad_norm(i) / grad_norm(i)[-1] for i in range(len(STEPS))])).T
    np.testing.assert_allclose(cells, expected)
    # columns are centred on the recorded steps
    xs = mesh.get_coordinates()[0, :, 0]
    np.testing.assert_allclose((xs[1:] + xs[:-1]) / 2, STEPS)
    ax = fig.axes[0]
    assert _onset_steps(ax) == {"onset:vanishing_gradient": 20.0, "onset:flat_loss": 30.0, "onset:dead_units": 10.0}
    assert ax.get_title() == "layer 'in' gets 1e-7 of the last layer's gradient at step 40"


def test_loss_curve_holds_every_loss_the_chance_level_and_the_onsets() -> None:
    t, d = timeline(), diagnosis()
    fig = f.loss_curve(t, d, chance=math.log(10))
    ax = fig.axes[0]
    (line,) = _by_gid(fig, "loss")
    steps, values = t.loss()
    np.testing.assert_array_equal(line.get_xdata(), steps)
    np.testing.assert_allclose(line.get_ydata(), values)
    (chance,) = _by_gid(fig, "chance")
    assert chance.get_ydata()[0] == pytest.approx(math.log(10))
    assert _onset_steps(ax)["onset:flat_loss"] == 30.0
    assert ax.get_yscale() == "linear"  # 2.3 .. 1.81: under two decades
    assert ax.get_title().startswith("loss 2.25 → 1.85") and "flat_loss from step 30" in ax.get_title()


def test_loss_curve_goes_log_over_two_decades_and_names_the_first_nonfinite_step() -> None:
    import gradwatch as gw

    t = gw.Timeline(layers=["a"])
    t.ingest({"type": "losses", "losses": [[s, 10.0 ** -(s / 10)] for s in range(40)] + [[40, float("nan")]]})
    ax = f.loss_curve(t).axes[0]
    assert ax.get_title().endswith("non-finite from step 40")
    t2 = gw.Timeline(layers=["a"])
    t2.ingest({"type": "losses", "losses": [[s, 10.0 ** -(s / 10)] for s in range(40)]})
    assert f.loss_curve(t2).axes[0].get_yscale() == "log"


def test_update_ratios_are_the_recorded_ratios_with_the_thresholds_band() -> None:
    t, d = timeline(), diagnosis()
    th = Thresholds()
    fig = f.update_ratios(t, d, th)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    ratios = t.layer_metric("update_ratio")
    assert ratios[0, 0] == 0.0 and np.isnan(ratios[0, 2])  # no place on a log axis: gaps
    for j, name in enumerate(LAYERS):
        (line,) = _by_gid(fig, f"update_ratio:{name}")
        np.testing.assert_array_equal(line.get_xdata(), STEPS)
        np.testing.assert_allclose(line.get_ydata(), np.where(ratios[:, j] > 0, ratios[:, j], np.nan))
    (band,) = _by_gid(fig, "band")
    assert (band.get_y(), band.get_y() + band.get_height()) == pytest.approx((th.small_update_ratio, th.large_update_ratio))
    assert "median layer 1e-3" in ax.get_title() and "inside the healthy band" in ax.get_title()


def test_activation_health_plots_each_sites_share_and_the_detectors_bars() -> None:
    t, d = timeline(), diagnosis()
    th = Thresholds()
    fig = f.activation_health(t, d, th)
    (dead,) = _by_gid(fig, "act_dead_frac:relu1")
    (sat,) = _by_gid(fig, "act_sat_frac:sig1")
    np.testing.assert_allclose(dead.get_ydata(), [0.0, 0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(sat.get_ydata(), [0.9, 0.8, 0.7, 0.6, 0.5])
    np.testing.assert_array_equal(sat.get_xdata(), STEPS)
    (bar,) = _by_gid(fig, "bar:act_dead_frac")
    assert bar.get_ydata()[0] == th.dead_frac
    assert _onset_steps(fig.axes[0]) == {"onset:dead_units": 10.0}
    assert fig.get_suptitle() == "50% saturated outputs at 'sig1'"
    assert [ax.get_title() for ax in fig.axes] == [
        "dead units: worst site 'relu1' at 40% (step 40)",
        "saturated outputs: worst site 'sig1' at 50% (step 40)",
    ]
    import gradwatch as gw

    quiet = gw.Timeline(layers=["a"])
    quiet.ingest({"type": "record", "step": 3, "layers": {}, "values": {"act_sat_frac": {"s1": 0.0, "s2": 0.0}}})
    (ax,) = f.activation_health(quiet).axes  # no ReLU site: one panel
    assert ax.get_title() == "saturated outputs: none at any of 2 sites (step 3)"


def test_gradient_through_time_plots_the_profile_against_t_on_a_log_axis() -> None:
    t = timeline()
    fig = f.gradient_through_time(t)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    rows = t.profiles.get("grad_t/rnn")
    first, last = _by_gid(fig, "grad_t:rnn:0")[0], _by_gid(fig, "grad_t:rnn:40")[0]
    for line, (_, vec) in ((first, rows[0]), (last, rows[-1])):
        np.testing.assert_array_equal(line.get_xdata(), np.arange(6))
        np.testing.assert_allclose(line.get_ydata(), vec)
    assert "'rnn': t=0 gets 1e-5 of the largest" in ax.get_title()


def test_jacobian_spectrum_sorts_the_inspected_singular_values_and_marks_isometry() -> None:
    fig = f.jacobian_spectrum(diagnosis())
    (line,) = _by_gid(fig, "singular_values")
    np.testing.assert_allclose(line.get_ydata(), [4.0, 1.0, 0.5, 0.01])
    assert _by_gid(fig, "isometry")[0].get_ydata()[0] == 1.0
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_title() == "input-output Jacobian: median singular value 0.75, mean square 4.31, spread 400x"


def test_figures_of_an_empty_timeline_say_so_instead_of_failing() -> None:
    import gradwatch as gw

    t = gw.Timeline(layers=["a"])
    assert f.gradient_heatmap(t).axes[0].get_title() == "no recording step yet"
    assert f.gradient_through_time(t).axes[0].get_title() == "gradient through time: no recurrent layer measured"
    assert "no Jacobian spectrum" in f.jacobian_spectrum(gw.Diagnosis()).axes[0].get_title()


def test_past_max_lines_layers_are_summarised_by_median_range_and_the_end_layers() -> None:
    import gradwatch as gw

    n = f.MAX_LINES + 8
    names = [f"l{j}" for j in range(n)]
    t = gw.Timeline(layers=names)
    rng = np.random.default_rng(0)
    ratios = 10.0 ** rng.uniform(-6, -2, size=(4, n))
    ratios[1, 3] = 0.0  # no update: not part of the median on a log axis
    for i in range(4):
        g = np.linspace(1e-3, 1.0, n)
        t.ingest({"type": "record", "step": i, "layers": {"grad_norm": g.tolist(), "grad_rms": g.tolist(),
                  "grad_max": g.tolist(), "update_ratio": ratios[i].tolist()}})
    fig = f.update_ratios(t)
    positive = np.where(ratios > 0, ratios, np.nan)
    np.testing.assert_allclose(_by_gid(fig, "update_ratio:median")[0].get_ydata(), np.nanmedian(positive, axis=1))
    np.testing.assert_allclose(_by_gid(fig, "update_ratio:l0")[0].get_ydata(), positive[:, 0])
    np.testing.assert_allclose(_by_gid(fig, f"update_ratio:l{n - 1}")[0].get_ydata(), positive[:, -1])
    assert _by_gid(fig, "update_ratio:range")
    assert not [a for a in fig.axes[0].get_lines() if a.get_gid() == "update_ratio:l5"]
    # most layers not moving at all: the title counts them rather than printing a median of 0
    ratios[-1, : n // 2 + 1] = 0.0
    t.ingest({"type": "record", "step": 4, "layers": {"grad_norm": g.tolist(), "update_ratio": ratios[-1].tolist()}})
    assert f.update_ratios(t).axes[0].get_title() == f"updates too small: {n // 2 + 1} of {n} layers did not change at all at step 4"


def test_the_gradient_flow_of_a_hundred_layers_names_every_third() -> None:
    import gradwatch as gw

    names = [f"x{j}" for j in range(100)]
    t = gw.Timeline(layers=names)
    g = np.geomspace(1e-9, 1.0, 100)
    t.ingest({"type": "record", "step": 0, "layers": {"grad_norm": g.tolist(), "grad_rms": g.tolist(), "grad_max": g.tolist()}})
    ax = f.gradient_flow(t).axes[0]
    assert [x.get_text() for x in ax.get_xticklabels()] == names[::3]  # ceil(100 / 40) = 3
    assert len([p for p in ax.patches if p.get_gid() == "grad_rms"]) == 100
