"""The `Recorder` every adapter drives, built the same way for each framework."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch import nn

import gradwatch as gw


def new_recorder(
    model: nn.Module,
    optimizer: Any,
    *,
    every: int | Callable[[int], bool],
    log: str | os.PathLike[str] | None,
    updates: bool,
    activations: bool,
    capacity: int,
) -> gw.Recorder:
    """A Recorder for `model` stepped by `optimizer` (None when the framework has none yet)."""
    return gw.Recorder(
        model,
        every=every,
        log=log,
        updates=updates,
        activations=activations,
        capacity=capacity,
        optimizer_name=type(optimizer).__name__ if optimizer is not None else None,
        no_gradient_message=(
            "GradwatchCallback found no gradient on any trainable parameter of the "
            f"{type(model).__name__} at the optimizer step"
        ),
    )
