"""`GradwatchCallback` for the Hugging Face `transformers.Trainer`.

    from gradwatch.integrations.huggingface import GradwatchCallback

    cb = GradwatchCallback(every=32, log="run.jsonl")
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])
    trainer.train()
    print(cb.diagnosis)

Gradients are read at ``on_pre_optimizer_step``: once per optimizer step, after every
micro-batch of an accumulation, after Accelerate has unscaled an fp16 loss and after the
Trainer has clipped them (``max_grad_norm``). The loss comes from the Trainer's logs.
This module imports `transformers`; importing gradwatch never does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

import gradwatch as gw
from gradwatch.integrations._recorder import new_recorder
from gradwatch.integrations.distributed import agree


class GradwatchCallback(TrainerCallback):
    """Watches the model `Trainer.train` trains, on every process.

    Args:
        every, log, updates, activations, capacity: as for `gradwatch.watch` (the log is
            written by the main process only).
        thresholds: the numbers the diagnosis is judged with (`gw.Thresholds()` if None).
        verbose: print the diagnosis at the end of training (main process only).

    Steps are the Trainer's optimizer steps (``state.global_step``, from 0). The loss of
    a step is the one the Trainer logs (every ``logging_steps``: the mean since the last
    log, put at the last of those steps); the loss rules judge what is logged, so keep
    ``logging_steps`` small. At ``on_train_end`` the diagnosis, the same on every process,
    is appended to ``state.log_history`` as ``{"gradwatch": diagnosis.to_dict(), "step": n}``
    and kept in `.diagnosis`.
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
        self.every, self.log_path, self.updates, self.activations = every, log, updates, activations
        self.capacity, self.thresholds, self.verbose = capacity, thresholds, verbose
        self.recorder: gw.Recorder | None = None
        self.diagnosis: gw.Diagnosis | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any) -> None:
        self.recorder = new_recorder(
            model,
            optimizer,
            every=self.every,
            log=self.log_path,
            updates=self.updates,
            activations=self.activations,
            capacity=self.capacity,
        )
        if state.global_step:  # a resumed run keeps the Trainer's numbering
            self.recorder.step_count = int(state.global_step)
            self.recorder.arm_for(self.recorder.step_count)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.recorder is not None and not self.recorder.closed:
            self.recorder.optimizer_step_begins(grads_ready=True)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.recorder is not None and not self.recorder.closed:
            self.recorder.optimizer_step_ends()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        rec = self.recorder
        if rec is not None and not rec.closed and logs and "loss" in logs and state.global_step > 0:
            rec.add_loss(float(logs["loss"]), step=int(state.global_step) - 1)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        rec = self.recorder
        if rec is None or rec.closed:
            return
        self.diagnosis = agree(rec.diagnose(self.thresholds))
        rec.close()
        state.log_history.append({"gradwatch": self.diagnosis.to_dict(), "step": state.global_step})
        if self.verbose and state.is_world_process_zero:
            print(self.diagnosis)
