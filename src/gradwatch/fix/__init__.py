"""Fixing: model surgery, training advice, and repairs proven by training.

- `fix(model, diagnosis)` chooses the smallest set of transforms for a diagnosis and
  returns a `FixResult` (a new model, one `Change` per edit, and advice).
- `repair(model, train_fn, steps=...)` tries candidate fixes in short A/B training runs
  and keeps one only when it measurably beats the original.
- One transform per module — `activations`, `init`, `norm`, `residual`, `recurrent` —
  each ``transform(model, ..., inplace=False) -> (new_model, changes)``.

See docs/fix.md.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from gradwatch._compiled import unwrap
from gradwatch._errors import GradwatchTypeError
from gradwatch._lazy import lazy_modules, needs_input_error
from gradwatch.fix import activations, init, norm, recurrent, residual
from gradwatch.fix.apply import apply
from gradwatch.fix.choose import choose
from gradwatch.fix.remedies import Plan, Remedy
from gradwatch.fix.repair import RepairResult, Trial, repair
from gradwatch.fix.residual import Residual
from gradwatch.record import Timeline
from gradwatch.types import Diagnosis, FixResult

__all__ = [
    "FixResult",
    "Plan",
    "Remedy",
    "RepairResult",
    "Residual",
    "Trial",
    "activations",
    "fix",
    "init",
    "norm",
    "recurrent",
    "repair",
    "residual",
]


def fix(
    model: nn.Module,
    diagnosis: Diagnosis,
    *,
    inplace: bool = False,
    example_input: Any = None,
    timeline: Timeline | None = None,
) -> FixResult:
    """Repair what a diagnosis found, by the smallest set of transforms that addresses it.

    Args:
        model: the model the diagnosis is about.
        diagnosis: from `Watcher.diagnose()`, `Run.diagnose()` or `gw.inspect()`.
        inplace: edit `model` itself; by default it is deep-copied and left untouched.
        example_input: optional input for one forward pass (a tensor, a tuple of
            positional arguments or a dict of keyword arguments). With it, the order of
            layers and activations inside custom modules, functional activations and
            their lines, and the shapes that choose the normalisation are read exactly;
            without it they come from registration order and the source code.
        timeline: the run's Timeline (``watcher.timeline`` or ``run.timeline``), from
            which the clipping threshold and learning-rate scale are computed; without it
            they come from the diagnosis's per-layer reports.
            A model with lazy modules that have not run yet needs an example input:
            the fix is made on a copy that one forward pass gives its parameters, and
            the model itself stays as it was (unless `inplace`).

    Returns:
        A `FixResult`: ``model`` (new unless `inplace`), ``changes`` (one per edit, each
        with its reason), ``advice`` (``lr_scale``, ``clip_grad_norm``, ``manual`` —
        instructions for code surgery cannot reach — and ``why``). A healthy diagnosis
        gives an unchanged copy, no changes and no advice.

    Example::

        result = gw.fix(model, watcher.diagnose(), timeline=watcher.timeline)
        print(result)               # one line per change, then the advice
        model = result.model
    """
    model = unwrap(model)  # type: ignore[assignment]  # a torch.compile wrapper: fix its module
    if not isinstance(model, nn.Module):
        raise GradwatchTypeError(
            f"fix() expects the torch.nn.Module the diagnosis is about, got {type(model).__qualname__}"
        )
    if not isinstance(diagnosis, Diagnosis):
        raise GradwatchTypeError(
            f"fix() expects a gradwatch.Diagnosis (from watcher.diagnose(), run.diagnose() or "
            f"gw.inspect()), got {type(diagnosis).__qualname__}"
        )
    if timeline is not None and not isinstance(timeline, Timeline):
        raise GradwatchTypeError(
            f"timeline must be a gradwatch.Timeline (watcher.timeline or run.timeline), got {type(timeline).__qualname__}"
        )
    if lazy_modules(model):
        if example_input is None:
            raise needs_input_error(model, "fix()")
        if not inplace:
            model, inplace = copy.deepcopy(model), True  # the forward pass below creates its parameters
    plan = choose(model, diagnosis, example_input=example_input, timeline=timeline)
    return apply(model, plan, diagnosis, example_input=example_input, timeline=timeline, inplace=inplace)
