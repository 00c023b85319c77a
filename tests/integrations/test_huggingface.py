"""GradwatchCallback under a real `transformers.Trainer`: a tiny BERT built from a config."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import gradwatch as gw

transformers = pytest.importorskip("transformers")
from gradwatch.integrations.huggingface import GradwatchCallback  # noqa: E402


def tiny_bert() -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
        hidden_dropout_prob=0.0,  # no dropout: the hand computation repeats the steps exactly
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def dataset(n: int = 64) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (n, 8), generator=g)
    labels = ids[:, 0] % 3  # learnable from the first token
    return [{"input_ids": ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": labels[i]} for i in range(n)]


class Recording:
    """A collator that keeps every batch it makes, in order (the Trainer's own batches)."""

    def __init__(self) -> None:
        self.batches: list[dict[str, torch.Tensor]] = []

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        self.batches.append({k: v.clone() for k, v in batch.items()})
        return batch


def test_gradients_are_read_once_per_optimizer_step_after_accumulation_and_clipping(tmp_path, capsys) -> None:
    model = tiny_bert()
    start = copy.deepcopy(model)
    collate = Recording()
    cb = GradwatchCallback(every=2, log=tmp_path / "run.jsonl")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=6,
        learning_rate=1e-3,
        max_grad_norm=0.5,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset(), data_collator=collate, callbacks=[cb])
    trainer.train()

    rec = cb.recorder
    assert rec is not None and rec.step_count == 6 and list(rec.timeline.steps) == [0, 2, 4]
    # by hand: the first optimizer step's gradient is summed over its two micro-batches, then
    # clipped to a total norm of max_grad_norm. (Each micro-batch's loss is divided by the
    # accumulation unless the model takes loss kwargs, as BERT's forward(**kwargs) does in
    # transformers 5: the Trainer then leaves the normalising to the model, which BERT's
    # classification loss does not do, so the step's gradient is the sum of the two.)
    first, second = collate.batches[:2]
    scale = 1.0 if trainer.model_accepts_loss_kwargs else 0.5
    loss = sum(start(**mb).loss for mb in (first, second)) * scale
    loss.backward()
    total = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in start.parameters() if p.grad is not None))
    clip = min(1.0, args.max_grad_norm / (total + 1e-6))
    owner = dict(start.named_modules())
    expected = [
        clip * math.sqrt(sum(float(p.grad.norm()) ** 2 for p in owner[name].parameters(recurse=False) if p.grad is not None))
        for name in rec.timeline.layers
    ]
    np.testing.assert_allclose(rec.timeline.layer_metric("grad_norm")[0], expected, rtol=1e-4)
    assert total > args.max_grad_norm  # the clipping did something: the figures are after it
    # and the Trainer's own gradient norm (before clipping) of that step agrees
    assert trainer.state.log_history[0]["grad_norm"] == pytest.approx(total, rel=1e-4)

    # the losses are the Trainer's logged ones, at the steps they belong to
    logged = [(h["step"] - 1, h["loss"]) for h in trainer.state.log_history if "loss" in h]
    steps, losses = rec.timeline.loss()
    assert [int(s) for s in steps] == [s for s, _ in logged] == list(range(6))
    np.testing.assert_allclose(losses, [v for _, v in logged], rtol=1e-6)

    # the diagnosis: in .diagnosis, in the log history, printed, and written to the log
    d = cb.diagnosis
    assert d is not None and d.steps == 6
    assert [h["gradwatch"] for h in trainer.state.log_history if "gradwatch" in h] == [d.to_dict()]
    assert str(d).splitlines()[0] in capsys.readouterr().out
    assert len(gw.load(tmp_path / "run.jsonl")) == 3


def test_under_bf16_autocast_the_recorded_gradients_are_the_trainer_s(tmp_path) -> None:
    cb = GradwatchCallback(every=1, verbose=False)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=3,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, bf16=True, seed=0,
    )
    trainer = transformers.Trainer(model=tiny_bert(), args=args, train_dataset=dataset(), data_collator=Recording(), callbacks=[cb])
    trainer.train()
    assert cb.recorder is not None and cb.recorder.stopped is None
    # the Trainer's own norm of each step's gradient (below max_grad_norm: not clipped)
    logged = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    total = np.sqrt((cb.recorder.timeline.layer_metric("grad_norm") ** 2).sum(axis=1))
    np.testing.assert_allclose(total, logged, rtol=1e-5)
    assert max(logged) < args.max_grad_norm


def test_a_run_resumed_from_a_checkpoint_keeps_the_trainer_s_step_numbers(tmp_path) -> None:
    def run(resume: str | None, steps: int) -> tuple[transformers.Trainer, GradwatchCallback]:
        cb = GradwatchCallback(every=2, verbose=False)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=steps, logging_steps=1,
            save_strategy="steps", save_steps=3, report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
        )
        trainer = transformers.Trainer(model=tiny_bert(), args=args, train_dataset=dataset(), data_collator=Recording(), callbacks=[cb])
        trainer.train(resume_from_checkpoint=resume)
        return trainer, cb

    run(None, 3)
    _, cb = run(str(tmp_path / "checkpoint-3"), 6)
    assert cb.recorder is not None and cb.recorder.step_count == 6
    assert list(cb.recorder.timeline.steps) == [4]  # steps 3..5 of the Trainer's count
    assert [int(s) for s in cb.recorder.timeline.loss()[0]] == [3, 4, 5]
