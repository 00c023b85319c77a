"""Columnar series with bounded memory.

A `Table` holds rows (one per step) of named columns grouped by metric: for the metric
``grad_norm`` the columns are the layers, for ``loss`` a single column. When a table is
full, the older half is thinned to every second row and the recent half is kept whole,
so memory stays fixed however long the run while the recent past stays at full
resolution and the far past at a resolution that halves with each thinning. The first
row (the state at initialisation) is always kept.

The `Timeline` is what the probes fill and what the detectors read: one table of
recording steps, one of losses (every step), and vector profiles (such as the gradient
through time of a recurrent layer). It is filled from record dictionaries — the same
dictionaries written to the JSONL log — so a run read back from its log gives the same
Timeline as the live one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from gradwatch._errors import GradwatchValueError

#: Per-layer metrics every recording step carries (see docs/metrics.md).
LAYER_METRICS = (
    "grad_norm",
    "grad_rms",
    "grad_max",
    "grad_zero_frac",
    "grad_nonfinite",
    "weight_norm",
    "update_norm",
    "update_ratio",
)


class Table:
    """Rows keyed by step; columns grouped by metric; bounded to `capacity` rows."""

    def __init__(self, capacity: int) -> None:
        if capacity < 4:
            raise GradwatchValueError(f"capacity must be at least 4 rows, got {capacity}")
        self.capacity = int(capacity)
        self._n = 0
        self.appended = 0  # rows ever appended, thinned ones included
        self._steps = np.zeros(self.capacity, dtype=np.int64)
        self._cols: dict[str, np.ndarray] = {}
        self._names: dict[str, list[str]] = {}
        self._index: dict[str, dict[str, int]] = {}
        self._last: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}

    def __len__(self) -> int:
        return self._n

    @property
    def steps(self) -> np.ndarray:
        return self._steps[: self._n].copy()

    @property
    def metrics(self) -> list[str]:
        return list(self._cols)

    def names(self, metric: str) -> list[str]:
        return list(self._names.get(metric, []))

    def _columns_for(self, metric: str, names: tuple[str, ...]) -> np.ndarray:
        """Column indices of `names` under `metric`, adding new columns (NaN-filled) as needed."""
        cached = self._last.get(metric)
        if cached is not None and cached[0] == names:
            return cached[1]
        if metric not in self._cols:
            self._cols[metric] = np.full((self.capacity, 0), np.nan)
            self._names[metric] = []
            self._index[metric] = {}
        index = self._index[metric]
        new = [n for n in dict.fromkeys(names) if n not in index]
        if new:
            for n in new:
                index[n] = len(self._names[metric])
                self._names[metric].append(n)
            pad = np.full((self.capacity, len(new)), np.nan)
            self._cols[metric] = np.concatenate([self._cols[metric], pad], axis=1)
        idx = np.fromiter((index[n] for n in names), dtype=np.int64, count=len(names))
        self._last[metric] = (names, idx)
        return idx

    def append(self, step: int, values: Mapping[str, Mapping[str, float]]) -> None:
        """Add one row: ``values[metric][name] = number``. Missing cells stay NaN."""
        self.append_rows(
            step,
            {
                m: (tuple(cells), np.fromiter((float(v) for v in cells.values()), np.float64, len(cells)))
                for m, cells in values.items()
            },
        )

    def append_rows(self, step: int, rows: Mapping[str, tuple[tuple[str, ...], np.ndarray]]) -> None:
        """Add one row given, per metric, a tuple of column names and an array of values."""
        if self._n and step < self._steps[self._n - 1]:
            raise GradwatchValueError(
                f"steps must not go backwards: got step {step} after {int(self._steps[self._n - 1])}"
            )
        if self._n == self.capacity:
            self._thin()
        row = self._n
        self._steps[row] = step
        for col in self._cols.values():
            col[row, :] = np.nan
        for metric, (names, vals) in rows.items():
            idx = self._columns_for(metric, names)
            self._cols[metric][row, idx] = vals
        self._n += 1
        self.appended += 1

    def _thin(self) -> None:
        half = self.capacity // 2
        keep = np.concatenate([np.arange(0, half, 2), np.arange(half, self._n)])
        m = len(keep)
        self._steps[:m] = self._steps[keep]
        for metric, col in self._cols.items():
            col[:m] = col[keep]
            col[m:] = np.nan
            self._cols[metric] = col
        self._n = m

    def get(self, metric: str, names: Sequence[str] | None = None) -> np.ndarray:
        """A ``[rows, columns]`` array (a copy); columns follow `names` (NaN where unknown)."""
        n = self._n
        if names is None:
            names = self._names.get(metric, [])
        out = np.full((n, len(names)), np.nan)
        if metric in self._cols:
            index = self._index[metric]
            for j, name in enumerate(names):
                i = index.get(name)
                if i is not None:
                    out[:, j] = self._cols[metric][:n, i]
        return out

    def column(self, metric: str, name: str) -> np.ndarray:
        return self.get(metric, [name])[:, 0]

    def state_dict(self) -> dict[str, Any]:
        n = self._n
        return {
            "capacity": self.capacity,
            "appended": self.appended,
            "steps": self._steps[:n].tolist(),
            "columns": {
                m: {"names": list(self._names[m]), "values": self._cols[m][:n].tolist()}
                for m in self._cols
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.__init__(int(state["capacity"]))  # type: ignore[misc]
        steps = list(state["steps"])
        self._n = len(steps)
        self._steps[: self._n] = steps
        for metric, col in state["columns"].items():
            idx = self._columns_for(metric, tuple(col["names"]))
            values = np.asarray(col["values"], dtype=np.float64).reshape(self._n, len(idx))
            self._cols[metric][: self._n, idx] = values
        self.appended = int(state["appended"])


class Profiles:
    """Vectors recorded over time under a name (for instance ``grad_t/rnn``), thinned like a Table."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._data: dict[str, list[tuple[int, np.ndarray]]] = {}

    def add(self, name: str, step: int, vector: Iterable[float]) -> None:
        series = self._data.setdefault(name, [])
        if len(series) >= self.capacity:
            half = self.capacity // 2
            series[:] = series[:half:2] + series[half:]
        series.append((int(step), np.asarray(list(vector), dtype=np.float64)))

    def names(self) -> list[str]:
        return list(self._data)

    def get(self, name: str) -> list[tuple[int, np.ndarray]]:
        return list(self._data.get(name, []))

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "data": {n: [[s, v.tolist()] for s, v in series] for n, series in self._data.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.capacity = int(state["capacity"])
        self._data = {
            n: [(int(s), np.asarray(v, dtype=np.float64)) for s, v in series]
            for n, series in state["data"].items()
        }


class Timeline:
    """Everything measured during a run, in bounded memory.

    - `records`: one row per recording step; per-layer metrics (`LAYER_METRICS`, columns
      named after the layers) and any other metric the probes add.
    - `losses`: one row per training step that passed a loss.
    - `profiles`: vectors such as the gradient norm at each time step of a recurrent layer.
    """

    def __init__(self, layers: Sequence[str] = (), capacity: int = 1024, loss_capacity: int = 8192) -> None:
        self.layers: list[str] = list(layers)
        #: Activation sites seen so far: name -> {"fn", "module", "family", ...} (docs/metrics.md).
        self.sites: dict[str, dict[str, Any]] = {}
        self.records = Table(capacity)
        self.losses = Table(loss_capacity)
        self.profiles = Profiles(capacity)

    def __len__(self) -> int:
        """Recording steps held now (thinning drops old ones; see `recorded`)."""
        return len(self.records)

    @property
    def recorded(self) -> int:
        """Recording steps ever added."""
        return self.records.appended

    @property
    def steps(self) -> np.ndarray:
        return self.records.steps

    def layer_metric(self, metric: str) -> np.ndarray:
        """``[recording steps, layers]`` for a per-layer metric, columns in `layers` order."""
        return self.records.get(metric, self.layers)

    def metric(self, metric: str) -> tuple[list[str], np.ndarray]:
        names = self.records.names(metric)
        return names, self.records.get(metric, names)

    def loss(self) -> tuple[np.ndarray, np.ndarray]:
        """Steps and loss values (the mean of the losses passed for each step)."""
        return self.losses.steps, self.losses.column("loss", "loss")

    def state_dict(self) -> dict[str, Any]:
        """Everything held, as plain Python data (for checkpoints); see `load_state_dict`."""
        return {
            "layers": list(self.layers),
            "sites": {k: dict(v) for k, v in self.sites.items()},
            "records": self.records.state_dict(),
            "losses": self.losses.state_dict(),
            "profiles": self.profiles.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.layers = list(state["layers"])
        self.sites = {k: dict(v) for k, v in state["sites"].items()}
        self.records.load_state_dict(state["records"])
        self.losses.load_state_dict(state["losses"])
        self.profiles.load_state_dict(state["profiles"])

    @property
    def last_step(self) -> int | None:
        candidates = [t.steps[-1] for t in (self.records, self.losses) if len(t)]
        return int(max(candidates)) if candidates else None

    # -- filling from record dictionaries (the JSONL schema) -------------------------
    def ingest(self, record: Mapping[str, Any]) -> None:
        """Add one log record (``type`` ``record`` or ``losses``); see docs/log-format.md."""
        for step, value in record.get("losses", ()):
            self.losses.append(int(step), {"loss": {"loss": float(value)}})
        if record.get("type") != "record":
            return
        self.sites.update(record.get("sites", {}))
        step = int(record["step"])
        layers = tuple(self.layers)
        rows: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
        for metric, row in record.get("layers", {}).items():
            if len(row) != len(layers):
                raise GradwatchValueError(
                    f"record for step {step}: metric {metric!r} has {len(row)} values "
                    f"for {len(layers)} layers"
                )
            rows[metric] = (layers, np.asarray(row, dtype=np.float64))
        for metric, cells in record.get("values", {}).items():
            rows[metric] = (tuple(cells), np.fromiter((float(v) for v in cells.values()), np.float64, len(cells)))
        self.records.append_rows(step, rows)
        for name, vector in record.get("profiles", {}).items():
            self.profiles.add(name, step, (float(v) for v in vector))
