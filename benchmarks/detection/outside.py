"""Outside the suite: 34 labelled runs that no detection rule was written against.

    PYTHONPATH=src python benchmarks/detection/outside.py                # seed 0, about 40 s on one thread
    PYTHONPATH=src python benchmarks/detection/outside.py --seeds 0 1 2  # weights, batches, generated data per seed

The labelled suite (`suite.py`) is what the detectors were tuned on. These runs are
deliberately unlike it: other architectures (a 2-layer GRU copying with a delay, a causal
character transformer, a residual LayerNorm regressor, an autoencoder, a two-headed net,
a BatchNorm CNN, a GRU over an embedding), other data (the descriptions scikit-learn bundles with its datasets,
as characters; synthetic sequences, scikit-learn blobs, digits split with seed 1) and other
ways to go wrong (a `.detach()` in the middle of the model, a forgotten `zero_grad`, a
gradient clamped by hand, softmax before the cross-entropy). So they check whether
gradwatch's rules hold on runs nobody tuned them on.

Labels come from how a run was built and from its outcome, never from a detector:

- healthy: the run is built to train and does; nothing above `info` is expected. Five
  runs built around an oddity (an embedding gradient clamped to +-1e-8, softmax before
  the cross-entropy, 16 GRU inputs binarised by sigmoid(50z)) learned anyway: they are
  healthy by outcome, and their note says so.
- faulty: a known mechanism breaks or cripples the run. Its label is the kinds that
  mechanism should produce (any one of them at `warning` or above at the end counts as
  detected); `allowed` kinds are also true of such a run and may be reported (a net
  stuck by vanishing gradients also has a flat loss). One faulty run is a documented
  limit (a cut-off under `zero_grad(set_to_none=False)` leaves exact zeros, not None):
  it stays in, expected to be missed, and the score shows it.

Each run trains under `gw.watch(..., every=10)` with its log in a temporary directory,
and is diagnosed with `gw.load(log).diagnose()`. The log is also replayed cut short after
records 3, 5, 7, ... (short of the whole log), which is what a user calling
`diagnose()` mid-run would have been shown.

Printed: a row per run (label, whether it learned: its metric against chance or a
baseline, the findings at the end as kind:E/W/I, the kinds seen at warning or above
mid-run), the notes, then false alarms on healthy runs (at the end, and at any point),
recall on faulty runs, faulty runs with a kind outside their label, and the time.

Every run is fixed by its seeds; the character-level runs' text comes with scikit-learn,
so their figures can move with its version (measured with 1.9)."""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import (
    load_breast_cancer,
    load_diabetes,
    load_digits,
    load_iris,
    load_linnerud,
    load_wine,
    make_classification,
)
from torch import nn
from torch.nn import functional as F

import gradwatch as gw
from gradwatch.lab.data import accuracy, batches, digits
from gradwatch.record import read_log

K = gw.Kind
EVERY = 10

Batch = tuple[Any, torch.Tensor]
BatchFn = Callable[[int], Batch]
LossFn = Callable[[Any, torch.Tensor], torch.Tensor]

#: Kinds also true of a run that is stuck, or of one that blew up (as in suite.py).
STUCK = frozenset({K.FLAT_LOSS, K.CONSTANT_OUTPUT, K.STALLED_WEIGHTS})
BLOWN = frozenset({K.DIVERGING_LOSS, K.NONFINITE_GRADIENT, K.EXPLODING_GRADIENT, K.FLAT_LOSS,
                   K.CONSTANT_OUTPUT, K.DEAD_UNITS, K.SATURATED_UNITS})
LEARNED_ANYWAY = "learned despite the oddity: nothing above info expected"

SHORT = {
    K.VANISHING_GRADIENT: "vanish", K.EXPLODING_GRADIENT: "explode",
    K.NONFINITE_GRADIENT: "nonfinite", K.TEMPORAL_VANISHING: "temporal",
    K.DEAD_UNITS: "dead", K.SATURATED_UNITS: "saturated", K.FLAT_LOSS: "flat",
    K.DIVERGING_LOSS: "diverging", K.STALLED_WEIGHTS: "stalled", K.CONSTANT_OUTPUT: "const_out",
}  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    metric: str
    value: float
    baseline: float  # the metric of a model that learned nothing (chance, or the mean)
    learned: bool


Train = Callable[[Path], Outcome]


@dataclass(frozen=True)
class Spec:
    name: str
    note: str
    train: Train
    expect: frozenset[gw.Kind] = frozenset()  # empty: healthy
    allowed: frozenset[gw.Kind] = frozenset()
    known_miss: bool = False

    @property
    def healthy(self) -> bool:
        return not self.expect


SPECS: list[Spec] = []


def spec(
    name: str,
    note: str = "",
    expect: Iterable[gw.Kind] = (),
    allowed: Iterable[gw.Kind] = (),
    known_miss: bool = False,
) -> Callable[[Train], Train]:
    """Register the decorated training function as a labelled run."""

    def register(train: Train) -> Train:
        SPECS.append(Spec(name, note, train, frozenset(expect), frozenset(allowed), known_miss))
        return train

    return register


def fit(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batch: BatchFn,
    loss_fn: LossFn,
    steps: int,
    log: Path,
    *,
    sched: torch.optim.lr_scheduler.LRScheduler | None = None,
    after_backward: Callable[[], object] | None = None,
    zero_grad: bool = True,
    set_to_none: bool = True,
) -> None:
    """The training loop every run shares, under gw.watch with its log at `log`."""
    with gw.watch(model, every=EVERY, log=log) as w:
        for t in range(steps):
            x, y = batch(t)
            loss = loss_fn(model(x), y)
            if zero_grad:
                opt.zero_grad(set_to_none=set_to_none)
            loss.backward()
            if after_backward is not None:
                after_backward()
            w.step(loss=loss)
            opt.step()
            if sched is not None:
                sched.step()


# -- data ------------------------------------------------------------------------------------

SPLIT = digits(seed=1)
#: Weights, batch order and generated data are drawn from this seed (`--seed`); 0 is the
#: set as first written. The digits split stays the same.
SEED = 0


def digit_batches(steps: int, *, image: bool = False) -> BatchFn:
    data = batches(SPLIT.x_train, SPLIT.y_train, 64, steps, seed=1 + SEED)
    if image:
        data = [(x.view(-1, 1, 8, 8), y) for x, y in data]
    return lambda t: data[t]


def digit_outcome(model: nn.Module, *, image: bool = False) -> Outcome:
    x = SPLIT.x_test.view(-1, 1, 8, 8) if image else SPLIT.x_test
    acc = accuracy(model, x, SPLIT.y_test)
    return Outcome("acc", acc, 0.1, acc >= 0.4)


def copy_batch(g: torch.Generator, size: int, length: int, symbols: int = 8) -> Batch:
    """Random symbols, one-hot; the target at t is the symbol itself (shifted by the loss)."""
    s = torch.randint(0, symbols, (size, length), generator=g)
    return F.one_hot(s, symbols).float(), s


def recall_batch(g: torch.Generator, size: int, length: int, symbols: int = 6, k: int = 3) -> Batch:
    """k symbols, then blanks to `length`; the model must name the k symbols at the end."""
    s = torch.randint(0, symbols, (size, k), generator=g)
    x = torch.zeros(size, length, symbols + 1)
    x[:, :k, :symbols] = F.one_hot(s, symbols).float()
    x[:, k:, symbols] = 1
    return x, s


def bag(vocab: int, n: int, seed: int, length: int = 12) -> Batch:
    """Token ids whose class (of 4) is told by the first two tokens; the rest are noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randint(0, vocab, (n, length), generator=g)
    x[:, :2] = torch.randint(0, 10, (n, 2), generator=g) + 10 * y[:, None]
    return x, y


def running_sum(g: torch.Generator, n: int = 64) -> Batch:
    """Ten reals; the target is their sum over sqrt(10) (variance 1)."""
    x = torch.randn(n, 10, 1, generator=g)
    return x, x.sum(1) / math.sqrt(10)


def synth_regression(n: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    return x, torch.sin(x[:, :3].sum(1, keepdim=True)) + 0.5 * x[:, 3:4] * x[:, 4:5]


TEXT = "".join(load().DESCR for load in (load_digits, load_iris, load_wine, load_breast_cancer, load_diabetes, load_linnerud))
VOCAB = sorted(set(TEXT))
CHARS = torch.tensor([VOCAB.index(c) for c in TEXT])
#: Every tenth block of 500 characters is held out, so the validation text comes from every
#: description, not only from the last one.
_BLOCK = torch.arange(len(CHARS)) // 500 % 10 == 9
TRAIN, VAL = CHARS[~_BLOCK], CHARS[_BLOCK]


def char_batch(g: torch.Generator, size: int = 32, ctx: int = 32, split: str = "train") -> Batch:
    d = TRAIN if split == "train" else VAL
    i = torch.randint(0, len(d) - ctx - 1, (size,), generator=g)
    return torch.stack([d[j : j + ctx] for j in i]), torch.stack([d[j + 1 : j + ctx + 1] for j in i])


def unigram_entropy() -> float:
    """Cross-entropy of predicting each character by its frequency: the baseline to beat."""
    p = torch.bincount(TRAIN, minlength=len(VOCAB)).float()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def seq_ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def char_outcome(model: nn.Module) -> Outcome:
    x, y = char_batch(torch.Generator().manual_seed(99 + SEED), 256, split="val")
    model.eval()
    with torch.no_grad():
        ce = float(seq_ce(model(x), y))
    model.train()
    base = unigram_entropy()
    return Outcome("val CE", ce, base, ce < 0.85 * base)


def mse_outcome(metric: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, baseline: float, bar: float) -> Outcome:
    with torch.no_grad():
        mse = float(F.mse_loss(model(x), y))
    return Outcome(metric, mse, baseline, mse < bar)


# -- models ----------------------------------------------------------------------------------


class CharTF(nn.Module):
    """A causal character transformer: embedding + learned positions, encoder, LayerNorm, head."""

    mask: torch.Tensor

    def __init__(self, vocab: int, d: int = 64, layers: int = 2, norm_first: bool = True, ctx: int = 32) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(ctx, d) * 0.02)
        block = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True, norm_first=norm_first, activation="gelu")
        self.enc = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.enc(self.emb(x) + self.pos[:t], mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.ln(h))


def cnn_bn(c: int = 16) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * c, 10),
    )  # fmt: skip


def relu_mlp(*widths: int) -> nn.Sequential:
    """Linear layers of the given widths with a ReLU between each pair."""
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])  # no ReLU after the last


class SeqHead(nn.Module):
    """A recurrent layer read out at every time step."""

    def __init__(self, rnn: nn.RNNBase, hidden: int, n_out: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


class BagGRU(nn.Module):
    """Embedding, a GRU over the reversed tokens (the class tokens come last), a 4-way head."""

    def __init__(self, vocab: int = 200, d: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.rnn = nn.GRU(d, 32, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.emb(x).flip(1))[0][:, -1])


class SatGRU(nn.Module):
    """Each real input goes through Linear(1, width) and sigmoid(50z) before the GRU."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.inp = nn.Linear(1, 16)
        self.rnn = nn.GRU(16, 32, batch_first=True)
        self.head = nn.Linear(32, 1)
        if width != 16:  # built over the 16-wide one, as the sweep did: same seed, same weights
            self.inp = nn.Linear(1, width)
            self.rnn = nn.GRU(width, 32, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(torch.sigmoid(50 * self.inp(x)))[0][:, -1])


class DetachMid(nn.Module):
    """Three ReLU layers, then two more; with `detach` the lower three are cut off (the bug)."""

    def __init__(self, detach: bool = True) -> None:
        super().__init__()
        self.detach = detach
        self.low = relu_mlp(64, 128, 128, 128).append(nn.ReLU())
        self.high = relu_mlp(128, 128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.low(x)
        return self.high(h.detach() if self.detach else h)


class TwoHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = relu_mlp(64, 128, 64).append(nn.ReLU())
        self.cls = nn.Linear(64, 10)
        self.par = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.cls(h), self.par(h)


class ResLN(nn.Module):
    """Eight pre-LayerNorm residual blocks (Linear, SiLU, Linear) regressing one number."""

    def __init__(self, d_in: int, d: int = 64, blocks: int = 8) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d)) for _ in range(blocks))
        self.out = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


# -- healthy by design -----------------------------------------------------------------------


@spec("h-gelu6-adamw-cosine")
def h_gelu6_adamw_cosine(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Linear(64, 64), nn.GELU()]
    m = nn.Sequential(*layers, nn.Linear(64, 10))
    opt = torch.optim.AdamW(m.parameters(), 2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 400)
    fit(m, opt, digit_batches(400), F.cross_entropy, 400, log, sched=sched)
    return digit_outcome(m)


@spec("h-cnn-bn-nesterov")
def h_cnn_bn_nesterov(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    m = cnn_bn()
    opt = torch.optim.SGD(m.parameters(), 0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    fit(m, opt, digit_batches(300, image=True), F.cross_entropy, 300, log)
    return digit_outcome(m, image=True)


@spec("h-gru2-delaycopy", "2-layer GRU: the output at t is the input symbol at t - 5")
def h_gru2_delaycopy(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    delay = 5
    m = SeqHead(nn.GRU(8, 64, 2, batch_first=True), 64, 8)
    opt = torch.optim.Adam(m.parameters(), 3e-3)

    def loss_fn(out: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return seq_ce(out[:, delay:], s[:, :-delay])

    fit(m, opt, lambda t: copy_batch(g, 32, 20), loss_fn, 400, log)
    x, s = copy_batch(torch.Generator().manual_seed(9 + SEED), 512, 20)
    with torch.no_grad():
        acc = float((m(x)[:, delay:].argmax(-1) == s[:, :-delay]).float().mean())
    return Outcome("acc", acc, 1 / 8, acc >= 0.6)


@spec("h-preln-tf-warmup-char", "pre-LN causal transformer on scikit-learn's dataset descriptions as characters, 60-step warmup")
def h_preln_tf_warmup_char(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    m = CharTF(len(VOCAB))
    opt = torch.optim.AdamW(m.parameters(), 2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / 60))
    fit(m, opt, lambda t: char_batch(g), seq_ce, 350, log, sched=sched)
    return char_outcome(m)


@spec("h-mlp-dropout-wd-sgd")
def h_mlp_dropout_wd_sgd(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    m = nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(256, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, 10),
    )  # fmt: skip
    opt = torch.optim.SGD(m.parameters(), 0.03, momentum=0.9, weight_decay=5e-3)
    fit(m, opt, digit_batches(300), F.cross_entropy, 300, log)
    return digit_outcome(m)


@spec("h-converged-separable", "4 well-separated blobs: converges early, then a long flat loss")
def h_converged_separable(log: Path) -> Outcome:
    xs, ys = make_classification(2000, 20, n_informative=10, n_classes=4, class_sep=4.0, random_state=0)
    x, y = torch.tensor(xs, dtype=torch.float32), torch.tensor(ys)
    torch.manual_seed(SEED)
    m = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 4))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    data = batches(x[:1600], y[:1600], 64, 500)
    fit(m, opt, lambda t: data[t], F.cross_entropy, 500, log)
    acc = accuracy(m, x[1600:], y[1600:])
    return Outcome("acc", acc, 0.25, acc >= 0.6)


@spec("h-frozen-pretrained-first", "first layer pretrained 150 steps (unwatched), then frozen")
def h_frozen_pretrained_first(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    first = nn.Linear(64, 128)
    pre = nn.Sequential(first, nn.ReLU(), nn.Linear(128, 10))
    pre_opt = torch.optim.Adam(pre.parameters(), 1e-3)
    for x, y in batches(SPLIT.x_train, SPLIT.y_train, 64, 150, seed=5 + SEED):
        pre_opt.zero_grad()
        F.cross_entropy(pre(x), y).backward()
        pre_opt.step()
    first.requires_grad_(False)
    m = nn.Sequential(first, nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], 0.02, momentum=0.9)
    fit(m, opt, digit_batches(300), F.cross_entropy, 300, log)
    return digit_outcome(m)


@spec("h-label-smoothing", "label smoothing 0.3: the loss floor is far above zero")
def h_label_smoothing(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    m = relu_mlp(64, 128, 128, 10)
    opt = torch.optim.Adam(m.parameters(), 1e-3)

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y, label_smoothing=0.3)

    fit(m, opt, digit_batches(500), loss_fn, 500, log)
    return digit_outcome(m)


@spec("h-slow-small-lr", "plain SGD at lr 0.004: a slow, steady descent")
def h_slow_small_lr(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    m = relu_mlp(64, 64, 64, 10)
    opt = torch.optim.SGD(m.parameters(), 0.004)
    fit(m, opt, digit_batches(400), F.cross_entropy, 400, log)
    return digit_outcome(m)


@spec("h-autoencoder-mse", "64-32-12-32-64 ReLU autoencoder on the digits")
def h_autoencoder_mse(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    m = relu_mlp(64, 32, 12, 32, 64)
    opt = torch.optim.Adam(m.parameters(), 2e-3)
    data = digit_batches(400)
    fit(m, opt, lambda t: (data(t)[0], data(t)[0]), F.mse_loss, 400, log)
    x = SPLIT.x_test
    base = float(x.var(0, unbiased=False).mean())
    return mse_outcome("recon MSE", m, x, x, base, 0.6 * base)


@spec("h-multitask-two-heads", "digit class + parity heads on one trunk, losses summed")
def h_multitask_two_heads(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    m = TwoHead()
    opt = torch.optim.Adam(m.parameters(), 1e-3)

    def loss_fn(out: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out[0], y) + 0.5 * F.cross_entropy(out[1], y % 2)

    fit(m, opt, digit_batches(400), loss_fn, 400, log)
    with torch.no_grad():
        acc = float((m(SPLIT.x_test)[0].argmax(-1) == SPLIT.y_test).float().mean())
    return Outcome("acc", acc, 0.1, acc >= 0.5)


@spec("h-resnet-ln-regression")
def h_resnet_ln_regression(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    x, y = synth_regression(4000, 2 * SEED)
    x_test, y_test = synth_regression(1000, 2 * SEED + 1)
    m = ResLN(10)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    data = batches(x, y, 64, 400)
    fit(m, opt, lambda t: data[t], F.mse_loss, 400, log)
    var = float(y_test.var())
    return mse_outcome("test MSE", m, x_test, y_test, var, 0.5 * var)


@spec("h-constant-target", "regression onto a constant 3.0 (the optimum IS a constant output)")
def h_constant_target(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    m = relu_mlp(64, 64, 64, 1)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    data = digit_batches(400)
    fit(m, opt, lambda t: (data(t)[0], torch.full((64, 1), 3.0)), F.mse_loss, 400, log)
    x = SPLIT.x_test
    return mse_outcome("test MSE", m, x, torch.full((len(x), 1), 3.0), 9.0, 0.1)


@spec("c-embedding2-control", "control for f-embedding2-grad-clamp-1e-8: no clamp")
def c_embedding2_control(log: Path) -> Outcome:
    return bag_gru_run(log, d=2, clamp=False)


@spec("c-detach-control", "control for f-relu-detach-middle: no detach")
def c_detach_control(log: Path) -> Outcome:
    return detach_run(log, detach=False)


# -- healthy by outcome: built around an oddity, learned anyway ------------------------------


def bag_gru_run(log: Path, d: int, clamp: bool) -> Outcome:
    torch.manual_seed(SEED)
    x, y = bag(200, 64 * 400, 2 * SEED)
    x_test, y_test = bag(200, 1000, 2 * SEED + 1)
    m = BagGRU(d=d)
    opt = torch.optim.SGD(m.parameters(), 0.5, momentum=0.9)

    def clamp_grad() -> None:  # the oddity: the embedding's gradient clamped before the step
        assert m.emb.weight.grad is not None
        m.emb.weight.grad.clamp_(-1e-8, 1e-8)

    def batch(t: int) -> Batch:
        return x[64 * t : 64 * t + 64], y[64 * t : 64 * t + 64]

    fit(m, opt, batch, F.cross_entropy, 400, log, after_backward=clamp_grad if clamp else None)
    acc = accuracy(m, x_test, y_test)
    return Outcome("acc", acc, 0.25, acc >= 0.6)


@spec("f-embedding-grad-clamp-1e-8", f"SGD, embedding grad clamped to +-1e-8 before the step: {LEARNED_ANYWAY}")
def f_embedding_grad_clamp(log: Path) -> Outcome:
    return bag_gru_run(log, d=16, clamp=True)


@spec("f-embedding2-grad-clamp-1e-8", f"as above with a 2-dim embedding: {LEARNED_ANYWAY}")
def f_embedding2_grad_clamp(log: Path) -> Outcome:
    return bag_gru_run(log, d=2, clamp=True)


def double_softmax_run(log: Path, make_opt: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]) -> Outcome:
    torch.manual_seed(SEED)
    m = relu_mlp(64, 64, 64, 10).append(nn.Softmax(-1))
    fit(m, make_opt(m.parameters()), digit_batches(400), F.cross_entropy, 400, log)
    return digit_outcome(m)


@spec("f-double-softmax", f"softmax then CrossEntropyLoss, SGD: {LEARNED_ANYWAY}")
def f_double_softmax(log: Path) -> Outcome:
    return double_softmax_run(log, lambda p: torch.optim.SGD(p, 0.02, momentum=0.9))


@spec("f-double-softmax-adam", f"softmax then CrossEntropyLoss, Adam 1e-3: {LEARNED_ANYWAY}")
def f_double_softmax_adam(log: Path) -> Outcome:
    return double_softmax_run(log, lambda p: torch.optim.Adam(p, 1e-3))


def sat_gru_run(log: Path, width: int) -> Outcome:
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    m = SatGRU(width)
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    fit(m, opt, lambda t: running_sum(g), F.mse_loss, 400, log)
    x, y = running_sum(torch.Generator().manual_seed(9 + SEED), 1000)
    return mse_outcome("test MSE", m, x, y, 1.0, 0.1)


@spec("f-gru-sigmoid50-inputs", f"running sum of 10 reals, 16 inputs binarised by sigmoid(50z): {LEARNED_ANYWAY}")
def f_gru_sigmoid50_inputs(log: Path) -> Outcome:
    return sat_gru_run(log, 16)


# -- faulty ----------------------------------------------------------------------------------


@spec("f-cnn12-sigmoid-sgd", expect=[K.VANISHING_GRADIENT], allowed=STUCK | {K.SATURATED_UNITS})
def f_cnn12_sigmoid_sgd(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    layers: list[nn.Module] = []
    c = 1
    for _ in range(12):
        layers += [nn.Conv2d(c, 12, 3, padding=1), nn.Sigmoid()]
        c = 12
    m = nn.Sequential(*layers, nn.Flatten(), nn.Linear(12 * 64, 10))
    opt = torch.optim.SGD(m.parameters(), 0.05, momentum=0.9, nesterov=True)
    fit(m, opt, digit_batches(300, image=True), F.cross_entropy, 300, log)
    return digit_outcome(m, image=True)


@spec("f-rnn-tanh-recall3-T40", "tanh RNN must name 3 symbols seen 37 steps earlier",
      expect=[K.TEMPORAL_VANISHING], allowed=STUCK | {K.SATURATED_UNITS})
def f_rnn_tanh_recall3_t40(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    length, k = 40, 3
    m = SeqHead(nn.RNN(7, 64, batch_first=True, nonlinearity="tanh"), 64, 6)
    opt = torch.optim.Adam(m.parameters(), 1e-3)

    def loss_fn(out: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return seq_ce(out[:, -k:], s)

    fit(m, opt, lambda t: recall_batch(g, 32, length, k=k), loss_fn, 400, log)
    x, s = recall_batch(torch.Generator().manual_seed(9 + SEED), 512, length, k=k)
    with torch.no_grad():
        acc = float((m(x)[:, -k:].argmax(-1) == s).float().mean())
    return Outcome("acc", acc, 1 / 6, acc >= 0.6)


@spec("f-tf-adam-lr0.5-char", "post-LN causal transformer, Adam at lr 0.5",
      expect=[K.DIVERGING_LOSS], allowed=BLOWN)
def f_tf_adam_lr05_char(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    m = CharTF(len(VOCAB), norm_first=False)
    opt = torch.optim.Adam(m.parameters(), 0.5)
    fit(m, opt, lambda t: char_batch(g), seq_ce, 300, log)
    return char_outcome(m)


class CellLoop(nn.Module):
    """A GRUCell applied step by step; `detach` cuts the state between steps (truncated
    backpropagation through time over one step). Reads out its last state, `k` times."""

    def __init__(self, detach: bool, n_in: int = 7, hidden: int = 32, n_out: int = 6, k: int = 1) -> None:
        super().__init__()
        self.cell, self.head, self.detach, self.k = nn.GRUCell(n_in, hidden), nn.Linear(hidden, n_out * k), detach, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], self.cell.hidden_size)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h.detach() if self.detach else h)
        return self.head(h).view(x.shape[0], self.k, -1)


def cell_loop_run(log: Path, detach: bool) -> Outcome:
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    m = CellLoop(detach)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    fit(m, opt, lambda t: recall_batch(g, 32, 20, k=1), seq_ce, 300, log)
    x, s = recall_batch(torch.Generator().manual_seed(9 + SEED), 512, 20, k=1)
    with torch.no_grad():
        acc = float((m(x).argmax(-1) == s).float().mean())
    return Outcome("acc", acc, 1 / 6, acc >= 0.6)


@spec("f-gru-cell-detach-recall",
      "GRUCell loop with h.detach() at every step (truncated BPTT over one step) must name a symbol "
      "seen 19 steps earlier: no gradient reaches the earlier calls at all (found by a sweep: the "
      "reach rule read the holes as no profile)",
      expect=[K.TEMPORAL_VANISHING], allowed=STUCK)
def f_gru_cell_detach_recall(log: Path) -> Outcome:
    return cell_loop_run(log, detach=True)


@spec("c-gru-cell-recall-control", "control for f-gru-cell-detach-recall: no detach")
def c_gru_cell_recall_control(log: Path) -> Outcome:
    return cell_loop_run(log, detach=False)


class TokenLSTM(nn.Module):
    """Token ids -> embedding -> LSTM, classified from the last step."""

    def __init__(self, vocab: int = 50, classes: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 16)
        self.rnn = nn.LSTM(16, 32, batch_first=True)
        self.head = nn.Linear(32, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(ids))
        return self.head(out[:, -1])


def first_token_batch(g: torch.Generator, size: int = 32, length: int = 20) -> Batch:
    """Name the first token's residue mod 4 from the last step (chance 1/4)."""
    ids = torch.randint(1, 50, (size, length), generator=g)
    return ids, ids[:, 0] % 4


@spec("f-token-lstm-sgd-lr30",
      "embedding + LSTM under SGD at lr 30: the loss jumps from chance (1.39) to ~60 in its first "
      "steps and stays there, finite (found by a robustness sweep: 'risen since the start' read "
      "the start after the jump)",
      expect=[K.DIVERGING_LOSS], allowed=BLOWN)
def f_token_lstm_sgd_lr30(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    m = TokenLSTM()
    opt = torch.optim.SGD(m.parameters(), 30.0, momentum=0.9)
    fit(m, opt, lambda t: first_token_batch(g), F.cross_entropy, 150, log)
    x, y = first_token_batch(torch.Generator().manual_seed(9 + SEED), 1000)
    acc = accuracy(m, x, y)
    return Outcome("acc", acc, 0.25, acc >= 0.6)


class FirstSymbolLSTM(nn.Module):
    """An LSTM over one-hot symbols, read out at the last step."""

    def __init__(self, symbols: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.rnn = nn.LSTM(symbols, hidden, batch_first=True)
        self.head = nn.Linear(hidden, symbols)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def first_symbol_batch(g: torch.Generator, size: int = 64, length: int = 20) -> Batch:
    """`copy_batch`'s one-hot symbols; name the first (chance 1/8)."""
    x, s = copy_batch(g, size, length)
    return x, s[:, 0]


@spec("f-lstm-recall-adam-lr20",
      "LSTM under Adam at lr 20: the loss jumps from chance (2.1) to ~200 at once and then falls "
      "slowly (~125 by step 300) while every input gets the same answer (found by the fourth "
      "session's sweep: the falling loss read as learning, and constant_output stayed at info)",
      expect=[K.CONSTANT_OUTPUT, K.DIVERGING_LOSS], allowed=BLOWN | STUCK)
def f_lstm_recall_adam_lr20(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    m = FirstSymbolLSTM()
    opt = torch.optim.Adam(m.parameters(), 20.0)
    fit(m, opt, lambda t: first_symbol_batch(g), F.cross_entropy, 300, log)
    x, y = first_symbol_batch(torch.Generator().manual_seed(9 + SEED), 1000)
    acc = accuracy(m, x, y)
    return Outcome("acc", acc, 0.125, acc >= 0.6)


@spec("f-leaky25-var4-sgd",
      "weights N(0, 4/fan_in), chi = 4 E[phi'^2] ~ 2 per layer: the loss goes non-finite "
      "(labelled so: the scale-free measure shows no explosion through depth)",
      expect=[K.DIVERGING_LOSS, K.NONFINITE_GRADIENT], allowed=BLOWN)
def f_leaky25_var4_sgd(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    layers: list[nn.Module] = []
    for _ in range(25):
        lin = nn.Linear(64, 64)
        nn.init.normal_(lin.weight, 0, math.sqrt(4 / 64))
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.LeakyReLU(0.01)]
    head = nn.Linear(64, 10)
    nn.init.normal_(head.weight, 0, math.sqrt(4 / 64))
    m = nn.Sequential(*layers, head)
    opt = torch.optim.SGD(m.parameters(), 0.01, momentum=0.9)
    fit(m, opt, digit_batches(300), F.cross_entropy, 300, log)
    return digit_outcome(m)


def detach_run(log: Path, detach: bool, set_to_none: bool = True) -> Outcome:
    torch.manual_seed(SEED)
    m = DetachMid(detach)
    opt = torch.optim.SGD(m.parameters(), 0.02, momentum=0.9)
    if not set_to_none:
        for p in m.low.parameters():
            p.grad = torch.zeros_like(p)
    fit(m, opt, digit_batches(300), F.cross_entropy, 300, log, set_to_none=set_to_none)
    return digit_outcome(m)


@spec("f-relu-detach-middle", "3 lowest layers never get a gradient (.grad None); the top two learn alone",
      expect=[K.STALLED_WEIGHTS], allowed={K.FLAT_LOSS})
def f_relu_detach_middle(log: Path) -> Outcome:
    return detach_run(log, detach=True)


@spec("f-cnn-adam-lr1e-7", "Adam at lr 1e-7: the weights barely move",
      expect=[K.STALLED_WEIGHTS], allowed={K.FLAT_LOSS})
def f_cnn_adam_lr1e7(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    m = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 64, 10),
    )  # fmt: skip
    opt = torch.optim.Adam(m.parameters(), 1e-7)
    fit(m, opt, digit_batches(300, image=True), F.cross_entropy, 300, log)
    return digit_outcome(m, image=True)


# The forward signal shrinks with the gradient (variance x1/6 per layer), so deep ReLUs
# with a negative bias are off for every input: dead units are part of the mechanism.
@spec("f-relu30-default-init", "no BN, PyTorch default init: sigma_w^2 = 1/3, chi = 1/6 per layer",
      expect=[K.VANISHING_GRADIENT], allowed=STUCK | {K.DEAD_UNITS})
def f_relu30_default_init(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    m = relu_mlp(*[64] * 31, 10)
    opt = torch.optim.SGD(m.parameters(), 0.05, momentum=0.9)
    fit(m, opt, digit_batches(300), F.cross_entropy, 300, log)
    return digit_outcome(m)


@spec("f-cnn5-relu-bias-4-adam", "conv biases start at -4: every ReLU channel is off",
      expect=[K.DEAD_UNITS], allowed=STUCK | {K.VANISHING_GRADIENT})
def f_cnn5_relu_bias_4_adam(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    layers: list[nn.Module] = []
    c = 1
    for _ in range(5):
        conv = nn.Conv2d(c, 16, 3, padding=1)
        assert conv.bias is not None
        nn.init.constant_(conv.bias, -4.0)
        layers += [conv, nn.ReLU()]
        c = 16
    m = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    fit(m, opt, digit_batches(300, image=True), F.cross_entropy, 300, log)
    return digit_outcome(m, image=True)


@spec("f-gru-sigmoid50-1unit", "one input unit binarised by sigmoid(50z): the magnitude is lost",
      expect=[K.SATURATED_UNITS], allowed=STUCK | {K.VANISHING_GRADIENT})
def f_gru_sigmoid50_1unit(log: Path) -> Outcome:
    return sat_gru_run(log, 1)


@spec("f-no-zero-grad-sgd", "opt.zero_grad() forgotten: gradients accumulate",
      expect=[K.DIVERGING_LOSS], allowed=BLOWN)
def f_no_zero_grad_sgd(log: Path) -> Outcome:
    torch.manual_seed(SEED)
    m = relu_mlp(64, 128, 128, 10)
    opt = torch.optim.SGD(m.parameters(), 0.01, momentum=0.9)
    fit(m, opt, digit_batches(300), F.cross_entropy, 300, log, zero_grad=False)
    return digit_outcome(m)


@spec("f-relu-detach-middle-zerograds",
      "as f-relu-detach-middle under zero_grad(set_to_none=False): the cut-off layers' grads are "
      "exact zeros, not None; a documented limit, expected to be missed",
      expect=[K.STALLED_WEIGHTS], allowed={K.FLAT_LOSS}, known_miss=True)
def f_relu_detach_middle_zerograds(log: Path) -> Outcome:
    return detach_run(log, detach=True, set_to_none=False)


# -- diagnosis, replay, report ---------------------------------------------------------------

Found = dict[gw.Kind, gw.Severity]


def worst(findings: Iterable[gw.Finding], floor: gw.Severity = gw.Severity.INFO) -> Found:
    """Each kind found at `floor` or above, with its highest severity."""
    out: Found = {}
    for f in findings:
        if f.severity >= floor:
            out[f.kind] = max(out.get(f.kind, f.severity), f.severity)
    return out


def replay(log: Path) -> Found:
    """Kinds at warning or above after records 3, 5, 7, ... of the log, short of the end."""
    header, records = read_log(log)
    cuts = range(3, len(records), 2)
    return worst((f for n in cuts for f in gw.Run(header, records[:n], log).diagnose().findings), gw.Severity.WARNING)


@dataclass
class Result:
    spec: Spec
    outcome: Outcome
    final: Found  # every finding at the end, info included
    midrun: Found  # warning or above at some replay point

    @property
    def alarms(self) -> set[gw.Kind]:
        return {k for k, s in self.final.items() if s >= gw.Severity.WARNING}


def evaluate(s: Spec, folder: Path) -> Result:
    log = folder / f"{s.name}.jsonl"
    outcome = s.train(log)
    final = worst(gw.load(log).diagnose().findings)
    return Result(s, outcome, final, replay(log))


def kinds_text(found: Found) -> str:
    return " ".join(f"{SHORT[k]}:{s.value[0].upper()}" for k, s in found.items()) or "-"


def label_text(s: Spec) -> str:
    if s.healthy:
        return "healthy"
    kinds = "/".join(SHORT[k] for k in sorted(s.expect))
    return f"{kinds} (miss known)" if s.known_miss else kinds


def learned_text(o: Outcome) -> str:
    return f"{'yes' if o.learned else 'NO '} {o.metric} {o.value:.3f} vs {o.baseline:.3f}"


ROW = "{:<32} {:<22} {:<30} {:<42} {}"


def print_row(r: Result) -> None:
    print(ROW.format(r.spec.name, label_text(r.spec), learned_text(r.outcome), kinds_text(r.final), kinds_text(r.midrun)), flush=True)


def names(results: Iterable[Result]) -> str:
    """Run names, a documented limit marked as such."""
    return ", ".join(r.spec.name + (" (known limit)" if r.spec.known_miss else "") for r in results) or "none"


def print_summary(results: list[Result], seconds: float) -> None:
    healthy = [r for r in results if r.spec.healthy]
    faulty = [r for r in results if not r.spec.healthy]
    at_end = [r for r in healthy if r.alarms]
    at_any = [r for r in healthy if r.alarms or r.midrun]
    caught = [r for r in faulty if r.alarms & r.spec.expect]
    missed = [r for r in faulty if not r.alarms & r.spec.expect]
    odd = {r.spec.name: extra for r in faulty if (extra := r.alarms - r.spec.expect - r.spec.allowed)}
    print("\nfalse alarms on healthy runs (a finding at warning or above): "
          f"at the end {len(at_end)}/{len(healthy)} ({names(at_end)}); "
          f"at any point {len(at_any)}/{len(healthy)} ({names(at_any)})")
    print("recall on faulty runs (an expected kind at warning or above at the end): "
          f"{len(caught)}/{len(faulty)}; missed: {names(missed)}")
    print(f"faulty runs with a kind outside their label and its allowed kinds: {len(odd)}/{len(faulty)}")
    for name, kinds in odd.items():
        print(f"  {name}: {' '.join(SHORT[k] for k in sorted(kinds))}")
    print(f"{len(results)} runs in {seconds:.0f} s, every={EVERY}, torch threads 1")


def main() -> int:
    global SEED
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds to run (default 0, the set as written)")
    seeds = p.parse_args().seeds
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    legend = ", ".join(f"{v}={k.value}" for k, v in SHORT.items())
    print(f"kinds: {legend}; severities E/W/I = error/warning/info\n")
    per_seed: dict[int, list[Result]] = {}
    for seed in seeds:
        SEED = seed
        t1 = time.perf_counter()
        print(f"seed {seed}")
        print(ROW.format("run", "label", "learned? metric vs chance/base", "findings at the end", "warning+ mid-run"))
        results: list[Result] = []
        with tempfile.TemporaryDirectory(prefix="gw-outside-") as folder:
            for s in SPECS:
                results.append(evaluate(s, Path(folder)))
                print_row(results[-1])
        per_seed[seed] = results
        print_summary(results, time.perf_counter() - t1)
        print()
    print("notes:")
    for s in SPECS:
        if s.note:
            print(f"  {s.name}: {s.note}")
    if len(seeds) > 1:
        print_over_seeds(per_seed, time.perf_counter() - t0)
    return 0


def seed_line(what: str, values: list[float], worst: Callable[[list[float]], float], width: int = 44) -> None:
    """One figure over seeds: each seed's value, their mean and the worst seed's (`min` or `max`)."""
    each = " ".join(f"{v:.2f}" for v in values)
    print(f"  {what:<{width}} mean {sum(values) / len(values):.2f}   worst seed {worst(values):.2f}   (seeds {each})")


def print_over_seeds(per_seed: dict[int, list[Result]], seconds: float) -> None:
    """Recall and false alarms per seed, their mean and the worst seed."""
    rows: dict[str, list[float]] = {"recall on faulty runs": [], "false alarms, at the end": [], "false alarms, at any point": []}
    for results in per_seed.values():
        healthy = [r for r in results if r.spec.healthy]
        faulty = [r for r in results if not r.spec.healthy]
        rows["recall on faulty runs"].append(sum(bool(r.alarms & r.spec.expect) for r in faulty) / len(faulty))
        rows["false alarms, at the end"].append(sum(bool(r.alarms) for r in healthy) / len(healthy))
        rows["false alarms, at any point"].append(sum(bool(r.alarms or r.midrun) for r in healthy) / len(healthy))
    print(f"\nover seeds {' '.join(map(str, per_seed))}:")
    for name, values in rows.items():
        seed_line(name, values, min if name.startswith("recall") else max, 28)
    print(f"{len(per_seed)} seeds in {seconds:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
