"""Insert a normalisation layer between a Linear/convolution and the activation after it.

Why: normalising the pre-activation keeps it near zero mean and unit variance whatever
the weights do, so a sigmoid or tanh stays in its steep middle and the gradient's size
no longer depends on the product of every layer's weight scale (Ioffe & Szegedy 2015:
with BatchNorm, deep sigmoid nets train; without, they do not).

Which normalisation:

- ``BatchNorm1d/2d/3d`` by the layer's output (Linear and Conv1d: 1d; Conv2d: 2d; ...);
- ``LayerNorm`` (for a Linear) or ``GroupNorm(1, C)`` (for a convolution: a LayerNorm
  over channels and positions) where batch statistics do not suit: when the example
  input shows a batch of one, or a Linear applied to a sequence (an output with more
  than two dimensions, where BatchNorm1d would normalise over the wrong axis), or a
  layer the forward pass runs more than once (a block reused across depth: one
  BatchNorm's running statistics would mix the distributions of every depth), and
  for a Linear when there is no example input: its input shape is then unknown, and
  LayerNorm fits every ``(..., features)`` shape where BatchNorm1d fits only one.

Where: the activation's slot becomes ``nn.Sequential(norm, activation)``, so parametric
layers keep their names. Only pairs known to run back to back are changed: neighbours
in an `nn.Sequential`, or — with an example input — a layer and an activation module
that the forward pass ran one right after the other, each used once, the activation
taking the very tensor the layer returned. Code in between (``h.view(...)``,
``torch.cat([h, z])``) changes the shape or the features the activation sees, and a norm
sized for the layer's output would not fit them. A convolution that ran on an unbatched
input gets no norm: batch, group and layer norm layers all want ``(N, C, ...)``. A layer whose
activation is functional (``torch.relu(self.fc(x))``) cannot be reached; the output
activation (after the last parametric layer) is left alone, and so is an activation next
to a frozen layer (`Order.beside_frozen`): a norm before it would change what the frozen
part computes, and its weights cannot adapt.
"""

from __future__ import annotations

import itertools
from typing import Any

from torch import nn

from gradwatch._errors import GradwatchValueError
from gradwatch.anatomy.activations import is_activation
from gradwatch.anatomy.order import order_of
from gradwatch.fix._surgery import copy_model, like, sequentials, uses
from gradwatch.types import Change

REASON = (
    "normalising the pre-activation keeps each activation in its steep range whatever the "
    "weights do, so the gradient's size stops depending on every layer's scale"
)

KINDS = ("auto", "batch", "layer")


def _norm_for(layer: nn.Module, kind: str, out_shape: tuple[int, ...] | None) -> nn.Module | None:
    if isinstance(layer, nn.Linear):
        n = layer.out_features
        # BatchNorm1d only fits a (batch, features) output; with the shape unknown (no
        # example input), LayerNorm is the choice that fits every (..., features) shape.
        batch_of_rows = out_shape is not None and len(out_shape) == 2 and out_shape[0] > 1
        if kind == "layer" or (kind == "auto" and not batch_of_rows):
            return nn.LayerNorm(n)
        return nn.BatchNorm1d(n)
    if isinstance(layer, nn.modules.conv._ConvNd):
        c = layer.out_channels
        dims = len(layer.kernel_size)
        if out_shape is not None and len(out_shape) != dims + 2:
            return None  # an unbatched (C, *spatial) output: every norm layer wants (N, C, *spatial)
        single = out_shape is not None and len(out_shape) >= 1 and out_shape[0] == 1
        if kind == "layer" or (kind == "auto" and single):
            return nn.GroupNorm(1, c)
        return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims](c)
    return None


def transform(
    model: nn.Module,
    *,
    kind: str = "auto",
    example_input: Any = None,
    reason: str = REASON,
    inplace: bool = False,
) -> tuple[nn.Module, list[Change]]:
    """Insert BatchNorm (or LayerNorm/GroupNorm, see the module docstring) before each hidden activation.

    Args:
        model: any module.
        kind: ``"auto"``, ``"batch"`` or ``"layer"``.
        example_input: if given, one forward pass finds layer/activation pairs in custom
            modules too, and the output shapes that decide between batch and layer norm.
        inplace: change `model` itself instead of a deep copy.

    Returns:
        ``(new_model, changes)``: one change per inserted normalisation.
    """
    kind = str(kind).strip().lower()
    if kind not in KINDS:
        raise GradwatchValueError(f"kind={kind!r} is not a normalisation choice; choose one of: {', '.join(KINDS)}")
    new = copy_model(model, inplace)
    order = order_of(new, example_input)
    output_ids = order.output_modules()
    frozen = order.beside_frozen() | order.gates()  # a gate's input is left as it is
    names = {id(m): n for n, m in new.named_modules()}
    counts = uses(new)
    pairs: list[tuple[nn.Module, nn.Module]] = []  # (layer, activation)
    for _, seq in sequentials(new):
        items = list(seq)
        for a, b in itertools.pairwise(items):
            pairs.append((a, b))
    if order.traced:
        for i, (a_op, b_op) in enumerate(itertools.pairwise(order.ops)):
            if a_op.module is None or b_op.module is None:
                continue
            if order.calls.get(a_op.name, 0) != 1 or order.calls.get(b_op.name, 0) != 1:
                continue  # a module run twice may see different inputs each time
            if b_op.input_from != i:
                continue  # a view, a concatenation or other code sits between them
            pairs.append((a_op.module, b_op.module))
    holders = {id(child): (parent, key) for parent in new.modules() for key, child in parent._modules.items() if child is not None}
    changes: list[Change] = []
    done: set[int] = set()
    for layer, act in pairs:
        if id(act) in done or not is_activation(act) or id(act) in output_ids or id(act) in frozen:
            continue
        if counts.get(id(act), 0) != 1 or counts.get(id(layer), 0) != 1:
            continue
        # A layer run more than once per forward (a block reused across depth) would share
        # one BatchNorm's running statistics among the distributions of every depth it
        # runs at; a per-sample norm keeps none.
        repeated = order.calls.get(names.get(id(layer), ""), 1) > 1
        norm = _norm_for(layer, "layer" if repeated and kind == "auto" else kind, order.shapes.get(names.get(id(layer), "")))
        if norm is None:
            continue
        like(norm, layer)
        parent, key = holders[id(act)]
        setattr(parent, key, nn.Sequential(norm, act))
        done.add(id(act))
        lname, aname = names.get(id(layer), "?"), names.get(id(act), "?")
        changes.append(
            Change(
                kind="norm",
                target=aname,
                description=f"{aname}: inserted {type(norm).__name__}({_size(norm)}) between {lname} and its {type(act).__name__}",
                reason=reason,
            )
        )
    return new, changes


def _size(norm: nn.Module) -> str:
    if isinstance(norm, nn.LayerNorm):
        return str(norm.normalized_shape[0])
    if isinstance(norm, nn.GroupNorm):
        return f"1, {norm.num_channels}"
    return str(getattr(norm, "num_features", ""))
