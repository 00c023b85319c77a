"""The deeper map: what follows each layer, what bypasses it, and how large its weights are.

`analyse(model, example_input=None)` fills, for every layer of an `Anatomy`,
``Layer.extra`` (a `gradwatch.anatomy.map.LayerFacts`: its keys are type-checked) with:

=============  =====================================================================
``activation``  spec of the elementwise activation that follows it (``"relu"``,
                ``"leaky_relu(negative_slope=0.1)"``...; see `anatomy.activations`),
                module or functional call; None when none follows before the next layer
``norm``        class or function name of a normalisation right after it (or, failing
                that, right before it: pre-norm); None if none
``skip``        True when a residual addition bypasses it
``sigma_w2``    ``fan_in * E[W^2]``: the effective weight scale of mean-field theory
                (equal to ``fan_in * Var(W)`` for the zero-mean weights of every
                standard initialisation); None for layers without a weight matrix
``sigma_b2``    ``E[b^2]`` of its bias; None without a bias
``recurrent``   True for RNN/LSTM/GRU modules and their cells
``seq_len``     the sequence length it saw on the example input (None if unknown)
=============  =====================================================================

plus, where they apply, ``cell`` (``rnn``/``lstm``/``gru``), ``hh_radius`` and
``hh_norm`` (spectral radius and largest singular value of the hidden-to-hidden
weights, the largest over stacked layers and directions), ``keep_bias_max`` (for an
LSTM or GRU: the largest bias of the gate that keeps the state — an LSTM's forget gate,
a GRU's update gate ``z`` — ``b_ih + b_hh`` over units, stacked layers and directions)
``bias_ratio_q`` (the
deciles of ``b_i / ||W_i||`` over units: how far each unit's bias sits from zero in
units of its weight row's norm) and, for PyTorch's own normalisations, ``norm_gain`` (the
root mean square of the gain) and ``norm_eps`` (the constant added to the variance).

It returns a `Structure` with the model-level facts: the longest chain of layers
without a skip, the skip connections and normalisations found, the recurrent layers.
How the graph is obtained (``fx``, ``trace`` or ``modules``) is in
`gradwatch.anatomy._graph`; `Structure.method` says which one it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradwatch._errors import GradwatchTypeError
from gradwatch.anatomy._facts import norm_facts, recurrent_facts, weight_facts
from gradwatch.anatomy._graph import (
    Graph,
    build_fx,
    build_modules,
    build_trace,
    is_transparent,
)
from gradwatch.anatomy._guard import Preserved
from gradwatch.anatomy.map import ROOT, Anatomy
from gradwatch.anatomy.order import traced_order

__all__ = ["Structure", "analyse"]

_WEIGHT_LAYER_TYPES = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.RNNBase, nn.RNNCellBase, nn.Embedding, nn.EmbeddingBag)


@dataclass
class Structure:
    """Model-level facts; the per-layer ones are in ``anatomy[name].extra``.

    Attributes:
        anatomy: the (enriched) anatomy.
        method: how the dataflow was read: ``fx``, ``trace`` (a forward pass on the example
            input), ``sequential`` (an ``nn.Sequential`` of leaf modules: registration order
            is the dataflow), ``modules`` (registration order only, a guess: skips and
            functional activations unseen), or, rebuilt from a log, ``anatomy``/``none``.
        longest_plain_chain: the most weight layers a gradient must pass through, on its
            shortest way from the output back to some layer (skips shorten the way).
        chain: those layers, input side first.
        skip_connections: residual additions found.
        normalizations: names of the normalisation layers or functions found.
        recurrent: recurrent layer -> sequence length seen (None if not seen).
        successors: for each layer, the layers its output reaches next (through
            activations, norms, reshapes and residual additions).
        notes: what could not be seen, and why.
    """

    anatomy: Anatomy
    method: str
    longest_plain_chain: int = 0
    chain: list[str] = field(default_factory=list)
    skip_connections: int = 0
    normalizations: list[str] = field(default_factory=list)
    recurrent: dict[str, int | None] = field(default_factory=dict)
    successors: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def sees_skips(self) -> bool:
        """Whether skip connections would have been seen (fx or a trace, not registration order)."""
        return self.method in ("fx", "trace", "sequential")

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "longest_plain_chain": self.longest_plain_chain,
            "chain": list(self.chain),
            "skip_connections": self.skip_connections,
            "normalizations": list(self.normalizations),
            "recurrent": dict(self.recurrent),
            "successors": {k: list(v) for k, v in self.successors.items()},
            "notes": list(self.notes),
        }

    @classmethod
    def from_anatomy(cls, anatomy: Anatomy, facts: dict[str, Any] | None = None) -> Structure:
        """Rebuild a Structure from an anatomy read back from a log (and its saved facts, if any).

        Without saved facts the chain is taken as the weight layers in order, which is only
        safe when none of them is marked ``skip``; `method` is then ``"anatomy"``.
        """
        f = facts or {}
        if f:
            return cls(
                anatomy=anatomy,
                method=str(f.get("method", "anatomy")),
                longest_plain_chain=int(f.get("longest_plain_chain", 0)),
                chain=list(f.get("chain", [])),
                skip_connections=int(f.get("skip_connections", 0)),
                normalizations=list(f.get("normalizations", [])),
                recurrent={k: (None if v is None else int(v)) for k, v in f.get("recurrent", {}).items()},
                successors={k: list(v) for k, v in f.get("successors", {}).items()},
                notes=list(f.get("notes", [])),
            )
        enriched = any("skip" in layer.extra for layer in anatomy.layers)
        skips = any(layer.extra.get("skip") for layer in anatomy.layers)
        # Without a skip anywhere, the weight layers in execution order are the chain.
        s = cls(anatomy=anatomy, method="anatomy" if enriched and not skips else "none")
        if s.method == "anatomy":
            s.chain = [
                layer.name
                for layer in anatomy.layers
                if layer.extra.get("sigma_w2") is not None and not layer.extra.get("is_norm")
            ]
            s.longest_plain_chain = len(s.chain)
        else:
            s.notes.append("the log's anatomy has no structure facts: causes from depth are not drawn")
        s.recurrent = {layer.name: layer.extra.get("seq_len") for layer in anatomy.layers if layer.extra.get("recurrent")}
        s.normalizations = [layer.name for layer in anatomy.layers if layer.extra.get("is_norm")]
        return s


# -- reading the graph ---------------------------------------------------------------------
def _ancestors(graph: Graph, start: int) -> set[int]:
    seen = {start}
    todo = [start]
    while todo:
        for i in graph.nodes[todo.pop()].inputs:
            if i not in seen:
                seen.add(i)
                todo.append(i)
    return seen


def _skips(graph: Graph, depth: list[int]) -> tuple[int, set[str]]:
    """Residual additions (inputs from different depths that fork from a common node) and the layers they bypass."""
    count, bypassed = 0, set()
    for node in graph.nodes:
        if node.kind != "add" or len(node.inputs) < 2:
            continue
        ins = sorted(node.inputs, key=lambda i: depth[i])
        shallow, deep = ins[0], ins[-1]
        if depth[deep] == depth[shallow]:
            continue
        anc_deep, anc_shallow = _ancestors(graph, deep), _ancestors(graph, shallow)
        if not anc_deep & anc_shallow:
            continue  # two independent inputs (e.g. token and position embeddings)
        count += 1
        for i in anc_deep - anc_shallow:
            if graph.nodes[i].kind == "layer":
                bypassed.update(graph.nodes[i].layers)
    return count, bypassed


def _forward_facts(graph: Graph, users: list[list[int]], start: int) -> tuple[str | None, str | None, list[str]]:
    """From a layer node: the first activation and norm on its way out, and the layers reached next."""
    act: str | None = None
    norm: str | None = None
    nxt: list[str] = []
    seen = {start}
    frontier = list(users[start])
    steps = 0
    while frontier and steps < 64:
        steps += 1
        i = frontier.pop(0)
        if i in seen:
            continue
        seen.add(i)
        n = graph.nodes[i]
        if n.kind == "layer":
            nxt.extend(n.layers)
            continue
        if n.kind == "act":
            if act is None:
                act = n.name
            nxt.extend(n.layers)  # a PReLU is an activation with its own parameter
        elif n.kind == "norm":
            norm = norm or n.name
        elif n.kind in ("op",) and not is_transparent(n.name):
            continue
        elif n.kind == "output":
            continue
        frontier.extend(users[i])
    return act, norm, list(dict.fromkeys(nxt))


def _norm_before(graph: Graph, start: int) -> str | None:
    todo = list(graph.nodes[start].inputs)
    seen: set[int] = set()
    while todo:
        i = todo.pop(0)
        if i in seen:
            continue
        seen.add(i)
        n = graph.nodes[i]
        if n.kind == "norm":
            return n.name
        if n.kind == "act" or (n.kind == "op" and is_transparent(n.name)):
            todo.extend(n.inputs)
    return None


def _shortest_to_output(graph: Graph, users: list[list[int]]) -> tuple[list[float], list[int | None]]:
    """Fewest weight layers from each node to the output (counting the node), and the next hop."""
    inf = math.inf
    dist = [inf] * len(graph.nodes)
    hop: list[int | None] = [None] * len(graph.nodes)
    for n in reversed(graph.nodes):
        if n.kind == "output":
            dist[n.id] = 0.0
            continue
        best, arg = inf, None
        for u in users[n.id]:
            if dist[u] < best:
                best, arg = dist[u], u
        if best < inf:
            dist[n.id] = best + (1 if n.kind == "layer" else 0)
            hop[n.id] = arg
    return dist, hop


def _apply_graph(structure: Structure, graph: Graph) -> None:
    anatomy = structure.anatomy
    users = graph.users()
    depth = [0] * len(graph.nodes)
    for n in graph.nodes:
        depth[n.id] = max((depth[i] for i in n.inputs), default=0) + (1 if n.kind == "layer" else 0)
    n_skips, bypassed = _skips(graph, depth) if structure.sees_skips else (0, set())
    structure.skip_connections = n_skips
    dist, hop = _shortest_to_output(graph, users)
    first_node: dict[str, int] = {}
    for n in graph.nodes:
        for name in n.layers:
            first_node.setdefault(name, n.id)
        if n.kind == "norm":
            structure.normalizations.append(n.layers[0] if n.layers else n.name)
    structure.normalizations = list(dict.fromkeys(structure.normalizations))
    for name, i in first_node.items():
        if name not in anatomy:
            continue
        node = graph.nodes[i]
        extra = anatomy[name].extra
        act, norm, nxt = _forward_facts(graph, users, i)
        extra["norm"] = norm or _norm_before(graph, i)
        extra["skip"] = name in bypassed
        extra["is_norm"] = node.kind == "norm"
        if node.kind == "layer" and not extra.get("recurrent"):
            extra["activation"] = act
        structure.successors[name] = [s for s in nxt if s != name]
    # the longest plain chain
    layer_nodes = [n for n in graph.nodes if n.kind == "layer" and dist[n.id] < math.inf]
    if layer_nodes:
        top = max(layer_nodes, key=lambda n: (dist[n.id], -n.id))
        structure.longest_plain_chain = int(dist[top.id])
        chain: list[str] = []
        cur: int | None = top.id
        while cur is not None:
            nd = graph.nodes[cur]
            if nd.kind == "layer" and nd.layers and nd.layers[0] not in chain:
                chain.append(nd.layers[0])
            cur = hop[cur]
        structure.chain = chain
    order = [name for name in first_node if name in anatomy]
    if all(layer.order is None for layer in anatomy.layers) and graph.method in ("fx", "trace"):
        anatomy.reorder(order)


def analyse(model: nn.Module, example_input: Any = None, anatomy: Anatomy | None = None) -> Structure:
    """Enrich `anatomy` (built from `model` if not given) with the facts above; return the Structure.

    Tries a `torch.fx` trace first; if the model does not trace and `example_input` is
    given, records one forward pass instead (in eval mode, with modes, buffers and RNG
    state restored afterwards); failing both, reads the modules in registration order.
    With `example_input`, recurrent layers also get the sequence length they saw.

    Example::

        s = analyse(model, torch.randn(8, 20))
        s.anatomy["0"].extra["activation"]    # 'relu'
        s.longest_plain_chain                  # 3
    """
    if not isinstance(model, nn.Module):
        raise GradwatchTypeError(f"analyse() expects a torch.nn.Module, got {type(model).__qualname__}")
    anatomy = anatomy or Anatomy.from_module(model)
    modules = dict(model.named_modules())
    for layer in anatomy.layers:
        module = modules[layer.name] if layer.name != ROOT else model
        extra = layer.extra
        extra.update(weight_facts(module))
        extra.update(norm_facts(module))
        extra.setdefault("activation", None)
        extra.setdefault("norm", None)
        extra.setdefault("skip", False)
        extra["recurrent"] = isinstance(module, nn.RNNBase | nn.RNNCellBase)
        extra["seq_len"] = None
        if extra["recurrent"]:
            extra.update(recurrent_facts(module))
    graph: Graph | None = None
    notes: list[str] = []
    try:
        graph = build_fx(model, anatomy)
    except Exception as e:  # fx raises many kinds of errors on untraceable code
        notes.append(f"torch.fx could not trace the model ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    if graph is None and example_input is not None:
        with torch.enable_grad(), Preserved(model):
            model.eval()  # no BatchNorm statistics updated, no dropout drawn
            graph = build_trace(model, anatomy, example_input)  # a ModelError names the failing module
            notes.append("structure read from one forward pass on the example input")
    if graph is None:
        graph = build_modules(model, anatomy)
        if graph.method == "modules":
            notes.append(
                "no trace: layers taken in registration order; skip connections and functional "
                "activations cannot be seen (pass an example input to see them)"
            )
    structure = Structure(anatomy=anatomy, method=graph.method, notes=notes + graph.notes)
    _apply_graph(structure, graph)
    if example_input is not None and any(layer.extra["recurrent"] for layer in anatomy.layers):
        order = traced_order(model, example_input)
        for layer in anatomy.layers:
            if layer.extra["recurrent"]:
                name = "" if layer.name == ROOT else layer.name
                layer.extra["seq_len"] = order.sequence_length(name, modules[layer.name] if name else model)
    structure.recurrent = {layer.name: layer.extra["seq_len"] for layer in anatomy.layers if layer.extra["recurrent"]}
    return structure
