"""Runs outside every labelled suite: do diagnosis and `fix` hold on models built elsewhere?

    PYTHONPATH=src python benchmarks/outside.py            # all parts, ~1 min on 2 CPU cores
    PYTHONPATH=src python benchmarks/outside.py --digits   # only the six digits runs
    PYTHONPATH=src python benchmarks/outside.py --seq      # only the sequence model
    PYTHONPATH=src python benchmarks/outside.py --hf       # only the Hugging Face models

1. Six faulty digits MLPs that no rule was written against (10-layer sigmoid under Adam,
   12-layer tanh and 20-layer ELU at PyTorch's default init under SGD with momentum,
   Adam at lr 0.1, a 16-layer SELU diverging at SGD 0.05, a 6-layer sigmoid): each trains
   300 steps under `gw.watch`, is diagnosed, fixed with `gw.fix`, and the fixed model
   trains again with the same recipe (and the fix's advice); and `gw.repair` on the
   same model and recipe (300 steps = one run). Printed: test accuracy before, after
   fix and after repair, what fix changed and what repair kept.
2. A sequence model no rule was written against: a 2-layer bidirectional LSTM (PyTorch's
   default initialisation) over an embedding, classifying a 60-token sequence from its
   middle position when the class is the first token — the forward direction must carry
   it 30 steps. Same protocol as the digits runs (Adam 1e-3, 300 steps).
3. Hugging Face models built from small configs (random weights, nothing downloaded):
   `gw.inspect`, 40 steps of AdamW under `gw.watch` on a learnable toy target, and
   `gw.fix` on the diagnosis. Printed: every finding above `info` (a healthy model
   should have none) and the number of changes (should be 0).
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import gradwatch as gw
from gradwatch.lab.data import digits

Factory = Callable[[], nn.Module]
Recipe = Callable[[Any], torch.optim.Optimizer]


def _mlp(depth: int, act: type[nn.Module], init: Callable[[nn.Linear], object] | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = 64
    for _ in range(depth):
        lin = nn.Linear(d, 64)
        if init is not None:
            init(lin)
        layers += [lin, act()]
        d = 64
    return nn.Sequential(*layers, nn.Linear(d, 10))


def _he(lin: nn.Linear) -> None:
    nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
    nn.init.zeros_(lin.bias)


def _lecun(lin: nn.Linear) -> None:
    nn.init.normal_(lin.weight, std=1 / math.sqrt(lin.in_features))
    nn.init.zeros_(lin.bias)


def _sgd(lr: float) -> Recipe:
    return lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9)


def _adam(lr: float) -> Recipe:
    return lambda p: torch.optim.Adam(p, lr=lr)


DIGITS: list[tuple[str, Factory, Recipe]] = [
    ("sigmoid x10, Adam 1e-3", lambda: _mlp(10, nn.Sigmoid), _adam(1e-3)),
    ("tanh x12, default init, SGD 0.05", lambda: _mlp(12, nn.Tanh), _sgd(0.05)),
    ("ELU x20, default init, SGD 0.05", lambda: _mlp(20, nn.ELU), _sgd(0.05)),
    ("ReLU x8, He, Adam 0.1", lambda: _mlp(8, nn.ReLU, _he), _adam(0.1)),
    ("SELU x16, LeCun, SGD 0.05", lambda: _mlp(16, nn.SELU, _lecun), _sgd(0.05)),
    ("sigmoid x6, SGD 0.1", lambda: _mlp(6, nn.Sigmoid), _sgd(0.1)),
]


def _train(model: nn.Module, recipe: Recipe, data: Any, steps: int, advice: dict[str, Any], watch: bool) -> Any:
    x_tr, y_tr = data[0], data[1]
    torch.manual_seed(0)
    opt = recipe(model.parameters())
    for group in opt.param_groups:
        group["lr"] *= float(advice.get("lr_scale", 1.0))
    clip = advice.get("clip_grad_norm")
    g = torch.Generator().manual_seed(1)
    w = gw.watch(model) if watch else None
    try:
        for _ in range(steps):
            j = torch.randint(0, len(x_tr), (64,), generator=g)
            loss = F.cross_entropy(model(x_tr[j]), y_tr[j])
            opt.zero_grad()
            loss.backward()
            if w is not None:
                w.step(loss=loss)
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip))
            opt.step()
        return w
    finally:
        if w is not None:
            w.close()


def _accuracy(model: nn.Module, data: Any) -> float:
    with torch.no_grad():
        out = model.eval()(data[2])
    ok = out.argmax(1) == data[3]
    return float(ok.float().mean()) if torch.isfinite(out).all() else 0.0


@dataclass
class Outcome:
    """One faulty run through the protocol: watched, diagnosed, fixed, repaired."""

    diagnosis: gw.Diagnosis
    fix: gw.FixResult
    before: float  # test accuracy of the original run
    after: float  # ... of the fixed model, trained the same way with the fix's advice
    repaired: float  # ... of what `gw.repair` kept, trained to one run's length
    kept: str  # the name of repair's kept trial


def _fix_and_repair(make: Factory, recipe: Recipe, data: Any, steps: int) -> Outcome:
    """Train `make()` under gw.watch, fix it from the diagnosis and train the fix, then repair."""
    torch.manual_seed(0)
    model = make()
    w = _train(model, recipe, data, steps, {}, watch=True)
    diagnosis = w.diagnose()
    before = _accuracy(model, data)
    torch.manual_seed(0)
    result = gw.fix(make(), diagnosis, timeline=w.timeline, example_input=data[0][:64])
    _train(result.model, recipe, data, steps, dict(result.advice), watch=False)
    after = _accuracy(result.model, data)

    def train_fn(model: nn.Module, advice: dict[str, Any], n: int) -> float:
        _train(model, recipe, data, n, dict(advice), watch=False)
        return _accuracy(model, data)

    torch.manual_seed(0)
    rep = gw.repair(make(), train_fn, steps=steps, progress=False)
    repaired = rep.final_score if rep.final_score is not None else math.nan
    kept = next((t.name for t in rep.trials if t.kept), "the original")
    return Outcome(diagnosis, result, before, after, repaired, kept)


def digits_part(steps: int = 300) -> int:
    split = digits()
    data = (split.x_train, split.y_train, split.x_test, split.y_test)
    print(f"{'run':<36} {'before':>7} {'fix':>7} {'repair':>7}  fix's changes / repair kept")
    healthy = 0
    repaired = 0
    for name, make, recipe in DIGITS:
        o = _fix_and_repair(make, recipe, data, steps)
        healthy += o.after >= 0.5
        repaired += o.repaired >= 0.5
        kinds = sorted({c.kind for c in o.fix.changes})
        advice = {k: round(float(v), 3) for k, v in o.fix.advice.items() if k in ("lr_scale", "clip_grad_norm")}
        print(f"{name:<36} {o.before:>7.3f} {o.after:>7.3f} {o.repaired:>7.3f}  {', '.join(kinds) or '-'} {advice or ''} / {o.kept}")
    print(f"healthy (accuracy >= 0.5): after fix {healthy}/{len(DIGITS)}, after repair {repaired}/{len(DIGITS)}\n")
    return healthy


class MidReadout(nn.Module):
    """Embedding, 2-layer bidirectional LSTM, a class read from the middle position."""

    def __init__(self, vocab: int = 12, d: int = 16, h: int = 24, classes: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.lstm = nn.LSTM(d, h, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * h, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.emb(tokens))
        return self.head(out[:, tokens.shape[1] // 2])


def _first_token_task(n: int, seed: int, length: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens 4..11 at random; the class (0..3) is the first token."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, 12, (n, length), generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    tokens[:, 0] = y
    return tokens, y


def sequence_part(steps: int = 300) -> int:
    x_tr, y_tr = _first_token_task(4096, 0)
    x_te, y_te = _first_token_task(400, 1)
    o = _fix_and_repair(MidReadout, _adam(1e-3), (x_tr, y_tr, x_te, y_te), steps)
    found = ", ".join(f"{f.kind}:{f.severity}" for f in o.diagnosis.findings if f.severity > gw.Severity.INFO)
    print(f"{'run':<36} {'before':>7} {'fix':>7} {'repair':>7}  findings / fix's changes / repair kept")
    print(f"{'BiLSTM x2, mid readout, T=60':<36} {o.before:>7.3f} {o.after:>7.3f} {o.repaired:>7.3f}  "
          f"{found or '-'} / {', '.join(sorted({c.kind for c in o.fix.changes})) or '-'} / {o.kept}")
    print(f"healthy (accuracy >= 0.5, chance 0.25): after fix {int(o.after >= 0.5)}/1, after repair {int(o.repaired >= 0.5)}/1\n")
    return int(o.after >= 0.5)


def _hf_zoo() -> dict[str, Callable[[], tuple[nn.Module, dict[str, torch.Tensor]]]]:
    import transformers as T

    T.logging.set_verbosity_error()
    vocab = 64
    ids = torch.randint(1, vocab, (8, 12), generator=torch.Generator().manual_seed(0))
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    lm = {"input_ids": ids, "labels": ids}
    cls = {"input_ids": ids, "labels": ids[:, 0] % 3}
    images = {"pixel_values": torch.randn(8, 3, 32, 32), "labels": torch.randint(0, 3, (8,))}
    return {
        "Llama": lambda: (T.LlamaForCausalLM(T.LlamaConfig(vocab_size=vocab, num_key_value_heads=2, max_position_embeddings=64, **small)), lm),
        "Mistral": lambda: (T.MistralForCausalLM(T.MistralConfig(vocab_size=vocab, num_key_value_heads=2, max_position_embeddings=64, **small)), lm),
        "GPT-NeoX": lambda: (T.GPTNeoXForCausalLM(T.GPTNeoXConfig(vocab_size=vocab, max_position_embeddings=64, **small)), lm),
        "GPT-2": lambda: (T.GPT2LMHeadModel(T.GPT2Config(vocab_size=vocab, n_layer=2, n_embd=32, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0)), lm),
        "BERT": lambda: (T.BertForSequenceClassification(T.BertConfig(vocab_size=vocab, num_labels=3, **small)), cls),
        "RoBERTa": lambda: (T.RobertaForSequenceClassification(T.RobertaConfig(vocab_size=vocab, num_labels=3, max_position_embeddings=64, **small)), cls),
        "BART": lambda: (T.BartForConditionalGeneration(T.BartConfig(vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)), lm),
        "CLIP text": lambda: (T.CLIPTextModel(T.CLIPTextConfig(vocab_size=vocab, max_position_embeddings=64, **small)), {"input_ids": ids}),
        "ResNet": lambda: (T.ResNetForImageClassification(T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)), images),
        "Wav2Vec2": lambda: (T.Wav2Vec2Model(T.Wav2Vec2Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_feat_extract_layers=2, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)), {"input_values": torch.randn(8, 400)}),
    }  # fmt: skip


def _loss(out: Any) -> torch.Tensor:
    if getattr(out, "loss", None) is not None:
        return out.loss
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden.float().pow(2).mean()


def hf_part(steps: int = 40) -> int:
    try:
        zoo = _hf_zoo()
    except ImportError:
        print("transformers is not installed: skipped\n")
        return 0
    print(f"{'model':<12} {'inspect':<20} {'after 40 steps':<28} fix")
    quiet = 0
    for name, make in zoo.items():
        torch.manual_seed(0)
        model, batch = make()
        try:
            pre = gw.inspect(model, batch)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            with gw.watch(model, every=5) as w:
                for _ in range(steps):
                    loss = _loss(model(**batch))
                    opt.zero_grad()
                    loss.backward()
                    w.step(loss=loss)
                    opt.step()
                d = w.diagnose()
            fixed = gw.fix(model, d, example_input=batch)
        except Exception as e:  # a failure is a finding of this benchmark, not a crash of it
            print(f"{name:<12} FAILED: {type(e).__name__}: {e}")
            continue
        above = lambda diag: [f"{f.severity.value}:{f.kind.value}" for f in diag.findings if f.severity != gw.Severity.INFO]  # noqa: E731
        quiet += not above(pre) and not above(d) and not fixed.changes
        print(f"{name:<12} {', '.join(above(pre)) or 'nothing':<20} {', '.join(above(d)) or 'nothing':<28} {len(fixed.changes)} changes")
    print(f"quiet (nothing above info, no change): {quiet}/{len(zoo)}\n")
    return quiet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--digits", action="store_true", help="only the digits runs")
    ap.add_argument("--seq", action="store_true", help="only the sequence model")
    ap.add_argument("--hf", action="store_true", help="only the Hugging Face models")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    everything = not (args.digits or args.seq or args.hf)
    if everything or args.digits:
        digits_part()
    if everything or args.seq:
        sequence_part()
    if everything or args.hf:
        hf_part()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
