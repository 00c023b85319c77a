"""Tie a Diagnosis's findings to the causes behind them.

`link` fills ``diagnosis.causes`` (ranked) and each ``finding.causes`` with the kinds of
the causes that can produce that finding (`RELATED`). `explain` reads the structure (from
the model when there is one, else from the anatomy's saved facts) and never lets a failure
to explain hide the findings themselves. `judge` is the one judge `Watcher.diagnose()`,
`Run.diagnose()` and `repair` reach: the detectors, then `explain`.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from gradwatch._errors import GradwatchTypeError
from gradwatch.anatomy import Anatomy
from gradwatch.anatomy.structure import Structure, analyse
from gradwatch.detect import Thresholds, diagnose
from gradwatch.explain.causes import LOSS_NOT_FALLEN, SATURATED_SHARE, _loss_windows, find_causes
from gradwatch.record import Timeline
from gradwatch.types import Cause, CauseKind, Diagnosis, Finding, Kind, Severity

__all__ = ["RELATED", "causes_of", "data_findings", "explain", "judge", "link", "out_of_reach", "saturated_by_inputs", "structure_facts"]

_C = CauseKind
#: Which causes can produce each kind of finding (by mechanism).
RELATED: dict[Kind, tuple[CauseKind, ...]] = {
    Kind.VANISHING_GRADIENT: (_C.SATURATING_ACTIVATIONS, _C.INIT_MISMATCH, _C.NORM_GAIN_TOO_SMALL, _C.DEPTH_WITHOUT_SKIP, _C.NO_NORMALIZATION, _C.DEAD_RELU_BIAS, _C.INPUT_NOT_STANDARDISED),
    Kind.EXPLODING_GRADIENT: (_C.INIT_MISMATCH, _C.STEP_SIZE_TOO_LARGE, _C.DEPTH_WITHOUT_SKIP, _C.NO_NORMALIZATION, _C.VANILLA_RNN_LONG_SEQUENCE, _C.TARGET_SCALE),
    Kind.NONFINITE_GRADIENT: (_C.STEP_SIZE_TOO_LARGE, _C.INIT_MISMATCH, _C.VANILLA_RNN_LONG_SEQUENCE, _C.TARGET_SCALE),
    Kind.TEMPORAL_VANISHING: (_C.VANILLA_RNN_LONG_SEQUENCE, _C.KEEP_GATE_CLOSED),
    Kind.DEAD_UNITS: (_C.DEAD_RELU_BIAS, _C.STEP_SIZE_TOO_LARGE, _C.INIT_MISMATCH, _C.INPUT_NOT_STANDARDISED, _C.TARGET_SCALE, _C.TARGET_OUT_OF_RANGE),
    Kind.SATURATED_UNITS: (_C.SATURATING_ACTIVATIONS, _C.INIT_MISMATCH, _C.NO_NORMALIZATION, _C.STEP_SIZE_TOO_LARGE, _C.INPUT_NOT_STANDARDISED, _C.TARGET_OUT_OF_RANGE),
    Kind.FLAT_LOSS: (_C.SATURATING_ACTIVATIONS, _C.INIT_MISMATCH, _C.NORM_GAIN_TOO_SMALL, _C.DEAD_RELU_BIAS, _C.DEPTH_WITHOUT_SKIP, _C.VANILLA_RNN_LONG_SEQUENCE, _C.KEEP_GATE_CLOSED, _C.NO_NORMALIZATION, _C.INPUT_NOT_STANDARDISED, _C.TARGET_OUT_OF_RANGE, _C.TARGET_SCALE),
    Kind.DIVERGING_LOSS: (_C.STEP_SIZE_TOO_LARGE, _C.INIT_MISMATCH, _C.TARGET_SCALE),
    Kind.STALLED_WEIGHTS: (_C.SATURATING_ACTIVATIONS, _C.INIT_MISMATCH, _C.NORM_GAIN_TOO_SMALL, _C.DEAD_RELU_BIAS, _C.DEPTH_WITHOUT_SKIP, _C.INPUT_NOT_STANDARDISED, _C.TARGET_OUT_OF_RANGE),
    Kind.CONSTANT_OUTPUT: (_C.DEAD_RELU_BIAS, _C.SATURATING_ACTIVATIONS, _C.INIT_MISMATCH, _C.NORM_GAIN_TOO_SMALL, _C.DEPTH_WITHOUT_SKIP, _C.STEP_SIZE_TOO_LARGE, _C.INPUT_NOT_STANDARDISED, _C.TARGET_OUT_OF_RANGE),
}
# Causes that live in particular layers: they explain a finding only where the layers meet.
_LOCAL = (_C.DEAD_RELU_BIAS, _C.VANILLA_RNN_LONG_SEQUENCE, _C.KEEP_GATE_CLOSED)


def causes_of(finding: Finding, causes: list[Cause], layer_names: set[str] | None = None) -> list[str]:
    """The kinds (best first) of the causes in `causes` that can explain `finding`.

    A local cause must share a layer with the finding — when the finding names weight
    layers. Dead- and saturated-unit findings name activation sites (``"1"``, the ReLU
    after layer ``"0"``), which cannot be compared with weight layers; for those
    (`layer_names` given and none of the finding's names among them) the check is skipped.
    """
    if finding.evidence.get("no_gradient") or finding.evidence.get("output_site"):
        return []  # layers cut off from the loss, an activation on the outputs: code, not the model's make-up
    related = RELATED.get(finding.kind, ())
    comparable = layer_names is None or bool(set(finding.layers) & layer_names)
    out: list[str] = []
    for c in causes:
        if c.kind not in related:
            continue
        if (
            comparable
            and c.kind in _LOCAL
            and finding.layers
            and c.layers
            and not set(finding.layers) & set(c.layers)
        ):
            continue
        out.append(str(c.kind))
    return list(dict.fromkeys(out))


def link(
    diagnosis: Diagnosis,
    anatomy: Anatomy,
    structure: Structure,
    timeline: Timeline | None = None,
    *,
    q0: float = 1.0,
    extra_causes: list[Cause] | None = None,
) -> Diagnosis:
    """Fill ``diagnosis.causes`` (ranked) and every ``finding.causes``; returns the same Diagnosis.

    `q0` is the mean square of the model's input (1 for standardised data); `extra_causes`
    are merged in (deduplicated by kind, the higher score kept).
    """
    causes = find_causes(anatomy, structure, timeline, q0=q0)
    by_kind = {c.kind: c for c in causes}
    for c in extra_causes or []:
        if c.kind not in by_kind or c.score > by_kind[c.kind].score:
            by_kind[c.kind] = c
    order = {c.kind: i for i, c in enumerate(causes)}
    diagnosis.causes = sorted(by_kind.values(), key=lambda c: (-c.score, order.get(c.kind, 99)))
    for extra in data_findings(diagnosis, timeline):
        diagnosis.findings = [
            f for f in diagnosis.findings
            if not (f.kind == extra.kind and f.severity <= Severity.INFO and f.layers == extra.layers)
        ] + [extra]  # fmt: skip
    names = set(anatomy.names)
    for f in diagnosis.findings:
        f.causes = causes_of(f, diagnosis.causes, names)
    return diagnosis


def out_of_reach(diagnosis: Diagnosis, timeline: Timeline | None) -> Finding | None:
    """The finding the targets prove when they lie beyond the output activation's range.

    The detectors cannot tell an output pinned at the edge of its range by targets it cannot
    reach from one grown confident (`detect.saturated`: an output site never counts as lost
    capacity), nor see the targets. Where `target_out_of_range` read them from the output's
    gradient (its ``unreachable_share`` evidence, `explain.targets`), they can be told apart:
    the outputs asked for targets beyond the range are driven to its edge, where a saturating
    function's derivative (and a ReLU's, below 0) is ~0, and the loss cannot fall below the
    part of the error out of reach. A `saturated_units` finding (a ReLU-like output:
    `dead_units`) at the output's site, at `warning`, unless one at `warning` or above is
    there already. None otherwise.
    """
    cause = next((c for c in diagnosis.causes if c.kind == _C.TARGET_OUT_OF_RANGE), None)
    if timeline is None or cause is None or "unreachable_share" not in cause.evidence:
        return None
    module = cause.layers[0] if cause.layers else None
    site, info = next(
        ((n, i) for n, i in timeline.sites.items() if i.get("output") and i.get("module", n) == module), (None, None)
    )
    if site is None or info is None:
        return None
    kind = Kind.SATURATED_UNITS if info.get("family") == "saturating" else Kind.DEAD_UNITS
    if any(f.kind == kind and f.severity >= Severity.WARNING and site in f.layers for f in diagnosis.findings):
        return None
    ev = cause.evidence
    fn = info.get("fn")
    lo, hi = ev["low"], ev["high"]
    span = f"{lo:g} to {hi:g}" if math.isfinite(lo) and math.isfinite(hi) else (
        f"{lo:g} and above" if math.isfinite(lo) else f"{hi:g} and below"
    )
    edge = "flat tails" if kind == Kind.SATURATED_UNITS else "off side, below 0,"
    return Finding(
        kind=kind,
        severity=Severity.WARNING,
        layers=[site],
        step=int(timeline.steps[0]) if len(timeline) else None,
        evidence={k: float(ev[k]) for k in ("unreachable_share", "outside_share", "low", "high", "target_min", "target_max") if k in ev},
        message=(
            f"the output `{site}` ({fn}) cannot reach the targets: {ev.get('outside_share', 0.0):.0%} of them lie "
            f"outside its range ({span}; read from the output's gradient, they run from "
            f"{ev.get('target_min', float('nan')):.3g} to {ev.get('target_max', float('nan')):.3g}), so the outputs asked "
            f"for them are driven into its {edge} where almost no gradient passes, and "
            f"{ev['unreachable_share']:.0%} of the error a constant leaves stays out of reach whatever the training"
        ),
    )


def saturated_by_inputs(diagnosis: Diagnosis, timeline: Timeline | None) -> Finding | None:
    """The finding `input_not_standardised` proves when the run measured what it predicts.

    The cause predicts, from the inputs' scale and the first layer's weights, that most of a
    saturating first layer's outputs start in the flat tails (``saturated_share``). Where the
    probes measured that share or more at that layer's activation site on the first record
    (at least `SATURATED_SHARE`) and the loss never fell below `LOSS_NOT_FALLEN` of its
    start, the gradient into the first layer was cut by the inputs' scale and the run did not
    learn: a `saturated_units` finding at `warning` on that site (the detectors judge a
    site saturated only while it stays so; units that leave the tails late, after the run
    has lost its steps to them, draw none). None otherwise, or when one at `warning` or above
    is there already.
    """
    cause = next((c for c in diagnosis.causes if c.kind == _C.INPUT_NOT_STANDARDISED), None)
    if timeline is None or cause is None or "saturated_share" not in cause.evidence or not len(timeline):
        return None
    windows = _loss_windows(timeline)
    if windows is None or not windows[1] >= LOSS_NOT_FALLEN * windows[0]:
        return None
    # the first activation site the forward pass met is the first layer's
    site = next((n for n, i in timeline.sites.items() if i.get("family") != "gate"), None)
    if site is None or timeline.sites[site].get("family") != "saturating" or "act_sat_frac" not in timeline.records.metrics:
        return None
    first = float(timeline.records.column("act_sat_frac", site)[0])
    if not first >= SATURATED_SHARE:
        return None
    if any(f.kind == Kind.SATURATED_UNITS and f.severity >= Severity.WARNING and site in f.layers for f in diagnosis.findings):
        return None
    fn = timeline.sites[site].get("fn")
    return Finding(
        kind=Kind.SATURATED_UNITS,
        severity=Severity.WARNING,
        layers=[site],
        step=int(timeline.steps[0]),
        evidence={"saturated_frac": first, "predicted_share": float(cause.evidence["saturated_share"]),
                  "input_rms": float(cause.evidence.get("input_rms", float("nan"))), "loss_start": windows[0],
                  "loss_floor": windows[1]},
        message=(
            f"{first:.0%} of the outputs at `{site}` ({fn}), the first layer's, started in the flat tails, as the "
            f"inputs' scale (root mean square {cause.evidence.get('input_rms', float('nan')):.3g}) predicts, so "
            f"almost no gradient reached the first layer; the loss never fell below {windows[1]:.3g}, from "
            f"{windows[0]:.3g} at the start"
        ),
    )


def data_findings(diagnosis: Diagnosis, timeline: Timeline | None) -> list[Finding]:
    """The findings the data causes prove (`out_of_reach`, `saturated_by_inputs`)."""
    found = [out_of_reach(diagnosis, timeline), saturated_by_inputs(diagnosis, timeline)]
    return [f for f in found if f is not None]


def structure_facts(model: nn.Module, anatomy: Anatomy) -> dict[str, Any]:
    """`analyse` the model (enriching `anatomy`) and return the Structure as a dict, for a log header.

    Called once, when a watcher writes its first record: the facts are those of the model
    as it started (its initialisation), and a run read back from the log sees the same.
    Never raises; a failure is noted in the facts.
    """
    try:
        return analyse(model, None, anatomy).to_dict()
    except Exception as e:  # a model fx and the module walk both choke on must not stop training
        return {"method": "none", "notes": [f"structure not read ({type(e).__name__}: {e})"]}


def explain(
    diagnosis: Diagnosis,
    anatomy: Anatomy,
    timeline: Timeline | None = None,
    *,
    facts: dict[str, Any] | None = None,
    model: nn.Module | None = None,
    example_input: Any = None,
) -> Diagnosis:
    """`link` with the structure from saved `facts` (`structure_facts`), else read from `model`,
    else rebuilt from the anatomy's per-layer facts.

    A failure to explain is written to ``diagnosis.notes`` instead of raised: the
    findings stand on their own.
    """
    try:
        if facts:
            structure = Structure.from_anatomy(anatomy, facts)
        elif model is not None:
            structure = analyse(model, example_input, anatomy)
        else:
            structure = Structure.from_anatomy(anatomy)
        return link(diagnosis, anatomy, structure, timeline)
    except Exception as e:  # explaining is a bonus; it must not take the findings down with it
        diagnosis.notes.append(f"causes not explained ({type(e).__name__}: {e})")
        return diagnosis


def judge(
    timeline: Timeline,
    anatomy: Anatomy,
    *,
    facts: dict[str, Any] | None = None,
    thresholds: Thresholds | None = None,
) -> Diagnosis:
    """Every detector over `timeline` with `thresholds` (`Thresholds()` if None), then the
    causes behind the findings (`explain`, with the structure from saved `facts`).

    Example::

        d = judge(run.timeline, run.anatomy, thresholds=gw.Thresholds(vanish_ratio=1e-4))
    """
    if thresholds is not None and not isinstance(thresholds, Thresholds):
        raise GradwatchTypeError(
            f"thresholds= expects a gradwatch.Thresholds (e.g. gw.Thresholds(vanish_ratio=1e-4)), "
            f"got {type(thresholds).__qualname__}"
        )
    return explain(diagnose(timeline, anatomy, thresholds), anatomy, timeline, facts=facts)
