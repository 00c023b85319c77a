"""The execution order of a model's leaf modules and functional activations, for surgery.

Every transform needs the *order* of the leaf modules: which activation follows which
layer, which activation is the output's, which saturating output is a gate. It comes from
one of two sources (`order_of`):

- a forward pass on an example input (exact, `traced_order`): forward hooks record each
  leaf module as it runs, and a `CallObserver` (`gradwatch.anatomy._mode`) records
  functional activations (``torch.sigmoid`` inside a custom ``forward``), each with the
  module whose forward called it and the file and line of the call;
- without an example input, registration order (``named_modules``, `static_order`). For
  `nn.Sequential` this *is* the execution order; for a custom module it is the order of
  the ``self.x = ...`` lines in ``__init__``, which is usually, but not always, the order
  ``forward`` uses them. Functional activations are then found by reading each custom
  ``forward`` (`gradwatch.anatomy._source`: their line is known, their place in the order
  is not).
"""

from __future__ import annotations

import linecache
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

import torch
from torch import nn

from gradwatch._errors import GradwatchTypeError
from gradwatch.anatomy._call import call_model
from gradwatch.anatomy._graph import iter_tensors
from gradwatch.anatomy._guard import Preserved
from gradwatch.anatomy._mode import AFFINE, PRODUCTS, SHIFTS, VIEWS, CallObserver, is_constant
from gradwatch.anatomy._source import scan_source
from gradwatch.anatomy.activations import (
    RELU_FUNCTIONS,
    SATURATING_FUNCTIONS,
    is_activation,
    is_saturating,
)
from gradwatch.anatomy.modules import PASS_THROUGH, has_frozen_parameter, leaves, owns_parameters

__all__ = ["GATE_FUNCTIONS", "Op", "Order", "input_power", "order_of", "static_order", "traced_order"]


# -- the order ---------------------------------------------------------------------------


@dataclass
class Op:
    """One step of a forward pass: a leaf module called, or a functional activation called."""

    name: str  # module qualname ("" for the root); for a function, the module whose forward called it
    module: nn.Module | None  # None for a function
    fn: str = ""  # for a function: its name ("sigmoid"); for a module: ""
    file: str = ""
    line: int = 0
    code: str = ""
    #: traced module calls only: the index in `Order.ops` of the module call whose output
    #: tensor this call took as its first argument, or None (a view, a concatenation, the
    #: model's input: something computed in between, or nothing traced)
    input_from: int | None = None
    #: traced saturating activations only: its output met another tensor in an elementwise
    #: product (``x * sigmoid(s)``, a squeeze-and-excitation gate, SiLU written by hand, a
    #: hand-written LSTM's gates), directly or after a constant shift or scale (``1 - z``):
    #: its open and closed states are its purpose, so no transform swaps, normalises or wraps it
    gate: bool = False
    #: traced saturating activations only: its output, as it is or through a view or a
    #: constant shift or scale, is among what the model returns — an output activation
    #: even when a parametric layer runs after it (a second head: ``return cls(f), sigmoid(obj(f))``)
    returned: bool = False

    @property
    def is_function(self) -> bool:
        return self.module is None


@dataclass
class Order:
    """Leaf modules and functional activations in the order they run (see the module docstring)."""

    ops: list[Op]
    traced: bool  # True when read from a forward pass, False when guessed from registration
    functions: list[Op] = field(default_factory=list)  # functional activations found (either way)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # output shape per module (traced)
    calls: dict[str, int] = field(default_factory=dict)  # times each module ran (traced)
    packed: dict[str, int] = field(default_factory=dict)  # steps of a PackedSequence a module took (traced)

    def modules(self) -> list[Op]:
        return [op for op in self.ops if not op.is_function]

    def sequence_length(self, name: str, module: nn.Module) -> int | None:
        """The sequence length the recurrent layer `name` saw in the traced pass, or None:
        a cell's number of calls, a `PackedSequence`'s longest sequence, else the time
        dimension of its first output."""
        if not self.traced:
            return None
        if isinstance(module, nn.RNNCellBase):
            n = self.calls.get(name)
            return int(n) if n else None
        if name in self.packed:  # a PackedSequence: its longest sequence
            return int(self.packed[name])
        shape = self.shapes.get(name)
        if shape is None:
            return None
        if len(shape) == 3:
            return int(shape[1] if getattr(module, "batch_first", False) else shape[0])
        if len(shape) == 2:
            return int(shape[0])
        return None

    def next_activation(self, name: str) -> Op | None:
        """The activation (module or function) that follows the layer `name`, or None.

        Normalisation, dropout and reshaping modules in between are skipped; another
        parametric layer first means the layer feeds it linearly.
        """
        idx = [i for i, op in enumerate(self.ops) if op.name == name and not op.is_function]
        if not idx:
            return None
        for op in self.ops[idx[0] + 1 :]:
            if op.is_function:
                if op.fn in SATURATING_FUNCTIONS or op.fn in RELU_FUNCTIONS:
                    return op
                continue
            assert op.module is not None
            if is_activation(op.module):
                return op
            if isinstance(op.module, PASS_THROUGH):
                continue
            return None
        return None

    def last_layer_index(self) -> int:
        """Index in `ops` of the last module that owns parameters (-1 if none)."""
        last = -1
        for i, op in enumerate(self.ops):
            if op.module is not None and owns_parameters(op.module) and not isinstance(op.module, PASS_THROUGH):
                last = i
        return last

    def output_modules(self) -> set[int]:
        """Ids of the model's output activation modules: those after the last parametric
        layer, and (traced) those whose output the model returns (`Op.returned`)."""
        last = self.last_layer_index()
        after = {id(op.module) for op in self.ops[last + 1 :] if op.module is not None}
        return after | {id(op.module) for op in self.ops if op.returned and op.module is not None}

    def gates(self) -> set[int]:
        """Ids of activation modules used as gates on some call (`Op.gate`)."""
        return {id(op.module) for op in self.ops if op.gate and op.module is not None}

    def beside_frozen(self) -> set[int]:
        """Ids of activation modules next to a frozen layer.

        An activation belongs to a frozen part of the model when the nearest module with
        parameters before it (the layer whose pre-activations it shapes) or after it (the
        layer that reads its outputs) has a frozen parameter (`has_frozen_parameter`):
        those weights were trained with this activation and cannot adapt to another.
        """
        found: set[int] = set()
        for ops in (self.ops, self.ops[::-1]):
            frozen = False
            for op in ops:
                m = op.module
                if m is None:
                    continue
                if is_activation(m):
                    if frozen:
                        found.add(id(m))
                elif owns_parameters(m):
                    frozen = has_frozen_parameter(m)
        return found

    def output_activations(self) -> set[str]:
        """Names of activations after the last parametric layer: the model's output activation.

        Functions are named ``"<module>:<fn>"``.
        """
        last = self.last_layer_index()
        out: set[str] = set()
        for i, op in enumerate(self.ops):
            if i <= last and not op.returned:
                continue
            if op.is_function:
                out.add(f"{op.name}:{op.fn}")
            elif op.module is not None and is_activation(op.module):
                out.add(op.name)
        return out


def static_order(model: nn.Module) -> Order:
    """Registration order of the leaves, and functional activations read from the source."""
    ops = [Op(name, m) for name, m in leaves(model)]
    return Order(ops=ops, traced=False, functions=scan_source(model))


class _FunctionRecorder(CallObserver):
    """Records functional activation calls with the module whose forward made them."""

    _WATCHED: ClassVar[dict[Callable[..., Any], str]] = {}

    def __init__(self, stack: list[str], sink: list[Op]) -> None:
        super().__init__()
        self.stack = stack
        self.sink = sink
        # saturating outputs followed through the pass, by tensor id: (op, whether its values
        # are gate-like, the tensor — kept alive so that its id is not reused within the pass)
        self.saturating: dict[int, tuple[Op, bool, torch.Tensor]] = {}
        if not _FunctionRecorder._WATCHED:
            _FunctionRecorder._WATCHED.update(_watched_functions())

    def track(self, op: Op, out: Any, gate_like: bool) -> None:
        """Follow a saturating activation's output, to see whether it is used as a gate."""
        if isinstance(out, torch.Tensor):
            self.saturating[id(out)] = (op, gate_like, out)

    def seen(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        fn = self._WATCHED.get(func)
        # A call made by an activation *module* (nn.Sigmoid calls torch.sigmoid) is that
        # module's op, already recorded; only calls from other code count as functional.
        if fn is not None and self.stack and not self.stack[-1].startswith("\0"):
            file, line, code = _caller()
            op = Op(self.stack[-1], None, fn=fn, file=file, line=line, code=code)
            self.sink.append(op)
            if fn in SATURATING_FUNCTIONS:
                self.track(op, out, fn in GATE_FUNCTIONS)
        elif self.saturating and (func in AFFINE or func in VIEWS):
            self._follow(func, args, out)

    def _follow(self, func: Any, args: Any, out: Any) -> None:
        """A gate-like output (a sigmoid's, or any saturating output shifted by a constant:
        ``1 + tanh(u)``, ``1 - z``) in an elementwise product with another tensor is a gate;
        a view, a constant shift or scale of a followed output is still that output."""
        at = [(i, self.saturating[id(a)]) for i, a in enumerate(args) if isinstance(a, torch.Tensor) and id(a) in self.saturating]
        if not at:
            return
        i, (op, gate_like, _) = at[0]
        rest = [a for j, a in enumerate(args) if j != i]
        if func in PRODUCTS:
            for k, (candidate, candidate_gate_like, _) in at:
                if candidate_gate_like and any(not is_constant(b) for j, b in enumerate(args) if j != k):
                    candidate.gate = True
            if any(not is_constant(b) for b in rest):
                return
        if func in VIEWS:
            self.track(op, out, gate_like)
        elif all(is_constant(b) for b in rest):
            self.track(op, out, gate_like or func in SHIFTS)


#: Sigmoid-like functions: their outputs lie in [0, 1], the range of a gate.
GATE_FUNCTIONS = frozenset({"sigmoid", "hardsigmoid"})


def _watched_functions() -> dict[Callable[..., Any], str]:
    f = nn.functional
    table: dict[Callable[..., Any], str] = {}
    for name in SATURATING_FUNCTIONS | RELU_FUNCTIONS:
        for owner in (torch, f, torch.Tensor, torch.special):
            obj = getattr(owner, name, None)
            if obj is not None:
                table[obj] = name
    table[torch.special.expit] = "sigmoid"
    return table


_HERE = str(Path(__file__).resolve().parent)
_TORCH = str(Path(torch.__file__).resolve().parent)


def _caller() -> tuple[str, int, str]:
    """File, line and source text of the innermost frame outside torch and this package."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        path = str(Path(frame.f_code.co_filename).resolve()) if frame.f_code.co_filename else ""
        if not path.startswith(_TORCH) and not path.startswith(_HERE):
            code = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
            return frame.f_code.co_filename, frame.f_lineno, code
        frame = frame.f_back
    return "", 0, ""


def traced_order(model: nn.Module, example_input: Any) -> Order:
    """Run one forward pass (no gradient) and record what ran, in order."""
    if not isinstance(model, nn.Module):
        raise GradwatchTypeError(f"expected a torch.nn.Module, got {type(model).__qualname__}")
    names = {id(m): n for n, m in model.named_modules()}
    leaf_ids = {id(m) for _, m in leaves(model)}
    ops: list[Op] = []
    stack: list[str] = []
    running: list[int] = []  # indices in `ops` of the leaf calls under way
    # the latest leaf call to return each tensor, by id; the weak reference tells a live
    # tensor from a new one that reuses a freed tensor's id
    produced: dict[int, tuple[int, weakref.ref[torch.Tensor]]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    calls: dict[str, int] = {}
    packed: dict[str, int] = {}
    handles = []
    recorder = _FunctionRecorder(stack, ops)

    def pre(m: nn.Module, args: Any) -> None:
        name = names[id(m)]
        if id(m) in leaf_ids:
            source = None
            if args and isinstance(args[0], torch.Tensor):
                entry = produced.get(id(args[0]))
                if entry is not None and entry[1]() is args[0]:
                    source = entry[0]
            ops.append(Op(name, m, input_from=source))
            running.append(len(ops) - 1)
            calls[name] = calls.get(name, 0) + 1
            if args and isinstance(args[0], nn.utils.rnn.PackedSequence):
                packed.setdefault(name, int(args[0].batch_sizes.numel()))  # the longest sequence
        # Inside a leaf (an activation module, a recurrent layer) nothing is functional.
        stack.append(("\0" + name) if id(m) in leaf_ids else name)

    def post(m: nn.Module, args: Any, out: Any) -> None:
        stack.pop()
        if id(m) not in leaf_ids:
            return
        index = running.pop()
        first = out[0] if isinstance(out, tuple) and out else out
        if isinstance(first, torch.Tensor):
            shapes.setdefault(names[id(m)], tuple(first.shape))
            produced[id(first)] = (index, weakref.ref(first))
            if is_saturating(m):
                recorder.track(ops[index], first, isinstance(m, nn.Sigmoid | nn.Hardsigmoid))

    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
        # Module calls and functional calls go to the same list, so their order is kept;
        # eval mode: no batch-statistics updates, no dropout draws (each module's own mode,
        # its buffers and the RNG state come back afterwards).
        with torch.no_grad(), recorder, Preserved(model):
            model.eval()
            out = call_model(model, example_input)
        for t in iter_tensors(out):
            followed = recorder.saturating.get(id(t))
            if followed is not None:
                followed[0].returned = True
    finally:
        for h in handles:
            h.remove()
    functions = [op for op in ops if op.is_function]
    return Order(ops=ops, traced=True, functions=functions, shapes=shapes, calls=calls, packed=packed)


def input_power(model: nn.Module, module: nn.Module, example_input: Any) -> float | None:
    """Mean squared norm ``E|x|^2`` of the input vectors `module` receives when `model`
    runs on `example_input` (one forward pass, no gradient, eval mode), or None when it
    receives none.

    An input vector is the last dimension of the module's first argument or its
    ``input=`` keyword (a ``PackedSequence``'s data); all-zero vectors — padding — are left out, since they
    carry nothing a weight could scale. Every call counts (a cell run once per step).
    """
    total, count = 0.0, 0

    def pre(m: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        nonlocal total, count
        x = args[0] if args else kwargs.get("input")  # `rnn(input=x)` as well as `rnn(x)`
        if isinstance(x, nn.utils.rnn.PackedSequence):
            x = x.data
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or not x.is_floating_point():
            return
        sq = x.detach().double().reshape(-1, x.shape[-1]).pow(2).sum(-1)
        sq = sq[sq > 0]
        total += float(sq.sum())
        count += int(sq.numel())

    handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad(), Preserved(model):
            model.eval()
            call_model(model, example_input)
    finally:
        handle.remove()
    return total / count if count else None


def order_of(model: nn.Module, example_input: Any = None) -> Order:
    """The traced order when an example input is given, else the static one."""
    if example_input is None:
        return static_order(model)
    return traced_order(model, example_input)


