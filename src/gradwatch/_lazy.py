"""Models with lazy modules (`nn.LazyLinear`, `nn.LazyConv2d`, ...) before their first forward pass.

A lazy module creates its parameters when it first sees an input; until then they are
`UninitializedParameter`s, whose shape, scale and size cannot be read. What gradwatch
reads from weights (their scale, their count) therefore needs either a forward pass on
an example input or a model that has already run once.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from gradwatch._errors import GradwatchValueError
from gradwatch.anatomy._call import call_model
from gradwatch.anatomy._guard import Preserved


def lazy_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules (name, module) that have not created their parameters yet."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if any(nn.parameter.is_lazy(p) for p in m.parameters(recurse=False))
    ]


def needs_input_error(model: nn.Module, call: str) -> GradwatchValueError:
    """The error for `call` on a lazy model without an example input, saying what to do."""
    lazy = lazy_modules(model)
    names = ", ".join(f"'{n or '(root)'}' ({type(m).__name__})" for n, m in lazy[:3]) + (", ..." if len(lazy) > 3 else "")
    which = "a lazy module has" if len(lazy) == 1 else f"{len(lazy)} lazy modules have"
    return GradwatchValueError(
        f"{call}: {which} no parameters yet ({names}): lazy modules create them on their first forward "
        "pass, and their scale is what is read here. Pass example_input=<a batch the model accepts> so "
        "gradwatch can run that pass, or call the model on one batch first"
    )


def materialised(model: nn.Module, example_input: Any) -> nn.Module:
    """A deep copy of `model` whose lazy modules have created their parameters.

    One forward pass on the copy, without gradient and in eval mode; the RNG state is
    restored afterwards, so the draws of the caller's own code are not shifted.
    """
    twin = copy.deepcopy(model)
    with Preserved(twin), torch.no_grad():
        twin.eval()
        call_model(twin, example_input)
    return twin
