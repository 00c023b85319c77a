"""Swap hidden saturating activations (sigmoid, tanh, hardtanh, softsign, hardsigmoid) for a ReLU-like one.

Why: the derivative of sigmoid is at most 0.25 and that of tanh at most 1, and both fall
to zero once the input is large, so every saturating layer the gradient passes back
through shrinks it. ReLU-family activations pass a derivative of 1 wherever the unit is
on. The swap keeps the *output* activation (the activations after the last parametric
layer, such as a final sigmoid for binary targets, and — with an example input — any
whose output the model returns, even before another head): it shapes what the model
predicts, not how gradients travel through its depth. It also keeps every activation next to a
frozen layer (the nearest parametric module before or after it has a parameter with
``requires_grad=False``, as in a frozen pretrained encoder): the frozen weights were
trained with that activation — those before it to produce pre-activations it shapes,
those after it to read its outputs — and cannot adapt to another one. With an example
input it keeps *gates* too (`Op.gate`): a sigmoid whose output multiplies another tensor
(a squeeze-and-excitation block's ``x * sigmoid(...)``, SiLU written as ``x *
sigmoid(x)``, a hand-written LSTM's gates), or a saturating output shifted into a gate's
range first (``1 - z``, ``1 + tanh(u)``): a ReLU there would turn a gate that opens and
closes into an unbounded amplifier.

Only activation *modules* are swapped — with an example input, only those the forward
pass ran (a module registered but never called changes nothing, and swapping it would
report a fix that is not one); functional calls (``torch.sigmoid(x)`` inside a
custom ``forward``) are reported by `gradwatch.fix.manual` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from torch import nn

from gradwatch._errors import GradwatchValueError
from gradwatch.anatomy.activations import is_saturating, module_spec, parse_spec
from gradwatch.anatomy.order import order_of
from gradwatch.fix._surgery import copy_model, like
from gradwatch.types import Change

#: Activations whose units die: zero output and zero slope on a half-line (`dying=True`).
DYING = frozenset({"relu", "relu6"})

DYING_REASON = (
    "a ReLU unit that is off for every input passes no gradient and never comes back; in a narrow net a whole "
    "layer can be off at once, and a leaky slope keeps a gradient flowing through units that are off"
)


def dies(m: nn.Module) -> bool:
    """Whether `m` is an activation whose units can die outright (ReLU, ReLU6 — not a leaky one)."""
    spec = module_spec(m)
    return spec is not None and parse_spec(spec)[0] in DYING

#: The replacements on offer.
REPLACEMENTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "gelu": nn.GELU,
}

REASON = (
    "a saturating activation passes back at most 0.25 (sigmoid) or 1 (tanh) of the gradient and "
    "nearly none once saturated, so a deep stack of them starves the early layers"
)


def replacement(to: str) -> Callable[[], nn.Module]:
    key = str(to).strip().lower()
    if key not in REPLACEMENTS:
        raise GradwatchValueError(
            f"to={to!r} is not an activation this transform swaps in; choose one of: "
            + ", ".join(REPLACEMENTS)
        )
    return REPLACEMENTS[key]


def transform(
    model: nn.Module,
    *,
    to: str = "relu",
    example_input: Any = None,
    keep: Collection[str] = (),
    reason: str = REASON,
    dying: bool = False,
    inplace: bool = False,
) -> tuple[nn.Module, list[Change]]:
    """Replace every hidden saturating activation module with `to` (relu, leaky_relu or gelu).

    Args:
        model: any module; `nn.Sequential` entries and named attributes are both replaced.
        to: the replacement activation.
        example_input: if given, one forward pass decides which activations come after
            the last parametric layer (kept as output activations) and which are next to
            a frozen layer (kept too), and only activations that ran are swapped;
            otherwise the order in which modules were registered decides.
        keep: module names to leave alone (a gate the forward pass cannot show, say).
        dying: swap hidden ReLU/ReLU6 modules too (for `to="leaky_relu"`: units that die).
        inplace: change `model` itself instead of a deep copy.

    Returns:
        ``(new_model, changes)``, one change per swapped activation (none when the model
        has no hidden saturating activation module).
    """
    make = replacement(to)
    new = copy_model(model, inplace)
    order = order_of(new, example_input)
    output_ids = order.output_modules()
    frozen = order.beside_frozen() | order.gates()
    ran = {id(op.module) for op in order.ops if op.module is not None}
    names = {id(m): n for n, m in new.named_modules()}
    changes: list[Change] = []
    for parent_name, parent in list(new.named_modules()):
        for key, child in list(parent._modules.items()):
            if child is None or id(child) in output_ids or id(child) in frozen:
                continue
            if not (is_saturating(child) or (dying and to != "relu" and dies(child))):
                continue
            if order.traced and id(child) not in ran:
                continue
            name = f"{parent_name}.{key}" if parent_name else key
            if name in keep or names.get(id(child)) in keep:
                continue
            act = like(make(), child)
            setattr(parent, key, act)
            changes.append(
                Change(
                    kind="activation",
                    target=name,
                    description=f"{name}: {_describe(child)} -> {_describe(act)}",
                    reason=reason,
                )
            )
    return new, changes


def _describe(m: nn.Module) -> str:
    extra = m.extra_repr()
    return f"{type(m).__name__}({extra})" if extra and not isinstance(m, nn.Tanh | nn.Sigmoid) else type(m).__name__
