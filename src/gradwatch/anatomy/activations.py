"""Elementwise activations by name: recognise them (module or functional call) and write them down.

An activation is written as a *spec*: its functional name, plus the parameters that
change its shape, e.g. ``"relu"``, ``"leaky_relu(negative_slope=0.1)"``,
``"gelu(approximate=tanh)"``. Specs are plain strings so they travel in
`Layer.extra` and in logs; `gradwatch.explain.theory` turns them back into functions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

__all__ = [
    "ACTIVATION_FAMILIES",
    "LEAKY",
    "PIECEWISE_LINEAR",
    "RELU_FAMILY",
    "RELU_FUNCTIONS",
    "SATURATING",
    "SATURATING_FUNCTIONS",
    "SELU_FAMILY",
    "family",
    "format_spec",
    "function_spec",
    "is_activation",
    "is_saturating",
    "keras_spec",
    "module_spec",
    "parse_spec",
    "peak_derivative",
]

#: Which family each known activation belongs to (the activation probes measure dead units
#: for every family but ``saturating``: `gradwatch.probes.activations.measured_family`):
#: ``relu`` units can die (output exactly 0 on a half-line), ``saturating`` ones flatten
#: out on both sides, ``smooth`` ones do neither, ``linear`` is the identity. A hardtanh
#: whose lower bound is 0 is a ReLU clipped at its upper bound (`family`).
ACTIVATION_FAMILIES: dict[str, str] = {
    "relu": "relu",
    "relu6": "relu",
    "leaky_relu": "relu",
    "sigmoid": "saturating",
    "tanh": "saturating",
    "hardtanh": "saturating",
    "softsign": "saturating",
    "hardsigmoid": "saturating",
    "gelu": "smooth",
    "silu": "smooth",
    "elu": "smooth",
    "celu": "smooth",
    "selu": "smooth",
    "softplus": "smooth",
    "mish": "smooth",
    "hardswish": "smooth",
    "linear": "linear",
}

#: Activations whose derivative goes to zero on both sides: stacked deep, they vanish.
#: nn.ReLU6 subclasses nn.Hardtanh but belongs to the ReLU family, hence the explicit check.
SATURATING: tuple[type[nn.Module], ...] = (
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Softsign,
    nn.Hardsigmoid,
)

#: Piecewise-linear or ReLU-like activations: He initialisation for the piecewise-linear
#: ones, the critical scale of mean-field theory for the smooth ones (`fix.init.scheme_for`).
RELU_FAMILY: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
)

#: Self-normalising: SELU is designed for LeCun initialisation (sigma_w^2 = 1).
SELU_FAMILY: tuple[type[nn.Module], ...] = (nn.SELU,)

#: Functional spellings of saturating activations, as attribute names of a call.
SATURATING_FUNCTIONS = frozenset({"sigmoid", "tanh", "hardtanh", "softsign", "hardsigmoid"})
RELU_FUNCTIONS = frozenset(
    {"relu", "relu6", "leaky_relu", "gelu", "silu", "elu", "celu", "selu", "mish", "softplus", "prelu"}
)

#: Activations that are piecewise linear through 0 (a ReLU with some negative slope), for
#: which He's ``sigma_w^2 = 2 / (1 + a^2)`` gives chi = 1 exactly, at any depth.
PIECEWISE_LINEAR = frozenset({"relu", "relu6", "leaky_relu", "prelu"})

#: ReLU-family functions whose negative side still passes a gradient: "never positive" is
#: not "dead" for them.
LEAKY = frozenset(
    {"leaky_relu", "elu", "selu", "celu", "gelu", "silu", "prelu", "rrelu", "mish", "softplus", "hardswish"}
)


#: The peak of each saturating activation's derivative, where it differs from 1 (at its
#: centre: sigmoid'(0) = 1/4, hardsigmoid's slope 1/6).
_PEAK_DERIVATIVE = {"sigmoid": 0.25, "hardsigmoid": 1.0 / 6.0}


def peak_derivative(name: str) -> float:
    """The largest value the derivative of activation `name` takes (1 but for sigmoid and
    hardsigmoid): the gradient a unit at its centre passes on."""
    return _PEAK_DERIVATIVE.get(name, 1.0)


def is_saturating(m: nn.Module) -> bool:
    return isinstance(m, SATURATING) and not isinstance(m, nn.ReLU6)


def is_activation(m: nn.Module) -> bool:
    return is_saturating(m) or isinstance(m, RELU_FAMILY + SELU_FAMILY)


# The positional parameters (after the input) of each functional form, so that a call such
# as F.leaky_relu(x, 0.2) is read the same as F.leaky_relu(x, negative_slope=0.2).
_POSITIONAL: dict[str, tuple[str, ...]] = {
    "leaky_relu": ("negative_slope",),
    "elu": ("alpha",),
    "celu": ("alpha",),
    "softplus": ("beta", "threshold"),
    "hardtanh": ("min_val", "max_val"),
}
# Parameters that matter for the shape of the function (others, like inplace, do not).
_SHAPE_PARAMS: dict[str, tuple[str, ...]] = {
    "leaky_relu": ("negative_slope",),
    "elu": ("alpha",),
    "celu": ("alpha",),
    "softplus": ("beta",),
    "hardtanh": ("min_val", "max_val"),
    "gelu": ("approximate",),
}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "leaky_relu": {"negative_slope": 0.01},
    "elu": {"alpha": 1.0},
    "celu": {"alpha": 1.0},
    "softplus": {"beta": 1.0},
    "hardtanh": {"min_val": -1.0, "max_val": 1.0},
    "gelu": {"approximate": "none"},
}
_ALIASES = {"expit": "sigmoid", "special_expit": "sigmoid", "swish": "silu"}


def family(spec: str | None) -> str | None:
    """``relu``, ``saturating``, ``smooth`` or ``linear`` for a spec; None if unknown.

    A hardtanh with lower bound 0 (ReLU6 is one) is ``relu``: its outputs at 0 are a ReLU's
    off half, and at standard scales its upper bound is seldom reached.
    """
    if spec is None:
        return "linear"
    name, params = parse_spec(spec)
    if name == "hardtanh" and params.get("min_val", _DEFAULTS["hardtanh"]["min_val"]) == 0.0:
        return "relu"
    return ACTIVATION_FAMILIES.get(name)


def format_spec(name: str, params: Mapping[str, Any] | None = None) -> str:
    """``name`` or ``name(k=v, ...)``, leaving out parameters at their default value.

    ``hardtanh`` between 0 and 6 is written ``relu6``, as ``nn.ReLU6`` is: one function, one name.
    """
    if name == "hardtanh" and params and (params.get("min_val"), params.get("max_val")) == (0.0, 6.0):
        return "relu6"
    keep = {
        k: v
        for k, v in (params or {}).items()
        if k in _SHAPE_PARAMS.get(name, ()) and _DEFAULTS.get(name, {}).get(k) != v
    }
    if name == "leaky_relu":  # the slope is the whole point of a leaky ReLU: always shown
        keep.setdefault("negative_slope", (params or {}).get("negative_slope", 0.01))
    if not keep:
        return name
    inner = ", ".join(f"{k}={_fmt(v)}" for k, v in keep.items())
    return f"{name}({inner})"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return repr(round(v, 6))
    return str(v)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"leaky_relu(negative_slope=0.1)"`` into ``("leaky_relu", {"negative_slope": 0.1})``."""
    m = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*", spec)
    if m is None:
        raise ValueError(f"not an activation spec: {spec!r} (expected e.g. 'relu' or 'elu(alpha=0.5)')")
    name, inner = m.group(1), m.group(2)
    params: dict[str, Any] = {}
    if inner:
        for part in inner.split(","):
            k, _, v = part.partition("=")
            v = v.strip()
            try:
                params[k.strip()] = float(v)
            except ValueError:
                params[k.strip()] = v
    return name, params


def module_spec(module: nn.Module) -> str | None:
    """The spec of an activation module (``nn.ReLU()`` -> ``"relu"``); None if it is not one."""
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.ReLU6):
        return "relu6"
    if isinstance(module, nn.LeakyReLU):
        return format_spec("leaky_relu", {"negative_slope": float(module.negative_slope)})
    if isinstance(module, nn.RReLU):  # at evaluation it is a leaky ReLU with the mean slope
        return format_spec("leaky_relu", {"negative_slope": (module.lower + module.upper) / 2})
    if isinstance(module, nn.PReLU):
        return format_spec("leaky_relu", {"negative_slope": float(module.weight.detach().mean())})
    if isinstance(module, nn.Sigmoid):
        return "sigmoid"
    if isinstance(module, nn.Tanh):
        return "tanh"
    if isinstance(module, nn.Hardtanh):
        return format_spec("hardtanh", {"min_val": float(module.min_val), "max_val": float(module.max_val)})
    if isinstance(module, nn.ELU):
        return format_spec("elu", {"alpha": float(module.alpha)})
    if isinstance(module, nn.CELU):
        return format_spec("celu", {"alpha": float(module.alpha)})
    if isinstance(module, nn.GELU):
        return format_spec("gelu", {"approximate": module.approximate})
    if isinstance(module, nn.Softplus):
        return format_spec("softplus", {"beta": float(module.beta)})
    for cls, name in (
        (nn.SiLU, "silu"),
        (nn.SELU, "selu"),
        (nn.Softsign, "softsign"),
        (nn.Hardsigmoid, "hardsigmoid"),
        (nn.Hardswish, "hardswish"),
        (nn.Mish, "mish"),
    ):
        if isinstance(module, cls):
            return name
    return None


def function_spec(fn_name: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> str | None:
    """The spec of a functional activation call such as ``F.leaky_relu(x, 0.2)`` or ``x.sigmoid_()``.

    `fn_name` is the function's ``__name__`` (or a method name); `args` are the positional
    arguments *after* the input. Returns None when the call is not a known activation.
    """
    name = fn_name.rstrip("_")
    name = _ALIASES.get(name, name)
    if name not in ACTIVATION_FAMILIES or name == "linear":
        return None
    params: dict[str, Any] = {}
    for key, value in zip(_POSITIONAL.get(name, ()), args, strict=False):
        params[key] = value
    for key, value in (kwargs or {}).items():
        params[key] = value
    params = {
        k: (float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v)
        for k, v in params.items()
        if isinstance(v, int | float | str)
    }
    return format_spec(name, params)


#: Keras's names for activations (``keras.activations.*``, the ``activation=`` strings) where
#: they differ from the vocabulary above; the rest (``relu``, ``sigmoid``, ``tanh``...) agree.
_KERAS_NAMES = {
    "hard_sigmoid": "hardsigmoid",
    "hard_silu": "hardswish",
    "hard_swish": "hardswish",
    "swish": "silu",
    "hard_tanh": "hardtanh",
}
#: Keras's defaults where they differ from PyTorch's (`keras.activations.leaky_relu`: 0.2).
_KERAS_DEFAULTS: dict[str, dict[str, Any]] = {"leaky_relu": {"negative_slope": 0.2}}


def keras_spec(name: str, params: Mapping[str, Any] | None = None) -> str | None:
    """The spec of a Keras activation by its name (``Dense(activation="hard_sigmoid")``,
    ``keras.activations.gelu``...), with the parameters that shape it; None when it is not
    an elementwise activation gradwatch knows (``softmax``, ``exponential``).

    ``keras_spec("linear")`` is None too: no activation. A ``gelu`` is Keras's exact one
    unless ``approximate=True`` is given.
    """
    name = _KERAS_NAMES.get(name, name)
    if name not in ACTIVATION_FAMILIES or name == "linear":
        return None
    merged = {**_KERAS_DEFAULTS.get(name, {}), **(params or {})}
    if name == "gelu":
        merged = {"approximate": "tanh" if merged.get("approximate") else "none"}
    return format_spec(name, merged)
