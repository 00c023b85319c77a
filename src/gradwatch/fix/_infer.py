"""Causes read from the model itself, for a finding the diagnosis gives none for.

Used only when no explainer supplied causes (`fix.choose`): each rule follows the
mechanism behind a kind of finding and checks it against what the model contains.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradwatch.anatomy.activations import RELU_FAMILY, is_saturating
from gradwatch.anatomy.modules import is_dense, shared_parameters
from gradwatch.anatomy.order import Order
from gradwatch.fix import init as _init
from gradwatch.fix import manual as _manual
from gradwatch.types import CauseKind, Kind

__all__ = ["EXPLODING_KINDS", "dead_biases", "infer_causes", "relu_like", "scale_mismatch"]

GRADIENT_KINDS = (Kind.VANISHING_GRADIENT, Kind.SATURATED_UNITS, Kind.STALLED_WEIGHTS)
EXPLODING_KINDS = (Kind.EXPLODING_GRADIENT, Kind.NONFINITE_GRADIENT, Kind.DIVERGING_LOSS)
SYMPTOM_KINDS = (Kind.FLAT_LOSS, Kind.CONSTANT_OUTPUT)


def infer_causes(model: nn.Module, order: Order, kind: Kind, step: int | None = None) -> list[CauseKind]:
    """The structural causes that can produce a finding of `kind` in this model, most specific first.

    Used only when no explainer supplied causes. Each check follows the mechanism:
    saturating activations and too-small weight scales shrink the gradient per layer; an
    `nn.RNN` shrinks it per time step; negative biases switch ReLUs off; a too-large
    weight scale or step size makes it grow. Units found dead after the first step (`step`,
    the finding's first step, > 0) were alive at the initialisation: training steps killed
    them, so the step size comes first even if the biases they left behind now look dead.
    Likewise a loss that diverged, or gradients that went non-finite, after the first step:
    the step size before a weight scale that may be the divergence's own doing.
    """
    has_rnn = any(type(m) in (nn.RNN, nn.RNNCell) for m in model.modules())
    kept = order.beside_frozen() | order.output_modules()  # what `activations` leaves alone
    saturating = any(
        is_saturating(op.module) and not op.gate and id(op.module) not in kept
        for op in order.modules()
        if op.module is not None
    ) or bool(
        _manual.hidden_functional_activations(model, order)
    )
    small, large, rnn_large = scale_mismatch(model, order)
    causes: list[CauseKind] = []
    if kind == Kind.TEMPORAL_VANISHING:
        causes += [CauseKind.VANILLA_RNN_LONG_SEQUENCE] if has_rnn else [CauseKind.INIT_MISMATCH]
    elif kind in GRADIENT_KINDS or kind in SYMPTOM_KINDS:
        if saturating:
            causes.append(CauseKind.SATURATING_ACTIVATIONS)
        if has_rnn and kind == Kind.VANISHING_GRADIENT:
            causes.append(CauseKind.VANILLA_RNN_LONG_SEQUENCE)
        if small:
            causes.append(CauseKind.INIT_MISMATCH)
        if dead_biases(model, order):
            causes.append(CauseKind.DEAD_RELU_BIAS)
        if not causes and kind == Kind.VANISHING_GRADIENT:
            # Nothing in the layers themselves explains it: the chain's length does.
            causes += [CauseKind.DEPTH_WITHOUT_SKIP, CauseKind.NO_NORMALIZATION]
    elif kind == Kind.DEAD_UNITS:
        if step is not None and step > 0:
            causes.append(CauseKind.STEP_SIZE_TOO_LARGE)
        if dead_biases(model, order):
            causes.append(CauseKind.DEAD_RELU_BIAS)
        if small:
            causes.append(CauseKind.INIT_MISMATCH)
        if CauseKind.STEP_SIZE_TOO_LARGE not in causes and step is None:
            causes.append(CauseKind.STEP_SIZE_TOO_LARGE)  # large steps knock units off for good
        # found at step 0 (before any update): dead at the initialisation, no step did it
    elif kind in EXPLODING_KINDS:
        if rnn_large:
            # A vanilla RNN whose recurrent matrix can grow the gradient through time: an
            # orthogonal re-initialisation only trades the explosion for vanishing, a gated
            # cell removes both (Pascanu et al. 2013).
            causes.append(CauseKind.VANILLA_RNN_LONG_SEQUENCE)
        if large and kind != Kind.EXPLODING_GRADIENT and step is not None and step > 0:
            # A loss that rose or blew up after training began: the steps did it, and weights
            # read now may be what they left (a diverged model's are huge); the scale can
            # still be the cause, second.
            causes += [CauseKind.STEP_SIZE_TOO_LARGE, CauseKind.INIT_MISMATCH]
        else:
            if large:
                causes.append(CauseKind.INIT_MISMATCH)
            causes.append(CauseKind.STEP_SIZE_TOO_LARGE)
    return causes


def scale_mismatch(model: nn.Module, order: Order) -> tuple[bool, bool, bool]:
    """(some feed-forward layer's weight scale is too small for its activation, some is too
    large, some vanilla RNN's recurrent matrix is too large).

    A vanilla recurrent layer counts as too large when its recurrent matrix has a singular
    value above 1 + tolerance: then the gradient through time can grow (Pascanu et al. 2013).
    """
    small = large = rnn_large = False
    depth = _init.chain_depth(order)  # the chain length `init` solves a smooth activation's scale for
    tied = shared_parameters(model)
    for op in order.modules():
        m = op.module
        if m is None or not _init.redrawable(m, tied):
            continue  # what `init` would not re-draw cannot be the reason to re-draw anything
        if isinstance(m, nn.RNNBase | nn.RNNCellBase):
            # Only a vanilla cell's gradient through time is W_hh^T diag(phi') alone; a
            # gated cell's passes through its gates (sigmoid' <= 1/4), so its W_hh norm
            # says little (PyTorch's default LSTM init already has one near 1.15).
            if type(m) in (nn.RNN, nn.RNNCell):
                for name, p in m.named_parameters(recurse=False):
                    if name.startswith("weight_hh"):
                        sigma = float(torch.linalg.matrix_norm(p.detach().double(), ord=2))
                        rnn_large |= sigma > 1 + _init.SCALE_TOLERANCE
            continue
        if not is_dense(m):
            continue
        act = order.next_activation(op.name)
        if act is None:
            continue  # a head or a layer feeding another: its scale is not a gain through depth
        w = m.weight
        assert isinstance(w, torch.Tensor)
        _, _, target, _ = _init.feedforward_target(m, act, depth)
        ratio = float(w.detach().double().pow(2).mean()) / target
        small |= ratio < 1 - _init.SCALE_TOLERANCE
        large |= ratio > 1 + _init.SCALE_TOLERANCE
    return small, large, rnn_large


def relu_like(act: Any) -> bool:
    return act is not None and (
        (act.module is not None and isinstance(act.module, RELU_FAMILY)) or act.fn in ("relu", "relu6")
    )


def dead_biases(model: nn.Module, order: Order) -> bool:
    for op in order.modules():
        m = op.module
        b = getattr(m, "bias", None) if is_dense(m) else None
        if not isinstance(b, torch.Tensor):
            continue
        feeds_relu = relu_like(order.next_activation(op.name))
        b = b.detach().double()
        if feeds_relu and float(b.mean()) < -_init.BIAS_RMS_LIMIT:
            return True
    return False
