"""A small dataflow graph of a model: which layers, activations, norms and additions feed which.

Three ways to build it, tried in this order by `gradwatch.anatomy.structure.analyse`:

1. ``fx``: a `torch.fx` symbolic trace. Needs no input; fails on models whose forward
   branches on tensor values or calls untraceable code (most Hugging Face models).
2. ``trace``: one forward pass on an example input under a `TorchFunctionMode` that sees
   every torch function call (``F.linear``, ``torch.relu``, ``x + y``, ...), with the
   tensors it took and gave. A call that takes a layer's parameter *is* that layer.
   Works on anything that runs, but sees only the path the example input took.
3. ``modules``: no trace at all; the leaf modules in registration order, taken as one
   chain. Functional activations and skip connections are invisible to it, so the
   causes that depend on them are not drawn from it (see docs/causes.md).

Nodes are kept in execution (topological) order.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from gradwatch.anatomy._mode import CallObserver
from gradwatch.anatomy.activations import function_spec, module_spec
from gradwatch.anatomy.map import ROOT, Anatomy

__all__ = ["Graph", "Node", "build_fx", "build_modules", "build_trace", "is_norm_module", "iter_tensors"]

#: Functional normalisations, by ``__name__``.
NORM_FUNCTIONS = frozenset(
    {"layer_norm", "batch_norm", "group_norm", "instance_norm", "rms_norm", "local_response_norm"}
)
ADD_NAMES = frozenset({"add", "add_", "iadd", "__add__", "__iadd__", "__radd__"})
# Ops a signal passes through unchanged in kind: reshaping, dropout, pooling, casting.
_TRANSPARENT = frozenset(
    {
        "view", "reshape", "flatten", "unflatten", "permute", "transpose", "contiguous",
        "getitem", "__getitem__", "squeeze", "unsqueeze", "to", "float", "half", "double",
        "bfloat16", "type", "type_as", "clone", "identity", "expand", "expand_as", "view_as",
        "reshape_as", "t", "narrow", "chunk", "split", "pad",
    }
)


def is_transparent(name: str) -> bool:
    n = name.lower()
    return n in _TRANSPARENT or "dropout" in n or "pool" in n


def is_norm_module(module: nn.Module) -> bool:
    """BatchNorm/InstanceNorm/LayerNorm/GroupNorm/RMSNorm and look-alikes (``*Norm`` classes)."""
    if isinstance(module, nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm | nn.LocalResponseNorm):
        return True
    name = type(module).__name__
    return name.endswith("Norm") or name.endswith("Norm1d") or name.endswith("Norm2d") or name.endswith("Norm3d")


@dataclass
class Node:
    """One step of the forward pass.

    kind: ``input``, ``layer`` (a weight layer), ``norm``, ``act`` (elementwise activation),
    ``add`` (sum of two tensors: a residual merge when its inputs come from different depths),
    ``op`` (anything else) or ``output``.
    """

    id: int
    kind: str
    name: str  # layer name, activation spec, norm name or op name
    inputs: list[int] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)  # anatomy layers whose parameters it uses
    shape: tuple[int, ...] | None = None  # of its (first) tensor output, when known
    args: tuple[Any, ...] = ()  # non-tensor arguments, for recurrent sequence lengths


@dataclass
class Graph:
    method: str
    nodes: list[Node] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, name: str, inputs: list[int], layers: list[str] | None = None, shape: tuple[int, ...] | None = None) -> Node:
        node = Node(len(self.nodes), kind, name, list(dict.fromkeys(inputs)), list(layers or []), shape)
        self.nodes.append(node)
        return node

    def users(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in self.nodes]
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n.id)
        return out


# -- helpers shared by the builders -----------------------------------------------------
def _param_owner(model: nn.Module, anatomy: Anatomy) -> dict[str, str]:
    """Qualified parameter name -> the anatomy layer that owns it (tied names included)."""
    owner: dict[str, str] = {}
    for layer in anatomy.layers:
        for q in [*layer.param_names, *layer.tied]:
            owner[q] = layer.name
    return owner


def _layers_under(anatomy: Anatomy, prefix: str) -> list[str]:
    if prefix in ("", ROOT):
        return [layer.name for layer in anatomy.layers if layer.name == ROOT]
    return [n for n in anatomy.names if n == prefix or n.startswith(prefix + ".")]


def _kind_of_module(module: nn.Module, layers: list[str]) -> tuple[str, str]:
    spec = module_spec(module)
    if spec is not None:
        return "act", spec
    if is_norm_module(module):
        return "norm", type(module).__name__
    if layers:
        return "layer", layers[0]
    return "op", type(module).__name__.lower()


def _kind_of_call(fn_name: str, extra_args: tuple[Any, ...], kwargs: dict[str, Any], n_tensors: int, layers: list[str]) -> tuple[str, str]:
    spec = function_spec(fn_name, extra_args, kwargs)
    if spec is not None:
        return "act", spec
    if fn_name in NORM_FUNCTIONS:
        return "norm", fn_name
    if layers:
        return "layer", layers[0]
    if fn_name in ADD_NAMES and n_tensors >= 2:
        return "add", fn_name
    return "op", fn_name


def _merge_target(graph: Graph, inputs: list[int], layers: list[str]) -> Node | None:
    """A node of the same layer feeding this call (``x @ self.w + self.b``): the call is part of it."""
    for i in inputs:
        node = graph.nodes[i]
        if node.layers and set(layers) <= set(node.layers) and node.kind == "layer":
            return node
    return None


# -- 1. torch.fx ----------------------------------------------------------------------------
class _Tracer(fx.Tracer):
    """Traces through every container; modules without children (and RNNs, attention) stay whole."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, nn.RNNBase | nn.RNNCellBase | nn.MultiheadAttention):
            return True
        return next(iter(m.children()), None) is None


def _fx_nodes(value: Any) -> Iterator[fx.Node]:
    if isinstance(value, fx.Node):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _fx_nodes(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _fx_nodes(v)


def build_fx(model: nn.Module, anatomy: Anatomy) -> Graph:
    """The graph from a `torch.fx` symbolic trace; raises whatever fx raises when it cannot trace."""
    fx_graph = _Tracer().trace(model)
    owner = _param_owner(model, anatomy)
    graph = Graph("fx")
    ours: dict[fx.Node, int] = {}
    attr_layer: dict[fx.Node, str | None] = {}
    for n in fx_graph.nodes:
        if n.op == "placeholder":
            ours[n] = graph.add("input", str(n.target), []).id
        elif n.op == "get_attr":
            attr_layer[n] = owner.get(str(n.target))
        elif n.op == "output":
            graph.add("output", "output", [ours[a] for a in _fx_nodes(n.args) if a in ours])
        elif n.op in ("call_module", "call_function", "call_method"):
            inputs = [ours[a] for a in _fx_nodes((n.args, n.kwargs)) if a in ours]
            used = [layer for a in _fx_nodes((n.args, n.kwargs)) if (layer := attr_layer.get(a)) is not None]
            constants = sum(1 for a in _fx_nodes((n.args, n.kwargs)) if a in attr_layer and attr_layer[a] is None)
            if n.op == "call_module":
                module = model.get_submodule(str(n.target))
                layers = _layers_under(anatomy, str(n.target))
                kind, name = _kind_of_module(module, layers)
            else:
                fn_name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
                if n.target is operator.add:
                    fn_name = "add"
                layers = list(dict.fromkeys(used))
                extra = tuple(a for a in n.args[1:] if not isinstance(a, fx.Node))
                kind, name = _kind_of_call(str(fn_name), extra, dict(n.kwargs), len(inputs), layers)
            if not inputs and used and not constants:  # a view of a parameter (self.w.t())
                for layer in used:
                    attr_layer[n] = layer
                continue
            if not inputs and kind != "layer":
                continue  # a constant made inside forward
            target = _merge_target(graph, inputs, layers) if kind == "layer" and n.op != "call_module" else None
            if target is not None:
                ours[n] = target.id
                continue
            ours[n] = graph.add(kind, name, inputs, layers).id
    return graph


# -- 2. a forward pass under a TorchFunctionMode -------------------------------------------
def iter_tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from iter_tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from iter_tensors(v)
    elif hasattr(value, "to_tuple") and callable(value.to_tuple):  # Hugging Face ModelOutput
        yield from iter_tensors(value.to_tuple())


class _Recorder(CallObserver):
    """Records each torch function call that takes a tracked tensor as a node."""

    def __init__(self, graph: Graph, param_layer: dict[int, str]) -> None:
        super().__init__()
        self.graph = graph
        self.param_layer = param_layer  # id(parameter or a view of it) -> layer
        self.node_of: dict[int, int] = {}  # id(tensor) -> node
        self.keep: list[torch.Tensor] = []  # tensors stay alive so that their ids stay unique

    def track(self, t: torch.Tensor, node: int) -> None:
        self.node_of[id(t)] = node
        self.keep.append(t)

    def seen(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        name = getattr(func, "__name__", str(func))
        if name == "__get__":
            name = getattr(getattr(func, "__self__", None), "__name__", name)
        outs = list(iter_tensors(out))
        if not outs:
            return
        inputs, layers, constants = [], [], 0
        for t in iter_tensors((args, kwargs)):
            if id(t) in self.param_layer:
                layers.append(self.param_layer[id(t)])
            elif id(t) in self.node_of:
                inputs.append(self.node_of[id(t)])
            else:
                constants += 1
        layers = list(dict.fromkeys(layers))
        if not inputs:
            if layers and not constants:  # a view or a copy of a parameter (self.w.t())
                for t in outs:
                    self.param_layer[id(t)] = layers[0]
                    self.keep.append(t)
                return
            if not layers:
                return  # a constant made inside forward
            # else: a layer applied to a constant (an embedding of buffered position ids): a source
        first = next(iter_tensors(args), None)
        extra = tuple(a for a in args[1:] if not isinstance(a, torch.Tensor)) if first is not None else ()
        kind, label = _kind_of_call(name, extra, {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}, len(inputs), layers)
        if kind == "add" and len({tuple(t.shape) for t in iter_tensors(args) if id(t) in self.node_of}) > 1:
            kind = "op"  # a broadcast addition (an attention mask, a bias) is not a residual merge
        target = _merge_target(self.graph, inputs, layers) if kind == "layer" else None
        if target is not None:
            node_id = target.id
        else:
            node = self.graph.add(kind, label, inputs, layers, tuple(outs[0].shape))
            node.args = tuple(tuple(t.shape) for t in iter_tensors(args))
            node_id = node.id
        for t in outs:
            self.track(t, node_id)


def build_trace(model: nn.Module, anatomy: Anatomy, example_input: Any) -> Graph:
    """The graph of one forward pass on `example_input` (the caller handles modes and state)."""
    from gradwatch.anatomy._call import call_model, split_input

    graph = Graph("trace")
    param_layer: dict[int, str] = {}
    owner = _param_owner(model, anatomy)
    for q, p in model.named_parameters(remove_duplicate=False):
        if q in owner:
            param_layer[id(p)] = owner[q]
    recorder = _Recorder(graph, param_layer)
    args, kwargs = split_input(example_input)
    for i, t in enumerate(iter_tensors((args, kwargs))):
        recorder.track(t, graph.add("input", f"input{i}", [], shape=tuple(t.shape)).id)
    with recorder:
        out = call_model(model, example_input)
    graph.add("output", "output", [recorder.node_of[id(t)] for t in iter_tensors(out) if id(t) in recorder.node_of])
    recorder.keep.clear()
    return graph


# -- 3. leaf modules in registration order -------------------------------------------------
def build_modules(model: nn.Module, anatomy: Anatomy) -> Graph:
    """One chain of the leaf modules in the order they were registered (no trace)."""
    # A Sequential of leaf modules runs them in registration order by definition: then the
    # chain is exact ("sequential"); otherwise it is a guess ("modules").
    exact = isinstance(model, nn.Sequential) and all(next(iter(m.children()), None) is None for m in model)
    graph = Graph("sequential" if exact else "modules")
    prev = graph.add("input", "input0", []).id
    for name, module in model.named_modules():
        if next(iter(module.children()), None) is not None and not isinstance(module, nn.RNNBase | nn.MultiheadAttention):
            continue
        if any(name.startswith(p + ".") for p in _opaque_prefixes(model)):
            continue
        layers = _layers_under(anatomy, name)
        kind, label = _kind_of_module(module, layers)
        prev = graph.add(kind, label, [prev], layers).id
    graph.add("output", "output", [prev])
    return graph


def _opaque_prefixes(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.RNNBase | nn.MultiheadAttention)]
