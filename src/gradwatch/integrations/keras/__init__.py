"""`GradwatchCallback` for Keras 3 (TensorFlow backend): watch ``model.fit`` as it is.

    from gradwatch.integrations.keras import GradwatchCallback

    cb = GradwatchCallback(every=32, log="run.jsonl")
    model.fit(x, y, epochs=5, callbacks=[cb])
    print(cb.diagnosis)

The gradients are the ones the optimizer applies, read inside the training step on
recording steps only: those run a training function of the callback's own, traced with the
statistics in it (``jit_compile`` as the model was compiled); every other step runs the
model's own, untouched. A record's numbers come to the host in one copy (see
`gradwatch.integrations.keras._probe`). The loss of each
step comes from the running mean Keras logs. This module imports `keras` and
`tensorflow`; importing gradwatch never does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import keras

import gradwatch as gw
from gradwatch.integrations.keras._recorder import KerasRecorder
from gradwatch.schedule import as_schedule

__all__ = ["GradwatchCallback", "KerasRecorder"]


class GradwatchCallback(keras.callbacks.Callback):
    """Watches the model ``fit`` trains (Keras 3, TensorFlow backend).

    Args:
        every, log, updates, activations, capacity: as for `gradwatch.watch`.
        thresholds: the numbers the diagnosis is judged with (`gw.Thresholds()` if None).
        verbose: print the diagnosis at the end of ``fit``.

    Steps are the optimizer's steps, counted from 0 across the epochs of one ``fit``. After
    ``fit``, `.diagnosis` holds the verdict and `.recorder` the `Recorder` (its Timeline,
    `summary()`); the log reads back with `gw.load` and ``gradwatch report``. A later
    ``fit`` with the same callback starts a new record (and a new log).
    """

    def __init__(
        self,
        every: int | Callable[[int], bool] = gw.DEFAULT_EVERY,
        log: str | os.PathLike[str] | None = None,
        *,
        updates: bool = True,
        activations: bool = True,
        capacity: int = 1024,
        thresholds: gw.Thresholds | None = None,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        as_schedule(every)  # a bad `every` is refused here, not at fit time
        self.every, self.log_path, self.updates, self.activations = every, log, updates, activations
        self.capacity, self.thresholds, self.verbose = capacity, thresholds, verbose
        self.recorder: KerasRecorder | None = None
        self.diagnosis: gw.Diagnosis | None = None
        self._epoch_steps = 0  # steps of this epoch so far, and its running mean loss
        self._mean_loss = 0.0
        self._plain: Any = None  # the model's own training function, and the recording one
        self._recording_fn: Any = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        model = self.model
        if getattr(model, "optimizer", None) is None:
            raise gw.GradwatchValueError("GradwatchCallback needs a compiled model (model.compile(optimizer=...))")
        self.diagnosis = None
        self.recorder = KerasRecorder(
            model,
            every=self.every,
            log=self.log_path,
            updates=self.updates,
            activations=self.activations,
            capacity=self.capacity,
        )
        # fit() has made its training function: recorded steps run one made the same way,
        # traced (at its first call) while the probe's wrappers are in place
        self._plain = model.train_function
        model.make_train_function(force=True)
        self._recording_fn = model.train_function
        model.train_function = self._plain

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_steps, self._mean_loss = 0, 0.0

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        rec = self.recorder
        if rec is not None and not rec.closed and rec.begin_step():
            rec.probe.install(self.model.optimizer)
            self.model.train_function = self._recording_fn

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        rec = self.recorder
        if rec is None or rec.closed:
            return
        self._restore()
        rec.end_step(self._step_loss(logs))

    def _restore(self) -> None:
        """The model's own training function and no wrapper, for the steps that record nothing."""
        if self.recorder is not None:
            self.recorder.probe.uninstall()
        if self._plain is not None:
            self.model.train_function = self._plain

    def _step_loss(self, logs: dict[str, Any] | None) -> float | None:
        """This step's loss from the epoch's running mean that Keras logs (equal batches assumed:
        the mean over k steps times k, less that over the k - 1 before)."""
        mean = (logs or {}).get("loss")
        if mean is None:
            return None
        k = self._epoch_steps + 1
        loss = k * float(mean) - (k - 1) * self._mean_loss
        self._epoch_steps, self._mean_loss = k, float(mean)
        return loss

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        rec = self.recorder
        if rec is None or rec.closed:
            return
        self._restore()
        self._recording_fn = self._plain = None
        self.diagnosis = rec.diagnose(self.thresholds)
        rec.close()
        if self.verbose:
            print(self.diagnosis)
