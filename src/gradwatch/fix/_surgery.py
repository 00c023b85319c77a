"""Surgery's tools: copy a model, find a module by name, put a new one in its place.

What the model *is* (its execution order, which module is a layer, frozen or tied) is read
from `gradwatch.anatomy`; this module only edits.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from gradwatch._compiled import unwrap
from gradwatch._errors import GradwatchTypeError, GradwatchValueError

__all__ = ["child_name", "copy_model", "get_module", "like", "sequentials", "set_module", "uses"]


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model if name == "" else model.get_submodule(name)


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the module `name` is (an attribute, or an entry of a container)."""
    if name == "":
        raise GradwatchTypeError("cannot replace the root module in place; wrap it instead")
    parent_name, _, attr = name.rpartition(".")
    parent = get_module(model, parent_name)
    setattr(parent, attr, new)


def like(new: nn.Module, ref: nn.Module | torch.Tensor | None) -> nn.Module:
    """Move `new` to the device and floating dtype of `ref` and copy its train/eval mode."""
    t: torch.Tensor | None
    if isinstance(ref, nn.Module):
        t = next(iter(ref.parameters()), None)
        if t is None:
            t = next(iter(ref.buffers()), None)
        new.train(ref.training)
    else:
        t = ref
    if t is not None:
        if t.is_floating_point():
            new.to(device=t.device, dtype=t.dtype)
        else:
            new.to(device=t.device)
    return new


def uses(model: nn.Module) -> dict[int, int]:
    """How many places (attributes or container entries) hold each module, by id."""
    counts: dict[int, int] = {}
    for m in model.modules():
        for child in m.children():
            counts[id(child)] = counts.get(id(child), 0) + 1
    return counts


def sequentials(model: nn.Module) -> list[tuple[str, nn.Sequential]]:
    """Every nn.Sequential in the model (the root included), outermost first."""
    return [(n, m) for n, m in model.named_modules() if type(m) is nn.Sequential]


def child_name(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def copy_model(model: nn.Module, inplace: bool) -> nn.Module:
    """The module a transform edits: `model` itself with `inplace`, else a deep copy.

    A `torch.compile` wrapper is unwrapped first (`gradwatch._compiled.unwrap`): the
    transforms trace and edit the eager module — tracing through the wrapper would
    recompile it at every call and use up dynamo's recompile limit for the user's own
    model — and return an eager module (compile it again to train it compiled).
    """
    if not isinstance(model, nn.Module):
        raise GradwatchTypeError(
            f"expected a torch.nn.Module, got {type(model).__module__}.{type(model).__qualname__}"
        )
    unwrapped = unwrap(model)
    assert isinstance(unwrapped, nn.Module)
    model = unwrapped
    if inplace:
        return model
    try:
        return copy.deepcopy(model)
    except RuntimeError as e:
        if "deepcopy protocol" not in str(e):
            raise
        raise GradwatchValueError(
            f"{type(model).__name__} cannot be copied: it holds a tensor computed from others as an "
            "attribute (torch.nn.utils.weight_norm keeps `weight` that way, or it was kept from a forward "
            "pass). Use torch.nn.utils.parametrizations.weight_norm instead, or run on a copy made after "
            "removing it (torch.nn.utils.remove_weight_norm)"
        ) from e
