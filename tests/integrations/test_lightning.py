"""GradwatchCallback under a real `lightning.Trainer` on the digits (CPU, a few dozen steps)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import gradwatch as gw
from tests.detect._runs import SPLIT, mlp

pl = pytest.importorskip("lightning.pytorch")
from gradwatch.integrations.lightning import GradwatchCallback  # noqa: E402


class Classifier(pl.LightningModule):
    def __init__(self, net: nn.Module, lr: float) -> None:
        super().__init__()
        self.net, self.lr = net, lr

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loader(n: int = 1408, batch: int = 64) -> DataLoader:
    return DataLoader(TensorDataset(SPLIT.x_train[:n], SPLIT.y_train[:n]), batch_size=batch, shuffle=False)


def fit(module: pl.LightningModule, cb: GradwatchCallback, tmp_path, *, data: DataLoader | None = None, ckpt: str | None = None, **kw) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        callbacks=[cb],
        logger=pl.loggers.CSVLogger(tmp_path, name="csv", version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )
    trainer.fit(module, data if data is not None else loader(), ckpt_path=ckpt)
    return trainer


def test_a_deep_sigmoid_net_is_diagnosed_with_vanishing_gradients_and_the_summary_is_logged(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    cb = GradwatchCallback(every=4, judge_every=2)
    trainer = fit(Classifier(mlp([64] + [32] * 15 + [10], nn.Sigmoid), lr=0.1), cb, tmp_path, max_steps=44)
    d = cb.diagnosis
    assert d is not None and not d.healthy
    assert gw.Kind.VANISHING_GRADIENT in {f.kind for f in d.findings}
    assert "vanishing" in capsys.readouterr().out  # printed at the end of fit
    assert cb.recorder is not None and cb.recorder.closed and cb.recorder.step_count == 44 == trainer.global_step
    assert list(cb.recorder.timeline.steps) == list(range(0, 44, 4))
    # the scalars went through the Trainer's logger, one row per record
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    ratios = [float(r["gradwatch/grad_ratio_min"]) for r in rows if r.get("gradwatch/grad_ratio_min")]
    assert len(ratios) == 11
    # independently: the first layer's gradient relative to its weights, over the last layer's
    tl = cb.recorder.timeline
    g, w = tl.layer_metric("grad_norm")[-1], tl.layer_metric("weight_norm")[-1]
    r = g / w
    assert ratios[-1] == pytest.approx(float(np.min(r[:-1] / r[-1])), rel=1e-6)
    assert ratios[-1] < 1e-3
    findings = [float(r["gradwatch/findings"]) for r in rows if r.get("gradwatch/findings")]
    assert len(findings) == 6 and findings[-1] >= 1  # every second record (judge_every=2)


def test_a_healthy_net_is_healthy_and_its_gradients_are_read_after_accumulation(tmp_path) -> None:
    torch.manual_seed(0)
    net = mlp([64, 32, 32, 10], nn.Tanh)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    cb = GradwatchCallback(every=5, verbose=False)
    fit(Classifier(net, lr=0.1), cb, tmp_path, max_steps=30, accumulate_grad_batches=2)
    assert cb.diagnosis is not None and cb.diagnosis.healthy, str(cb.diagnosis)
    assert cb.recorder is not None and cb.recorder.step_count == 30  # optimizer steps, not batches
    # the record of step 0 holds the gradient summed over the first two micro-batches
    hand = mlp([64, 32, 32, 10], nn.Tanh)
    hand.load_state_dict(start)
    for x, y in list(loader())[:2]:
        (F.cross_entropy(hand(x), y) / 2).backward()
    expected = [math.hypot(float(m.weight.grad.norm()), float(m.bias.grad.norm())) for m in hand if isinstance(m, nn.Linear)]
    recorded = cb.recorder.timeline.layer_metric("grad_norm")[0]
    np.testing.assert_allclose(recorded, expected, rtol=1e-5)
    # and the loss of step 0 is the mean of the two micro-batches' (undivided) losses
    steps, losses = cb.recorder.timeline.loss()
    with torch.no_grad():
        hand.load_state_dict(start)
        first = np.mean([float(F.cross_entropy(hand(x), y)) for x, y in list(loader())[:2]])
    assert steps[0] == 0 and losses[0] == pytest.approx(first, rel=1e-5)


def test_resuming_from_a_checkpoint_continues_the_timeline(tmp_path) -> None:
    data = loader(n=256)  # four steps an epoch: the checkpoint falls between epochs

    def module() -> Classifier:
        torch.manual_seed(0)
        return Classifier(mlp([64, 32, 32, 10], nn.Tanh), lr=0.1)

    whole = GradwatchCallback(every=3, verbose=False)
    fit(module(), whole, tmp_path / "whole", data=data, max_epochs=6)

    first = GradwatchCallback(every=3, verbose=False)
    trainer = fit(module(), first, tmp_path / "first", data=data, max_epochs=3)
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    second = GradwatchCallback(every=3, verbose=False)
    fit(module(), second, tmp_path / "second", data=data, max_epochs=6, ckpt=str(tmp_path / "mid.ckpt"))

    assert whole.recorder is not None and second.recorder is not None
    a, b = whole.recorder.timeline, second.recorder.timeline
    assert second.recorder.step_count == 24
    assert list(b.steps) == list(a.steps) == list(range(0, 24, 3))
    np.testing.assert_allclose(b.layer_metric("grad_norm"), a.layer_metric("grad_norm"), rtol=1e-5)
    np.testing.assert_allclose(b.loss()[1], a.loss()[1], rtol=1e-5)
    assert second.diagnosis is not None and whole.diagnosis is not None
    assert second.diagnosis.steps == whole.diagnosis.steps == 24


def test_bf16_mixed_precision_records_every_step_and_the_net_stays_healthy(tmp_path) -> None:
    torch.manual_seed(0)
    cb = GradwatchCallback(every=1, verbose=False)
    fit(Classifier(mlp([64, 32, 32, 10], nn.Tanh), lr=0.1), cb, tmp_path, max_steps=12, precision="bf16-mixed")
    assert cb.recorder is not None and cb.recorder.stopped is None and len(cb.recorder.timeline) == 12
    grads = cb.recorder.timeline.layer_metric("grad_norm")
    assert np.isfinite(grads).all() and (grads > 0).all()
    assert cb.diagnosis is not None and cb.diagnosis.healthy


def test_under_fp16_with_a_grad_scaler_the_gradients_are_read_unscaled(tmp_path) -> None:
    # Lightning gives CPU runs no scaler of its own; pass a real one, as on a GPU
    torch.manual_seed(0)
    net = mlp([64, 32, 32, 10], nn.Tanh)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    scaler = torch.amp.GradScaler("cpu")
    plugin = pl.plugins.precision.MixedPrecision("16-mixed", "cpu", scaler=scaler)
    cb = GradwatchCallback(every=1, verbose=False)
    fit(Classifier(net, lr=0.1), cb, tmp_path, max_steps=2, plugins=[plugin])
    assert scaler.get_scale() >= 2.0**15  # the loss was scaled up for backward
    hand = mlp([64, 32, 32, 10], nn.Tanh)
    hand.load_state_dict(start)
    x, y = next(iter(loader()))
    F.cross_entropy(hand(x), y).backward()  # float32, unscaled
    expected = [math.hypot(float(m.weight.grad.norm()), float(m.bias.grad.norm())) for m in hand if isinstance(m, nn.Linear)]
    assert cb.recorder is not None
    np.testing.assert_allclose(cb.recorder.timeline.layer_metric("grad_norm")[0], expected, rtol=5e-3)  # fp16 autocast
