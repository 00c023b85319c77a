"""Run a model on an example input, and when it fails say where and on what.

An example input is a tensor (``model(x)``), a tuple or list of positional arguments
(``model(*args)``) or a dict of keyword arguments (``model(**kwargs)``, as Hugging Face
models take them). When the model raises, `call_model` raises `ModelError` naming the
innermost module that was running and the shapes it received, chained to the original.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradwatch._errors import GradwatchTypeError, ModelError
from gradwatch.anatomy.map import ROOT

ExampleInput = torch.Tensor | tuple[Any, ...] | list[Any] | Mapping[str, Any]


def split_input(example_input: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments for ``model(...)`` from an example input."""
    if isinstance(example_input, torch.Tensor):
        return (example_input,), {}
    if isinstance(example_input, tuple | list):
        return tuple(example_input), {}
    if isinstance(example_input, Mapping):
        if not all(isinstance(k, str) for k in example_input):
            raise GradwatchTypeError("a dict example input must have str keys (the model's keyword arguments)")
        return (), dict(example_input)
    raise GradwatchTypeError(
        "example_input must be a tensor, a tuple of positional arguments or a dict of keyword "
        f"arguments, got {type(example_input).__module__}.{type(example_input).__qualname__}"
    )


def describe(value: Any) -> str:
    """A short description of an argument: a tensor's shape and dtype, else its type."""
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).replace('torch.', '')}"
    if isinstance(value, tuple | list) and len(value) <= 8:
        inner = ", ".join(describe(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    return type(value).__name__


def describe_call(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    parts = [describe(a) for a in args] + [f"{k}={describe(v)}" for k, v in kwargs.items()]
    return ", ".join(parts) if parts else "no arguments"


def call_model(model: nn.Module, example_input: Any) -> Any:
    """``model(example_input)`` (spread as args or kwargs); on failure a `ModelError` that says where.

    Hooks on every module keep a stack of the modules running; when the model raises,
    the top of that stack is the innermost module that failed.
    """
    args, kwargs = split_input(example_input)
    stack: list[tuple[str, nn.Module, str]] = []
    handles: list[RemovableHandle] = []

    def enter(name: str) -> Any:
        def hook(module: nn.Module, a: tuple[Any, ...], kw: dict[str, Any]) -> None:
            stack.append((name, module, describe_call(a, kw)))

        return hook

    def leave(module: nn.Module, a: Any, out: Any) -> None:
        if stack:
            stack.pop()

    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(enter(name or ROOT), with_kwargs=True))
            handles.append(module.register_forward_hook(leave))
        try:
            return model(*args, **kwargs)
        except Exception as e:
            if stack:
                name, module, shapes = stack[-1]
                where = f"in module '{name}' ({type(module).__name__}), which received {shapes}"
            else:
                where = "before any of its modules ran"
            raise ModelError(
                f"the model ({type(model).__name__}) failed on the example input "
                f"({describe_call(args, kwargs)}) {where}: {type(e).__name__}: {e}. "
                "Check that the example input has the shapes and dtypes the model expects."
            ) from e
    finally:
        for h in handles:
            h.remove()
