"""`gw.inspect`: judge a model before it trains, from its structure, one probing pass and theory.

::

    d = gw.inspect(model, example_input)            # loss_fn=None: see _default_loss
    for r in d.layers:
        print(r.name, r.measured_grad_norm, r.predicted_grad_norm)
    print(d.causes[0])                              # the likeliest risk, with its remedy

What happens:

1. `analyse` reads the structure (torch.fx, else a recorded forward pass).
2. One forward and backward pass on the example input, in training mode (as the first
   training step would run), measures every layer's gradient norm with `GradientProbe`.
3. Where the model is a plain chain of Linear layers with known activations, mean-field
   theory predicts each layer's weight-gradient norm from the measured input and output
   gradient (`theory.predict_chain`).
4. The causes (`explain.causes`) are ranked; a gradient ratio past 1e±6 between the first
   and last weight layer becomes a finding (at most a warning: nothing has trained yet).

The model is left as it was: modes, buffers, parameters' ``.grad``, hooks; so are the global
random generators (torch's, NumPy's, Python's `random`), which a model's training-mode
forward may draw from (dropout, SpecAugment): training after `inspect` draws what it
would have drawn without it. A model with lazy modules that have not run yet is inspected
on a copy that one forward pass gives its parameters (`gradwatch._lazy.materialised`), so
the model stays lazy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradwatch._compiled import unwrap
from gradwatch._errors import GradwatchTypeError, GradwatchValueError, ModelError
from gradwatch._lazy import lazy_modules, materialised
from gradwatch.anatomy import Anatomy
from gradwatch.anatomy._call import call_model, split_input
from gradwatch.anatomy._graph import iter_tensors
from gradwatch.anatomy._guard import Preserved, keeps_random_states
from gradwatch.anatomy.map import ROOT
from gradwatch.anatomy.structure import Structure, analyse
from gradwatch.detect.probing import probing_pass
from gradwatch.detect.thresholds import Thresholds
from gradwatch.explain.link import link
from gradwatch.explain.theory import (
    Prediction,
    activation,
    chain_layer,
    jacobian_singular_values,
    predict_chain,
)
from gradwatch.probes import GradientProbe, Transfer
from gradwatch.types import Diagnosis, LayerReport

__all__ = ["inspect"]

LossFn = Callable[[Any], torch.Tensor]


def _default_loss(output: Any) -> torch.Tensor:
    """``output.loss`` when the model computed one (Hugging Face with labels), else
    ``sum(y^2) / 2`` over the first floating-point output.

    Half the sum of squares needs no labels, and its gradient with respect to the output is
    the output itself: every output unit sends back a signal in proportion to its size,
    as a regression loss does at initialisation. Ratios between layers do not depend on it.
    """
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    for t in iter_tensors(output):
        if t.is_floating_point() and t.requires_grad:
            return 0.5 * t.float().pow(2).sum()
    raise GradwatchValueError(
        f"the model's output ({type(output).__name__}) has no floating-point tensor that depends on "
        "its parameters; pass loss_fn=lambda output: ... returning a scalar loss"
    )


def _chain_for_theory(
    anatomy: Anatomy, structure: Structure, kinds: tuple[str, ...] = ("Linear",)
) -> tuple[list[str] | None, str]:
    """The layers of a plain chain of Linear layers (of a type in `kinds`: Keras's are ``Dense``)
    covering the whole model, or None and why not."""
    if not structure.sees_skips:
        return None, "the model's dataflow could not be traced"
    chain = structure.chain
    if len(chain) < 2:
        return None, "fewer than two layers in a chain"
    others = [layer.name for layer in anatomy.layers if layer.name not in chain]
    if others:
        return None, f"it has layers outside its main chain ({', '.join(others[:3])}{'...' if len(others) > 3 else ''})"
    for i, name in enumerate(chain):
        layer = anatomy[name]
        e = layer.extra
        if layer.type not in kinds or e.get("sigma_w2") is None:
            return None, f"'{name}' is a {layer.type}, not a {' or '.join(kinds)} layer"
        if e.get("norm") or e.get("skip"):
            return None, f"'{name}' has a normalisation or a skip connection"
        if i + 1 < len(chain) and structure.successors.get(name) != [chain[i + 1]]:
            return None, f"'{name}' does not feed '{chain[i + 1]}' directly"
        try:
            activation(e.get("activation"))
        except GradwatchValueError:
            return None, f"no theory for the activation after '{name}' ({e.get('activation')})"
    return chain, ""


def _validate_loss(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise GradwatchTypeError(f"loss_fn must return a tensor, got {type(loss).__qualname__}")
    if loss.numel() != 1:
        raise GradwatchValueError(
            f"loss_fn must return a scalar (one-element) tensor, got shape {tuple(loss.shape)}; reduce it, e.g. with .sum()"
        )
    if not loss.requires_grad:
        raise GradwatchValueError(
            "the loss does not depend on any trainable parameter (requires_grad is False); "
            "check that the model's parameters require gradients and that loss_fn uses the output"
        )
    return loss.reshape(())


@keeps_random_states
def inspect(
    model: nn.Module,
    example_input: Any,
    loss_fn: LossFn | None = None,
    *,
    jacobian: bool = False,
) -> Diagnosis:
    """Static analysis, one probing forward/backward pass, and theory, before training.

    Args:
        model: any ``nn.Module`` (third-party ones included), or a Keras 3 model on the
            TensorFlow backend (see docs/keras.md).
        example_input: a tensor (``model(x)``), a tuple of positional arguments or a dict of
            keyword arguments (``model(**batch)``, Hugging Face style). A real batch gives
            the most faithful answer; its size matters for the absolute gradient norms.
        loss_fn: ``output -> scalar tensor``. Default: ``output.loss`` if the model returns
            one, else half the sum of squares of its first floating-point output.
        jacobian: also compute the singular values of the input-output Jacobian for a few
            samples (a floating-point tensor input only) and summarise them in the notes.

    Returns:
        A `Diagnosis` with ``layers`` (measured and, where theory applies, predicted gradient
        norms), ``causes`` (risks, ranked) and ``findings`` (only for a gradient ratio past
        1e±6 or a non-finite gradient; at most warnings).

    Raises:
        ModelError: the model failed on the example input (names the module and its input shapes).
    """
    if type(model).__module__.startswith("keras"):
        # a Keras model: read by the Keras integration, imported only now (it imports keras)
        from gradwatch.integrations.keras._inspect import inspect_keras

        d = inspect_keras(model, example_input, loss_fn)
        if jacobian:
            d.notes.append("Jacobian spectrum skipped: it is computed for torch models only")
        return d
    model = unwrap(model)  # type: ignore[assignment]  # a torch.compile wrapper: its module
    if not isinstance(model, nn.Module):
        raise GradwatchTypeError(
            f"inspect() expects a torch.nn.Module, got {type(model).__module__}.{type(model).__qualname__}"
        )
    split_input(example_input)  # validates the kind of input before anything runs
    lazy = bool(lazy_modules(model))
    if lazy:
        model = materialised(model, example_input)
    anatomy = Anatomy.from_module(model)
    if not anatomy.trainable:
        raise GradwatchValueError(
            f"every parameter of {type(model).__name__} is frozen (requires_grad=False): no gradient to inspect"
        )
    structure = analyse(model, example_input, anatomy)
    chain, why_not = _chain_for_theory(anatomy, structure)
    notes = [f"structure read by {structure.method}", *structure.notes]
    if lazy:
        notes.append(
            "lazy modules: inspected a copy that one forward pass gave its parameters; the model itself is left lazy"
        )
    names = [layer.name for layer in anatomy.trainable]
    captured: dict[str, torch.Tensor] = {}
    handles: list[RemovableHandle] = []
    order: list[str] = []
    modules = dict(model.named_modules())
    with Preserved(model, grads=True):
        try:
            model.train()
            for layer in anatomy.layers:
                mod = modules[layer.name] if layer.name != ROOT else model
                handles.append(mod.register_forward_pre_hook(lambda m, a, n=layer.name: order.append(n)))
            if chain is not None:
                handles.extend(_capture(modules[chain[0]], modules[chain[-1]], captured))
            output = call_model(model, example_input)
            loss = _validate_loss(loss_fn(output) if loss_fn is not None else _default_loss(output))
            try:
                loss.backward()
            except Exception as e:
                raise ModelError(f"the backward pass of {type(model).__name__} failed: {type(e).__name__}: {e}") from e
            if all(layer.order is None for layer in anatomy.layers) and order:
                anatomy.reorder(order)
                names = [layer.name for layer in anatomy.trainable]
            measured, wnorm, zero = _measure(anatomy, names)
        finally:
            for h in handles:
                h.remove()
        spectrum: list[float] = []
        if jacobian:
            note, spectrum = _jacobian(model, example_input)
            notes.append(note)
    q0 = _input_scale(example_input, captured)
    prediction: Prediction | None = None
    if chain is not None and "input" in captured and "output_grad" in captured:
        prediction = predict_chain(
            [chain_layer(anatomy[n]) for n in chain],
            captured["input"].double().numpy(),
            captured["output_grad"].double().numpy(),
        )
        notes.extend(prediction.notes)
    elif chain is None:
        notes.append(f"no theory prediction per layer: {why_not}")
    reports = _reports(anatomy, measured, wnorm, zero, prediction)
    if loss_fn is None:
        notes.append("loss: output.loss if present, else sum(output^2)/2 (see docs/inspect.md)")
    predicted = float(prediction.relative[0]) if prediction is not None and len(prediction.layers) >= 2 else None
    found = probing_pass(measured, _weight_layers(anatomy, measured), predicted, Thresholds())
    d = Diagnosis(findings=found, layers=reports, steps=0, notes=notes, jacobian=spectrum)
    return link(d, anatomy, structure, None, q0=q0)


def _capture(first: nn.Module, last: nn.Module, captured: dict[str, torch.Tensor]) -> list[RemovableHandle]:
    """Hooks that keep the chain's input and the gradient at its output, for the theory."""

    def grab_input(m: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor) and "input" not in captured:
            x = args[0].detach()
            captured["input"] = x.reshape(-1, x.shape[-1]).cpu()

    def grab_output(m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.requires_grad and "output_grad" not in captured:

            def keep(g: torch.Tensor) -> None:
                captured["output_grad"] = g.detach().reshape(-1, g.shape[-1]).cpu()

            out.register_hook(keep)

    return [first.register_forward_pre_hook(grab_input), last.register_forward_hook(grab_output)]


def _measure(anatomy: Anatomy, names: list[str]) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Per-layer gradient norm, weight norm and share of zero gradient entries, via `GradientProbe`."""
    probe = GradientProbe(anatomy, names, updates=False)
    transfer = Transfer()
    snap = probe.measure_grads(transfer)
    probe.measure_weights(transfer)
    host = transfer.fetch()
    stats = probe.summarise(host, snap)
    grad, gmax = stats["grad_norm"], stats["grad_max"]
    for j, name in enumerate(names):
        # float32 sums of squares underflow for entries below ~1e-19: recompute those in float64
        if grad[j] == 0.0 and gmax[j] > 0.0:
            grads = [p.grad for p in anatomy.parameters_of(name) if p.grad is not None]
            grad[j] = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
    return (
        {n: float(v) for n, v in zip(names, grad, strict=True)},
        {n: float(v) for n, v in zip(names, stats["weight_norm"], strict=True)},
        {n: float(v) for n, v in zip(names, stats["grad_zero_frac"], strict=True)},
    )




def _input_scale(example_input: Any, captured: dict[str, torch.Tensor]) -> float:
    """Mean square of the input (the theory's q0): the chain's input, else the first float tensor, else 1."""
    x = captured.get("input")
    if x is None:
        args, kwargs = split_input(example_input)
        x = next((t for t in iter_tensors((args, kwargs)) if t.is_floating_point()), None)
    if x is None or x.numel() == 0:
        return 1.0
    q = float(x.detach().double().pow(2).mean())
    return q if math.isfinite(q) and q > 0 else 1.0


def _reports(
    anatomy: Anatomy,
    measured: dict[str, float],
    wnorm: dict[str, float],
    zero: dict[str, float],
    prediction: Prediction | None,
) -> list[LayerReport]:
    predicted: dict[str, float] = {}
    chis: dict[str, float] = {}
    if prediction is not None:
        last = measured.get(prediction.layers[-1], math.nan)
        rel = prediction.relative
        for i, name in enumerate(prediction.layers):
            # Anchored at the last layer's measured norm: "what theory expects, given the output gradient".
            if math.isfinite(last) and last > 0 and math.isfinite(rel[i]):
                predicted[name] = float(last * rel[i])
            chis[name] = float(prediction.gains.chi[i])
    out = []
    for layer in anatomy.layers:
        e = layer.extra
        g = measured.get(layer.name)
        out.append(
            LayerReport(
                name=layer.name,
                type=layer.type,
                measured_grad_norm=None if g is None or math.isnan(g) else g,
                predicted_grad_norm=predicted.get(layer.name),
                weight_norm=wnorm.get(layer.name),
                grad_zero_frac=None if zero.get(layer.name) is None or math.isnan(zero[layer.name]) else zero[layer.name],
                frozen=layer.frozen,
                extra={
                    k: e.get(k)
                    for k in ("activation", "norm", "skip", "sigma_w2", "sigma_b2", "recurrent", "seq_len")
                }
                | ({"chi": chis[layer.name]} if layer.name in chis and math.isfinite(chis[layer.name]) else {}),
            )
        )
    return out


def _weight_layers(anatomy: Anatomy, measured: dict[str, float]) -> list[str]:
    return [
        layer.name
        for layer in anatomy.layers
        if layer.name in measured
        and not math.isnan(measured[layer.name])
        and (layer.extra.get("sigma_w2") is not None)
        and not layer.extra.get("is_norm")
    ]


def _jacobian(model: nn.Module, example_input: Any) -> tuple[str, list[float]]:
    """A note summarising the input-output Jacobian's singular values, and the values."""
    if isinstance(example_input, tuple | list) and len(example_input) == 1:
        example_input = example_input[0]
    if not (isinstance(example_input, torch.Tensor) and example_input.is_floating_point()):
        return "Jacobian spectrum skipped: it needs a single floating-point tensor input", []
    with Preserved(model, grads=True):
        model.eval()
        try:
            s = jacobian_singular_values(model, example_input, samples=4)
        except Exception as e:
            return f"Jacobian spectrum skipped ({type(e).__name__}: {e})", []
    if s.size == 0:
        return "Jacobian spectrum skipped: empty input", []
    lo, med, hi = np.quantile(s, [0.05, 0.5, 0.95])
    return (
        f"input-output Jacobian singular values over 4 samples: median {med:.3g}, 5-95% range "
        f"{lo:.3g}..{hi:.3g}, mean square {float(np.mean(s**2)):.3g} (1 = dynamical isometry)"
    ), [float(v) for v in s]
