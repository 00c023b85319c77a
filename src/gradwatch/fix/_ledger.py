"""`repair`'s bookkeeping: every run in a `Ledger`, the steps in a `Budget`, both in a `Session`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradwatch._errors import GradwatchTypeError
from gradwatch.types import Change, FixResult

__all__ = ["Budget", "Entry", "Ledger", "Session", "TrainFn", "Trial", "fmt_score", "score_of"]

TrainFn = Callable[[nn.Module, dict[str, Any], int], float]


@dataclass
class Trial:
    """One short training run: what was trained, with what advice, and how it scored."""

    name: str
    changes: list[Change]
    advice: dict[str, Any]
    steps: int
    score: float
    seconds: float
    error: str = ""
    kept: bool = False
    lr_factor: float = 1.0  # the candidate's advised learning rate times this (the lr axis)

    @property
    def lr_scale(self) -> float:
        """The learning-rate multiplier this run trained with (1.0: the recipe's own rate)."""
        return float(self.advice.get("lr_scale", 1.0))


@dataclass
class Budget:
    """The steps `repair` may train in all (`limit`, floor(B N)), and those it has `spent`.

    `full` is one full run (N), `trial` the length of a first-round run (s); with `finish`,
    the model kept is trained on to N, and that is reserved before any other run is afforded.
    """

    full: int
    limit: int
    trial: int
    finish: bool
    spent: int = 0

    @property
    def spare(self) -> int:
        """Steps that may go to runs whose model is not the one kept: (B - 1) N."""
        return self.limit - self.full

    def affordable(self, extra: int, keep_trained: int) -> bool:
        """Can `extra` more steps be trained and the kept model (trained `keep_trained` steps
        by then) still be finished to N?"""
        finish_cost = self.full - keep_trained if self.finish else 0
        return self.spent + extra + finish_cost <= self.limit

    def extension(self, ahead: int = 0, fallback: bool = False) -> int:
        """How far the leader can train on in round 2 (the original is brought to the same length).

        The leader goes on by e; the original, already `ahead` steps past s, by max(0, e - ahead);
        the one kept is then finished to N (costing N - s - e), so
        spent + e + max(0, e - ahead) + (N - s - e) <= limit, and s + e <= N.
        With `fallback`, a run of s steps may be kept instead of the leader (finishing it
        costs N - s), so the leader's e steps count as well.
        """
        s = self.trial
        room = self.limit - self.spent - (self.full - s if self.finish else 0)
        if room < 0:
            return 0
        # e + max(0, e - ahead) - (e if finish and not fallback else 0) <= room
        if self.finish and not fallback:
            e = room + ahead
        else:
            e = (room + ahead) // 2 if room > ahead else room
        return max(0, min(self.full - s, e))


@dataclass
class Entry:
    """One run in the ledger: its trial, the model it trained, and what that model is."""

    trial: Trial
    model: nn.Module  # a continued run shares its model with the run it continues
    trained: int  # steps that model has trained in all, this run included
    fix: FixResult | None = None  # the candidate fix it trained; None for the original
    advised: int | None = None  # a run of the learning-rate axis: its candidate's run at the advised rate


@dataclass
class Ledger:
    """Every run `repair` made, in order."""

    entries: list[Entry] = field(default_factory=list)

    def __getitem__(self, i: int) -> Entry:
        return self.entries[i]

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def trials(self) -> list[Trial]:
        return [e.trial for e in self.entries]

    def score(self, i: int) -> float:
        return self.entries[i].trial.score

    def latest_original(self, original: nn.Module) -> int:
        """The run of the original (not its repeat, which trains a copy) whose model has trained longest."""
        return max((i for i, e in enumerate(self.entries) if e.model is original), key=lambda i: self.entries[i].trained)


@dataclass
class Session:
    """What every round works with: the user's training, the ledger and the budget."""

    train_fn: TrainFn
    seed: int
    budget: Budget
    min_gain: float
    report: Callable[[Trial], None] | None = None
    ledger: Ledger = field(default_factory=Ledger)
    notes: list[str] = field(default_factory=list)

    def run(
        self, name: str, model: nn.Module, advice: dict[str, Any], seed: int, n: int, *,
        fix: FixResult | None = None, before: int = 0, lr_factor: float = 1.0, advised: int | None = None,
    ) -> int:
        """Train `model` for `n` steps from `seed`, record the run and spend its steps; its index."""
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        error = ""
        try:
            score = score_of(self.train_fn(model, dict(advice), n))
        except GradwatchTypeError:
            raise
        except Exception as e:  # a candidate that crashes is a failed candidate
            score, error = -math.inf, f"{type(e).__name__}: {e}"
        changes = list(fix.changes) if fix is not None else []
        trial = Trial(name, changes, advice, n, score, time.perf_counter() - t0, error, lr_factor=lr_factor)
        self.ledger.entries.append(Entry(trial, model, before + n, fix, advised))
        self.budget.spent += n
        if self.report is not None:
            self.report(trial)
        return len(self.ledger) - 1

    def carry_on(self, i: int, e: int) -> int:
        """Train run `i`'s candidate on by `e` steps, as a run of its own; returns its index."""
        entry = self.ledger[i]
        return self.run(
            f"{entry.trial.name}, continued", entry.model, dict(entry.trial.advice), self.seed + 3, e,
            fix=entry.fix, before=self.budget.trial, lr_factor=entry.trial.lr_factor,
        )


def score_of(x: Any) -> float:
    """A train_fn's return value as a score (non-finite: -inf, a failure)."""
    try:
        v = float(x)
    except (TypeError, ValueError) as e:
        raise GradwatchTypeError(
            f"train_fn must return a number (higher is better), got {type(x).__qualname__}"
        ) from e
    return v if math.isfinite(v) else -math.inf


def fmt_score(x: float) -> str:
    """A score as printed: four digits, or "failed" when non-finite."""
    return "failed" if not math.isfinite(x) else f"{x:.4g}"
