"""Statistics of a Keras training step, computed inside the compiled step on recording steps.

`KerasProbe.install` wraps, on the instance only, the optimizer's ``apply`` (what
``apply_gradients`` calls with the gradients the tape gave), the ``call`` of each layer
with an elementwise activation and that of each recurrent layer. The callback installs
them only around a recording step, which runs a training function of its own, traced (at
its first call) with the wrappers in it: every other step runs the user's training
function as Keras made it, untouched. The wrappers add to the recording step:

- before the update, for every trainable variable: the float64 sum of squares of its
  gradient (as the optimizer uses it: loss scale undone, ``clipnorm``/``clipvalue``/
  ``global_clipnorm`` applied), its max |g|, non-zero and non-finite entries; the variables
  are copied into preallocated snapshots;
- after the update: each variable's sum of squares and that of its change;
- in each watched layer's forward: the dead or saturated share of its activation's outputs
  (`gradwatch.probes.activations` defines them; the derivatives from the output are the
  TensorFlow spelling of its `derivative`);
- in the backward pass of each recurrent layer (``SimpleRNN``/``LSTM``/``GRU`` with a fixed
  sequence length): ||dL/dx_t|| at every time step of its input (`_sequence_wrapper`).

The results stay in variables until `read`, one device-to-host copy per record.
`uninstall` removes every wrapper.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from gradwatch.anatomy.activations import parse_spec, peak_derivative
from gradwatch.integrations.keras._anatomy import RECURRENT, activation_spec, leaf_layers
from gradwatch.probes.activations import (
    DEAD_MIN_OBSERVATIONS,
    SATURATION_FRACTION,
    hard_bounds,
    measured_family,
    output_derivative,
)

#: Per-site values kept in the site's variable, in this order (docs/metrics.md).
SITE_METRICS = ("act_dead_frac", "act_zero_frac", "act_sat_frac", "act_mean_deriv")


class KerasProbe:
    """In-graph statistics of the variables of `columns` (layer names, in the Timeline's order)."""

    def __init__(
        self,
        model: Any,
        columns: list[str],
        variables: dict[str, list[Any]],
        *,
        updates: bool = True,
        activations: bool = True,
    ) -> None:
        import tensorflow as tf

        self.model = model
        self.vars = [v for name in columns for v in variables[name]]
        self.layer_of = np.asarray([i for i, name in enumerate(columns) for _ in variables[name]], dtype=np.int64)
        self.numel = np.asarray([math.prod(int(d) for d in v.shape) for v in self.vars], dtype=np.float64)
        self.n_layers = len(columns)
        self.updates = updates
        self._index = {id(v): i for i, v in enumerate(self.vars)}
        self._by_path = {str(v.path): i for i, v in enumerate(self.vars)}
        n = len(self.vars)
        self._grad = tf.Variable(tf.zeros(4 * n, tf.float64), trainable=False, name="gradwatch_grads")
        self._weight = tf.Variable(tf.zeros(2 * n, tf.float64), trainable=False, name="gradwatch_weights")
        self._snaps = (
            [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name="gradwatch_snapshot") for v in self.vars]
            if updates
            else []
        )
        # activation sites: site name -> (its info for the record, its variable)
        self.sites: dict[str, dict[str, Any]] = {}
        self._site_vars: dict[str, Any] = {}
        self._site_layers: list[tuple[str, Any, str]] = []
        if activations:
            outputs = {id(getattr(t, "_keras_history", (None,))[0]) for t in getattr(model, "outputs", None) or []}
            for name, layer in leaf_layers(model):
                spec = activation_spec(layer)
                if spec is None:
                    continue
                fn = parse_spec(spec)[0]
                site = name if type(layer).__name__ in ("Activation", "ReLU", "LeakyReLU", "ELU", "PReLU") else f"{name}:{fn}"
                info: dict[str, Any] = {"fn": fn, "module": name, "family": measured_family(spec), "line": ""}
                if id(layer) in outputs:
                    info["output"] = True
                self.sites[site] = info
                self._site_vars[site] = tf.Variable(
                    tf.fill([len(SITE_METRICS)], tf.constant(math.nan, tf.float64)), trainable=False, name="gradwatch_site"
                )
                self._site_layers.append((site, layer, spec))
        # gradient through time: recurrent layer name -> its layer and its profile's variable
        self._profiles: dict[str, tuple[Any, Any]] = {}
        if activations:
            for name, layer in leaf_layers(model):
                steps = _time_steps(layer)
                if type(layer).__name__ in RECURRENT and steps and name in columns:
                    var = tf.Variable(tf.fill([steps], tf.constant(math.nan, tf.float64)), trainable=False, name="gradwatch_grad_t")
                    self._profiles[name] = (layer, var)
        self._installed: list[tuple[Any, str]] = []
        self.failed: str | None = None  # why the statistics could not be built into the step

    # -- wrapping ---------------------------------------------------------------------------
    def install(self, optimizer: Any) -> None:
        """Wrap the optimizer's ``apply`` and the watched layers' ``call`` (instance attributes)."""
        self._wrap(optimizer, "apply", self._apply_wrapper(optimizer.apply, optimizer))
        for site, layer, spec in self._site_layers:
            self._wrap(layer, "call", self._call_wrapper(layer.call, site, spec))
        for layer, var in self._profiles.values():
            self._wrap(layer, "call", self._sequence_wrapper(layer.call, layer, var))

    def _wrap(self, obj: Any, attr: str, fn: Callable[..., Any]) -> None:
        object.__setattr__(obj, attr, fn)
        self._installed.append((obj, attr))

    def uninstall(self) -> None:
        """Remove every wrapper (safe to call twice)."""
        while self._installed:
            obj, attr = self._installed.pop()
            if attr in vars(obj):
                object.__delattr__(obj, attr)

    def _guarded(self, build: Callable[[], None]) -> None:
        """Add statistics to the step being traced; a failure to build them leaves the step as it
        was (recording stops with one warning, in the callback) rather than break training."""
        if self.failed is not None:
            return
        try:
            build()
        except Exception as e:
            self.failed = f"{type(e).__name__}: {e}"

    def _apply_wrapper(self, apply: Callable[..., Any], optimizer: Any) -> Callable[..., Any]:
        def wrapped(grads: Any, trainable_variables: Any = None) -> Any:
            grads = list(grads)
            tvars = list(trainable_variables) if trainable_variables is not None else list(optimizer._trainable_variables)
            self._guarded(lambda: self._before(optimizer, grads, tvars))
            out = apply(grads, trainable_variables)
            self._guarded(self._after)
            return out

        return wrapped

    def _before(self, optimizer: Any, grads: list[Any], tvars: list[Any]) -> None:
        import tensorflow as tf

        mine: list[Any] = [None] * len(self.vars)
        for g, v in zip(grads, tvars, strict=False):
            i = self._index.get(id(v), self._by_path.get(str(getattr(v, "path", ""))))
            if i is not None and g is not None:
                mine[i] = tf.convert_to_tensor(g)  # an embedding's IndexedSlices, made dense
        present = [i for i, g in enumerate(mine) if g is not None]
        used = [mine[i] for i in present]
        scale = getattr(optimizer, "loss_scale_factor", None)
        if scale is not None:
            used = [g / scale for g in used]
        clip = getattr(optimizer, "_clip_gradients", None)
        if clip is not None and used:
            used = list(clip(used))  # the optimizer clips what it applies: measure that
        nan = tf.constant(math.nan, tf.float64)
        sq, mx, nz, nf = [nan] * len(mine), [nan] * len(mine), [nan] * len(mine), [nan] * len(mine)
        for i, g in zip(present, used, strict=True):
            g64 = tf.cast(tf.convert_to_tensor(g), tf.float64)
            sq[i] = tf.reduce_sum(tf.square(g64))
            mx[i] = tf.reduce_max(tf.abs(g64)) if self.numel[i] else tf.constant(0.0, tf.float64)
            nz[i] = tf.cast(tf.math.count_nonzero(g64), tf.float64)
            nf[i] = tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(g64)), tf.float64))
        self._grad.assign(tf.stack(sq + mx + nz + nf))
        for s, v in zip(self._snaps, self.vars, strict=True):
            s.assign(tf.convert_to_tensor(v))

    def _after(self) -> None:
        import tensorflow as tf

        w64 = [tf.cast(tf.convert_to_tensor(v), tf.float64) for v in self.vars]
        wsq = [tf.reduce_sum(tf.square(w)) for w in w64]
        if self.updates:
            usq = [tf.reduce_sum(tf.square(w - tf.cast(s, tf.float64))) for w, s in zip(w64, self._snaps, strict=True)]
        else:
            usq = [tf.constant(math.nan, tf.float64)] * len(w64)
        self._weight.assign(tf.stack(wsq + usq))

    def _call_wrapper(self, call: Callable[..., Any], site: str, spec: str) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            y = call(*args, **kwargs)
            self._guarded(lambda: self._site_stats(site, spec, y))
            return y

        return wrapped

    def _sequence_wrapper(self, call: Callable[..., Any], layer: Any, var: Any) -> Callable[..., Any]:
        """A recurrent layer's input passed through an identity whose gradient function takes
        ||dL/dx_t|| at every time step (over batch and features).

        The identity also takes the layer's input kernel, so that the tape records it when
        the input is data (which it does not watch); its gradient to the kernel is zero, which
        leaves the kernel's gradient bit for bit as it was."""
        import tensorflow as tf

        def wrapped(sequences: Any, *args: Any, **kwargs: Any) -> Any:
            kernel = layer.cell.kernel

            @tf.custom_gradient
            def through(x: Any, k: Any) -> Any:
                def grad(dy: Any) -> Any:
                    g = tf.cast(dy, tf.float64)
                    with tf.control_dependencies([var.assign(tf.sqrt(tf.reduce_sum(tf.square(g), axis=[0, 2])))]):
                        return tf.identity(dy), tf.zeros_like(k)

                return tf.identity(x), grad

            x = sequences
            if self.failed is None:
                try:
                    x = through(sequences, tf.convert_to_tensor(kernel))
                except Exception as e:
                    self.failed = f"{type(e).__name__}: {e}"
            return call(x, *args, **kwargs)

        return wrapped

    def _site_stats(self, site: str, spec: str, y: Any) -> None:
        import tensorflow as tf

        y = tf.cast(tf.stop_gradient(tf.convert_to_tensor(y)), tf.float32)
        nan = tf.constant(math.nan, tf.float64)
        n = tf.cast(tf.size(y), tf.float64)
        if measured_family(spec) == "relu":
            units = tf.shape(y)[-1]
            peak = tf.reduce_max(tf.reshape(y, [-1, units]), axis=0)
            dead = tf.reduce_mean(tf.cast(peak <= 0.0, tf.float64))
            enough = n >= float(DEAD_MIN_OBSERVATIONS) * tf.cast(units, tf.float64)
            zero = tf.reduce_sum(tf.cast(tf.equal(y, 0.0), tf.float64)) / tf.maximum(n, 1.0)
            values = [tf.where(enough, dead, nan), zero, nan, nan]
        else:
            d = derivative(spec, y)
            fn = parse_spec(spec)[0]
            sat = tf.reduce_sum(tf.cast(d < SATURATION_FRACTION * peak_derivative(fn), tf.float64)) / tf.maximum(n, 1.0)
            values = [nan, nan, sat, tf.reduce_sum(tf.cast(d, tf.float64)) / tf.maximum(n, 1.0)]
        self._site_vars[site].assign(tf.stack(values))

    # -- reading ----------------------------------------------------------------------------
    def read(self) -> dict[str, np.ndarray]:
        """This record's numbers on the host, in one copy."""
        import tensorflow as tf

        parts = [self._grad, self._weight, *self._site_vars.values(), *(v for _, v in self._profiles.values())]
        flat = tf.concat([tf.convert_to_tensor(p) for p in parts], 0).numpy().astype(np.float64)
        n = len(self.vars)
        out = {
            "sq": flat[0:n],
            "max": flat[n : 2 * n],
            "nz": flat[2 * n : 3 * n],
            "nf": flat[3 * n : 4 * n],
            "wsq": flat[4 * n : 5 * n],
            "usq": flat[5 * n : 6 * n],
        }
        k = len(SITE_METRICS)
        for j, site in enumerate(self._site_vars):
            out[f"site.{site}"] = flat[6 * n + j * k : 6 * n + (j + 1) * k]
        at = 6 * n + len(self._site_vars) * k
        for name, (_, var) in self._profiles.items():
            steps = int(var.shape[0])
            out[f"grad_t/{name}"] = flat[at : at + steps]
            at += steps
        return out

    @property
    def profiles(self) -> list[str]:
        """The recurrent layers whose gradient through time is measured."""
        return list(self._profiles)


def derivative(spec: str, y: Any) -> Any:
    """phi'(x) of a saturating activation from its output y = phi(x), on TensorFlow tensors
    (`gradwatch.probes.activations.output_derivative`)."""
    import tensorflow as tf

    name, params = parse_spec(spec)
    return output_derivative(name, y, lambda: hard_bounds(name, (), params), lambda m: tf.cast(m, tf.float32))


def _time_steps(layer: Any) -> int | None:
    """The sequence length of a recurrent layer's (batch, time, features) input, if fixed."""
    try:
        shape = tuple(layer.input.shape)
    except (AttributeError, ValueError):
        return None
    return int(shape[1]) if len(shape) == 3 and shape[1] is not None else None
