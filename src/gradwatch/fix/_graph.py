"""The model as surgery sees it: which modules run in which order, and where to replace them.

Every transform needs two things: the *order* of the leaf modules (which activation
follows which layer, which activation is the output's), and a way to put a new module
where an old one was. The order comes from one of two sources:

- a forward pass on an example input (exact): forward hooks record each leaf module as
  it runs, and a `TorchFunctionMode` records functional activations (``torch.sigmoid``
  inside a custom ``forward``), each with the module whose forward called it and the
  file and line of the call;
- without an example input, registration order (``named_modules``). For `nn.Sequential`
  this *is* the execution order; for a custom module it is the order of the
  ``self.x = ...`` lines in ``__init__``, which is usually, but not always, the order
  ``forward`` uses them. Functional activations are then found by reading each custom
  ``forward`` with `inspect.getsource` (their line is known, their place in the order is not).
"""

from __future__ import annotations

import ast
import inspect
import linecache
import sys
import textwrap
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from gradwatch._compiled import unwrap
from gradwatch._errors import GradwatchTypeError, GradwatchValueError, ModelError
from gradwatch.anatomy._graph import iter_tensors
from gradwatch.anatomy._guard import Preserved
from gradwatch.anatomy.activations import (
    RELU_FUNCTIONS,
    SATURATING_FUNCTIONS,
    is_activation,
    is_saturating,
)
from gradwatch.anatomy.map import is_hf_conv1d
from gradwatch.probes.forward import AFFINE, PRODUCTS, is_constant

#: Modules that sit between a layer and its activation without changing what follows.
PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.modules.dropout._DropoutNd,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
)

#: Parametric layers that transforms reason about (what "a layer" means to surgery).
LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd, nn.RNNBase, nn.RNNCellBase)


def is_layer(m: nn.Module) -> bool:
    return isinstance(m, LAYER_TYPES)


def owns_parameters(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False))


def is_dense(m: nn.Module | None) -> bool:
    """A Linear, a convolution, or Hugging Face's `Conv1D` (GPT-2's linear layers, which
    store their weight as (in, out)): the layers `init` re-draws."""
    return isinstance(m, nn.Linear | nn.modules.conv._ConvNd) or (m is not None and is_hf_conv1d(m))


def has_frozen_parameter(m: nn.Module) -> bool:
    """True when a parameter of `m` itself has ``requires_grad=False``.

    Its owner keeps that parameter fixed on purpose (a pretrained part, BitFit's frozen
    weights), and what surrounds it — its other parameters, the activation it feeds —
    was trained or chosen together with it.
    """
    return any(not p.requires_grad for p in m.parameters(recurse=False))


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


def _leaves(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules surgery treats as atoms: those without children."""
    for name, m in model.named_modules():
        if next(iter(m.children()), None) is None:
            yield name, m


def static_order(model: nn.Module) -> Order:
    """Registration order of the leaves, and functional activations read from the source."""
    ops = [Op(name, m) for name, m in _leaves(model)]
    return Order(ops=ops, traced=False, functions=scan_source(model))


class _FunctionRecorder(TorchFunctionMode):
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

    def __torch_function__(
        self, func: Any, types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        fn = self._WATCHED.get(func)
        out = func(*args, **(kwargs or {}))
        # A call made by an activation *module* (nn.Sigmoid calls torch.sigmoid) is that
        # module's op, already recorded; only calls from other code count as functional.
        if fn is not None and self.stack and not self.stack[-1].startswith("\0"):
            file, line, code = _caller()
            op = Op(self.stack[-1], None, fn=fn, file=file, line=line, code=code)
            self.sink.append(op)
            if fn in SATURATING_FUNCTIONS:
                self.track(op, out, fn in GATE_FUNCTIONS)
        elif self.saturating and (func in AFFINE or func in _VIEWS):
            self._follow(func, args, out)
        return out

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
        if func in _VIEWS:
            self.track(op, out, gate_like)
        elif all(is_constant(b) for b in rest):
            self.track(op, out, gate_like or func in _SHIFTS)


#: Sigmoid-like functions: their outputs lie in [0, 1], the range of a gate.
GATE_FUNCTIONS = frozenset({"sigmoid", "hardsigmoid"})
_T = torch.Tensor
#: Shifts by a constant (1 + tanh(u), 1 - z): a saturating output moved to a gate's range.
_SHIFTS = frozenset({torch.add, torch.sub, torch.rsub, _T.add, _T.sub, _T.__add__, _T.__radd__, _T.__sub__, _T.__rsub__})
#: Views and reshapes of one tensor: ``w[:, :, None, None]`` is still the gate ``w``.
_VIEWS = frozenset({
    _T.__getitem__, _T.view, _T.view_as, _T.reshape, _T.reshape_as, torch.reshape, _T.unsqueeze,
    torch.unsqueeze, _T.squeeze, torch.squeeze, _T.expand, _T.expand_as, _T.flatten, torch.flatten,
    _T.permute, torch.permute, _T.transpose, torch.transpose, _T.contiguous,
})  # fmt: skip


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
    leaf_ids = {id(m) for _, m in _leaves(model)}
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
            out = _call(model, example_input)
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
            _call(model, example_input)
    finally:
        handle.remove()
    return total / count if count else None


def _call(model: nn.Module, example_input: Any) -> Any:
    try:
        if isinstance(example_input, dict):
            return model(**example_input)
        if isinstance(example_input, tuple):
            return model(*example_input)
        return model(example_input)
    except Exception as e:
        raise ModelError(
            f"{type(model).__name__} raised on the example input ({_describe(example_input)}): {e}. "
            "Pass an input the model accepts, or example_input=None to read the order from the code"
        ) from e


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)}"
    if isinstance(x, tuple | list):
        return "(" + ", ".join(_describe(v) for v in x) + ")"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in x.items()) + "}"
    return type(x).__name__


def order_of(model: nn.Module, example_input: Any = None) -> Order:
    """The traced order when an example input is given, else the static one."""
    if example_input is None:
        return static_order(model)
    return traced_order(model, example_input)


# -- functional activations read from source ------------------------------------------------


def _own_forward(m: nn.Module) -> Callable[..., Any] | None:
    """The module's forward when its class (not torch.nn) defines it."""
    fwd = type(m).forward
    mod = getattr(fwd, "__module__", "") or ""
    if mod.startswith("torch."):
        return None
    return fwd


def scan_source(model: nn.Module) -> list[Op]:
    """Functional activation calls in every custom ``forward``, one Op per module instance.

    A call whose result the root module returns directly (``return torch.sigmoid(...)``)
    is marked as the output activation by its ``fn`` ending in ``"@output"``.
    """
    found: list[Op] = []
    cache: dict[Any, list[tuple[str, int, str, bool]]] = {}
    for name, m in model.named_modules():
        fwd = _own_forward(m)
        if fwd is None:
            continue
        if fwd not in cache:
            cache[fwd] = _scan_function(fwd)
        for fn, line, code, returned in cache[fwd]:
            file = inspect.getsourcefile(fwd) or ""
            tag = fn + ("@output" if returned and name == "" else "")
            found.append(Op(name, None, fn=tag, file=file, line=line, code=code))
    return found


def _scan_function(fwd: Callable[..., Any]) -> list[tuple[str, int, str, bool]]:
    try:
        lines, start = inspect.getsourcelines(fwd)
    except (OSError, TypeError):
        return []
    src = textwrap.dedent("".join(lines))
    try:
        tree = ast.parse(src)
    except SyntaxError:  # pragma: no cover - source that only parses in its context
        return []
    returned: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Call):
            returned.add(id(node.value))
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func.attr if isinstance(node.func, ast.Attribute) else (
            node.func.id if isinstance(node.func, ast.Name) else ""
        )
        if fn == "expit":
            fn = "sigmoid"
        if fn in SATURATING_FUNCTIONS:
            line = start + node.lineno - 1
            out.append((fn, line, lines[node.lineno - 1].strip(), id(node) in returned))
    out.sort(key=lambda t: t[1])
    return out


# -- replacing modules -----------------------------------------------------------------------


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model if name == "" else model.get_submodule(name)


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the module `name` is (an attribute, or an entry of a container)."""
    if name == "":
        raise GradwatchTypeError("cannot replace the root module in place; wrap it instead")
    parent_name, _, attr = name.rpartition(".")
    parent = get_module(model, parent_name)
    setattr(parent, attr, new)


def like(new: nn.Module, ref: nn.Module | torch.Tensor | None) -> nn.Module:
    """Move `new` to the device and floating dtype of `ref` and copy its train/eval mode."""
    t: torch.Tensor | None
    if isinstance(ref, nn.Module):
        t = next(iter(ref.parameters()), None)
        if t is None:
            t = next(iter(ref.buffers()), None)
        new.train(ref.training)
    else:
        t = ref
    if t is not None:
        if t.is_floating_point():
            new.to(device=t.device, dtype=t.dtype)
        else:
            new.to(device=t.device)
    return new


def shared_parameters(model: nn.Module) -> set[int]:
    """Ids of the parameters held by more than one module: tied weights."""
    holders: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            holders[id(p)] = holders.get(id(p), 0) + 1
    return {pid for pid, n in holders.items() if n > 1}


def uses(model: nn.Module) -> dict[int, int]:
    """How many places (attributes or container entries) hold each module, by id."""
    counts: dict[int, int] = {}
    for m in model.modules():
        for child in m.children():
            counts[id(child)] = counts.get(id(child), 0) + 1
    return counts


def sequentials(model: nn.Module) -> list[tuple[str, nn.Sequential]]:
    """Every nn.Sequential in the model (the root included), outermost first."""
    return [(n, m) for n, m in model.named_modules() if type(m) is nn.Sequential]


def child_name(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def copy_model(model: nn.Module, inplace: bool) -> nn.Module:
    """The module a transform edits: `model` itself with `inplace`, else a deep copy.

    A `torch.compile` wrapper is unwrapped first (`gradwatch._compiled.unwrap`): the
    transforms trace and edit the eager module — tracing through the wrapper would
    recompile it at every call and use up dynamo's recompile limit for the user's own
    model — and return an eager module (compile it again to train it compiled).
    """
    if not isinstance(model, nn.Module):
        raise GradwatchTypeError(
            f"expected a torch.nn.Module, got {type(model).__module__}.{type(model).__qualname__}"
        )
    unwrapped = unwrap(model)
    assert isinstance(unwrapped, nn.Module)
    model = unwrapped
    if inplace:
        return model
    import copy

    try:
        return copy.deepcopy(model)
    except RuntimeError as e:
        if "deepcopy protocol" not in str(e):
            raise
        raise GradwatchValueError(
            f"{type(model).__name__} cannot be copied: it holds a tensor computed from others as an "
            "attribute (torch.nn.utils.weight_norm keeps `weight` that way, or it was kept from a forward "
            "pass). Use torch.nn.utils.parametrizations.weight_norm instead, or run on a copy made after "
            "removing it (torch.nn.utils.remove_weight_norm)"
        ) from e
