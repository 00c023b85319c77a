"""What an experiment is, as data: `Setting`s with the literature's expected outcome, an
`Observation` per run, and the `Experiment` that ties them to a citation and a judge."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradwatch as gw

__all__ = ["CHANCE_ACC", "TRAINS_ACC", "Experiment", "Observation", "Setting", "problems"]

#: Accuracy on the 10 digit classes at or above which a net "trains", and at or below
#: which it "stays at chance" (chance is 10%).
TRAINS_ACC = 0.8
CHANCE_ACC = 0.2


@dataclass(frozen=True)
class Setting:
    """One configuration, the outcome the literature leads us to expect, and gradwatch's expected verdict.

    `verdict_has`: at least one of these kinds must be found (above `info`); `verdict_not`:
    none of these may be. For experiments judged before training, they name causes instead.
    """

    params: dict[str, Any]
    expected: str
    verdict_has: tuple[str, ...] = ()
    verdict_not: tuple[str, ...] = ()
    quick: bool = False  # part of the --quick set


@dataclass
class Observation:
    outcome: str
    observed: dict[str, Any]
    verdict: list[str]  # kinds (or causes) gradwatch reported
    series: dict[str, list[float]] = field(default_factory=dict)  # per-layer profiles, for figures


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    citation: str
    claim: str  # the literature's result, in one sentence
    judge: str  # how an observation is judged, in one sentence
    settings: tuple[Setting, ...]
    run: Callable[[dict[str, Any], int, bool], Observation]  # (params, seed, quick) -> Observation
    #: Parameters that shrink a run to a test's size (a few steps); merged into a setting's
    #: parameters by the tests, never by the lab itself.
    tiny: dict[str, Any] = field(default_factory=dict)

    def selected(self, quick: bool) -> list[Setting]:
        return [s for s in self.settings if s.quick or not quick]


def problems(d: gw.Diagnosis) -> list[str]:
    """The kinds gradwatch found above `info`, sorted."""
    return sorted({str(f.kind) for f in d.findings if f.severity > gw.Severity.INFO})


def steps(p: dict[str, Any], quick: bool, quick_steps: int, full_steps: int) -> int:
    """Training steps: a setting's own ``steps`` (the tests' tiny size) or the quick/full count."""
    return int(p.get("steps") or (quick_steps if quick else full_steps))
