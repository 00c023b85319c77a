"""Watching a forward pass call by call, and the vocabulary of elementwise calls it reads.

`CallObserver` is the one `TorchFunctionMode` of the package: it runs each torch function as
it would and shows it, with its arguments and result, to `seen`. `gradwatch.anatomy._graph`
builds the dataflow graph from it, `gradwatch.anatomy.order` the functional activations and
the gates, and the forward probes (`gradwatch.probes.forward`) their activation statistics.
The sets below (products, shifts, views) are shared with the forward probes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["AFFINE", "PRODUCTS", "SHIFTS", "VIEWS", "CallObserver", "is_constant"]


class CallObserver(TorchFunctionMode):
    """Runs every torch function call unchanged, then passes it to `seen`."""

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.seen(func, args, kwargs, out)
        return out

    def seen(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        raise NotImplementedError


T = torch.Tensor
#: Elementwise products: a saturating output that meets another tensor here is a *gate*
#: (a multiplicative interaction: x * sigmoid(x), an LSTM written by hand, GELU's tanh form),
#: whose open and closed states are its purpose, not a fault.
PRODUCTS = frozenset({torch.mul, torch.multiply, T.mul, T.mul_, T.__mul__, T.__rmul__, T.__imul__})
#: Shifts and scalings by a constant keep an output what it was (1 + tanh(u), 1 - z, 0.5 * s).
AFFINE = frozenset({
    torch.add, torch.sub, torch.rsub, T.add, T.sub, T.__add__, T.__radd__, T.__sub__, T.__rsub__,
    T.__neg__, torch.neg, T.neg,
}) | PRODUCTS  # fmt: skip
#: Shifts by a constant (1 + tanh(u), 1 - z): a saturating output moved to a gate's range.
SHIFTS = frozenset({torch.add, torch.sub, torch.rsub, T.add, T.sub, T.__add__, T.__radd__, T.__sub__, T.__rsub__})
#: Views and reshapes of one tensor: ``w[:, :, None, None]`` is still the gate ``w``.
VIEWS = frozenset({
    T.__getitem__, T.view, T.view_as, T.reshape, T.reshape_as, torch.reshape, T.unsqueeze,
    torch.unsqueeze, T.squeeze, torch.squeeze, T.expand, T.expand_as, T.flatten, torch.flatten,
    T.permute, torch.permute, T.transpose, torch.transpose, T.contiguous,
})  # fmt: skip


def is_constant(a: Any) -> bool:
    """A Python number or a one-element tensor: a shift or scale, not a second signal."""
    return isinstance(a, int | float) or (isinstance(a, torch.Tensor) and a.numel() == 1)
