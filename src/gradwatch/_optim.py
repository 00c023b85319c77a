"""Reading an optimizer step from its hooks."""

from __future__ import annotations

from typing import Any


def has_closure(args: Any, kwargs: Any) -> bool:
    """Whether a step was given a closure (``opt.step(closure)``: L-BFGS, Lightning's
    automatic optimisation), which computes the step's gradients *inside* the step — after
    a pre-step hook runs. The hooks see ``args`` as ``(optimizer, closure)``."""
    return callable((kwargs or {}).get("closure")) or any(callable(a) for a in args or ())
