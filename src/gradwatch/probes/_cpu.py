"""The statistics of `gradwatch.probes.grads` for CPU tensors, read through numpy in place.

On the CPU a record of a small dense model is memory-bound: what it costs is how often it
brings each gradient and parameter in from memory. Here every tensor is taken in turn, in
pieces of at most `CHUNK` entries (256 KiB of float32, inside a core's L2 cache), and all
of its statistics are computed while the piece is in cache:

- a gradient: its sum of squares (``np.dot``, which also accumulates more accurately than
  ``torch.linalg.vector_norm``), its smallest and largest entry, and its non-zero entries
  (numpy's vectorised ``!= 0``, several times faster than ``torch.count_nonzero``);
- a parameter: the sum of squares of its change since the snapshot (the difference goes to
  a scratch buffer that stays in cache), its own sum of squares, and, if asked, the copy
  into the snapshot for the next step's change.

A numpy call also costs a fraction of a torch call's dispatch, which counts at one call
per statistic per tensor. Only float32 and float64 tensors that numpy can view are taken
(`view` says None otherwise); the others go through the grouped torch operations of
`grads`. Each figure is the one the torch path gives: NaN propagates through the sums and
extremes, -0.0 is a zero, NaN is not.
"""

from __future__ import annotations

import numpy as np
import torch

#: Entries per piece: 256 KiB of float32, so that a piece read once is read again from cache.
CHUNK = 1 << 16
#: dtypes taken here (numpy has no bfloat16, and its float16 sums are slow)
DTYPES = frozenset({torch.float32, torch.float64})


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def view(t: torch.Tensor, *, contiguous: bool = False) -> np.ndarray | None:
    """A flat numpy view of a plain CPU float32/float64 tensor, or None where numpy cannot see
    it (another device or dtype, a sparse tensor, a lazy negation, a subclass) or, with
    `contiguous`, where it is strided (its flat array would then be a copy, not a view)."""
    if type(t) not in _PLAIN or not t.is_cpu or t.dtype not in DTYPES or t.layout is not torch.strided:
        return None
    if contiguous and not t.is_contiguous():
        return None
    try:
        return (t.detach() if t.requires_grad else t).numpy().reshape(-1)
    except (RuntimeError, TypeError):  # a lazy negation or conjugation
        return None


def _pieces(a: np.ndarray) -> list[np.ndarray]:
    return [a] if a.size <= CHUNK else [a[i : i + CHUNK] for i in range(0, a.size, CHUNK)]


def grad_stats(gs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per array (none of them empty): the sum of squares, max |g| and the number of non-zero entries."""
    n = len(gs)
    sq, lo, hi, nz = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    with np.errstate(all="ignore"):  # an overflowing or NaN sum is the caller's to handle
        for i, g in enumerate(gs):
            if g.size <= CHUNK:
                sq[i], lo[i], hi[i], nz[i] = np.dot(g, g), g.min(), g.max(), np.count_nonzero(g != 0)
                continue
            parts = np.asarray([(np.dot(c, c), c.min(), c.max(), np.count_nonzero(c != 0)) for c in _pieces(g)])
            sq[i], lo[i], hi[i], nz[i] = parts[:, 0].sum(), parts[:, 1].min(), parts[:, 2].max(), parts[:, 3].sum()
        return sq, np.maximum(-lo, hi), nz


def param_stats(
    ps: list[np.ndarray], snap: list[np.ndarray] | None, *, diff: bool, copy: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per parameter: its sum of squares and (`diff`) that of ``snap - p`` (NaN without);
    with `copy`, `p` is then copied into `snap`. `snap` is needed for either."""
    n = len(ps)
    wsq, usq = np.empty(n), np.full(n, np.nan)
    scratch = np.empty(min(CHUNK, max((p.size for p in ps), default=0)), np.float64)
    with np.errstate(all="ignore"):
        for i, p in enumerate(ps):
            s = _pieces(snap[i]) if snap is not None else []
            w = u = 0.0
            for j, c in enumerate(_pieces(p)):
                w += float(np.dot(c, c))
                if diff:
                    d = np.subtract(s[j], c, out=scratch.view(c.dtype)[: c.size])
                    u += float(np.dot(d, d))
                if copy:
                    np.copyto(s[j], c)
            wsq[i] = w
            if diff:
                usq[i] = u
    return wsq, usq
