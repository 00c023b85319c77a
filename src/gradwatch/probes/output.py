"""The model's output: its spread across the batch (the same prediction for every input?) and its scale."""

from __future__ import annotations

import math
from typing import Any

import torch


def first_tensor(output: Any) -> torch.Tensor | None:
    """The model's main output: a tensor, `.logits`, a dict's 'logits', or the first tensor of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, dict):
        for key in ("logits", "output", "out"):
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
        output = list(output.values())
    if isinstance(output, list | tuple):
        for item in output:
            t = first_tensor(item)
            if t is not None:
                return t
    return None


def spread(y: torch.Tensor) -> torch.Tensor | None:
    """Across-batch standard deviation, averaged over output elements, over the mean |output|.

    Near 0: every input gets the same prediction. Needs a batch of at least 2 (dim 0).
    """
    if y.dim() == 0 or y.shape[0] < 2 or not y.is_floating_point():
        return None
    y = y.detach().double().reshape(y.shape[0], -1)
    return y.std(dim=0).mean() / (y.abs().mean() + 1e-12)


def scale(y: torch.Tensor) -> torch.Tensor | None:
    """Root mean square of the output's elements (on the device); None if not floating.

    Next to the loss it says whether the targets sit at the output's scale: for a squared
    error, ``sqrt(loss)`` is the typical distance between outputs and targets. One norm in
    float32 or wider, no copy of a float32 output (a language model's logits are large).
    """
    if not y.is_floating_point() or y.numel() == 0:
        return None
    wide = None if y.dtype in (torch.float32, torch.float64) else torch.float32
    return torch.linalg.vector_norm(y.detach(), dtype=wide) / math.sqrt(y.numel())
