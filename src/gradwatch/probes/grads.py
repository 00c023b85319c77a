"""Per-layer gradient, weight and update statistics, measured in grouped tensor operations.

For every trainable parameter the probe computes:

- the L2 norm of its gradient, its largest |entry| and its number of non-zero entries
  (the share of exact zeros);
- the L2 norm of the parameter itself;
- the L2 norm of its change across an optimizer step, from a snapshot kept in a
  preallocated buffer.

On the CPU, float32 and float64 tensors are read by numpy in place, each tensor once
with all of its statistics taken while it is in cache (`gradwatch.probes._cpu`); a record
that also snapshots the parameters for the next update (``measure_params(snapshot=True)``)
reads each parameter once for its update, its norm and the copy. Elsewhere (a GPU,
bfloat16) the statistics are grouped torch operations that stay on the device: one
``torch._foreach_norm`` per device/dtype group, ``torch.aminmax`` and
``torch.count_nonzero`` per tensor, ``_foreach_copy_`` for the snapshot and
``_foreach_sub_`` + ``_foreach_norm`` for the update.

The per-parameter numbers go to the host in one copy (see `Transfer`), where numpy
sums them per layer. Only when a gradient norm comes back non-finite (to count the
non-finite entries; a finite norm proves there are none) or below 1e-15 (to redo it in
float64, as float32 squares underflow) does the probe look at that one tensor again, a
rare path that syncs once more.

Sharded parameters (FSDP2's DTensors) are measured on the shard each process holds, and
the shards' sums of squares, maxima and counts are combined across processes in the
record's one collective (see `gradwatch.probes.sharded`): the figures are the whole tensor's.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gradwatch.anatomy import Anatomy
from gradwatch.probes import _cpu
from gradwatch.probes.sharded import gather, is_sharded, local
from gradwatch.probes.transfer import Transfer

_GroupKey = tuple[torch.device, torch.dtype]
#: how the parameters are read (`GradientProbe._layout_of`): the indices of those numpy reads
#: in place, their flat views, views of their snapshot (None without one), and the groups
#: of the others for grouped torch operations (name -> indices as floats, indices)
_Layout = tuple[list[int], list[np.ndarray], list[np.ndarray] | None, dict[str, tuple[np.ndarray, list[int]]]]
#: Below this, a float32 gradient norm may have lost entries to underflow (see `summarise`).
_UNDERFLOW = 1e-15


@dataclass
class GradSnapshot:
    """Device-side gradient statistics of one step, waiting for the transfer."""

    grads: list[torch.Tensor | None]  # kept only to count non-finite entries on the rare path


class GradientProbe:
    """Measures the trainable parameters of an `Anatomy`, layer by layer."""

    def __init__(self, anatomy: Anatomy, layers: list[str], *, updates: bool = True) -> None:
        self.layers = list(layers)
        params: list[nn.Parameter] = []
        layer_of: list[int] = []
        for i, name in enumerate(self.layers):
            for p in anatomy.parameters_of(name):
                params.append(p)
                layer_of.append(i)
        self.params = params
        self.layer_of = np.asarray(layer_of, dtype=np.int64)
        self.numel = np.asarray([p.numel() for p in params], dtype=np.float64)
        self.updates = updates
        self._snap: list[torch.Tensor] | None = None
        self._snap_valid = False
        self._layout: _Layout | None = None
        self._layout_key: list[tuple[int, torch.dtype, bool, torch.Size, tuple[int, ...]]] = []
        # per parameter: None, or for a sharded one the weight of its shard (`sharded.local`)
        self._weights: list[float | None] = [None] * len(params)
        self._any_sharded = any(is_sharded(p) for p in params)
        self.seen_gradient = False

    # -- gradients ------------------------------------------------------------------
    @torch.no_grad()
    def measure_grads(self, transfer: Transfer) -> GradSnapshot:
        """Queue gradient statistics of the current `.grad`s; return what the host needs later."""
        grads = [p.grad for p in self.params]
        host: list[int] = []  # CPU tensors numpy reads in place (`_cpu`)
        arrays: list[np.ndarray] = []
        groups: dict[_GroupKey, list[int]] = {}
        odd: list[int] = []  # sparse or complex: measured one by one
        spread: list[int] = []  # sharded over processes (FSDP2)
        for i, g in enumerate(grads):
            if g is None or g.numel() == 0:
                continue
            a = _cpu.view(g)
            if a is not None:
                host.append(i)
                arrays.append(a)
            elif is_sharded(g):
                spread.append(i)
            elif g.is_sparse or g.is_complex():
                odd.append(i)
            else:
                groups.setdefault((g.device, g.dtype), []).append(i)
        if host:  # every statistic of a tensor while it is in cache, on the host already
            key = _key(host)
            sq, absmax, nonzero = _cpu.grad_stats(arrays)
            transfer.put(f"g.idx.{key}", np.asarray(host, dtype=np.float64))
            transfer.put(f"g.norm.{key}", np.sqrt(sq))
            transfer.put(f"g.max.{key}", absmax)
            transfer.put(f"g.nz.{key}", nonzero)
        for idx in groups.values():
            gs: list[torch.Tensor] = [grads[i] for i in idx]  # type: ignore[misc]
            key = _key(idx)
            transfer.put(f"g.idx.{key}", np.asarray(idx, dtype=np.float64))
            transfer.put(f"g.norm.{key}", torch.stack(torch._foreach_norm(gs, 2)))
            mins, maxs = zip(*(torch.aminmax(g) for g in gs), strict=True)  # one pass for both
            transfer.put(f"g.max.{key}", torch.maximum(torch.stack(mins).neg_(), torch.stack(maxs)))
            transfer.put(f"g.nz.{key}", _count_nonzero(gs))
        for i in odd:
            g = grads[i]
            assert g is not None
            v = g.coalesce().values() if g.is_sparse else g
            key = _key([i])
            transfer.put(f"g.idx.{key}", np.asarray([i], dtype=np.float64))
            transfer.put(f"g.norm.{key}", torch.linalg.vector_norm(v).reshape(1))
            transfer.put(f"g.max.{key}", v.abs().amax().reshape(1) if v.numel() else torch.zeros(1))
            transfer.put(f"g.nz.{key}", torch.count_nonzero(v).reshape(1).double())
        if spread:
            self._measure_spread(transfer, [(i, grads[i]) for i in spread])  # type: ignore[misc]
        if host or groups or odd or spread:
            self.seen_gradient = True
        return GradSnapshot(grads=grads)

    def _measure_spread(self, transfer: Transfer, grads: list[tuple[int, torch.Tensor]]) -> None:
        """Gradient statistics of sharded tensors: this process's part, combined when fetched."""
        shards = {i: local(g) for i, g in grads}
        groups: dict[_GroupKey, list[int]] = {}
        for i, (g, _) in shards.items():
            groups.setdefault((g.device, g.dtype), []).append(i)
        for idx in groups.values():
            gs = [shards[i][0] for i in idx]
            weight = torch.tensor([shards[i][1] for i in idx], dtype=torch.float64, device=gs[0].device)
            key = _key(idx)
            transfer.put(f"g.idx.{key}", np.asarray(idx, dtype=np.float64))
            transfer.put(f"g.sq.{key}", torch.stack(torch._foreach_norm(gs, 2)).double().square() * weight, reduce="sum")
            transfer.put(f"g.max.{key}", torch.stack([_absmax(g) for g in gs]), reduce="max")
            nz = torch.stack([torch.count_nonzero(g) for g in gs]).double()
            transfer.put(f"g.nz.{key}", nz * weight, reduce="sum")

    # -- weights and updates --------------------------------------------------------
    def measure_weights(self, transfer: Transfer) -> None:
        """Queue the norm of every parameter."""
        self.measure_params(transfer, update=False)

    def measure_update(self, transfer: Transfer) -> None:
        """Queue the norm of (parameters now - snapshot), if a snapshot is waiting."""
        self.measure_params(transfer, weights=False)

    def snapshot(self) -> None:
        """Copy the parameters aside, so the next `measure_update` sees one step's change."""
        self.measure_params(None, update=False, weights=False, snapshot=True)

    @torch.no_grad()
    def measure_params(
        self, transfer: Transfer | None, *, update: bool = True, weights: bool = True, snapshot: bool = False
    ) -> None:
        """`measure_update` (if asked and a snapshot is waiting), `measure_weights` (if asked),
        then `snapshot` (if asked), reading each parameter once where `_cpu` can."""
        update = update and self.updates and self._snap_valid and self._snap is not None
        snapshot = snapshot and self.updates
        if not (update or weights or snapshot):
            return
        params = self._locals()
        layout = self._layout_of(params, keep_snapshot=update)
        if layout is None:  # the parameters moved or changed since the snapshot (model.to())
            update = False
            layout = self._layout_of(params, keep_snapshot=False)
            assert layout is not None
        if snapshot and self._snap is None:
            self._snap = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]
            self._layout = None
            layout = self._layout_of(params, keep_snapshot=True)
            assert layout is not None
        host, arrays, saved, groups = layout
        if host and (saved is not None or not (update or snapshot)):
            wsq, usq = _cpu.param_stats(arrays, saved, diff=update, copy=snapshot)
            idx = np.asarray(host, dtype=np.float64)
            for kind, sq, wanted in (("u", usq, update), ("w", wsq, weights)):
                if wanted:
                    assert transfer is not None
                    transfer.put(f"{kind}.idx.{_key(host)}", idx)
                    transfer.put(f"{kind}.norm.{_key(host)}", np.sqrt(sq))
        elif host:
            groups = {**groups, _key(host): (np.asarray(host, dtype=np.float64), host)}
        for key, (idx, members) in groups.items():
            ps = [params[i] for i in members]
            shards = [self._weights[i] for i in members]
            snap = [self._snap[i] for i in members] if self._snap is not None else []
            if update:
                assert transfer is not None
                torch._foreach_sub_(snap, ps)  # the snapshot now holds the change
                transfer.put(f"u.idx.{key}", idx)
                _put_norms(transfer, f"u.{{}}.{key}", snap, shards)
            if weights:
                assert transfer is not None
                transfer.put(f"w.idx.{key}", idx)
                _put_norms(transfer, f"w.{{}}.{key}", ps, shards)
            if snapshot:
                _copy_(snap, ps)
        if update or snapshot:
            self._snap_valid = snapshot

    def _layout_of(self, params: list[torch.Tensor], *, keep_snapshot: bool) -> _Layout | None:
        """How the parameters are read (cached until one of them changes storage, dtype, device
        or shape): the CPU ones numpy reads in place, with views of them and of their snapshot
        (None until one is taken), and the others grouped by device, dtype and sharding for
        grouped torch operations. None if `keep_snapshot` and the snapshot no longer fits."""
        key = [(p.data_ptr(), p.dtype, p.is_cpu, p.shape, p.stride()) for p in params]
        if key != self._layout_key:
            if self._snap is not None and any(
                s.shape != p.shape or s.dtype != p.dtype or s.device != p.device
                for s, p in zip(self._snap, params, strict=True)
            ):
                if keep_snapshot:
                    return None
                self._snap, self._snap_valid = None, False
            self._layout_key, self._layout = key, None
        if self._layout is None:
            host, arrays, saved = [], [], []
            groups: dict[tuple[torch.device, torch.dtype, bool], list[int]] = defaultdict(list)
            for i, p in enumerate(params):
                a = _cpu.view(p, contiguous=True) if self._weights[i] is None else None
                if a is not None:
                    host.append(i)
                    arrays.append(a)
                    if self._snap is not None:
                        saved.append(_cpu.view(self._snap[i], contiguous=True))
                else:
                    groups[(p.device, p.dtype, self._weights[i] is not None)].append(i)
            readable = [v for v in saved if v is not None]
            views = readable if self._snap is not None and len(readable) == len(saved) else None
            self._layout = (
                host,
                arrays,
                views,
                {_key(idx): (np.asarray(idx, dtype=np.float64), idx) for idx in groups.values()},
            )
        return self._layout

    def _locals(self) -> list[torch.Tensor]:
        """The parameters, as the shard this process holds where one is sharded (FSDP2)."""
        if not self._any_sharded:
            return list(self.params)
        out: list[torch.Tensor] = []
        for i, p in enumerate(self.params):
            if is_sharded(p):
                shard, self._weights[i] = local(p)
                out.append(shard)
            else:
                out.append(p)
        return out

    # -- host side ------------------------------------------------------------------
    def summarise(self, host: dict[str, np.ndarray], snap: GradSnapshot | None) -> dict[str, np.ndarray]:
        """Per-layer metrics (arrays over `self.layers`) from the transferred numbers."""
        n_params, n_layers = len(self.params), len(self.layers)
        norm = _norms(host, "g", n_params)
        maxabs = _scatter(host, "g.max", n_params)
        nonzero = _scatter(host, "g.nz", n_params)
        wnorm = _norms(host, "w", n_params)
        unorm = _norms(host, "u", n_params)
        nonfinite = np.zeros(n_params)
        if snap is not None:
            # Rare paths, one more sync each, only for the tensors concerned:
            # - a norm that is not finite: count the NaN/inf entries; if there are none, the
            #   float32 sum of squares overflowed (entries near 1e20), so redo it in float64;
            # - a norm under 1e-15 with non-zero entries: squares of entries under ~1e-22
            #   underflow float32 to 0 (deep sigmoid nets get there), so redo it in float64.
            tiny = (norm < _UNDERFLOW) & (nonzero > 0)
            for i in np.flatnonzero(~np.isfinite(norm) | tiny):
                g = snap.grads[i]
                if g is None or g.is_sparse:
                    continue
                # (a sharded gradient: one collective each, on every process alike, as
                # the norms that decide it are the combined ones)
                if not np.isfinite(norm[i]):
                    nonfinite[i] = _whole_sum(g, lambda t: (~torch.isfinite(t)).sum())
                    if nonfinite[i] > 0:
                        continue
                norm[i] = math.sqrt(_whole_sum(g, lambda t: t.double().square().sum()))
        return per_layer(self.layer_of, self.numel, n_layers, norm, maxabs, nonzero, nonfinite, wnorm, unorm)


def per_layer(
    layer_of: np.ndarray,
    numel: np.ndarray,
    n_layers: int,
    norm: np.ndarray,
    maxabs: np.ndarray,
    nonzero: np.ndarray,
    nonfinite: np.ndarray,
    wnorm: np.ndarray,
    unorm: np.ndarray,
) -> dict[str, np.ndarray]:
    """The per-layer metrics of a record (docs/metrics.md) from per-parameter numbers:
    `layer_of` (each parameter's layer index), `numel` (its entries), the L2 norms of its
    gradient, weight and update, its gradient's max |g|, non-zero and non-finite counts
    (NaN for a parameter whose gradient was not measured). Shared by every framework."""
    # A parameter counts when its gradient was measured (count_nonzero is never NaN).
    has = ~np.isnan(nonzero)
    counted = np.bincount(layer_of, weights=np.where(has, numel, 0.0), minlength=n_layers)
    none = counted == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        grad_norm = np.sqrt(_sum(layer_of, np.where(has, norm**2, 0.0), n_layers))
        grad_max = _max(layer_of, np.where(has, maxabs, -np.inf), n_layers)
        zeros = _sum(layer_of, np.where(has, numel - nonzero, 0.0), n_layers)
        out = {
            "grad_norm": np.where(none, np.nan, grad_norm),
            "grad_rms": np.where(none, np.nan, grad_norm / np.sqrt(counted)),
            "grad_max": np.where(none, np.nan, grad_max),
            "grad_zero_frac": np.where(none, np.nan, zeros / counted),
            "grad_nonfinite": np.where(none, np.nan, _sum(layer_of, nonfinite, n_layers)),
            "weight_norm": np.sqrt(_sum(layer_of, wnorm**2, n_layers)),
        }
        update = np.sqrt(_sum(layer_of, unorm**2, n_layers))
        out["update_norm"] = update
        out["update_ratio"] = update / out["weight_norm"]
    return out


def _count_nonzero(gs: list[torch.Tensor]) -> torch.Tensor:
    """The number of non-zero entries (NaN counts, -0.0 does not) of each tensor of one group,
    on its device; float64 keeps counts exact past 2**24. (CPU float32/float64 tensors are
    counted by `_cpu.grad_stats` instead.)"""
    return torch.stack([torch.count_nonzero(g) for g in gs]).double()


def _put_norms(transfer: Transfer, name: str, ts: list[torch.Tensor], weights: list[float | None]) -> None:
    """Queue the L2 norms of `ts` (one group) under ``name.format("norm")``; for local shards
    (`weights` not None), the weighted squares, added across processes, under ``"sq"``."""
    norms = torch.stack(torch._foreach_norm(ts, 2))
    if weights[0] is None:
        transfer.put(name.format("norm"), norms)
    else:
        w = torch.tensor(weights, dtype=torch.float64, device=norms.device)
        transfer.put(name.format("sq"), norms.double().square() * w, reduce="sum")


def _norms(host: dict[str, np.ndarray], kind: str, n: int) -> np.ndarray:
    """Per-parameter norms: sent as norms, or (sharded) as squares summed across processes."""
    norm, sq = _scatter(host, f"{kind}.norm", n), _scatter(host, f"{kind}.sq", n)
    return np.where(np.isnan(sq), norm, np.sqrt(sq))


def _whole_sum(g: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """``fn`` (a sum over entries) of the whole tensor, adding up the shards of a sharded one."""
    if not is_sharded(g):
        return float(fn(g))
    shard, weight = local(g)
    total, _ = gather(fn(shard).double().reshape(1) * weight, torch.zeros(0, dtype=torch.float64, device=shard.device))
    return float(total[0])


def _absmax(g: torch.Tensor) -> torch.Tensor:
    """max |g| in one pass (0 for an empty shard, which `aminmax` refuses)."""
    if g.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=g.device)
    lo, hi = torch.aminmax(g)
    return torch.maximum(-lo, hi).double()


def _key(idx: list[int]) -> str:
    return f"{idx[0]}-{len(idx)}"


def _scatter(host: dict[str, np.ndarray], prefix: str, n: int) -> np.ndarray:
    """Rebuild a per-parameter array from the groups sent under `prefix` (NaN where not sent)."""
    out = np.full(n, np.nan)
    kind = prefix.split(".")[0]
    for name, values in host.items():
        if name.startswith(prefix + "."):
            key = name[len(prefix) + 1 :]
            idx = host[f"{kind}.idx.{key}"].astype(np.int64)
            out[idx] = values
    return out


def _sum(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n)
    np.add.at(out, index, values)  # NaN and inf propagate, unlike bincount's float tricks
    return out


def _max(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -np.inf)
    np.maximum.at(out, index, values)
    return out


def _copy_(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(dst, src)
    else:  # pragma: no cover - torch < 2.1
        for d, s in zip(dst, src, strict=True):
            d.copy_(s)
