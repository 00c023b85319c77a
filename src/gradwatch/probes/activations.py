"""Activation statistics: dead and saturated units, computed on the device from an output.

Every activation call gradwatch recognises is listed in `ACTIVATIONS`; its family comes from
the one activation vocabulary, `gradwatch.anatomy.activations` (`measured_family`), and says
what is measured:

- ``relu`` (ReLU, ReLU6 and a hardtanh whose lower bound is 0, and every other
  non-saturating nonlinearity: leaky, smooth — GELU, SiLU, ELU...): a *dead* unit is one
  that is never positive over the batch (and over positions, for maps and sequences); we
  also count outputs that are exactly zero.
- ``saturating`` (sigmoid, tanh, hardtanh, softsign, hardsigmoid): an element is
  *saturated* where the derivative is under 1% of its maximum; we also average the
  derivative. Each derivative is computed from the output alone (sigmoid: y(1-y), tanh:
  1-y², softsign: (1-|y|)², the hard ones: 0 at their bounds).

A hardtanh's family depends on its bounds, so a call is classified with its arguments
(`classify`): ``nn.ReLU6`` runs ``F.hardtanh(x, 0, 6)``, whose outputs at 0 are a ReLU's
off half, not a saturated tail.

Accumulators stay on the device; nothing here syncs with the host.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from gradwatch.anatomy.activations import family, format_spec, parse_spec, peak_derivative

#: Share of the derivative's maximum under which an element counts as saturated.
SATURATION_FRACTION = 0.01
#: Fewest outputs per unit (batch x positions, over the step's forwards) for "never positive"
#: to mean dead: a live unit on for half the inputs is off for all 8 with probability 0.4%,
#: one on for a fifth 17%, so half a site can look dead only if most of its units fire for
#: under ~8% of inputs. With fewer (a batch of 1 through an MLP: one output per unit, and
#: a unit on half the time looks dead half the time) `act_dead_frac` is not measured (NaN).
DEAD_MIN_OBSERVATIONS = 8


@dataclass(frozen=True)
class Activation:
    name: str
    family: str  # "relu" | "saturating"
    max_deriv: float = 1.0


def measured_family(spec: str) -> str:
    """What the probe measures for an activation spec (``"relu"``, ``"hardtanh(min_val=0.0)"``...):
    saturation where `gradwatch.anatomy.activations.family` says ``saturating``, dead units
    (``relu``) for every other nonlinearity — a GELU or SiLU unit that is never positive is as
    switched off as a ReLU's, and PReLU/RReLU (unknown there as functions) are leaky ReLUs."""
    return "saturating" if family(spec) == "saturating" else "relu"


#: The callables a TorchFunctionMode sees for each activation, by its name in the vocabulary.
_FUNCTIONS: dict[str, list[Any]] = {
    "relu": [torch.relu, torch.relu_, F.relu, F.relu_, torch.Tensor.relu, torch.Tensor.relu_],
    "relu6": [F.relu6],
    "leaky_relu": [F.leaky_relu, F.leaky_relu_],
    "elu": [F.elu, F.elu_],
    "selu": [F.selu, torch.selu, torch.selu_],
    "celu": [F.celu, torch.celu, torch.celu_],
    "gelu": [F.gelu],
    "silu": [F.silu],
    "mish": [F.mish],
    "hardswish": [F.hardswish],
    "softplus": [F.softplus],
    "prelu": [F.prelu, torch.prelu],
    "rrelu": [F.rrelu, F.rrelu_],
    "sigmoid": [torch.sigmoid, torch.sigmoid_, F.sigmoid, torch.Tensor.sigmoid, torch.Tensor.sigmoid_, torch.special.expit],
    "tanh": [torch.tanh, torch.tanh_, F.tanh, torch.Tensor.tanh, torch.Tensor.tanh_],
    "hardtanh": [F.hardtanh, F.hardtanh_],
    "softsign": [F.softsign],
    "hardsigmoid": [F.hardsigmoid],
}

#: Function object (as seen by a TorchFunctionMode) -> what it is, at its default parameters.
ACTIVATIONS: dict[Any, Activation] = {
    f: Activation(name, measured_family(name), peak_derivative(name))
    for name, funcs in _FUNCTIONS.items()
    for f in funcs
}


def classify(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Activation | None:
    """What a call is, with its arguments: a hardtanh's bounds decide its family."""
    act = ACTIVATIONS.get(func)
    if act is None or act.name != "hardtanh":
        return act
    return _hardtanh(*hard_bounds("hardtanh", args, kwargs))


@functools.lru_cache(maxsize=64)
def _hardtanh(lo: float, hi: float) -> Activation:
    spec = format_spec("hardtanh", {"min_val": lo, "max_val": hi})  # "relu6" for (0, 6)
    return Activation(parse_spec(spec)[0], measured_family(spec))


def hard_bounds(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[float, float]:
    """A hard activation's (lower, upper) bound, from its call's arguments (or a spec's parameters)."""
    if name == "hardsigmoid":
        return 0.0, 1.0
    lo = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
    hi = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
    return float(lo), float(hi)


def output_derivative(name: str, y: Any, bounds: Callable[[], tuple[float, float]], to_float: Callable[[Any], Any]) -> Any:
    """phi'(x) of a saturating activation from its output y = phi(x), for any tensor with
    arithmetic, ``abs`` and comparisons (torch's here, TensorFlow's in the Keras probe):
    sigmoid y(1-y), tanh 1-y^2, softsign (1-|y|)^2, the hard ones their slope strictly
    inside `bounds` (`to_float` turns that mask into numbers) and 0 at them."""
    if name == "sigmoid":
        return y * (1.0 - y)
    if name == "tanh":
        return 1.0 - y * y
    if name == "softsign":
        return (1.0 - abs(y)) ** 2
    lo, hi = bounds()
    slope = 1.0 / 6.0 if name == "hardsigmoid" else 1.0
    return to_float((y > lo) & (y < hi)) * slope


def derivative(name: str, y: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """phi'(x) of a saturating activation, from its output y = phi(x) (`output_derivative`)."""
    return output_derivative(name, y.float(), lambda: hard_bounds(name, args, kwargs), lambda m: m.float())


def unit_dim(y: torch.Tensor, channels_first: bool) -> int | None:
    """The dimension that indexes units: features for (B, F) and (B, T, F), channels for maps."""
    if y.dim() <= 1:
        return None
    if y.dim() == 2:
        return 1
    if y.dim() == 3 and not channels_first:
        return 2
    return 1


@dataclass
class DeadCarry:
    """One relu-family site's unit peaks over recording steps that each saw too few outputs
    (a batch of one: one output per unit per step) to judge dead units alone."""

    peak: torch.Tensor | None = None
    count: int = 0

    def pool(self, peak: torch.Tensor, count: int) -> tuple[torch.Tensor, int]:
        """Pool this step's peaks and output count with the carried ones; carry the result."""
        if self.peak is not None and self.peak.shape == peak.shape and self.peak.device == peak.device:
            peak, count = torch.maximum(self.peak, peak), self.count + count
        self.peak, self.count = peak, count
        return peak, count

    def clear(self) -> None:
        self.peak, self.count = None, 0


@dataclass
class SiteStats:
    """Running totals for one activation site over the forwards of one recording step."""

    activation: Activation
    units: int
    peak: torch.Tensor | None = None  # relu family: largest output of each unit
    zeros: torch.Tensor | None = None
    saturated: torch.Tensor | None = None
    deriv_sum: torch.Tensor | None = None
    count: int = 0  # elements seen
    calls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, y: torch.Tensor, dim: int | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        y = y.detach()
        self.calls += 1
        self.count += y.numel()
        if self.activation.family == "relu":
            # A unit is alive if its largest output over the batch (and positions) is positive;
            # amax over the other dimensions needs no copy, unlike a boolean any() per unit.
            others = [d for d in range(y.dim()) if d != dim]
            peak = (y.amax(dim=others) if others else y).reshape(-1) if y.dim() else y.reshape(1)
            self.peak = peak if self.peak is None else torch.maximum(self.peak, peak)
            # Non-zero outputs counted as sum(|sign(y)|): -0.0 counts as zero, as it should.
            # (count_nonzero is 10x slower than this on feature maps on the CPU.)
            acc = torch.float32 if y.element_size() < 4 else None  # half floats cannot count
            z = y.numel() - y.sign().abs_().sum(dtype=acc)
            self.zeros = z if self.zeros is None else self.zeros + z
        else:
            d = derivative(self.activation.name, y, args, kwargs)
            s = (d < SATURATION_FRACTION * self.activation.max_deriv).sum()
            t = d.sum(dtype=torch.float64)
            self.saturated = s if self.saturated is None else self.saturated + s
            self.deriv_sum = t if self.deriv_sum is None else self.deriv_sum + t

    def results(self, carry: DeadCarry | None = None) -> dict[str, torch.Tensor]:
        """Device scalars: the metric values of this site (see docs/metrics.md).

        With too few outputs per unit in this step for "never positive" to mean dead, the
        units' peaks are pooled with those of the site's previous recording steps in
        `carry` until there are enough (`DEAD_MIN_OBSERVATIONS` per unit); until then
        `act_dead_frac` is NaN.
        """
        out: dict[str, torch.Tensor] = {}
        n = max(self.count, 1)
        if self.peak is not None and self.zeros is not None:
            peak, count = self.peak, self.count
            if carry is not None and count < DEAD_MIN_OBSERVATIONS * peak.numel():
                peak, count = carry.pool(peak, count)
            if count >= DEAD_MIN_OBSERVATIONS * peak.numel():
                out["act_dead_frac"] = (peak <= 0).double().mean()
                if carry is not None:
                    carry.clear()
            else:
                out["act_dead_frac"] = torch.full((), float("nan"), dtype=torch.float64, device=peak.device)
            out["act_zero_frac"] = self.zeros.double() / n
        if self.saturated is not None and self.deriv_sum is not None:
            out["act_sat_frac"] = self.saturated.double() / n
            out["act_mean_deriv"] = self.deriv_sum / n
        return out

