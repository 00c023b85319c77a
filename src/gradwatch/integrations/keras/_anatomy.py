"""A Keras model's map, in the types the PyTorch path produces: `Anatomy` and `Structure`.

The layers that own weights become `Layer`s (named as in ``model.layers``, a nested model's
as ``outer.inner``), with the per-layer facts of `gradwatch.anatomy.structure` read from
their Keras weights (``sigma_w2``, ``sigma_b2``, ``bias_ratio_q``, recurrent cell facts).
The dataflow comes from Keras's own graph (a ``Sequential`` is a chain; a functional model
records which layer feeds which) and is written as the same small `Graph` torch traces
give, so that `anatomy.structure` finds the activations, norms, skips and the longest plain
chain with the same code for both frameworks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gradwatch._errors import GradwatchValueError
from gradwatch.anatomy import Anatomy, Layer, Structure
from gradwatch.anatomy._graph import Graph
from gradwatch.anatomy.activations import keras_spec
from gradwatch.anatomy.map import LayerFacts
from gradwatch.anatomy.structure import _apply_graph

#: Keras's recurrent layers and the cell each one is (the anatomy's ``cell`` fact).
RECURRENT = {"SimpleRNN": "rnn", "LSTM": "lstm", "GRU": "gru"}
#: The block of a gated layer's bias that belongs to the gate keeping the state, and the
#: number of blocks: Keras orders an LSTM's gates (i, f, c, o) and a GRU's (z, r, h); a
#: GRU keeps ``z * h``.
_KEEP_BLOCK = {"lstm": (1, 4), "gru": (0, 3)}


def activation_spec(layer: Any) -> str | None:
    """The spec of the elementwise activation a Keras layer applies (None if none or unknown)."""
    kind = type(layer).__name__
    if kind == "ReLU":
        slope = float(getattr(layer, "negative_slope", 0.0) or 0.0)
        top = getattr(layer, "max_value", None)
        if slope:
            return keras_spec("leaky_relu", {"negative_slope": slope})
        return "relu6" if top is not None and float(top) == 6.0 else "relu"
    if kind == "LeakyReLU":
        return keras_spec("leaky_relu", {"negative_slope": float(layer.negative_slope)})
    if kind == "ELU":
        return keras_spec("elu", {"alpha": float(getattr(layer, "alpha", 1.0))})
    if kind == "PReLU":
        alpha = np.asarray(layer.alpha.numpy()) if getattr(layer, "alpha", None) is not None else np.zeros(1)
        return keras_spec("leaky_relu", {"negative_slope": float(alpha.mean())})
    fn = getattr(layer, "activation", None)
    if fn is None or kind in RECURRENT:
        return None
    name = getattr(fn, "__name__", None)
    return keras_spec(name) if isinstance(name, str) else None


def is_activation_layer(layer: Any) -> bool:
    return type(layer).__name__ in ("Activation", "ReLU", "LeakyReLU", "ELU", "PReLU")


def is_norm_layer(layer: Any) -> bool:
    return type(layer).__name__.endswith("Normalization") and type(layer).__name__ != "Normalization"


def _is_model(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def leaf_layers(model: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(name, layer) of every layer that is not itself a model, nested models opened."""
    out: list[tuple[str, Any]] = []
    for layer in model.layers:
        name = f"{prefix}{layer.name}"
        if _is_model(layer):
            out.extend(leaf_layers(layer, name + "."))
        elif type(layer).__name__ != "InputLayer":
            out.append((name, layer))
    return out


def _kernel(layer: Any) -> Any:
    cell = getattr(layer, "cell", None)
    return getattr(cell if cell is not None else layer, "kernel", None) if type(layer).__name__ != "Embedding" else getattr(layer, "embeddings", None)


def _fans(layer: Any) -> tuple[int | None, int | None]:
    kind = type(layer).__name__
    k = _kernel(layer)
    if k is None or is_norm_layer(layer):
        return None, None
    shape = tuple(int(d) for d in k.shape)
    if kind == "Embedding":
        return 1, shape[-1]
    if kind in RECURRENT:
        return shape[0], int(layer.units)
    if len(shape) >= 2:
        return math.prod(shape[:-1]), shape[-1]
    return None, None


def weight_facts(layer: Any) -> LayerFacts:
    """``sigma_w2`` (fan-in x mean square weight), ``sigma_b2`` and ``bias_ratio_q`` (deciles of
    each unit's bias over its weight vector's norm) of a Keras weight layer."""
    facts: LayerFacts = {"sigma_w2": None, "sigma_b2": None}
    k = _kernel(layer)
    if k is None or is_norm_layer(layer):
        return facts
    w = np.asarray(k.numpy(), dtype=np.float64)
    cols = w.reshape(-1, w.shape[-1])  # Keras kernels are (..., inputs, units): one column per unit
    fan_in = 1 if type(layer).__name__ == "Embedding" else cols.shape[0]
    facts["sigma_w2"] = float(fan_in * np.mean(cols**2))
    cell = getattr(layer, "cell", None)
    b = getattr(cell if cell is not None else layer, "bias", None)
    if b is not None:
        bias = np.asarray(b.numpy(), dtype=np.float64)
        facts["sigma_b2"] = float(np.mean(bias**2))
        if bias.ndim == 1 and bias.shape[0] == cols.shape[1]:
            ratio = bias / np.maximum(np.linalg.norm(cols, axis=0), 1e-30)
            facts["bias_ratio_q"] = [float(v) for v in np.quantile(ratio, np.linspace(0.1, 0.9, 9))]
    return facts


def recurrent_facts(layer: Any) -> LayerFacts:
    """``cell``, and the hidden-to-hidden matrix's spectral radius and norm (a SimpleRNN) or
    the largest bias of the gate that keeps the state (an LSTM's forget gate, a GRU's z)."""
    cell_kind = RECURRENT[type(layer).__name__]
    facts: LayerFacts = {"cell": cell_kind}
    cell = layer.cell
    if cell_kind == "rnn":
        r = np.asarray(cell.recurrent_kernel.numpy(), dtype=np.float64)
        facts["hh_radius"] = float(np.abs(np.linalg.eigvals(r)).max())
        facts["hh_norm"] = float(np.linalg.norm(r, 2))
        fn = getattr(cell, "activation", None)
        facts["activation"] = keras_spec(fn.__name__) if fn is not None else None
    else:
        facts["activation"] = None
        b = getattr(cell, "bias", None)
        keep = 0.0
        if b is not None:
            block, blocks = _KEEP_BLOCK[cell_kind]
            bias = np.asarray(b.numpy(), dtype=np.float64).reshape(-1, int(cell.units) * blocks).sum(axis=0)
            keep = float(bias.reshape(blocks, -1)[block].max())
        facts["keep_bias_max"] = keep
    return facts


def _seq_len(layer: Any) -> int | None:
    try:
        t = layer.input.shape[1]
    except (AttributeError, IndexError, ValueError, TypeError):
        return None
    return int(t) if t is not None else None


def build_anatomy(model: Any) -> tuple[Anatomy, dict[str, list[Any]]]:
    """The `Anatomy` of a Keras model, and each layer's trainable variables (by layer name)."""
    layers: list[Layer] = []
    variables: dict[str, list[Any]] = {}
    for name, layer in leaf_layers(model):
        weights = list(layer.weights)
        if not weights:
            continue
        trainable = list(layer.trainable_weights) if layer.trainable else []
        fan_in, fan_out = _fans(layer)
        entry = Layer(
            name=name,
            type=type(layer).__name__,
            fan_in=fan_in,
            fan_out=fan_out,
            n_params=sum(math.prod(int(d) for d in v.shape) for v in weights),
            param_names=[str(v.path) for v in weights],
            trainable=bool(trainable),
            order=len(layers),
        )
        layers.append(entry)
        variables[name] = trainable
    if not layers:
        raise GradwatchValueError(f"the Keras model {model.name!r} has no weights, so there are no gradients to watch")
    return Anatomy(layers, model_type=type(model).__name__), variables


def _graph(model: Any, anatomy: Anatomy) -> Graph:
    """The dataflow graph of a (possibly nested) Keras model, as `anatomy._graph.Graph` nodes."""
    sequential = type(model).__name__ == "Sequential"
    graph = Graph("sequential" if sequential else "trace")
    entry = graph.add("input", "input0", []).id
    outs = _walk(model, "", [entry], graph, anatomy)
    graph.add("output", "output", outs)
    if not sequential:
        graph.notes.append("structure read from the Keras functional graph")
    return graph


def _walk(model: Any, prefix: str, entry: list[int], graph: Graph, anatomy: Anatomy) -> list[int]:
    """Add `model`'s layers to `graph` fed by `entry`; return the node ids of its outputs."""
    out_of: dict[int, list[int]] = {}  # id(layer) -> the node ids of its output
    prev = entry
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            out_of[id(layer)] = entry
            continue
        inputs = _parents(layer, out_of) or prev
        name = f"{prefix}{layer.name}"
        if _is_model(layer):
            ids = _walk(layer, name + ".", inputs, graph, anatomy)
        else:
            ids = [_add_layer(graph, name, layer, inputs, anatomy)]
        out_of[id(layer)] = ids
        prev = ids
    outputs: list[int] = []
    for t in getattr(model, "outputs", None) or []:
        hist = getattr(t, "_keras_history", None)
        if hist is not None and id(hist.operation) in out_of:
            outputs.extend(out_of[id(hist.operation)])
    return list(dict.fromkeys(outputs)) or prev


def _parents(layer: Any, out_of: dict[int, list[int]]) -> list[int]:
    """The nodes feeding `layer` in this model (its first call whose inputs this model made)."""
    for node in getattr(layer, "_inbound_nodes", []):
        parents = [p.operation for p in node.parent_nodes]
        if parents and all(id(p) in out_of for p in parents):
            return [i for p in parents for i in out_of[id(p)]]
    return []


def _add_layer(graph: Graph, name: str, layer: Any, inputs: list[int], anatomy: Anatomy) -> int:
    kind = type(layer).__name__
    owned = [name] if name in anatomy else []
    if is_activation_layer(layer):
        spec = activation_spec(layer)
        return graph.add("act" if spec else "op", spec or kind.lower(), inputs, owned).id
    if is_norm_layer(layer):
        return graph.add("norm", kind, inputs, owned).id
    if kind == "Add":
        return graph.add("add", "add", inputs).id
    if not owned:
        return graph.add("op", kind.lower(), inputs).id
    node = graph.add("layer", name, inputs, owned).id
    spec = activation_spec(layer)
    if spec is not None:  # Dense(activation=...): the activation runs right after the layer
        node = graph.add("act", spec, [node]).id
    return node


def analyse(model: Any, anatomy: Anatomy) -> Structure:
    """Fill ``anatomy``'s per-layer facts from the Keras model and return its `Structure`
    (the same facts `gradwatch.anatomy.structure.analyse` gives a torch module)."""
    layers = dict(leaf_layers(model))
    for entry in anatomy.layers:
        layer = layers[entry.name]
        extra = entry.extra
        extra.update(weight_facts(layer))
        extra.setdefault("activation", None)
        extra.setdefault("norm", None)
        extra.setdefault("skip", False)
        extra["recurrent"] = type(layer).__name__ in RECURRENT
        extra["seq_len"] = _seq_len(layer) if extra["recurrent"] else None
        if extra["recurrent"]:
            extra.update(recurrent_facts(layer))
    graph = _graph(model, anatomy)
    structure = Structure(anatomy=anatomy, method=graph.method, notes=list(graph.notes))
    _apply_graph(structure, graph)
    structure.recurrent = {e.name: e.extra["seq_len"] for e in anatomy.layers if e.extra["recurrent"]}
    return structure


def structure_facts(model: Any, anatomy: Anatomy) -> dict[str, Any]:
    """`analyse` as a dict for a log header; never raises (a failure is noted in the facts)."""
    try:
        return analyse(model, anatomy).to_dict()
    except Exception as e:  # reading the structure must not stop training
        return {"method": "none", "notes": [f"structure not read ({type(e).__name__}: {e})"]}
