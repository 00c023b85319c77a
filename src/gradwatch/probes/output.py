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


#: The model's output is sampled for the targets (`OutputSample`) only while it has at most
#: this many elements: a regression's outputs, not a language model's logits.
MAX_SAMPLED_OUTPUTS = 65536
#: Elements sampled per recording step (evenly spaced over the flattened output).
SAMPLE_SIZE = 64
#: Sampling stops once this many elements have been sampled over the run: enough for the
#: targets' mean, spread and range (`gradwatch.explain.targets`), pooled across records so
#: that a batch of one is read too.
MAX_SAMPLED = 256


class OutputSample:
    """The model's output and the gradient of the loss with respect to it, at a few positions.

    Under a squared error the output's gradient holds the targets: for ``L = sum (y - t)^2 / k``
    (k = 1 for a sum, the number of elements for a mean), ``dL/dy = 2 (y - t) / k``, so
    ``t = y - k dL/dy / 2``; and ``L = k ||dL/dy||^2 / 4`` tells which k it was, or that the
    loss is not a squared error of the output (`gradwatch.explain.targets` reads it). Per
    recording step this keeps, on the device: `SAMPLE_SIZE` evenly spaced elements of the
    output and of its gradient, ``||dL/dy||^2`` over the whole output, and the output's
    batch size (`output_numel` holds its element count). A step with more than one training forward pass (gradient
    accumulation, a model called twice) is not sampled: its loss is not one output's.
    """

    def __init__(self) -> None:
        self.sampled = 0  # elements sampled so far over the run
        self.forwards = 0  # training forward passes in this record
        self._y: torch.Tensor | None = None
        self._idx: torch.Tensor | None = None
        self._batch = 0
        self._grad: tuple[torch.Tensor, torch.Tensor] | None = None  # (sampled gradient, squared norm)
        self.failed = False

    @property
    def done(self) -> bool:
        return self.sampled >= MAX_SAMPLED

    def watch(self, y: torch.Tensor) -> None:
        """Called with the output of a training forward pass on a recording step: hook its gradient."""
        self.forwards += 1
        if self.forwards > 1 or self.done or self.failed or not y.requires_grad or not y.is_floating_point():
            return
        n = y.numel()
        if n == 0 or n > MAX_SAMPLED_OUTPUTS:
            return
        k = min(n, SAMPLE_SIZE)
        self._idx = torch.div(torch.arange(k, device=y.device) * n, k, rounding_mode="floor")
        self._y = y.detach().reshape(-1)[self._idx]
        self._batch = int(y.shape[0]) if y.dim() else 1
        y.register_hook(self._hook)

    def _hook(self, g: torch.Tensor) -> None:
        # runs inside the user's backward pass: it must never raise there
        try:
            if self._idx is None or self._grad is not None or self.failed:
                return
            g = g.detach()
            wide = None if g.dtype in (torch.float32, torch.float64) else torch.float32
            self._grad = (g.reshape(-1)[self._idx], torch.linalg.vector_norm(g, dtype=wide).square())
        except Exception:
            self.failed = True  # off for the rest of the run; the other probes go on

    def results(self) -> dict[str, torch.Tensor]:
        """This record's numbers (empty when nothing was sampled), and a reset for the next."""
        out: dict[str, torch.Tensor] = {}
        if self.forwards == 1 and self._y is not None and self._grad is not None:
            g, sq = self._grad
            out = {
                "output_sample": self._y,
                "output_grad_sample": g,
                "output_grad_sq": sq.reshape(1),
                "output_batch": torch.tensor([float(self._batch)], device=sq.device),
            }
            self.sampled += int(g.numel())
        self.forwards, self._y, self._idx, self._grad = 0, None, None, None
        return out
