"""The model's input, as the first layer sees it: its scale and how far it sits from zero.

Read on recording steps only, from the first positional argument of the model's forward
when it is a floating tensor (token ids for an embedding are not measured). Per feature
(the last axis of ``(B, F)`` and ``(B, T, F)``, the channel axis of an image or of a
``(B, C, L)`` input to a convolution) the running sum and sum of squares over every
recorded batch stay on the device; a record carries three numbers (`results`):

- ``input_rms``: ``sqrt(mean_j E[x_j^2])``, the root mean square of the input's elements;
  its square is mean-field theory's ``q0`` (1 for standardised data);
- ``input_offset``: ``sqrt(mean_j m_j^2) / sqrt(mean_j s_j^2)``, how far the features'
  means sit from zero next to their spread (0 for centred data; NaN before two examples);
- ``input_features``: how many features there are;

and, for at most `MAX_FEATURES` features, the per-feature means and standard deviations
themselves (the statistics a standardisation layer needs: `gradwatch.fix.data`).
Pooling over every recorded batch lets a batch of one be measured too.
"""

from __future__ import annotations

import torch

from gradwatch.probes.activations import unit_dim

#: Per-feature statistics are recorded (``input_mean``/``input_std``, a column per feature) for
#: inputs with at most this many features: tabular data, not images' pixels.
MAX_FEATURES = 256


class InputStats:
    """Running per-feature moments of the model's input over the recorded batches."""

    def __init__(self, channels_first: bool = False) -> None:
        self.channels_first = channels_first
        self.count = 0  # examples (positions included) seen per feature
        self._sum: torch.Tensor | None = None
        self._sq: torch.Tensor | None = None
        self.fresh = False  # something was added since the last `results`

    def add(self, x: torch.Tensor) -> None:
        """Add one batch (called on recording steps only; no host sync)."""
        if not x.is_floating_point() or x.dim() < 1 or x.numel() == 0:
            return
        x = x.detach()
        dim = unit_dim(x, self.channels_first)
        if dim is None:  # a single vector: one feature per element, one example
            x, dim = x.reshape(1, -1), 1
        features = x.shape[dim]
        rest = [d for d in range(x.dim()) if d != dim]
        # reduced in place over every axis but the features, accumulated in float32 (no
        # float64 copy of a large batch); the running totals are float64
        acc = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
        wide = torch.float64 if x.dtype == torch.float64 else torch.float32
        total = x.sum(dim=rest, dtype=wide).to(acc)
        squares = torch.linalg.vector_norm(x, 2, dim=rest, dtype=wide).to(acc).square()
        if self._sum is None or self._sum.shape[0] != features or self._sum.device != total.device:
            self._sum = torch.zeros(features, dtype=acc, device=total.device)
            self._sq = torch.zeros_like(self._sum)
            self.count = 0
        assert self._sq is not None
        self._sum += total
        self._sq += squares
        self.count += x.numel() // features
        self.fresh = True

    def results(self) -> dict[str, torch.Tensor]:
        """Scalars (1-element tensors) and, for few features, the per-feature vectors."""
        if self._sum is None or self._sq is None or self.count == 0:
            return {}
        self.fresh = False
        n = self.count
        mean = self._sum / n
        msq = self._sq / n
        var = (msq - mean.square()).clamp_min(0.0) * (n / (n - 1) if n > 1 else float("nan"))
        spread = var.mean().sqrt()
        out = {
            "input_rms": msq.mean().sqrt().reshape(1),
            "input_offset": (mean.square().mean().sqrt() / spread).reshape(1),
            "input_features": torch.tensor([float(mean.shape[0])], dtype=mean.dtype, device=mean.device),
        }
        if mean.shape[0] <= MAX_FEATURES:
            out["input_mean"] = mean
            out["input_std"] = var.sqrt()
        return out
