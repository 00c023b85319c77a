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
- recurrent layers: input weights scaled to the data (below), recurrent weights
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
from gradwatch.anatomy.order import Op, input_power, order_of
from gradwatch.explain.theory import critical_sigma_w2
from gradwatch.fix._surgery import copy_model
from gradwatch.types import Change

#: Relative error in sigma_w^2 tolerated before a layer counts as mis-initialised.
SCALE_TOLERANCE = 0.10
#: Bias RMS above which the biases are reset (see the module docstring).
BIAS_RMS_LIMIT = 0.5
#: Largest entry of W W^T - I for a recurrent weight block to count as orthogonal.
ORTHO_TOLERANCE = 1e-3
#: Sequences up to this long keep the fixed gate biases (forget 1 for an LSTM, 0 for a
#: GRU); longer ones get chrono biases (`chrono_biases`), spans up to the length seen.
CHRONO_MIN_LENGTH = 3

REASON = (
    "the weight scale sets each layer's gradient gain chi = sigma_w^2 E[phi'^2]; "
    "matching it to the activation keeps the gradient's size steady through depth"
)

_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4, "RNNCell": 1, "GRUCell": 3, "LSTMCell": 4}


def _fans(w: torch.Tensor) -> tuple[int, int]:
    receptive = math.prod(w.shape[2:]) if w.dim() > 2 else 1
    return int(w.shape[1]) * receptive, int(w.shape[0]) * receptive


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


def target_variance(scheme: str, fan_in: int, fan_out: int, sigma_w2: float = 2.0) -> float:
    """``Var(W)`` for a scheme; `sigma_w2` is `scheme_for`'s target (unused by Xavier)."""
    if scheme == "xavier":
        return 2.0 / (fan_in + fan_out)
    return sigma_w2 / fan_in


def _matches_scale(w: torch.Tensor, var: float) -> bool:
    ms = float(w.detach().double().pow(2).mean())
    return abs(ms / var - 1.0) <= SCALE_TOLERANCE


def _bias_ok(b: torch.Tensor | None) -> bool:
    return b is None or float(b.detach().double().pow(2).mean().sqrt()) <= BIAS_RMS_LIMIT


@torch.no_grad()
def _draw(w: torch.Tensor, var: float) -> None:
    w.normal_(0.0, math.sqrt(var))
    ms = w.double().pow(2).mean()
    if float(ms) > 0:
        w.mul_(torch.sqrt(var / ms).to(w.dtype))


def layer_fans(m: nn.Module) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear or convolution; a transposed convolution's fan-in is
    the inputs summed into one output (`anatomy.map.transposed_fan_in`)."""
    w = m.weight
    assert isinstance(w, torch.Tensor)
    if isinstance(m, nn.modules.conv._ConvNd) and m.transposed:
        return transposed_fan_in(m), int(m.out_channels // m.groups * math.prod(m.kernel_size))
    if is_hf_conv1d(m):
        return int(w.shape[0]), int(w.shape[1])  # stored (in, out)
    return _fans(w)


def _sigma2(w: torch.Tensor, fan_in: int | None = None) -> float:
    return float(w.detach().double().pow(2).mean()) * (fan_in if fan_in is not None else _fans(w)[0])


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
    if _matches_scale(w, var) and _bias_ok(b) and not (force and not _fresh(w, b)):
        return None
    was = _sigma2(w, fan_in)
    _draw(w, var)
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


def seq_len_of(order: Any, name: str, m: nn.Module) -> int | None:
    """The sequence length the layer `name` saw in a traced forward pass, or None."""
    if not getattr(order, "traced", False):
        return None
    if isinstance(m, nn.RNNCellBase):
        n = order.calls.get(name)
        return int(n) if n and n > 1 else None
    if name in order.packed:  # a PackedSequence: its longest sequence
        return int(order.packed[name])
    shape = order.shapes.get(name)
    if shape is None:
        return None
    if len(shape) == 3:
        return int(shape[1] if getattr(m, "batch_first", False) else shape[0])
    if len(shape) == 2:
        return int(shape[0])
    return None


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


def _recurrent(
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
        fi, fo = _fans(block)
        return input_target(power if _takes_model_side_input(pname) else None, fi, fo)

    def matches() -> bool:
        for pname, p in params:
            if pname.startswith("weight_hh"):
                if not all(_is_orthogonal(c) for c in p.chunk(gates, 0)):
                    return False
            elif pname.startswith("weight_ih"):
                for c in p.chunk(gates, 0):
                    if not _matches_scale(c, input_var(pname, c)):
                        return False
            elif pname.startswith("weight_hr"):
                fi, fo = _fans(p)
                if not _matches_scale(p, target_variance("xavier", fi, fo)):
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
                    _draw(c, input_var(pname, c))
            elif pname.startswith("weight_hr"):
                fi, fo = _fans(p)
                _draw(p, target_variance("xavier", fi, fo))
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


def chain_depth(order: Any) -> int:
    """The number of Linear and convolution layers in the forward pass: the chain length a
    smooth activation's critical scale is solved for."""
    n = sum(1 for op in order.modules() if is_dense(op.module))
    return max(n, 2)


def transform(
    model: nn.Module,
    *,
    example_input: Any = None,
    layers: Collection[str] | None = None,
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
            change = _recurrent(op.name, m, reason, seq_len_of(order, op.name, m), power)
        elif is_dense(m) and isinstance(m.weight, nn.Parameter):
            # (a `weight` that is not a parameter is computed from others on every forward —
            # the older weight_norm — so drawing into it would change nothing)
            change = _feedforward(op.name, m, order.next_activation(op.name), reason, depth, force)
        if change is not None:
            changes.append(change)
    return new, changes
