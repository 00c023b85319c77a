"""`init`'s rules for recurrent layers (`nn.RNN`/`GRU`/`LSTM` and their cells).

Recurrent layers get input weights scaled to the data (below), recurrent weights
orthogonal per gate (all singular values 1, so the gradient through time neither grows
nor shrinks from the weights), biases 0, and the gate that keeps a gated layer's state (an LSTM's
forget gate, a GRU's update gate z in ``h' = (1 - z) n + z h``) biased to remember:
when an example input shows the sequence length T, *chrono* biases (Tallec & Ollivier
2018), ``b = log(u)`` with ``u`` spread evenly over ``[1, T - 1]`` (`chrono_biases`), so
the units' memory spans ``1 + e^b`` run from 2 steps to T, and an LSTM's input-gate
biases are ``-b``; otherwise an LSTM's forget-gate bias is 1 (Jozefowicz et al. 2015)
and a GRU's stay 0. Why the length matters: a keep gate at ``sigmoid(b)`` passes
that share of the state (and of its gradient) on per step, so a GRU with zero biases
(z = 1/2) halves its carried gradient every step — 1e-12 over 40 steps; with chrono
biases some units carry it across the whole sequence (measured at T = 40: the
gradient reaching the first input rises from ~1e-6 to ~1e-1 of the last one's;
`tests/fix/test_init.py`). The input weights of the layer that reads the data (the
first layer of an ``nn.RNN``/``GRU``/``LSTM``, or a cell) get ``Var(W) = 1 / E|x|^2``
when an example input shows what the layer receives (`input_target`): each gate's
pre-activation from the input then has variance 1 on that data. Xavier's
``2 / (fan_in + fan_out)`` assumes standardised features; a sequence's (one-hot
symbols, a binary marker) rarely are, and with a small fan-in into many gate units it
left the symbol too faint in the state for a swapped-in GRU to leave the recall and
adding tasks' plateau at the rate the original trained at. A stacked layer's input
weights (reading the state below) and any layer without an example input get Xavier
per gate.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gradwatch.fix._draw import draw, fans, matches_scale, target_variance
from gradwatch.types import Change

__all__ = ["CHRONO_MIN_LENGTH", "ORTHO_TOLERANCE", "chrono_biases", "input_target", "recurrent"]

#: Largest entry of W W^T - I for a recurrent weight block to count as orthogonal.
ORTHO_TOLERANCE = 1e-3
#: Sequences up to this long keep the fixed gate biases (forget 1 for an LSTM, 0 for a
#: GRU); longer ones get chrono biases (`chrono_biases`), spans up to the length seen.
CHRONO_MIN_LENGTH = 3

_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4, "RNNCell": 1, "GRUCell": 3, "LSTMCell": 4}


def _is_orthogonal(block: torch.Tensor) -> bool:
    b = block.detach().double()
    g = b @ b.T if b.shape[0] <= b.shape[1] else b.T @ b
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    # a half-precision copy of an orthogonal matrix is orthogonal to its rounding only
    tol = max(ORTHO_TOLERANCE, 4 * torch.finfo(block.dtype).eps) if block.is_floating_point() else ORTHO_TOLERANCE
    return float((g - eye).abs().max()) <= tol


@torch.no_grad()
def _draw_orthogonal(block: torch.Tensor) -> None:
    """`nn.init.orthogonal_` drawn in float32 at least: its QR decomposition has no
    half-precision CPU kernel (bf16 / fp16 layers)."""
    if block.dtype in (torch.float32, torch.float64):
        nn.init.orthogonal_(block)
        return
    q = torch.empty(block.shape, dtype=torch.float32, device=block.device)
    nn.init.orthogonal_(q)
    block.copy_(q)


def _recurrent_params(m: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in m.named_parameters(recurse=False)]


def chrono_biases(hidden: int, seq_len: int) -> torch.Tensor:
    """Keep-gate biases ``log(u)`` for `hidden` units, ``u`` spread evenly over ``[1, T - 1]``.

    A gate ``sigmoid(b)`` that keeps the state holds it for about ``1 / (1 - sigmoid(b))
    = 1 + e^b`` steps, so these biases give the units memory spans from 2 steps up to the
    sequence length T (Tallec & Ollivier 2018 draw ``u`` at random; evenly spaced
    quantiles make the result deterministic, so the transform stays idempotent).
    """
    top = max(float(seq_len) - 1.0, 1.0)
    u = 1.0 + (top - 1.0) * (torch.arange(hidden, dtype=torch.float64) + 0.5) / hidden
    return torch.log(u)


def _takes_model_side_input(pname: str) -> bool:
    """Whether a recurrent layer's input-weight parameter reads the layer's own input (a
    cell's ``weight_ih``, the first layer's ``weight_ih_l0[_reverse]``), not the hidden
    state of the layer below it in a stacked ``nn.RNN`` / ``GRU`` / ``LSTM``."""
    return pname == "weight_ih" or pname.startswith("weight_ih_l0")


def input_target(power: float | None, fan_in: int, fan_out: int) -> float:
    """``Var(W)`` for a recurrent layer's input weights (one gate's block).

    With the inputs' mean squared norm ``power = E|x|^2`` known (finite, > 0),
    ``Var(W) = 1 / power``: each gate's pre-activation from the input then has variance
    ``Var(W) E|x|^2 = 1`` on the data seen — LeCun's rule, with the data's own second
    moment in place of one per feature. Without it (None), Xavier.
    """
    return 1.0 / power if power is not None else target_variance("xavier", fan_in, fan_out)


def recurrent(
    name: str, m: nn.Module, reason: str, seq_len: int | None = None, power: float | None = None
) -> Change | None:
    kind = "LSTM" if isinstance(m, nn.LSTM | nn.LSTMCell) else type(m).__name__
    for base in ("LSTMCell", "GRUCell", "RNNCell", "LSTM", "GRU", "RNN"):
        if isinstance(m, getattr(nn, base)):
            kind = base
            break
    gates = _GATES.get(kind, 1)
    lstm = kind in ("LSTM", "LSTMCell")
    gru = kind in ("GRU", "GRUCell")
    params = _recurrent_params(m)
    biased = any(pname.startswith("bias_ih") for pname, _ in params)
    chrono = (lstm or gru) and biased and seq_len is not None and seq_len > CHRONO_MIN_LENGTH

    def wanted_bias(pname: str, p: torch.Tensor) -> torch.Tensor:
        want = torch.zeros_like(p)
        if not pname.startswith("bias_ih") or not (lstm or gru):
            return want
        h = p.shape[0] // gates
        if not chrono:
            if lstm:
                want[h : 2 * h] = 1.0  # gate order i, f, g, o: the forget gate is the second block
            return want
        assert seq_len is not None
        keep = chrono_biases(h, seq_len).to(p.dtype)
        if lstm:  # i, f, g, o: forget = log(u), input = -forget
            want[h : 2 * h] = keep
            want[0:h] = -keep
        else:  # r, z, n: h' = (1 - z) n + z h, so z is the keep gate
            want[h : 2 * h] = keep
        return want

    if power is not None and not (math.isfinite(power) and power > 0):
        power = None
    measured = power is not None and any(_takes_model_side_input(pn) for pn, _ in params)

    def input_var(pname: str, block: torch.Tensor) -> float:
        fi, fo = fans(block)
        return input_target(power if _takes_model_side_input(pname) else None, fi, fo)

    def matches() -> bool:
        for pname, p in params:
            if pname.startswith("weight_hh"):
                if not all(_is_orthogonal(c) for c in p.chunk(gates, 0)):
                    return False
            elif pname.startswith("weight_ih"):
                for c in p.chunk(gates, 0):
                    if not matches_scale(c, input_var(pname, c)):
                        return False
            elif pname.startswith("weight_hr"):
                fi, fo = fans(p)
                if not matches_scale(p, target_variance("xavier", fi, fo)):
                    return False
            elif pname.startswith("bias"):
                if float((p.detach() - wanted_bias(pname, p)).abs().max()) > 1e-6:
                    return False
        return True

    if matches():
        return None
    with torch.no_grad():
        for pname, p in params:
            if pname.startswith("weight_hh"):
                for c in p.chunk(gates, 0):
                    _draw_orthogonal(c)
            elif pname.startswith("weight_ih"):
                for c in p.chunk(gates, 0):
                    draw(c, input_var(pname, c))
            elif pname.startswith("weight_hr"):
                fi, fo = fans(p)
                draw(p, target_variance("xavier", fi, fo))
            elif pname.startswith("bias"):
                p.copy_(wanted_bias(pname, p))
    if isinstance(m, nn.RNNBase):
        m.flatten_parameters()
    if chrono:
        assert seq_len is not None
        gate = "forget" if lstm else "update"
        biases = (
            f", {gate}-gate biases log(u) with u spread over [1, {seq_len - 1}] "
            f"(memory spans of 2..{seq_len} steps for the {seq_len}-step sequences seen)"
            + (", input-gate biases their negatives" if lstm else "")
        )
    else:
        biases = ", forget-gate bias 1" if lstm and biased else ""
    if measured:
        assert power is not None
        stacked = any(pn.startswith("weight_ih") and not _takes_model_side_input(pn) for pn, _ in params)
        inputs = (
            ("first layer's " if stacked else "")
            + f"input weights Var 1/E|x|^2 = 1/{power:.3g} (unit-variance gate inputs on the data seen)"
            + (", the stacked layers' Xavier" if stacked else "")
        )
    else:
        inputs = "input weights Xavier"
    return Change(
        kind="init",
        target=name,
        description=(
            f"{name}: re-initialised {type(m).__name__}: {inputs}, recurrent weights "
            "orthogonal" + (", biases 0" if biased else "") + biases
        ),
        reason=reason,
    )
