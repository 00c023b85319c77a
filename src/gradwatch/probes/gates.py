"""Saturation of the gates inside nn.LSTM and nn.GRU, and the units of nn.RNN, recomputed from a
layer's inputs and outputs.

The gates live inside one fused kernel, so they are rebuilt on recording steps, without
gradient: for each layer, its pre-activations x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh from
the layer's input and its own output sequence shifted by one step. Layers below the last
are rerun (one extra forward of those layers; their output is not exposed). Only the first
`MAX_SEQUENCES` sequences of the batch are rebuilt, which keeps the cost a fraction of
the layer's own forward pass. Limits: one
direction, no projection, plain (not packed) sequences; with dropout between layers, the
rerun of the lower layers sees no dropout, so their gates are approximate.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

#: Gates are rebuilt for at most this many sequences of the batch (the first ones): the
#: statistics are shares and means over tens of thousands of gate values, which a few
#: sequences estimate well, while rebuilding the whole batch costs as much as the layer's
#: own forward pass.
MAX_SEQUENCES = 8

LSTM_GATES = (("input_gate", "sigmoid"), ("forget_gate", "sigmoid"), ("cell_gate", "tanh"), ("output_gate", "sigmoid"))


def supported(module: nn.Module, x: Any) -> bool:
    return (
        isinstance(module, nn.LSTM | nn.GRU | nn.RNN)
        and isinstance(x, torch.Tensor)
        and x.dim() == 3
        and not module.bidirectional
        and getattr(module, "proj_size", 0) == 0
    )


def _batch_first(module: nn.RNNBase, t: torch.Tensor) -> torch.Tensor:
    return t if module.batch_first else t.transpose(0, 1)


def gate_values(module: nn.RNNBase, args: tuple[Any, ...], output: Any) -> Iterator[tuple[str, str, torch.Tensor]]:
    """Yield (gate name, activation, values) for every layer; values are post-activation. For
    nn.RNN the "gate" is the hidden state itself, named after its nonlinearity (tanh, relu) and,
    in a stack, its layer (``relu_l1``)."""
    k = MAX_SEQUENCES
    x = _batch_first(module, args[0].detach())[:k]
    out_seq = _batch_first(module, output[0].detach())[:k]
    hx = args[1] if len(args) > 1 else None
    b, h_size, n_layers = x.shape[0], module.hidden_size, module.num_layers
    if isinstance(module, nn.LSTM):
        h0 = hx[0].detach()[:, :k] if hx is not None else x.new_zeros(n_layers, b, h_size)
        c0 = hx[1].detach()[:, :k] if hx is not None else x.new_zeros(n_layers, b, h_size)
    else:
        h0 = hx.detach()[:, :k] if isinstance(hx, torch.Tensor) else x.new_zeros(n_layers, b, h_size)
        c0 = None
    layer_in = x
    for layer in range(n_layers):
        w_ih = getattr(module, f"weight_ih_l{layer}").detach()
        w_hh = getattr(module, f"weight_hh_l{layer}").detach()
        b_ih = getattr(module, f"bias_ih_l{layer}").detach() if module.bias else None
        b_hh = getattr(module, f"bias_hh_l{layer}").detach() if module.bias else None
        if layer == n_layers - 1:
            seq = out_seq
        else:
            weights = [w for w in (w_ih, w_hh, b_ih, b_hh) if w is not None]
            if isinstance(module, nn.LSTM):
                assert c0 is not None
                seq = torch._VF.lstm(layer_in, (h0[layer : layer + 1], c0[layer : layer + 1]), weights, module.bias, 1, 0.0, False, False, True)[0]
            elif isinstance(module, nn.GRU):
                seq = torch._VF.gru(layer_in, h0[layer : layer + 1], weights, module.bias, 1, 0.0, False, False, True)[0]
            else:
                fn = torch._VF.rnn_tanh if module.nonlinearity == "tanh" else torch._VF.rnn_relu
                seq = fn(layer_in, h0[layer : layer + 1], weights, module.bias, 1, 0.0, False, False, True)[0]
        h_prev = torch.cat([h0[layer].unsqueeze(1), seq[:, :-1]], dim=1)
        gi = torch.nn.functional.linear(layer_in, w_ih, b_ih)
        gh = torch.nn.functional.linear(h_prev, w_hh, b_hh)
        if isinstance(module, nn.LSTM):
            for (name, act), pre in zip(LSTM_GATES, (gi + gh).chunk(4, dim=-1), strict=True):
                yield name, act, torch.sigmoid(pre) if act == "sigmoid" else torch.tanh(pre)
        elif isinstance(module, nn.GRU):
            i_r, i_z, i_n = gi.chunk(3, dim=-1)
            h_r, h_z, h_n = gh.chunk(3, dim=-1)
            r = torch.sigmoid(i_r + h_r)
            yield "reset_gate", "sigmoid", r
            yield "update_gate", "sigmoid", torch.sigmoid(i_z + h_z)
            yield "new_gate", "tanh", torch.tanh(i_n + r * h_n)
        else:  # a plain RNN's hidden state is its activation's output, tanh or relu: its units,
            # judged per layer (a unit dead in one layer says nothing of the other's)
            act = str(module.nonlinearity)
            name = act if n_layers == 1 else f"{act}_l{layer}"
            yield name, act, seq
        layer_in = seq
