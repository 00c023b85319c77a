"""What a module is, as the map and surgery see it: a layer, a pass-through, frozen, tied."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from gradwatch.anatomy.map import is_hf_conv1d

__all__ = [
    "LAYER_TYPES",
    "PASS_THROUGH",
    "has_frozen_parameter",
    "is_dense",
    "is_layer",
    "leaves",
    "owns_parameters",
    "shared_parameters",
]

#: Modules that sit between a layer and its activation without changing what follows.
PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.modules.dropout._DropoutNd,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
)

#: Parametric layers that transforms reason about (what "a layer" means to surgery).
LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd, nn.RNNBase, nn.RNNCellBase)


def is_layer(m: nn.Module) -> bool:
    return isinstance(m, LAYER_TYPES)


def owns_parameters(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False))


def is_dense(m: nn.Module | None) -> bool:
    """A Linear, a convolution, or Hugging Face's `Conv1D` (GPT-2's linear layers, which
    store their weight as (in, out)): the layers `init` re-draws."""
    return isinstance(m, nn.Linear | nn.modules.conv._ConvNd) or (m is not None and is_hf_conv1d(m))


def has_frozen_parameter(m: nn.Module) -> bool:
    """True when a parameter of `m` itself has ``requires_grad=False``.

    Its owner keeps that parameter fixed on purpose (a pretrained part, BitFit's frozen
    weights), and what surrounds it — its other parameters, the activation it feeds —
    was trained or chosen together with it.
    """
    return any(not p.requires_grad for p in m.parameters(recurse=False))


def shared_parameters(model: nn.Module) -> set[int]:
    """Ids of the parameters held by more than one module: tied weights."""
    holders: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            holders[id(p)] = holders.get(id(p), 0) + 1
    return {pid for pid, n in holders.items() if n > 1}


def leaves(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules without children (the atoms of the execution order), with their names."""
    for name, m in model.named_modules():
        if next(iter(m.children()), None) is None:
            yield name, m
