"""Output spread: does the model predict the same thing for every input?"""

from __future__ import annotations

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
