"""Give a model a divergence left with inf/NaN parameters (or NaN buffers) finite ones back.

Modules with their own ``reset_parameters()`` are reset (`reset_nonfinite_others`, before
the other transforms), Linear, convolution and recurrent layers still non-finite after
them are re-drawn by `init` (`redraw_nonfinite_layers`), and whatever stays non-finite is
named in the manual advice with why (`leftovers`), beside the advice to build a new
optimizer (`OPTIMIZER_STATE_ADVICE`): its state holds the inf/NaN too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradwatch.anatomy.modules import has_frozen_parameter, is_dense, shared_parameters
from gradwatch.fix import init as _init
from gradwatch.types import Change

__all__ = [
    "OPTIMIZER_STATE_ADVICE",
    "leftovers",
    "nonfinite_modules",
    "redraw_nonfinite_layers",
    "reset_nonfinite_others",
    "restore",
]


#: Why layers with inf/NaN parameters are re-drawn.
NONFINITE_REASON = (
    "its parameters hold inf/NaN: the divergence destroyed them, and nothing trains from "
    "non-finite weights"
)
#: Said whenever `fix` finds a non-finite model: the optimizer's copy of the state is broken too.
OPTIMIZER_STATE_ADVICE = (
    "The model held inf/NaN, so the optimizer's state (SGD momentum, Adam's moment "
    "estimates) holds them too: build a new optimizer for the fixed model rather than reusing the "
    "old one or its state_dict, and restart any learning-rate schedule."
)


def _broken_parameter(t: torch.Tensor) -> bool:
    return t.is_floating_point() and not bool(torch.isfinite(t.detach()).all())


def _broken_buffer(t: torch.Tensor) -> bool:
    # NaN only: an infinite buffer is often meant (an attention mask's -inf, a running
    # maximum that starts at -inf); a divergence leaves running statistics NaN
    return t.is_floating_point() and bool(torch.isnan(t.detach()).any())


def _own_parameters(m: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """`m`'s own parameters, and those a parametrization (weight_norm, spectral_norm) computes
    its weights from, named as in ``m.state_dict()``."""
    own: list[tuple[str, torch.Tensor]] = list(m.named_parameters(recurse=False))
    for pname, plist in getattr(m, "parametrizations", {}).items():
        own += [(f"parametrizations.{pname}.{n}", t) for n, t in plist.named_parameters()]
    return own


def _own_nonfinite(m: nn.Module) -> list[str]:
    """Names of `m`'s own parameters holding inf/NaN and buffers holding NaN."""
    return [n for n, t in _own_parameters(m) if _broken_parameter(t)] + [
        n for n, t in m.named_buffers(recurse=False) if _broken_buffer(t)
    ]


def nonfinite_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules whose own parameters hold inf/NaN or buffers NaN (a parametrization's tensors
    count for the module it parametrizes)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if not isinstance(m, nn.utils.parametrize.ParametrizationList | nn.ModuleDict) and _own_nonfinite(m)
    ]


def _redrawn_by_init(m: nn.Module) -> bool:
    return is_dense(m) or isinstance(m, nn.RNNBase | nn.RNNCellBase)


def restore(name: str, m: nn.Module, tied: set[int]) -> Change | None:
    """Give one non-finite module finite tensors by its own initialiser, if that can be done
    without touching what is sound; None when nothing was done (`leftovers` names it)."""
    bad = _own_nonfinite(m)
    params = dict(_own_parameters(m))
    if not bad or has_frozen_parameter(m):
        return None
    if not any(n in params for n in bad):
        # running statistics only: reset_parameters() would also re-draw trained weights
        if not callable(getattr(m, "reset_running_stats", None)):
            return None
        with torch.no_grad():
            m.reset_running_stats()  # type: ignore[operator]
        what = "running statistics reset (reset_running_stats)"
    elif any(id(p) in tied and not _broken_parameter(p) for p in m.parameters(recurse=False)):
        # It shares a parameter another holder has already restored (a head tied to an
        # embedding): re-drawing this module would re-draw that one too. Its own broken
        # biases go back to 0, what every re-initialisation here gives a bias.
        biases = [n for n in bad if n in params and n.split(".")[-1].startswith("bias") and id(params[n]) not in tied]
        if not biases:
            return None
        with torch.no_grad():
            for n in biases:
                params[n].zero_()
        what = f"{', '.join(biases)} set to 0 (its other parameters are shared with another module)"
    else:
        reset = next(
            (getattr(m, n) for n in ("reset_parameters", "_reset_parameters") if callable(getattr(m, n, None))),
            None,
        )
        if reset is None:
            return None
        with torch.no_grad():
            reset()
        what = f"reset to its own initialisation ({reset.__name__})"
    still = _own_nonfinite(m)
    return Change(
        kind="init",
        target=name,
        description=f"{name}: {type(m).__name__} {what}"
        + (f"; still inf/NaN in {', '.join(still)} (see the advice)" if still else ""),
        reason=NONFINITE_REASON,
    )


def reset_nonfinite_others(model: nn.Module, *, layers_too: bool = False) -> list[Change]:
    """Non-finite modules `init` does not re-draw (norms, embeddings, attention): their own
    initialiser (`restore`). Run before the transforms, so the layers above see finite
    inputs; and with `layers_too` after `init`, for layers it did not reach (one the
    forward pass never calls as a module, such as ``nn.MultiheadAttention``'s ``out_proj``,
    or one tied to another module)."""
    tied = shared_parameters(model)
    changes = []
    for name, m in nonfinite_modules(model):
        if _redrawn_by_init(m) and not layers_too:
            continue
        change = restore(name, m, tied)
        if change is not None:
            changes.append(change)
    return changes


def redraw_nonfinite_layers(model: nn.Module, example_input: Any) -> tuple[list[Change], list[str]]:
    """Linear, convolution and recurrent layers still non-finite after the transforms:
    re-drawn by `init` (its rules; inf/NaN never matches a target scale), then what init did
    not reach by `restore`. Whatever stays non-finite is named in the manual advice."""
    layers = [name for name, m in nonfinite_modules(model) if _redrawn_by_init(m)]
    changes: list[Change] = []
    if layers:
        _, changes = _init.transform(
            model, example_input=example_input, layers=layers, reason=NONFINITE_REASON, inplace=True
        )
    changes.extend(reset_nonfinite_others(model, layers_too=True))
    return changes, leftovers(model)


def leftovers(model: nn.Module) -> list[str]:
    left = []
    for name, m in nonfinite_modules(model):
        where = f"`{name}`" if name else "the root module"
        if has_frozen_parameter(m):
            why = "it holds a frozen parameter, and gradwatch re-draws no layer with one"
        elif getattr(m, "parametrizations", None):
            why = (
                "its weight is computed by a parametrization (weight_norm, spectral_norm), whose own "
                "tensors its reset_parameters() does not reach"
            )
        elif not any(n in dict(_own_parameters(m)) for n in _own_nonfinite(m)):
            why = "only its buffers are NaN, and it has no reset_running_stats() to reset them alone"
        else:
            why = "it has no reset_parameters() and is not a layer gradwatch re-draws (a custom parameter)"
        left.append(
            f"{where} ({type(m).__name__}) still holds inf/NaN in {', '.join(_own_nonfinite(m))}: {why}; "
            "the fixed model computes NaN until it is finite. Build the model afresh and call gw.fix on the "
            "new one with the same diagnosis, or reload a checkpoint taken before the divergence."
        )
    return left
