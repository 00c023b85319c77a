"""`KerasRecorder`: the framework-neutral `Recorder` fed by a Keras model's in-graph statistics.

Schedule, losses, record assembly, log header, Timeline, state and the judge are the
`Recorder`'s; only what is measured differs: the Keras model's anatomy and structure
(`_anatomy`), the statistics the training step computes itself (`_probe`).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from gradwatch._errors import GradwatchTypeError
from gradwatch.integrations.keras._anatomy import build_anatomy, structure_facts
from gradwatch.integrations.keras._probe import SITE_METRICS, KerasProbe
from gradwatch.probes.grads import per_layer
from gradwatch.probes.transfer import Transfer
from gradwatch.record import JsonlLog
from gradwatch.recorder import Recorder
from gradwatch.schedule import Schedule


class KerasRecorder(Recorder):
    """Records a Keras model's training steps: `begin_step` before the step, `end_step` after."""

    def __init__(
        self,
        model: Any,
        *,
        every: int | Schedule,
        log: str | os.PathLike[str] | None,
        updates: bool,
        activations: bool,
        capacity: int,
    ) -> None:
        import keras

        if not isinstance(model, keras.Model):
            raise GradwatchTypeError(
                f"GradwatchCallback watches a keras.Model, got {type(model).__module__}.{type(model).__qualname__}"
            )
        anatomy, variables = build_anatomy(model)
        optimizer = model.optimizer
        self.model = model
        self._setup(
            anatomy,
            every=every,
            updates=updates,
            capacity=capacity,
            optimizer_name=type(optimizer).__name__ if optimizer is not None else None,
            no_gradient_message="GradwatchCallback found no gradient on any trainable variable at the optimizer step",
        )
        self.settings_extra = {
            "framework": "keras",
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "activations": activations,
        }
        self.rank = 0
        columns = [layer.name for layer in anatomy.trainable]
        self.timeline.layers = columns
        self.probe = KerasProbe(model, columns, variables, updates=updates, activations=activations)
        # the structure of the model as it starts (its initialisation), before the first step
        self._initial_facts = structure_facts(model, anatomy)
        self._recording = False
        self._sites_sent = False
        if log is not None:
            self._log = JsonlLog(log)

    def _structure_facts(self) -> dict[str, Any]:
        return self._initial_facts

    # -- the driver's events ------------------------------------------------------------------
    def begin_step(self) -> bool:
        """Before the training step `step_count`: whether it is recorded (run with the probe in it)."""
        self._recording = self.due(self.step_count) and self.probe.failed is None
        return self._recording

    def end_step(self, loss: float | None) -> None:
        """After the training step: keep its loss, write its record if it was recorded, advance."""
        n = self.step_count
        if loss is not None:
            self.add_loss(loss, step=n)
        if self.probe.failed is not None and self.stopped is None:
            with self._guard(n):
                raise RuntimeError(f"the statistics could not be built into the training step ({self.probe.failed})")
        if self._recording and self.stopped is None:
            with self._guard(n):
                self._record(n)
        self._recording = False
        self.step_count = n + 1

    def _record(self, n: int) -> None:
        host = self.probe.read()  # the one device-to-host copy of this record
        p = self.probe
        layers = per_layer(
            p.layer_of, p.numel, p.n_layers,
            norm=np.sqrt(host["sq"]), maxabs=host["max"], nonzero=host["nz"], nonfinite=host["nf"],
            wnorm=np.sqrt(host["wsq"]), unorm=np.sqrt(host["usq"]),
        )  # fmt: skip
        if np.all(np.isnan(host["nz"])):
            from gradwatch._errors import UsageError

            raise UsageError(self.no_gradient_message)
        transfer = Transfer()
        losses = self._queue_losses(transfer, upto=n)
        fields: dict[str, Any] = {}
        values: dict[str, dict[str, float]] = {}
        for site in p.sites:
            for metric, v in zip(SITE_METRICS, host[f"site.{site}"], strict=True):
                if not math.isnan(v) or (metric == "act_dead_frac" and p.sites[site]["family"] == "relu"):
                    values.setdefault(metric, {})[site] = float(v)
        if values:
            fields["values"] = values
        profiles = {f"grad_t/{name}": [float(v) for v in host[f"grad_t/{name}"]] for name in p.profiles}
        if profiles:
            fields["profiles"] = profiles
        if p.sites and not self._sites_sent:
            fields["sites"] = dict(p.sites)
            self._sites_sent = True
        self._assemble(n, layers, losses, transfer.fetch(), fields)

    def remove_hooks(self) -> None:
        probe = getattr(self, "probe", None)
        if probe is not None:
            probe.uninstall()
