"""Functional activations read from a model's source, when there is no forward pass to watch.

Without an example input the execution order is a guess (`gradwatch.anatomy.order`), and a
``torch.sigmoid`` called inside a custom ``forward`` is invisible to hooks: each custom
``forward`` is read with `inspect.getsource` and parsed, and every call of a saturating
function is kept with its file and line (their place in the order stays unknown).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from gradwatch.anatomy.activations import SATURATING_FUNCTIONS

if TYPE_CHECKING:
    from gradwatch.anatomy.order import Op


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
    from gradwatch.anatomy.order import Op  # the order imports this module

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
