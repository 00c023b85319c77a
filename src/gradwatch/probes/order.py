"""The order in which a model's modules run, read from its first forward pass.

`FirstForward` hooks every module (not only layers: a layer whose parameters its parent
uses directly, such as nn.MultiheadAttention's out_proj, never runs itself and is placed
by its parent) and notes which modules read the same input tensor. Its hooks go as soon
as that pass is over; `apply` then hands both facts to `Anatomy.reorder`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradwatch.anatomy import Anatomy
from gradwatch.anatomy.map import ROOT


class FirstForward:
    def __init__(self, model: nn.Module) -> None:
        self.order: list[str] = []
        # each module's first input tensor, held until the pass ends so that no id is reused
        self._inputs: list[tuple[str, torch.Tensor]] = []
        self.input_groups: dict[str, int] = {}
        self.handles: list[RemovableHandle] = []
        try:
            for name, module in model.named_modules():
                self.handles.append(module.register_forward_pre_hook(self._hook(name or ROOT)))
            self.handles.append(model.register_forward_hook(self._done, always_call=True))
        except BaseException:
            self.remove()
            raise

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            if not torch.compiler.is_compiling():  # traced into a compiled graph: no order
                self.order.append(name)
                if args and isinstance(args[0], torch.Tensor):
                    self._inputs.append((name, args[0]))

        return hook

    def _done(self, module: nn.Module, args: Any, output: Any) -> None:
        if torch.compiler.is_compiling():
            return
        self.remove()
        groups: dict[int, int] = {}
        for name, x in self._inputs:
            self.input_groups.setdefault(name, groups.setdefault(id(x), len(groups)))
        self._inputs.clear()

    def remove(self) -> None:
        """Remove the hooks (safe to call twice)."""
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def apply(self, anatomy: Anatomy) -> None:
        """Stop watching and put `anatomy`'s layers in the order seen (if a pass was seen)."""
        self.remove()
        self._inputs.clear()
        if self.order:
            anatomy.reorder(self.order, self.input_groups)
