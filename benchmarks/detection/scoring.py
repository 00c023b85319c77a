"""Score detectors on recorded runs: recall per kind, false positives, detection latency.

Latency is measured, not read off a finding's `step`: each run's log is replayed record
by record into a fresh Timeline, and the detectors are asked after every record; a
kind's latency is the training step of the first record after which it is reported
(at `warning` or above). That is when a person calling `w.diagnose()` live would first
have seen it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from baselines import BASELINES
from suite import Outcome, Spec

import gradwatch as gw
from gradwatch.anatomy import Anatomy
from gradwatch.detect import diagnose
from gradwatch.record import Timeline, read_log

K = gw.Kind
Tool = Callable[[Timeline, Anatomy], set[gw.Kind]]


def gradwatch_tool(timeline: Timeline, anatomy: Anatomy) -> set[gw.Kind]:
    """The kinds gradwatch reports at `warning` or above."""
    return {f.kind for f in diagnose(timeline, anatomy).findings if f.severity >= gw.Severity.WARNING}


TOOLS: dict[str, Tool] = {"gradwatch": gradwatch_tool, **BASELINES}


@dataclass
class RunResult:
    spec: Spec
    outcome: Outcome
    measured: set[str]  # which Part 2 measurements the log carries
    found: dict[str, set[gw.Kind]] = field(default_factory=dict)  # tool -> kinds at the end
    latency: dict[str, dict[gw.Kind, int]] = field(default_factory=dict)  # tool -> kind -> step
    ever: dict[str, set[gw.Kind]] = field(default_factory=dict)  # tool -> kinds reported at any point
    diagnosis: gw.Diagnosis | None = None

    @property
    def scored_labels(self) -> set[gw.Kind]:
        """Labels whose evidence the log carries (Part 2 kinds need Part 2 metrics)."""
        return set(self.spec.labels) if self.spec.needs <= self.measured else set(self.spec.labels) - _PART2

    @property
    def outcome_agrees(self) -> bool:
        return self.outcome.trained == self.spec.healthy


_PART2 = {K.TEMPORAL_VANISHING, K.DEAD_UNITS, K.SATURATED_UNITS, K.CONSTANT_OUTPUT}


def _measured(timeline: Timeline) -> set[str]:
    have = set()
    if any(m.startswith("act_") for m in timeline.records.metrics):
        have.add("activations")
    if any(n.startswith("grad_t/") for n in timeline.profiles.names()):
        have.add("grad_t")
    return have


def replay(run: gw.Run) -> tuple[dict[str, dict[K, int]], dict[str, set[K]]]:
    """Ask every tool after every record; return first-report steps and kinds ever reported."""
    _, records = read_log(run.path)
    settings = run.header.get("settings", {})
    tl = Timeline(
        layers=list(run.header.get("columns", [])),
        capacity=int(settings.get("capacity", 1024)),
        loss_capacity=int(settings.get("loss_capacity", 8192)),
    )
    first: dict[str, dict[K, int]] = {name: {} for name in TOOLS}
    ever: dict[str, set[K]] = {name: set() for name in TOOLS}
    for record in records:
        tl.ingest(record)
        step = tl.last_step
        if step is None:
            continue
        for name, tool in TOOLS.items():
            kinds = tool(tl, run.anatomy)
            ever[name] |= kinds
            for k in kinds:
                first[name].setdefault(k, step)
    return first, ever


def score_suite(recorded: list[tuple[Spec, gw.Run, Outcome]]) -> list[RunResult]:
    results = []
    for spec, run, outcome in recorded:
        r = RunResult(spec, outcome, _measured(run.timeline))
        r.diagnosis = run.diagnose()
        for name, tool in TOOLS.items():
            r.found[name] = tool(run.timeline, run.anatomy)
        r.latency, r.ever = replay(run)
        results.append(r)
    return results


@dataclass
class Summary:
    recall: dict[K, tuple[int, int]]  # kind -> (found, labelled)
    latency: dict[K, list[int]]
    fp: tuple[int, int]  # healthy runs with a report, healthy runs
    fp_ever: tuple[int, int]  # healthy runs with a report at any point of the run
    extra: int  # faulty runs with a kind neither labelled nor allowed


def summarise(results: list[RunResult], tool: str) -> Summary:
    recall: dict[K, tuple[int, int]] = {}
    latency: dict[K, list[int]] = {}
    healthy = [r for r in results if r.spec.healthy]
    extra = 0
    for r in results:
        if r.spec.healthy:
            continue
        for k in r.scored_labels:
            hit, n = recall.get(k, (0, 0))
            found = k in r.found[tool]
            recall[k] = (hit + found, n + 1)
            if found and k in r.latency[tool]:
                latency.setdefault(k, []).append(r.latency[tool][k])
        if r.found[tool] - set(r.spec.labels) - set(r.spec.allowed):
            extra += 1
    fp = sum(bool(r.found[tool]) for r in healthy)
    fp_ever = sum(bool(r.ever[tool]) for r in healthy)
    return Summary(recall, latency, (fp, len(healthy)), (fp_ever, len(healthy)), extra)


def _kinds(kinds: set[K] | frozenset[K]) -> str:
    return ",".join(sorted(str(k) for k in kinds)) or "-"


def print_report(results: list[RunResult], verbose: bool = True) -> None:
    if verbose:
        print("runs (label from design and outcome; findings at warning or above)\n")
        for r in results:
            o = r.outcome
            agree = "" if r.outcome_agrees else "  !! outcome disagrees with label"
            print(f"{r.spec.name:30s} {'healthy' if r.spec.healthy else 'faulty ':7s} "
                  f"{o.metric} {o.value:.3f} (chance {o.chance:.3f}) {o.seconds:4.1f}s{agree}")
            print(f"    {r.spec.story}")
            if not r.spec.healthy:
                missing = set(r.spec.labels) - r.scored_labels
                note = f"  (not scored, needs Part 2 metrics: {_kinds(missing)})" if missing else ""
                print(f"    labels: {_kinds(r.spec.labels)}{note}")
            if r.spec.healthy and r.ever["gradwatch"]:
                print(f"    (gradwatch reported {_kinds(r.ever['gradwatch'])} part-way, cleared by the end)")
            for tool in TOOLS:
                lat = ", ".join(f"{k}@{r.latency[tool][k]}" for k in sorted(r.found[tool], key=str) if k in r.latency[tool])
                print(f"    {tool:13s} {_kinds(r.found[tool])}" + (f"   first reported: {lat}" if lat else ""))
            if r.diagnosis is not None:
                for f in r.diagnosis.findings:
                    print(f"      {f}")
        print()
    kinds = [k for k in K if any(k in r.scored_labels for r in results if not r.spec.healthy)]
    sums = {tool: summarise(results, tool) for tool in TOOLS}
    header = f"{'kind':22s} {'runs':>4s}  " + "  ".join(f"{t + ' recall':>20s}" for t in TOOLS) + "   gradwatch latency (median / max steps)"
    print(header)
    for k in kinds:
        n = sums["gradwatch"].recall[k][1]
        cells = []
        for t in TOOLS:
            hit, m = sums[t].recall.get(k, (0, n))
            cells.append(f"{hit}/{m} = {hit / m:.2f}".rjust(20))
        lat = sums["gradwatch"].latency.get(k, [])
        lat_s = f"{statistics.median(lat):.0f} / {max(lat)}" if lat else "-"
        print(f"{k!s:22s} {n:4d}  " + "  ".join(cells) + f"   {lat_s}")
    print()
    for t in TOOLS:
        s = sums[t]
        hits = sum(h for h, _ in s.recall.values())
        total = sum(n for _, n in s.recall.values())
        lat = [x for v in s.latency.values() for x in v]
        print(f"{t:13s} recall {hits}/{total} = {hits / max(total, 1):.2f}   "
              f"FPR on healthy runs {s.fp[0]}/{s.fp[1]} = {s.fp[0] / max(s.fp[1], 1):.2f}   "
              f"(reported at any point during the run: {s.fp_ever[0]}/{s.fp_ever[1]})   "
              f"faulty runs with an unexpected kind: {s.extra}   "
              f"latency median {statistics.median(lat) if lat else float('nan'):.0f}, max {max(lat) if lat else float('nan')}")
    bad = [r.spec.name for r in results if not r.outcome_agrees]
    if bad:
        print(f"\noutcome disagrees with label for: {', '.join(bad)}")
