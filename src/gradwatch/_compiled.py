"""`torch.compile` wrappers: gradwatch works on the module a compiled wrapper holds."""

from __future__ import annotations

from torch import nn


def unwrap(model: object) -> object:
    """The module `torch.compile(module)` wrapped, for an `OptimizedModule`; else `model` itself.

    Its parameters are the wrapper's, and its names have no `_orig_mod.` prefix. gradwatch
    analyses, hooks and edits the eager module: hooks are not run inside compiled graphs,
    and a fixed model is a new eager module (compile it again to train it compiled).
    """
    wrapped = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(wrapped, nn.Module):
        return wrapped
    return model
