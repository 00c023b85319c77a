"""`GradwatchCallback` for Lightning: watch `Trainer.fit` without touching the training step.

    from gradwatch.integrations.lightning import GradwatchCallback

    cb = GradwatchCallback(every=32, log="run.jsonl")
    trainer = lightning.Trainer(callbacks=[cb])
    trainer.fit(model, loader)
    print(cb.diagnosis)

Gradients are read in ``on_before_optimizer_step`` (after AMP unscaling and after every
accumulated micro-batch), the loss in ``on_train_batch_end``. This module imports
`lightning` (the package, 2.1 or later); importing gradwatch never does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Callback

import gradwatch as gw
from gradwatch.integrations._recorder import new_recorder
from gradwatch.integrations.distributed import agree

if TYPE_CHECKING:  # pragma: no cover
    import lightning.pytorch as pl


class GradwatchCallback(Callback):
    """Watches the LightningModule that `Trainer.fit` trains, on every rank.

    Args:
        every, log, updates, activations, capacity: as for `gradwatch.watch` (the log is
            written by rank zero only).
        thresholds: the numbers the diagnosis is judged with (`gw.Thresholds()` if None).
        verbose: print the diagnosis at the end of `fit` (rank zero only).
        judge_every: log the finding count every this many records (judging costs more
            than recording, so it is done more rarely).

    After each record it logs, through the Trainer's loggers, ``gradwatch/grad_ratio_min``
    and ``gradwatch/dead_frac_max`` (see `gradwatch.Recorder.summary`), and every
    `judge_every` records ``gradwatch/findings`` (findings above ``info``). After `fit`,
    `.diagnosis` holds the verdict, the same on every rank. The callback's state (step
    count and Timeline) is saved in Lightning checkpoints, so a resumed run continues its
    timeline. With several optimizers, the first one's steps are the ones recorded.
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
        judge_every: int = 16,
    ) -> None:
        super().__init__()
        self.every, self.log_path, self.updates, self.activations = every, log, updates, activations
        self.capacity, self.thresholds, self.verbose = capacity, thresholds, verbose
        self.judge_every = judge_every
        self.recorder: gw.Recorder | None = None
        self.diagnosis: gw.Diagnosis | None = None
        self._resume: dict[str, Any] | None = None
        self._stepping = False

    # -- the run ------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the strategy has set the module up (moved, wrapped, sharded): its parameters
        # are the ones the optimizer steps
        if self.recorder is not None and not self.recorder.closed:
            return
        optimizers = trainer.optimizers
        self.recorder = new_recorder(
            pl_module,
            optimizers[0] if optimizers else None,
            every=self.every,
            log=self.log_path,
            updates=self.updates,
            activations=self.activations,
            capacity=self.capacity,
        )
        if self._resume is not None:
            self.recorder.load_state_dict(self._resume)
            self._resume = None

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        rec = self.recorder
        if rec is None or rec.closed or self._stepping or (trainer.optimizers and optimizer is not trainer.optimizers[0]):
            return
        rec.optimizer_step_begins(grads_ready=True)
        self._stepping = True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        rec = self.recorder
        if rec is None or rec.closed:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            # Lightning hands back the loss divided by the accumulation: undo it, so the
            # loss rules compare the per-example loss with chance
            rec.add_loss(loss * trainer.accumulate_grad_batches)
        if not self._stepping:
            return
        self._stepping = False
        recorded = rec.timeline.recorded
        rec.optimizer_step_ends()
        if rec.timeline.recorded > recorded and trainer.loggers and trainer.is_global_zero:
            self._log_summary(trainer, rec)

    def _log_summary(self, trainer: pl.Trainer, rec: gw.Recorder) -> None:
        metrics = {f"gradwatch/{k}": v for k, v in rec.summary().items()}
        if (rec.timeline.recorded - 1) % self.judge_every == 0:
            d = rec.diagnose(self.thresholds)
            metrics["gradwatch/findings"] = float(sum(f.severity > gw.Severity.INFO for f in d.findings))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rec = self.recorder
        if rec is None or rec.closed:
            return
        self.diagnosis = agree(rec.diagnose(self.thresholds))
        rec.close()
        if self.verbose and trainer.is_global_zero:
            print(self.diagnosis)

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"recorder": self.recorder.state_dict()} if self.recorder is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before `on_fit_start` creates the recorder
        state = state_dict.get("recorder")
        if state is None:
            return
        if self.recorder is not None and not self.recorder.closed:
            self.recorder.load_state_dict(state)
        else:
            self._resume = state
