"""Re-initialise layers so their weight scale suits the activation that follows them.

Why: backpropagation multiplies the squared gradient norm by ``chi = sigma_w^2 E[phi'(h)^2]``
per layer, where ``sigma_w^2 = fan_in * Var(W)``. The rule per layer:

- followed by a piecewise-linear ReLU (ReLU, ReLU6, LeakyReLU, PReLU): He,
  ``sigma_w^2 = 2 / (1 + a^2)`` (a = the leaky slope), which makes chi = 1 exactly;
- followed by a smooth member of the family (ELU, GELU, SiLU, Softplus, Mish, ...): the
  critical scale of mean-field theory for the model's chain length (`scheme_for`);
- followed by tanh / sigmoid (or another saturating activation): Xavier,
  ``Var(W) = 2 / (fan_in + fan_out)`` — chi about 1 for tanh near zero (sigmoid cannot
  reach 1 at any scale: its derivative is at most 0.25);
- followed by SELU: LeCun, ``sigma_w^2 = 1`` (what SELU's fixed point assumes);
- followed by no activation (a head, or a layer feeding another layer): Xavier;
- recurrent layers: orthogonal recurrent weights, input weights scaled to the data, and
  keep-gate biases sized to the sequence length (`fix._init_recurrent`).

Biases of re-initialised layers are set to 0. A layer with any frozen parameter
(``requires_grad=False``) is left alone, its trainable parameters too: its owner keeps
the frozen part fixed on purpose, and the rest of the layer goes with it. A frozen
weight with a trainable bias (BitFit) is a pretrained layer whose bias is being tuned to
that weight, and zeroing the bias would discard the tuning. A fixed bias with a trainable
weight cannot be reset either, and re-drawing the weight alone would not reach the
weight-and-bias state a re-initialisation stands for (a bias past the limit below would
have the weight re-drawn on every pass). A layer that shares a parameter with another
module (tied weights: a language model's head and its embedding, an autoencoder's encoder
and decoder) is left alone too: a re-draw for one holder changes the others behind their
back, and holders followed by different activations want different scales, so each pass
would undo the last. A layer is left alone when it already
matches: its ``sigma_w^2`` within 10% of the target (an error that compounds to at most
1.1^L — under a decade over 20 layers) and its bias RMS at most 0.5 (a bias half the
pre-activation's standard deviation already switches a ReLU off for a third of inputs;
larger ones are how biases kill units). Weights are drawn from a normal and then
rescaled so their second moment hits the target exactly: this makes the transform
idempotent (a second pass finds every layer matching) even for tiny layers.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import torch
from torch import nn

from gradwatch._lazy import lazy_modules, needs_input_error
from gradwatch.anatomy.activations import (
    PIECEWISE_LINEAR,
    RELU_FUNCTIONS,
    SATURATING_FUNCTIONS,
    SELU_FAMILY,
    is_saturating,
    module_spec,
    parse_spec,
)
from gradwatch.anatomy.map import is_hf_conv1d, transposed_fan_in
from gradwatch.anatomy.modules import has_frozen_parameter, is_dense, shared_parameters
from gradwatch.anatomy.order import Op, Order, input_power, order_of
from gradwatch.explain.theory import critical_sigma_w2
from gradwatch.fix._draw import SCALE_TOLERANCE, draw, fans, matches_scale, target_variance
from gradwatch.fix._init_recurrent import chrono_biases, input_target, recurrent
from gradwatch.fix._surgery import copy_model
from gradwatch.types import Change

__all__ = [
    "BIAS_RMS_LIMIT",
    "DEFAULT_DEPTH",
    "NORM_REASON",
    "REASON",
    "SCALE_TOLERANCE",
    "chain_depth",
    "chrono_biases",
    "feedforward_target",
    "input_target",
    "layer_fans",
    "redrawable",
    "scheme_for",
    "target_variance",
    "transform",
]

#: Bias RMS above which the biases are reset (see the module docstring).
BIAS_RMS_LIMIT = 0.5
REASON = (
    "the weight scale sets each layer's gradient gain chi = sigma_w^2 E[phi'^2]; "
    "matching it to the activation keeps the gradient's size steady through depth"
)

#: The depth the critical scale of a smooth activation is solved for when a model does
#: not say (the scale drifts slowly with depth: ELU 1.56 at 5 layers, 1.51 at 20).
DEFAULT_DEPTH = 20


def scheme_for(act: Op | None, depth: int = DEFAULT_DEPTH) -> tuple[str, str, float]:
    """``(scheme, activation label, target sigma_w^2)`` for the activation that follows a layer.

    The target is ``fan_in * Var(W)``; for ``"xavier"`` it is 0 (Xavier's variance also
    depends on the fan-out). ReLU-family activations that are not piecewise linear (ELU,
    GELU, SiLU, Softplus, Mish, Hardswish) get the scale at which mean-field theory's
    gain per layer multiplies to 1 over a `depth`-layer chain of them (scheme
    ``"critical"``: ELU 1.51, GELU 2.11, SiLU 2.40 at 20 layers): He's 2 is exact only for
    the piecewise-linear ones, and over 20 SiLU layers it loses 2.2 decades of gradient.
    """
    if act is None:
        return "xavier", "no activation", 0.0
    if act.module is not None:
        m = act.module
        label = type(m).__name__
        if isinstance(m, SELU_FAMILY):
            return "lecun", label, 1.0
        if is_saturating(m):
            return "xavier", label, 0.0
        slope = float(getattr(m, "negative_slope", 0.0))
        if isinstance(m, nn.PReLU):
            slope = float(m.weight.detach().mean())
        spec = module_spec(m)
        return _he_or_critical(spec, label, slope, depth)
    if act.fn in SATURATING_FUNCTIONS:
        return "xavier", act.fn, 0.0
    if act.fn == "selu":
        return "lecun", act.fn, 1.0
    if act.fn in RELU_FUNCTIONS:
        return _he_or_critical(act.fn, act.fn, 0.01 if act.fn == "leaky_relu" else 0.0, depth)
    return "xavier", act.fn, 0.0  # pragma: no cover - next_activation returns only the above


def _he_or_critical(spec: str | None, label: str, slope: float, depth: int) -> tuple[str, str, float]:
    he = ("he", label, 2.0 / (1.0 + slope**2))
    if spec is None or parse_spec(spec)[0] in PIECEWISE_LINEAR:
        return he
    try:
        crit = critical_sigma_w2(spec, max(int(depth), 2))
    except Exception:  # an activation the theory cannot evaluate: He is the safe family default
        return he
    return ("critical", label, crit) if crit is not None and math.isfinite(crit) else he


def _bias_ok(b: torch.Tensor | None) -> bool:
    return b is None or float(b.detach().double().pow(2).mean().sqrt()) <= BIAS_RMS_LIMIT


def layer_fans(m: nn.Module) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear or convolution; a transposed convolution's fan-in is
    the inputs summed into one output (`anatomy.map.transposed_fan_in`)."""
    w = m.weight
    assert isinstance(w, torch.Tensor)
    if isinstance(m, nn.modules.conv._ConvNd) and m.transposed:
        return transposed_fan_in(m), int(m.out_channels // m.groups * math.prod(m.kernel_size))
    if is_hf_conv1d(m):
        return int(w.shape[0]), int(w.shape[1])  # stored (in, out)
    return fans(w)


def _sigma2(w: torch.Tensor, fan_in: int | None = None) -> float:
    return float(w.detach().double().pow(2).mean()) * (fan_in if fan_in is not None else fans(w)[0])


def redrawable(m: nn.Module, tied: Collection[int]) -> bool:
    """Whether `init` may re-draw `m`: no frozen parameter, none tied to another module
    (`tied`: `anatomy.modules.shared_parameters(model)`); see the module docstring."""
    return not has_frozen_parameter(m) and not any(id(p) in tied for p in m.parameters(recurse=False))


def feedforward_target(m: nn.Module, act: Op | None, depth: int = DEFAULT_DEPTH) -> tuple[str, str, float, int]:
    """``(scheme, activation label, target Var(W), fan_in)`` for a dense layer followed by `act`."""
    fan_in, fan_out = layer_fans(m)
    scheme, label, sigma_w2 = scheme_for(act, depth)
    return scheme, label, target_variance(scheme, fan_in, fan_out, sigma_w2), fan_in


def _feedforward(
    name: str, m: nn.Module, act: Op | None, reason: str, depth: int = DEFAULT_DEPTH, force: bool = False
) -> Change | None:
    w = m.weight
    assert isinstance(w, torch.Tensor)
    b = getattr(m, "bias", None)
    scheme, label, var, fan_in = feedforward_target(m, act, depth)
    if matches_scale(w, var) and _bias_ok(b) and not (force and not _fresh(w, b)):
        return None
    was = _sigma2(w, fan_in)
    draw(w, var)
    if b is not None:
        with torch.no_grad():
            b.zero_()
    title = {"he": "He", "xavier": "Xavier", "lecun": "LeCun", "critical": "at the critical scale"}[scheme]
    return Change(
        kind="init",
        target=name,
        description=(
            f"{name}: re-initialised {title} for {label} (sigma_w^2 {was:.2f} -> {var * fan_in:.2f}"
            + (", bias 0)" if b is not None else ")")
        ),
        reason=reason,
    )


#: A weight whose mean is within this many standard errors of 0 (``|mean| <= k * rms /
#: sqrt(n)``) and whose biases are 0 looks freshly drawn; `force` leaves such a layer alone.
FRESH_MEAN_SE = 4.0


def _fresh(w: torch.Tensor, b: torch.Tensor | None) -> bool:
    """Whether a weight (and bias) look like a zero-mean draw rather than trained values."""
    wd = w.detach().double()
    rms = float(wd.pow(2).mean().sqrt())
    if rms == 0 or not math.isfinite(rms):
        return False
    centred = abs(float(wd.mean())) <= FRESH_MEAN_SE * rms / math.sqrt(wd.numel())
    return centred and (b is None or float(b.detach().abs().max()) == 0.0)


def chain_depth(order: Order) -> int:
    """The number of Linear and convolution layers in the forward pass: the chain length a
    smooth activation's critical scale is solved for."""
    n = sum(1 for op in order.modules() if is_dense(op.module))
    return max(n, 2)


#: Why `transform` re-draws normalisation gains (`explain.causes.norm_gain_too_small`).
NORM_REASON = (
    "a normalisation divides by sqrt(var + eps): gains far under 1 leave the variance under eps, where "
    "it stops normalising and each layer shrinks the signal and the gradient"
)


def _norm_gain(name: str, m: nn.Module) -> Change | None:
    """Gain 1 and shift 0 for a normalisation module whose affine weight is not all ones already."""
    w, b = getattr(m, "weight", None), getattr(m, "bias", None)
    if not isinstance(w, nn.Parameter) or not w.requires_grad or bool((w.detach() == 1).all()):
        return None
    was = float(w.detach().double().pow(2).mean().sqrt())
    with torch.no_grad():
        w.fill_(1.0)
        if isinstance(b, nn.Parameter) and b.requires_grad:
            b.zero_()
    return Change(kind="init", target=name, description=f"{name}: gain re-drawn at 1 (RMS {was:.3g} -> 1), shift 0", reason=NORM_REASON)


def transform(
    model: nn.Module,
    *,
    example_input: Any = None,
    layers: Collection[str] | None = None,
    norms: Collection[str] = (),
    reason: str = REASON,
    force: bool = False,
    inplace: bool = False,
) -> tuple[nn.Module, list[Change]]:
    """Re-initialise every Linear, convolution and recurrent layer whose scale does not suit its activation.

    Args:
        model: any module.
        example_input: if given, one forward pass decides which activation follows each
            layer (functional ones included); otherwise registration order decides.
            A model with lazy modules that have not run yet needs one (their weights
            do not exist until a forward pass creates them).
        layers: only these module names (default: every layer).
        norms: normalisation modules whose gains are set to 1 and shifts to 0 (the layers
            `norm_gain_too_small` names); a frozen or tied one is left alone.
        force: also re-draw Linear/convolution layers whose scale matches but whose values
            are trained ones (a weight mean off zero, non-zero biases): weights trained for
            another activation carry its structure, not only its scale — a layer trained
            under sigmoids has a mean that switches every ReLU after it off. `gw.fix`
            passes it when it swaps activations. Fresh-looking layers are still left, so
            the transform stays idempotent.
        inplace: change `model` itself instead of a deep copy.

    Returns:
        ``(new_model, changes)``: one change per re-initialised layer.

    Raises:
        GradwatchValueError: a lazy module has no parameters yet and there is no example input.
    """
    if example_input is None and lazy_modules(model):
        raise needs_input_error(model, "init.transform")
    new = copy_model(model, inplace)
    order = order_of(new, example_input)
    depth = chain_depth(order)
    tied = shared_parameters(new)
    changes: list[Change] = []
    seen: set[int] = set()
    for op in order.modules():
        m = op.module
        assert m is not None
        if id(m) in seen or (layers is not None and op.name not in layers):
            continue
        seen.add(id(m))
        if not redrawable(m, tied):
            continue
        change: Change | None = None
        if isinstance(m, nn.RNNBase | nn.RNNCellBase):
            # measured now, on the layers below as already re-drawn
            power = input_power(new, m, example_input) if example_input is not None else None
            change = recurrent(op.name, m, reason, order.sequence_length(op.name, m), power)
        elif is_dense(m) and isinstance(m.weight, nn.Parameter):
            # (a `weight` that is not a parameter is computed from others on every forward —
            # the older weight_norm — so drawing into it would change nothing)
            change = _feedforward(op.name, m, order.next_activation(op.name), reason, depth, force)
        if change is not None:
            changes.append(change)
    modules = dict(new.named_modules())
    for name in norms:
        m = modules.get(name)
        if m is not None and redrawable(m, tied) and (change := _norm_gain(name, m)) is not None:
            changes.append(change)
    return new, changes
