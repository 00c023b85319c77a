"""Replace vanilla recurrent layers (`nn.RNN`, `nn.RNNCell`) with gated ones (GRU or LSTM).

Why: through time a vanilla RNN multiplies the gradient by ``W_hh^T diag(phi')`` per
step, so over long sequences it vanishes (or explodes) geometrically (Pascanu, Mikolov,
Bengio 2013). A gated cell's state is carried forward additively, mixed by a gate that
can stay open, so the gradient through time need not shrink (Hochreiter & Schmidhuber
1997): on the adding problem with 50 steps, GRU and LSTM learn where a tanh RNN stays
at the baseline.

`nn.GRU` takes and returns exactly what `nn.RNN` does (a tensor state ``h``), so it is
the default. An LSTM's state is a pair ``(h, c)``; `LSTMAsRNN` wraps `nn.LSTM` so it
takes and returns ``h`` alone (an ``h_0`` passed in starts with ``c_0 = 0``; the cell
state is not carried between calls — call the LSTM directly if you need that). The new
layer keeps every size and option (input and hidden size, layers, bias, batch_first,
dropout, bidirectional), the device and the dtype; its weights are fresh (those of an
RNN do not map onto gates), so apply `gradwatch.fix.init` after it, as `gw.fix` does.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from gradwatch._errors import GradwatchValueError
from gradwatch.fix._surgery import copy_model, like
from gradwatch.types import Change

REASON = (
    "a vanilla RNN multiplies the gradient by W_hh^T diag(phi') at every time step, so it "
    "fades over long sequences; a gated cell carries its state additively"
)

TARGETS = ("gru", "lstm")


class LSTMAsRNN(nn.LSTM):
    """`nn.LSTM` with `nn.RNN`'s interface: ``forward(input, h_0=None) -> (output, h_n)``."""

    def forward(self, input: Any, hx: Any = None) -> Any:
        if hx is not None:
            hx = (hx, torch.zeros_like(hx))
        output, (h, _) = super().forward(input, hx)
        return output, h


class LSTMCellAsRNNCell(nn.LSTMCell):
    """`nn.LSTMCell` with `nn.RNNCell`'s interface: ``forward(input, h=None) -> h'``.

    The cell state is kept on the module between the steps of one sequence: it carries
    on when the ``h`` passed in is the very tensor this cell last returned (the usual
    ``h = cell(x_t, h)`` loop), and starts from zero otherwise (a new sequence).

    That state is transient. It is held only as long as the ``h`` it goes with is alive
    (through a weak reference to ``h``), so a finished sequence's cell state and autograd
    graph are freed with its last ``h``; and copies and pickles leave it out
    (`__getstate__`): a non-leaf tensor cannot be deep-copied, and a copy or a reloaded
    model starts a new sequence on its first call.
    """

    _carry: tuple[weakref.ref[torch.Tensor], torch.Tensor]

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        carry = self.__dict__.get("_carry")
        c = carry[1] if carry is not None and hx is not None and carry[0]() is hx else None
        if c is None:
            c = torch.zeros((*input.shape[:-1], self.hidden_size), device=input.device, dtype=input.dtype)
            if hx is None:
                hx = torch.zeros_like(c)
        assert hx is not None
        h, c = super().forward(input, (hx, c))
        self._carry = (weakref.ref(h, self._forget), c)
        return h

    def _forget(self, ref: weakref.ref[torch.Tensor]) -> None:
        carry = self.__dict__.get("_carry")
        if carry is not None and carry[0] is ref:
            del self.__dict__["_carry"]

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = super().__getstate__()
        state.pop("_carry", None)
        return state


def _replace(m: nn.Module, to: str) -> nn.Module:
    if isinstance(m, nn.RNN):
        opts = dict(
            input_size=m.input_size,
            hidden_size=m.hidden_size,
            num_layers=m.num_layers,
            bias=m.bias,
            batch_first=m.batch_first,
            dropout=float(m.dropout),
            bidirectional=m.bidirectional,
        )
        return nn.GRU(**opts) if to == "gru" else LSTMAsRNN(**opts)
    assert isinstance(m, nn.RNNCell)
    cell_opts = dict(input_size=m.input_size, hidden_size=m.hidden_size, bias=m.bias)
    return nn.GRUCell(**cell_opts) if to == "gru" else LSTMCellAsRNNCell(**cell_opts)  # type: ignore[arg-type]


def transform(
    model: nn.Module,
    *,
    to: str = "gru",
    reason: str = REASON,
    inplace: bool = False,
    **_: Any,
) -> tuple[nn.Module, list[Change]]:
    """Replace every `nn.RNN` with `nn.GRU` (or `LSTMAsRNN`), every `nn.RNNCell` with `nn.GRUCell` (or `LSTMCellAsRNNCell`).

    Returns ``(new_model, changes)``: one change per replaced layer.
    """
    to = str(to).strip().lower()
    if to not in TARGETS:
        raise GradwatchValueError(f"to={to!r} is not a gated layer this transform builds; choose one of: {', '.join(TARGETS)}")
    new = copy_model(model, inplace)
    changes: list[Change] = []
    replaced: dict[int, nn.Module] = {}
    names = {id(m): n for n, m in new.named_modules()}
    for parent in list(new.modules()):
        for key, child in list(parent._modules.items()):
            if child is None or type(child) not in (nn.RNN, nn.RNNCell):
                continue
            if id(child) not in replaced:  # a shared layer stays shared
                replaced[id(child)] = like(_replace(child, to), child)
                gated = replaced[id(child)]
                name = names[id(child)]
                changes.append(
                    Change(
                        kind="recurrent",
                        target=name,
                        description=f"{name}: {type(child).__name__}({_sizes(child)}) -> {type(gated).__name__}, same sizes and options",
                        reason=reason,
                    )
                )
            setattr(parent, key, replaced[id(child)])
    return new, changes


def _sizes(m: nn.Module) -> str:
    return f"{getattr(m, 'input_size', '?')}, {getattr(m, 'hidden_size', '?')}"
