"""Remedies for causes the data holds: inputs not standardised, targets the output cannot reach.

Three remedies, each tied to one cause (`gradwatch.explain.causes`):

- ``inputs`` (`input_not_standardised`): a fixed `Standardize` layer in front of the model,
  built from the per-feature means and standard deviations the watcher recorded
  (`input_mean`/`input_std`, kept for inputs of at most `probes.inputs.MAX_FEATURES`
  features). It changes nothing the optimizer sees but the input, which is what LeCun et
  al. (1998) prescribe. Feed the fixed model raw inputs, as before. Without recorded
  statistics (many features, a log without them) the remedy is advice with the code.
- ``output`` (`target_out_of_range`): the bounded activation the model returns, when it is
  a module, replaced by `nn.Identity` (a linear output); an activation called in
  ``forward()`` is named in the advice instead.
- ``targets`` (`target_scale`; and `target_out_of_range` when the targets also lie more
  than `FAR_TARGETS` times beyond the unit scale a linear output starts at): a fixed
  `ScaleOutput` layer after the model, the mirror of `Standardize`, that multiplies its
  output by the scale the targets lie at (and adds their mean, where it is known). The
  layers before it then learn numbers of order one, as they would on standardised targets,
  while the model still predicts in the targets' own units (train it on the raw targets,
  keep the layer at inference).

Where the loss is a squared error of the output, the targets were read from its gradient
(`gradwatch.explain.targets`: ``t = y - k dL/dy / 2``) and the cause carries their mean and
spread: the layer is ``ScaleOutput(std, shift=mean)`` and the layers before it learn
standardised targets. Otherwise the scale is the cause's ``target_rms``: the root of the
mean loss over every step of the first recording interval (a run that overflowed in it cut
before its rise), the root mean square distance between the targets and outputs that start
near zero — for a mean squared error, the targets' root mean square ``sqrt(mean^2 +
std^2)``; every step counts, so a batch of one gives the targets' spread rather than one
example's (``target_distance``, the first records' ``sqrt(loss)`` alone, stands in without
it). The shift is then 0 and the output layer's bias learns the offset (``mean / scale``, at
most 1). A summed loss over B outputs reads ``sqrt(B)`` times larger (the outputs are then
``1 / sqrt(B)`` of unit scale: still far nearer than before).

What the layer does to the step size: the squared error on raw targets through the layer is
``scale^2`` times the one on standardised targets, ``sum (scale f - y)^2 = scale^2 sum
(f - y / scale)^2``, so under SGD every gradient is ``scale^2`` times larger than standardised
targets give, and the rate must be ``scale^-2`` of the one those would take (adaptive
optimizers divide the factor out). `fix.first_update` predicts it for the model with the
layer; where no step size was measured, `standardised_rate` gives the rate that makes the
layer and standardised targets the same training (`fix.apply.apply`). Where the exact
gradient would overflow an adaptive optimizer's squared-gradient state (targets near 1e10
in float32), the layer passes back the gradient of ``loss / scale^2`` instead
(``normalised_gradient``).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from gradwatch._errors import GradwatchValueError
from gradwatch.record import Timeline
from gradwatch.types import Cause, CauseKind, Change, Diagnosis

__all__ = [
    "REMEDIES",
    "InputStandardized",
    "OutputScaled",
    "ScaleOutput",
    "Standardize",
    "applies",
    "complete",
    "linear_output",
    "normalise_output_gradient",
    "options",
    "output_scale",
    "scale_output",
    "standardise_inputs",
]

#: Remedy name -> the cause it answers.
REMEDIES: dict[str, CauseKind] = {
    "inputs": CauseKind.INPUT_NOT_STANDARDISED,
    "output": CauseKind.TARGET_OUT_OF_RANGE,
    "targets": CauseKind.TARGET_SCALE,
}
#: Activation modules bounded on at least one side a model may return (what `linear_output` replaces).
BOUNDED = (
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Softsign, nn.Hardsigmoid,
    nn.ReLU, nn.ReLU6, nn.Softplus, nn.ELU, nn.CELU, nn.SELU,  # bounded on one side
)  # fmt: skip
#: Targets whose root mean square distance from the starting outputs is over this factor
#: beyond the unit scale a fresh linear output starts at (and beyond a bounded activation's
#: range, when one is removed) get the `ScaleOutput` layer with `target_out_of_range`: a
#: decade, a squared error a hundred times a unit one, is where the output layer's weights
#: must grow well past anything its initialisation draws. (`target_scale` itself fires only
#: at two decades; below one decade standardising the targets is still good practice, but the
#: linear output reaches them.)
FAR_TARGETS = 10.0
#: A feature whose recorded spread is below this is left as it is (divided by 1): a
#: constant column (an always-zero pixel, a one-hot level never seen) has nothing to scale.
MIN_STD = 1e-8

FRESH_REASON = (
    "the weights were trained on the data as it was, and carry its scale (biases and the output layer pulled "
    "toward the raw targets): fresh ones start where standardised data wants them"
)
TARGET_ADVICE = (
    "Standardise the targets with the training set's statistics and map the predictions back. PyTorch: "
    "`y_mean, y_std = y_train.mean(0), y_train.std(0)`; train on `(y - y_mean) / y_std`; predict "
    "`model(x) * y_std + y_mean`. Keras: the same arithmetic on the arrays before `fit` and after `predict` "
    "(for positive, skewed targets such as prices, a log transform does it too)."
)
#: Said with the target advice when no step size is advised: the data step is the remedy.
KEEP_RATE = (
    " Keep the learning rate: the gradients shrink with the targets, so the step that threw the weights on the "
    "raw targets is not the one to change."
)
INPUT_ADVICE = (
    "Standardise the inputs with the training set's per-feature statistics (mean 0, variance 1). PyTorch: "
    "`mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-8)`, then `x = (x - mean) / std` for the "
    "training, validation and test data alike. Keras: `norm = keras.layers.Normalization(); norm.adapt(x_train)` "
    "and make `norm` the model's first layer."
)


class Standardize(nn.Module):
    """``(x - mean) / std`` along one feature axis, with fixed statistics (buffers, not trained).

    Example::

        layer = Standardize(torch.tensor([92.0]), torch.tensor([10.0]))
        layer(torch.tensor([[102.0]]))  # tensor([[1.]])
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, dim: int = -1) -> None:
        super().__init__()
        mean, std = torch.as_tensor(mean).float().reshape(-1), torch.as_tensor(std).float().reshape(-1)
        if mean.shape != std.shape:
            raise GradwatchValueError(
                f"Standardize: mean and std need the same shape, got {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        if not bool(torch.isfinite(mean).all() and torch.isfinite(std).all()) or bool((std <= 0).any()):
            raise GradwatchValueError(
                "Standardize: mean and std must be finite and std positive (a constant feature: pass std 1 for it)"
            )
        self.dim = int(dim)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = self.dim % x.dim()
        shape = [1] * x.dim()
        shape[dim] = -1
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        return (x - mean.reshape(shape).to(x.dtype)) / std.reshape(shape).to(x.dtype)

    def extra_repr(self) -> str:
        return f"features={self.get_buffer('mean').numel()}, dim={self.dim}"


class InputStandardized(nn.Module):
    """A model whose first positional input passes through `standardize` first."""

    def __init__(self, standardize: Standardize, model: nn.Module) -> None:
        super().__init__()
        self.standardize = standardize
        self.model = model

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.model(self.standardize(x), *args, **kwargs)


class _NormalisedScale(torch.autograd.Function):
    """``x * scale`` forward; backward the gradient divided by `scale` (not multiplied)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad / scale, None


class ScaleOutput(nn.Module):
    """``scale * x + shift``, with a fixed `scale` and `shift` (buffers, not trained): the
    mirror of `Standardize` on the output side. Put after a model whose targets have mean
    `shift` and spread `scale`, it lets the layers before it learn numbers of mean 0 and
    spread 1 while the model predicts in the targets' units.

    With ``normalised_gradient=True`` the backward pass divides the incoming gradient by the
    scale instead of multiplying it: the layers before it get the gradient of ``loss /
    scale^2`` — for a squared error, the loss on the targets divided by the scale, whose
    minimiser is the same. `fix` uses it only where the exact gradient (``scale^2`` times that
    one) would overflow the float type in an adaptive optimizer's squared-gradient state.

    Example::

        layer = ScaleOutput(1e5, shift=2e5)
        layer(torch.tensor([[1.5]]))  # tensor([[350000.]])
    """

    def __init__(self, scale: float, *, shift: float = 0.0, normalised_gradient: bool = False) -> None:
        super().__init__()
        scale, shift = float(scale), float(shift)
        if not (math.isfinite(scale) and scale > 0):
            raise GradwatchValueError(f"ScaleOutput: the scale must be finite and positive, got {scale!r}")
        if not math.isfinite(shift):
            raise GradwatchValueError(f"ScaleOutput: the shift must be finite, got {shift!r}")
        self.register_buffer("scale", torch.tensor(scale))
        self.register_buffer("shift", torch.tensor(shift))
        self.normalised_gradient = bool(normalised_gradient)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.get_buffer("scale").to(x.dtype)
        shift = self.get_buffer("shift").to(x.dtype)
        if self.normalised_gradient:
            out: torch.Tensor = _NormalisedScale.apply(x, scale)
            return out + shift
        return x * scale + shift

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # a layer saved before it had a shift loads as one without (shift 0)
        state_dict.setdefault(prefix + "shift", torch.zeros(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        shift = float(self.get_buffer("shift"))
        more = (f", shift={shift:.4g}" if shift else "") + (", normalised_gradient=True" if self.normalised_gradient else "")
        return f"scale={float(self.get_buffer('scale')):.4g}{more}"


class OutputScaled(nn.Module):
    """A model whose output (its first tensor, for a tuple or list) passes through `scale` last."""

    def __init__(self, model: nn.Module, scale: ScaleOutput) -> None:
        super().__init__()
        self.model = model
        self.scale_output = scale

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.model(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            return self.scale_output(out)
        if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
            return type(out)([self.scale_output(out[0]), *out[1:]])
        raise GradwatchValueError(
            f"OutputScaled: the model returned {type(out).__name__}; the scale applies to a tensor or the first "
            "tensor of a tuple or list"
        )


def output_scale(model: nn.Module) -> float:
    """The product of the `ScaleOutput` scales in `model` (1 without one)."""
    scale = 1.0
    for m in model.modules():
        if isinstance(m, ScaleOutput):
            scale *= float(m.get_buffer("scale"))
    return scale


def without_output_scale(model: nn.Module) -> nn.Module | None:
    """A copy of `model` whose `ScaleOutput` layers multiply by 1 and shift by 0, or None when it has none
    (what the model's layers give before the scale: `fix.first_update` calibrates on it)."""
    if not any(isinstance(m, ScaleOutput) for m in model.modules()):
        return None
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if isinstance(m, ScaleOutput):
            m.get_buffer("scale").fill_(1.0)
            m.get_buffer("shift").fill_(0.0)
    return plain


def standardised_rate(scale: float) -> float:
    """The SGD rate factor that makes a model ending in ``ScaleOutput(scale)``, trained with a
    squared error on raw targets, take the steps the same model without it would take on the
    targets divided by `scale`: ``scale^-2`` (module docstring)."""
    return 1.0 / (scale * scale)


def _cause(diagnosis: Diagnosis, kind: CauseKind) -> Cause | None:
    return next((c for c in diagnosis.causes if c.kind == kind), None)


def _statistics(timeline: Timeline | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The last recorded per-feature means and standard deviations, or None."""
    if timeline is None or "input_mean" not in timeline.records.metrics or "input_std" not in timeline.records.metrics:
        return None
    names = timeline.records.names("input_mean")
    means, stds = timeline.records.get("input_mean", names), timeline.records.get("input_std", names)
    rows = np.flatnonzero(np.isfinite(means).all(1) & np.isfinite(stds).all(1))
    if not rows.size:
        return None
    mean, std = means[rows[-1]], stds[rows[-1]]
    if not names or names != [str(i) for i in range(len(names))]:
        return None
    return mean, np.where(std > MIN_STD, std, 1.0)


def _feature_dim(model: nn.Module) -> int:
    """The axis the recorded statistics run along (as `probes.inputs` chose it)."""
    first = next((m for m in model.modules() if next(m.parameters(recurse=False), None) is not None), None)
    return 1 if isinstance(first, nn.modules.conv._ConvNd) else -1


def _output_module(model: nn.Module, cause: Cause) -> tuple[str, nn.Module] | None:
    for name in cause.layers:
        try:
            m = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(m, BOUNDED) and name:
            return name, m
    return None


def applies(remedy: str, model: nn.Module, diagnosis: Diagnosis, timeline: Timeline | None) -> bool:
    """Whether `remedy` can be given: the cause is in the diagnosis (advice always can)."""
    return _cause(diagnosis, REMEDIES[remedy]) is not None


def target_scale(diagnosis: Diagnosis) -> float | None:
    """The scale the targets lie at, when a `ScaleOutput` layer is wanted, from `target_scale`,
    or from `target_out_of_range` when it is over `FAR_TARGETS` times beyond both 1 and the
    removed activation's range (``high - low``, where it is bounded on both sides); else
    None. The scale is the cause's ``target_rms`` (read from the output's gradient, or every
    step's loss over the first recording interval), else its ``target_distance`` (the first
    records' alone: one example each with a batch of one)."""
    cause = _cause(diagnosis, CauseKind.TARGET_SCALE)
    far = cause is not None
    if cause is None:
        cause = _cause(diagnosis, CauseKind.TARGET_OUT_OF_RANGE)
        if cause is None:
            return None
    scale = cause.evidence.get("target_rms", cause.evidence.get("target_distance"))
    if scale is None or not math.isfinite(scale):
        return None
    if not far:
        width = cause.evidence.get("high", 1.0) - cause.evidence.get("low", 0.0)
        if not scale > FAR_TARGETS * max(1.0, width if math.isfinite(width) else 1.0):
            return None
    return float(scale) if scale > 1.0 else None


def target_layer(diagnosis: Diagnosis) -> tuple[float, float] | None:
    """``(scale, shift)`` for the `ScaleOutput` layer, when one is wanted (`target_scale`).

    Where the targets were read from the output's gradient (`explain.targets`: their mean
    and spread are known, ``target_mean``/``target_std``), the layer standardises them, as
    the threads' remedy does: ``shift`` their mean, ``scale`` their spread (at least 1: a
    spread under 1 is already one the layers learn). Otherwise only their root mean square
    is known: ``scale`` it, ``shift`` 0, and the output layer's bias learns the offset.
    """
    rms = target_scale(diagnosis)
    if rms is None:
        return None
    cause = _cause(diagnosis, CauseKind.TARGET_SCALE) or _cause(diagnosis, CauseKind.TARGET_OUT_OF_RANGE)
    assert cause is not None
    mean, std = cause.evidence.get("target_mean"), cause.evidence.get("target_std")
    if mean is None or std is None or not (math.isfinite(mean) and math.isfinite(std)):
        return rms, 0.0
    return max(float(std), 1.0), float(mean)


def options(remedy: str, diagnosis: Diagnosis, timeline: Timeline | None) -> dict[str, Any]:
    """The transform's options: the statistics for ``inputs``, the module for ``output``, the
    scale for ``targets``."""
    if remedy == "inputs":
        stats = _statistics(timeline)
        return {} if stats is None else {"mean": stats[0].tolist(), "std": stats[1].tolist()}
    if remedy == "targets":
        layer = target_layer(diagnosis)
        return {} if layer is None else {"scale": layer[0], "shift": layer[1]}
    cause = _cause(diagnosis, REMEDIES[remedy])
    if remedy == "output" and cause is not None:
        return {"layers": list(cause.layers)}
    return {}


def standardise_inputs(
    model: nn.Module,
    *,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    reason: str = "",
    inplace: bool = False,
    example_input: Any = None,
) -> tuple[nn.Module, list[Change]]:
    """Put a fixed `Standardize` in front of `model` (first in an `nn.Sequential`, whose other
    layers keep their names; else a wrapper, `InputStandardized`, whose `model` is the old
    one). Without statistics nothing changes."""
    if mean is None or std is None:
        return model, []
    new = model if inplace else copy.deepcopy(model)
    layer = Standardize(torch.tensor(mean), torch.tensor(std), dim=_feature_dim(new))
    out: nn.Module
    if isinstance(new, nn.Sequential):
        children = list(new._modules.items())
        new._modules.clear()
        new.add_module("standardize", layer)
        for name, child in children:
            new.add_module(name, child)
        out = new
        where = "as its first layer, `standardize`"
    else:
        out = InputStandardized(layer, new)
        where = "in a wrapper (`InputStandardized`: the old model is its `model`)"
    m, s = np.asarray(mean), np.asarray(std)
    return out, [
        Change(
            kind="inputs",
            target="standardize",
            description=(
                f"inputs standardised inside the model {where}: (x - mean) / std per feature with the statistics "
                f"the watcher saw ({m.size} feature{'s' if m.size != 1 else ''}, means up to {np.abs(m).max():.3g}, "
                f"spreads {s.min():.3g} to {s.max():.3g}); feed it raw data as before, and keep this layer at inference"
            ),
            reason=reason,
        )
    ]


def linear_output(
    model: nn.Module,
    *,
    layers: list[str] | None = None,
    reason: str = "",
    inplace: bool = False,
    example_input: Any = None,
) -> tuple[nn.Module, list[Change]]:
    """Replace the bounded output activation module named in `layers` by `nn.Identity`."""
    new = model if inplace else copy.deepcopy(model)
    changes: list[Change] = []
    for name in layers or []:
        try:
            m = new.get_submodule(name)
        except AttributeError:
            continue
        if not name or not isinstance(m, BOUNDED):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = new.get_submodule(parent_name) if parent_name else new
        setattr(parent, child, nn.Identity())
        changes.append(
            Change(
                kind="output",
                target=name,
                description=(
                    f"{name}: output activation {type(m).__name__} removed (nn.Identity): a linear output can reach "
                    "targets outside the range the activation was bounded to"
                ),
                reason=reason,
            )
        )
    return new, changes


def scale_output(
    model: nn.Module,
    *,
    scale: float | None = None,
    shift: float = 0.0,
    reason: str = "",
    inplace: bool = False,
    example_input: Any = None,
) -> tuple[nn.Module, list[Change]]:
    """Put a fixed ``ScaleOutput(scale, shift=shift)`` after `model` (last in an `nn.Sequential`,
    as `scale_output`; else a wrapper, `OutputScaled`, whose `model` is the old one). A model
    that already ends in one has that one's scale multiplied and its shift added to. Without a
    scale (or with one under 1, or 1 with no shift) nothing changes."""
    if scale is None or not (math.isfinite(scale) and math.isfinite(shift)) or scale < 1.0 or (scale == 1.0 and not shift):
        return model, []
    new = model if inplace else copy.deepcopy(model)
    out: nn.Module
    last = list(new.children())[-1] if isinstance(new, nn.Sequential) and len(new) else None
    existing = last if isinstance(last, ScaleOutput) else new.scale_output if isinstance(new, OutputScaled) else None
    if existing is not None:
        # scale * (old_scale * x + old_shift) + shift
        existing.get_buffer("shift").mul_(float(scale)).add_(float(shift))
        existing.get_buffer("scale").mul_(float(scale))
        out, where = new, "in its last layer, whose scale is multiplied"
    elif isinstance(new, nn.Sequential):
        name = "scale_output" if "scale_output" not in new._modules else f"scale_output_{len(new)}"
        new.add_module(name, ScaleOutput(scale, shift=shift))
        out, where = new, f"as its last layer, `{name}`"
    else:
        out, where = OutputScaled(new, ScaleOutput(scale, shift=shift)), "in a wrapper (`OutputScaled`: the old model is its `model`)"
    what = (
        f"outputs multiplied by {scale:.3g} and {shift:+.3g} added: the targets' spread and mean, read from the "
        "output's gradient"
        if shift
        else f"outputs multiplied by {scale:.3g}, the scale the targets lie at (their root mean square distance from "
        "the outputs at the start)"
    )
    return out, [
        Change(
            kind="targets",
            target="scale_output",
            description=(
                f"{what}, {where}: a fixed buffer, not trained, so the layers before it learn numbers of order one; "
                "train on the raw targets and keep this layer at inference"
            ),
            reason=reason,
        )
    ]


def _layer_advice(scale: float, removed: str, shift: float = 0.0) -> str:
    """The manual advice that goes with the `ScaleOutput` layer. It must not ask for the
    targets to be standardised as well: with the layer, that would scale them twice."""
    if shift:
        what = (
            f"`scale_output`, a fixed multiplication by {scale:.3g} plus {shift:.3g} (the targets' spread and mean, "
            "read from the output's gradient)"
        )
        outside = f"subtract {shift:.3g} from y and divide by {scale:.3g} to train; multiply the predictions by it and add {shift:.3g} back"
    else:
        what = f"`scale_output`, a fixed multiplication by {scale:.3g} (the distance of the targets from the starting outputs)"
        outside = f"divide y by {scale:.3g} to train and multiply the predictions by it"
    return (
        removed
        + f"The fixed model ends in {what}, so the layers before it learn numbers of order one. Train it on the "
        "raw y as before, with the advised rate, and keep the layer at inference. (Doing the same outside the "
        f"model instead: drop the layer, {outside}. One or the other, never both.)"
    )


def complete(plan: Any, diagnosis: Diagnosis, timeline: Timeline | None, model: nn.Module) -> list[str]:
    """Add the data remedies for every data cause in the diagnosis to `plan` (a `fix.remedies.Plan`)
    if no finding chose them, and return the manual advice that goes with them."""
    out: list[str] = []
    for remedy, kind in REMEDIES.items():
        cause = _cause(diagnosis, kind)
        if cause is not None and remedy not in plan.remedies:
            plan.add(remedy, f"{kind}: {cause.message}", **options(remedy, diagnosis, timeline))
    scale = target_scale(diagnosis)
    layer_opts = target_layer(diagnosis)
    ranged = _cause(diagnosis, CauseKind.TARGET_OUT_OF_RANGE)
    if scale is not None and layer_opts is not None and ranged is not None and "targets" not in plan.remedies:
        # A linear output in place of the bounded one starts at unit scale, and the targets lie
        # a decade or more beyond it: the scale goes with the new output.
        plan.add(
            "targets",
            f"{CauseKind.TARGET_OUT_OF_RANGE}: the targets lie about {scale:.3g} from the outputs, over "
            f"{FAR_TARGETS:g} times the unit scale the linear output starts at",
            scale=layer_opts[0],
            shift=layer_opts[1],
        )
    if any(r in plan.remedies for r in REMEDIES):
        # Weights trained on the unscaled data carry its scale: biases and the output layer
        # pushed toward raw targets, first-layer weights shrunk against raw inputs. The
        # threads' remedies all retrain from fresh weights; so does this.
        plan.add("init", f"{FRESH_REASON}", force=True)
    if _cause(diagnosis, CauseKind.INPUT_NOT_STANDARDISED) is not None and "mean" not in plan.options.get("inputs", {}):
        out.append(INPUT_ADVICE)  # no statistics to build the layer from: the user does it
    opts = plan.options.get("targets", {}) if "targets" in plan.remedies else {}
    layer = opts.get("scale")
    out += target_lines(
        diagnosis, model, None if layer is None else float(layer), lowered="lr" in plan.remedies,
        shift=float(opts.get("shift", 0.0)),
    )
    return out


def target_lines(
    diagnosis: Diagnosis, model: nn.Module, layer: float | None, *, lowered: bool = False, shift: float = 0.0
) -> list[str]:
    """The manual advice on the targets: the `ScaleOutput` layer's (`layer`, its scale, and
    its `shift`), or the advice to standardise them when there is no layer. `lowered`: a rate
    is advised anyway."""
    ranged = _cause(diagnosis, CauseKind.TARGET_OUT_OF_RANGE)
    if ranged is not None:
        lo, hi = ranged.evidence.get("low", 0.0), ranged.evidence.get("high", 1.0)
        span = f"{lo:g} to {hi:g}" if math.isfinite(lo) and math.isfinite(hi) else (
            f"{lo:g} and above" if math.isfinite(lo) else f"{hi:g} and below"
        )
        removed = _output_module(model, ranged) is not None
        gone = ": it is removed (a linear output). " if removed else ": remove it from forward() (a linear output). "
        if layer is not None:
            return [
                _layer_advice(
                    layer,
                    f"The output activation cannot produce the targets, which lie beyond its range ({span})" + gone,
                    shift,
                )
            ]
        return [f"The targets lie outside what the output activation can produce ({span})" + gone + TARGET_ADVICE]
    far = _cause(diagnosis, CauseKind.TARGET_SCALE)
    if far is not None:
        if layer is not None:
            rms = float(far.evidence.get("target_rms", layer))
            return [_layer_advice(layer, f"The targets lie about {rms:.3g} from the outputs the model starts at. ", shift)]
        keep = "" if lowered else KEEP_RATE
        return ["The targets are orders of magnitude beyond the output's scale. " + TARGET_ADVICE + keep]
    return []


def normalise_output_gradient(model: nn.Module) -> None:
    """Switch every `ScaleOutput` in `model` to its normalised gradient (in place)."""
    for m in model.modules():
        if isinstance(m, ScaleOutput):
            m.normalised_gradient = True


NORMALISED_ADVICE = (
    " Its backward pass divides the gradient by the scale instead of multiplying it: the layers get the "
    "gradient of the loss divided by the scale squared (the same minimum), since the exact one, predicted at "
    "{grad:.2g}, would overflow {dtype} in the optimizer's squared-gradient state and stop every step. Use the "
    "rate as it was."
)
