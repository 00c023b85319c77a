"""Remedies for causes the data holds: inputs not standardised, targets the output cannot reach.

Three remedies, each tied to one cause (`gradwatch.explain.causes`):

- ``inputs`` (`input_not_standardised`): a fixed `Standardize` layer in front of the model,
  built from the per-feature means and standard deviations the watcher recorded
  (`input_mean`/`input_std`, kept for inputs of at most `probes.inputs.MAX_FEATURES`
  features). It changes nothing the optimizer sees but the input, which is what LeCun et
  al. (1998) prescribe. Feed the fixed model raw inputs, as before. Without recorded
  statistics (many features, a log without them) the remedy is advice with the code.
- ``output`` (`target_out_of_range`): the bounded activation the model returns, when it is
  a module, replaced by `nn.Identity` (a linear output), with advice to standardise the
  targets; an activation called in ``forward()`` is named in the advice instead.
- ``targets`` (`target_scale`): advice only, since the targets live outside the model:
  standardise them and map the predictions back.
"""

from __future__ import annotations

import copy
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
    "Standardize",
    "applies",
    "complete",
    "linear_output",
    "options",
    "standardise_inputs",
]

#: Remedy name -> the cause it answers.
REMEDIES: dict[str, CauseKind] = {
    "inputs": CauseKind.INPUT_NOT_STANDARDISED,
    "output": CauseKind.TARGET_OUT_OF_RANGE,
    "targets": CauseKind.TARGET_SCALE,
}
#: Bounded activation modules a model may return (what `linear_output` replaces).
BOUNDED = (nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Softsign, nn.Hardsigmoid)
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


def options(remedy: str, diagnosis: Diagnosis, timeline: Timeline | None) -> dict[str, Any]:
    """The transform's options: the statistics for ``inputs``, the module for ``output``."""
    if remedy == "inputs":
        stats = _statistics(timeline)
        return {} if stats is None else {"mean": stats[0].tolist(), "std": stats[1].tolist()}
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


def complete(plan: Any, diagnosis: Diagnosis, timeline: Timeline | None, model: nn.Module) -> list[str]:
    """Add the data remedies for every data cause in the diagnosis to `plan` (a `fix.choose.Plan`)
    if no finding chose them, and return the manual advice that goes with them."""
    out: list[str] = []
    for remedy, kind in REMEDIES.items():
        cause = _cause(diagnosis, kind)
        if cause is not None and remedy not in plan.remedies:
            plan.add(remedy, f"{kind}: {cause.message}", **options(remedy, diagnosis, timeline))
    if any(r in plan.remedies for r in REMEDIES):
        # Weights trained on the unscaled data carry its scale: biases and the output layer
        # pushed toward raw targets, first-layer weights shrunk against raw inputs. The
        # threads' remedies all retrain from fresh weights; so does this.
        plan.add("init", f"{FRESH_REASON}", force=True)
    if _cause(diagnosis, CauseKind.INPUT_NOT_STANDARDISED) is not None and "mean" not in plan.options.get("inputs", {}):
        out.append(INPUT_ADVICE)  # no statistics to build the layer from: the user does it
    cause = _cause(diagnosis, CauseKind.TARGET_OUT_OF_RANGE)
    if cause is not None:
        lo, hi = cause.evidence.get("low", 0.0), cause.evidence.get("high", 1.0)
        removed = _output_module(model, cause) is not None
        out.append(
            f"The targets lie outside what the output activation can produce ({lo:g} to {hi:g})"
            + (": it is removed (a linear output). " if removed else ": remove it from forward() (a linear output). ")
            + TARGET_ADVICE
        )
    elif _cause(diagnosis, CauseKind.TARGET_SCALE) is not None:
        keep = "" if "lr" in plan.remedies else KEEP_RATE
        out.append("The targets are orders of magnitude beyond the output's scale. " + TARGET_ADVICE + keep)
    return out
