"""`gw.inspect` for a Keras 3 model (TensorFlow backend): the same Diagnosis as for torch.

The structure is read as `GradwatchCallback` reads it (`_anatomy`); one forward and backward
pass on the example batch, in training mode under a ``tf.GradientTape``, measures every
layer's gradient; for a plain chain of ``Dense`` layers, theory (`explain.theory`) predicts
each layer's gradient from the chain's input and the gradient at its last layer's
pre-activation. The judging is the torch path's own (`explain.inspect`): the probing
finding, the per-layer reports and the causes.

The model is left as it was: its weights and non-trainable variables (a
``BatchNormalization``'s moving statistics, which a training-mode pass updates) are put back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gradwatch._errors import GradwatchTypeError, GradwatchValueError, ModelError
from gradwatch.detect.probing import probing_pass
from gradwatch.detect.thresholds import Thresholds
from gradwatch.explain.inspect import _chain_for_theory, _reports, _weight_layers
from gradwatch.explain.link import link
from gradwatch.explain.theory import Prediction, chain_layer, predict_chain
from gradwatch.integrations.keras._anatomy import analyse, build_anatomy, leaf_layers
from gradwatch.types import Diagnosis

__all__ = ["inspect_keras"]


def _check_input(example_input: Any) -> Any:
    """The input as the model takes it: an array or tensor, a list/tuple of them (a
    one-element tuple is its element), or a dict of them by input name."""
    import tensorflow as tf

    def ok(v: Any) -> bool:
        return isinstance(v, np.ndarray | tf.Tensor) or (hasattr(v, "shape") and hasattr(v, "dtype"))

    if isinstance(example_input, tuple) and len(example_input) == 1:
        example_input = example_input[0]
    parts = (
        list(example_input.values())
        if isinstance(example_input, Mapping)
        else list(example_input) if isinstance(example_input, list | tuple) else [example_input]
    )
    if not parts or not all(ok(p) for p in parts):
        got = ", ".join(sorted({type(p).__qualname__ for p in parts})) or "nothing"
        raise GradwatchTypeError(
            "example_input for a Keras model must be an array or tensor, a list/tuple of them or a dict "
            f"of them by input name, got {type(example_input).__qualname__} ({got})"
        )
    return example_input


def _shapes(example_input: Any) -> str:
    vals = example_input.values() if isinstance(example_input, Mapping) else (
        example_input if isinstance(example_input, list | tuple) else [example_input]
    )
    return ", ".join(f"{tuple(v.shape)} {getattr(v.dtype, 'name', v.dtype)}" for v in vals)


def _default_loss(output: Any) -> Any:
    """``sum(y^2) / 2`` over the first floating-point output (as `explain.inspect._default_loss`)."""
    import tensorflow as tf

    flat = tf.nest.flatten(output)
    for t in flat:
        t = tf.convert_to_tensor(t)
        if t.dtype.is_floating:
            return 0.5 * tf.reduce_sum(tf.square(tf.cast(t, tf.float32)))
    raise GradwatchValueError(
        "the Keras model's output has no floating-point tensor; pass loss_fn=lambda output: ... returning a scalar"
    )


def _wrap_call(layer: Any, fn: Callable[..., Any]) -> None:
    object.__setattr__(layer, "call", fn)


def _capture(first: Any, last: Any, captured: dict[str, Any]) -> list[Any]:
    """Wrap the chain's first layer to keep its input and its last to keep its pre-activation
    (the activation set aside for the layer's own ``call``, then applied to what it returns)."""
    import keras

    first_call, last_call = first.call, last.call

    def grab_input(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        captured.setdefault("input", inputs)
        return first_call(inputs, *args, **kwargs)

    def grab_pre(*args: Any, **kwargs: Any) -> Any:
        act = last.activation
        object.__setattr__(last, "activation", keras.activations.linear)
        try:
            h = (grab_input if first is last else last_call)(*args, **kwargs)
        finally:
            object.__setattr__(last, "activation", act)
        captured.setdefault("pre", h)
        return act(h) if act is not None else h

    if first is not last:
        _wrap_call(first, grab_input)
    _wrap_call(last, grab_pre)
    return [first, last]


def _norms(grads: list[Any], variables: list[Any]) -> tuple[float, float, float]:
    """Gradient norm, weight norm and share of zero gradient entries, in float64."""
    import tensorflow as tf

    if not grads or any(g is None for g in grads):
        return math.nan, math.nan, math.nan
    gs = [np.asarray(tf.convert_to_tensor(g).numpy(), dtype=np.float64) for g in grads]
    ws = [np.asarray(v.numpy(), dtype=np.float64) for v in variables]
    n = sum(g.size for g in gs)
    return (
        math.sqrt(sum(float(np.sum(g**2)) for g in gs)),
        math.sqrt(sum(float(np.sum(w**2)) for w in ws)),
        sum(int(np.sum(g == 0)) for g in gs) / max(n, 1),
    )


def inspect_keras(model: Any, example_input: Any, loss_fn: Callable[[Any], Any] | None = None) -> Diagnosis:
    """`gw.inspect` for a ``keras.Model`` on the TensorFlow backend (called by it)."""
    import keras
    import tensorflow as tf

    if not isinstance(model, keras.Model):
        raise GradwatchTypeError(
            f"inspect() expects a torch.nn.Module or a keras.Model, got {type(model).__module__}.{type(model).__qualname__}"
        )
    if keras.backend.backend() != "tensorflow":
        raise GradwatchValueError(
            f"gw.inspect reads Keras models on the TensorFlow backend only, this one runs on {keras.backend.backend()!r}; "
            "set KERAS_BACKEND=tensorflow before importing keras"
        )
    x = _check_input(example_input)
    saved = [(v, v.numpy().copy()) for v in model.variables]
    try:
        if not model.built:
            try:
                model(x, training=False)
            except Exception as e:
                raise ModelError(
                    f"the Keras model {model.name!r} failed on the example input ({_shapes(x)}): {type(e).__name__}: {e}"
                ) from e
            saved = [(v, v.numpy().copy()) for v in model.variables]
        anatomy, variables = build_anatomy(model)
        if not anatomy.trainable:
            raise GradwatchValueError(
                f"every weight of the Keras model {model.name!r} is frozen (trainable=False): no gradient to inspect"
            )
        structure = analyse(model, anatomy)
        chain, why_not = _chain_for_theory(anatomy, structure, kinds=("Dense",))
        notes = [f"structure read by {structure.method}", *structure.notes]
        layers = dict(leaf_layers(model))
        captured: dict[str, Any] = {}
        wrapped: list[Any] = []
        names = [layer.name for layer in anatomy.trainable]
        watched = [v for n in names for v in variables[n]]
        try:
            if chain is not None:
                wrapped = _capture(layers[chain[0]], layers[chain[-1]], captured)
            with tf.GradientTape() as tape:
                try:
                    output = model(x, training=True)
                except Exception as e:
                    raise ModelError(
                        f"the Keras model {model.name!r} failed on the example input ({_shapes(x)}): {type(e).__name__}: {e}"
                    ) from e
                loss = loss_fn(output) if loss_fn is not None else _default_loss(output)
                if not isinstance(loss, tf.Tensor | tf.Variable) or int(tf.size(loss)) != 1:
                    got = tuple(loss.shape) if hasattr(loss, "shape") else type(loss).__qualname__
                    raise GradwatchValueError(
                        f"loss_fn must return a scalar (one-element) tensor, got {got}; reduce it, e.g. with keras.ops.sum"
                    )
                loss = tf.reshape(loss, ())  # on the tape, so the gradient reaches the weights
            pre = captured.get("pre")
            grads = tape.gradient(loss, [*watched, *([pre] if pre is not None else [])])
        finally:
            for layer in wrapped:
                if "call" in vars(layer):
                    object.__delattr__(layer, "call")
        if all(g is None for g in grads[: len(watched)]):
            raise GradwatchValueError(
                "the loss does not depend on any trainable weight; check that loss_fn uses the model's output"
            )
        by_var = dict(zip((id(v) for v in watched), grads, strict=False))
        measured, wnorm, zero = {}, {}, {}
        for n in names:
            measured[n], wnorm[n], zero[n] = _norms([by_var[id(v)] for v in variables[n]], variables[n])
        prediction: Prediction | None = None
        if chain is not None and "input" in captured and pre is not None and grads[-1] is not None:
            inputs = np.asarray(tf.convert_to_tensor(captured["input"]).numpy(), dtype=np.float64)
            out_grad = np.asarray(grads[-1].numpy(), dtype=np.float64)
            prediction = predict_chain(
                [chain_layer(anatomy[n]) for n in chain],
                inputs.reshape(-1, inputs.shape[-1]),
                out_grad.reshape(-1, out_grad.shape[-1]),
            )
            notes.extend(prediction.notes)
        elif chain is None:
            notes.append(f"no theory prediction per layer: {why_not}")
    finally:
        for v, value in saved:
            v.assign(value)
    if loss_fn is None:
        notes.append("loss: sum(output^2)/2 over the first floating-point output (see docs/inspect.md)")
    q0 = _input_scale(captured.get("input"), x)
    reports = _reports(anatomy, measured, wnorm, zero, prediction)
    predicted = float(prediction.relative[0]) if prediction is not None and len(prediction.layers) >= 2 else None
    found = probing_pass(measured, _weight_layers(anatomy, measured), predicted, Thresholds())
    d = Diagnosis(findings=found, layers=reports, steps=0, notes=notes)
    return link(d, anatomy, structure, None, q0=q0)


def _input_scale(chain_input: Any, example_input: Any) -> float:
    """Mean square of the chain's input, else of the first floating-point input, else 1 (the theory's q0)."""
    import tensorflow as tf

    cands = [chain_input] if chain_input is not None else tf.nest.flatten(example_input)
    for c in cands:
        a = np.asarray(tf.convert_to_tensor(c).numpy())
        if a.dtype.kind == "f" and a.size:
            q = float(np.mean(a.astype(np.float64) ** 2))
            return q if math.isfinite(q) and q > 0 else 1.0
    return 1.0
