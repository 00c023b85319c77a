"""Held out: a frozen labelled set of runs that learn slowly and end low, and of healthy traps.

    PYTHONPATH=src python benchmarks/detection/heldout.py            # 37 runs x seeds 0 1 2, ~1.5 min on one thread
    PYTHONPATH=src python benchmarks/detection/heldout.py --seeds 0 --only f-relu1-bias-dead h-lstm-digit-rows

What it is. `suite.py` is what the detection rules were tuned on and `outside.py` checks
them on runs nobody tuned them on; most of their faulty runs fail outright (stuck at
chance, NaN, a loss that climbs). A user found the other half: runs whose loss does fall,
so nothing looks broken, but which end far below what a healthy net of the same shape
reaches (98% of a hidden ReLU layer never on and 35% on the digits; ~90% of the tanh or
sigmoid units saturated and 30-60%; a deep tanh net in the chaotic phase whose loss falls
2.4 -> 1.7 in 600 steps). This set holds 20 faulty runs, 15 of them of that kind (the
others are classic failures, there to cover nonfinite, diverging and constant output),
and 17 healthy runs that look alarming (a 50k-row EmbeddingBag, a 1.2M-parameter
embedding, confident sigmoid outputs under BCE, a warm-up, a frozen layer, dropout, a
converged flat loss, shallow sigmoid and tanh nets, a BatchNorm-rescued deep sigmoid net,
an LSTM, a tiny Hugging Face BERT and GPT-2 built from configs, a ReLU layer partly dead,
a regression, CNNs, clipped SGD). Every run takes a seed, which sets torch's seed and the
data's (the digits split, the batches, the synthetic draws); each is run on seeds 0 1 2.

Frozen. The set was written before the rule changes it judges, without reading the
detection rules, and no run was added, dropped or altered because of what gradwatch
reports on it: recipes were tuned on their outcome alone (a script that trained them
and printed their metric and loss, never a diagnosis), until every healthy run trained
and every faulty run ended low on all three seeds. It is never changed to suit a rule; a
new sweep goes into a new file, so the figures of this one stay comparable from one
change of the rules to the next.

Labels come only from how a run is built and from its outcome:

- healthy: built to train, and trains: its metric reaches the healthy bar (digits
  accuracy 0.85; other bars in the run). Nothing above `info` is expected.
- faulty: a known mechanism cripples the run (its note says which), and its metric ends
  beyond the `low` mark (digits accuracy 0.75 or less, where a healthy net of the same
  size reaches 0.9 and more). `expect` is the kinds that mechanism produces (any one of
  them at `warning` or above at the end counts as detected); `allowed` kinds are also
  true of such a run and may be reported.

A run-seed whose outcome disagrees with its label (a healthy run that did not train, a
faulty run that trained or ended between `low` and the bar) is flagged, listed, and left
out of the scores.

Each run trains under `gw.watch(..., every=10)` through `outside.fit`, is diagnosed with
`gw.load(log).diagnose()` at the end, and is replayed cut short after records 3, 5, 7, ...
(`outside.replay`): what a user calling `diagnose()` part-way would have been shown.
Printed per run and seed: label, outcome (metric against the bar, the low mark and
chance), findings at the end (kind:E/W/I), kinds at warning or above part-way; per seed:
recall on faulty runs, false alarms on healthy runs (at the end, at any point), faulty
runs with a kind outside their label; over the seeds: those figures' mean and worst seed,
and the runs behind them.

The data are scikit-learn's bundled sets (digits, wine, breast cancer) and generators
(make_classification, make_friedman1) and synthetic sequences; figures can move with the
versions of scikit-learn, torch and transformers (measured with 1.9, 2.13 and 5.24).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import cache, partial
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import (
    load_breast_cancer,
    load_digits,
    load_wine,
    make_classification,
    make_friedman1,
)
from torch import nn
from torch.nn import functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from outside import (  # noqa: E402
    BLOWN,
    EVERY,
    SHORT,
    STUCK,
    Batch,
    BatchFn,
    LossFn,
    Outcome,
    Result,
    Spec,
    bag,
    evaluate,
    fit,
    kinds_text,
    label_text,
    relu_mlp,
    seed_line,
    seq_ce,
)
from tasks import bag_of_tokens  # noqa: E402

import gradwatch as gw  # noqa: E402
from gradwatch.lab.data import Split, accuracy, adding_problem, batches, digits  # noqa: E402
from gradwatch.lab.models import mlp  # noqa: E402

K = gw.Kind
Seeded = Callable[[Path, int], Outcome]
Build = Callable[[], nn.Module]
MakeOpt = Callable[[nn.Module], torch.optim.Optimizer]
MakeSched = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]

#: Digits accuracy: a healthy net of these sizes reaches 0.9 and more (chance is 0.1); a
#: faulty run must end at or below ACC_LOW.
ACC_BAR, ACC_LOW = 0.85, 0.75


# -- outcomes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Graded(Outcome):
    """An outcome with the marks its label is checked against: a healthy run reaches `bar`;
    a faulty one ends beyond `low` (below it for an accuracy, above it for an error)."""

    bar: float = math.nan
    low: float = math.nan

    @property
    def ended_low(self) -> bool:
        return self.value <= self.low if self.bar > self.low else self.value >= self.low

    @property
    def verdict(self) -> str:
        return "trained" if self.learned else "low" if self.ended_low else "between"


def grade(metric: str, value: float, chance: float, bar: float, low: float) -> Graded:
    """`bar` above `low` means higher is better (an accuracy), below it lower is (an error)."""
    trained = value >= bar if bar > low else value <= bar
    return Graded(metric, value, chance, trained, bar, low)


# -- data -------------------------------------------------------------------------------------


@cache
def digit_split(seed: int) -> Split:
    return digits(seed=seed)


def feed(x: torch.Tensor, y: torch.Tensor, seed: int, steps: int, size: int = 64) -> BatchFn:
    data = batches(x, y, size, steps, seed=seed)
    return lambda t: data[t]


def standardised(x: torch.Tensor, n_train: int) -> torch.Tensor:
    mean, std = x[:n_train].mean(0), x[:n_train].std(0)
    return (x - mean) / std.clamp_min(1e-6)


def table(xs: Any, ys: Any, seed: int, test_fraction: float = 0.25, *, standardise: bool = True) -> Split:
    """A scikit-learn table as a Split shuffled with `seed` (standardised on its training part)."""
    x, y = torch.tensor(xs, dtype=torch.float32), torch.tensor(ys)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_train = len(x) - round(test_fraction * len(x))
    if standardise:
        x = standardised(x, n_train)
    return Split(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def blobs(seed: int) -> Split:
    """make_classification: 3000 samples, 30 features (12 informative), 6 classes of 2 clusters."""
    xs, ys = make_classification(3000, 30, n_informative=12, n_classes=6, class_sep=2.0, random_state=seed)
    return table(xs, ys, seed, test_fraction=1 / 3)


def keyword_tokens(g: torch.Generator, size: int, length: int = 16, vocab: int = 64) -> Batch:
    """Token ids 8..vocab-1 at random with one keyword (id 4 + class) somewhere: 4 classes."""
    y = torch.randint(0, 4, (size,), generator=g)
    x = torch.randint(8, vocab, (size, length), generator=g)
    x[torch.arange(size), torch.randint(0, length, (size,), generator=g)] = 4 + y
    return x, y


def successor_tokens(g: torch.Generator, size: int, length: int = 24, vocab: int = 32) -> Batch:
    """Each next token is 5 * token + 3 mod `vocab`, except one in five drawn at random."""
    x = torch.empty(size, length, dtype=torch.long)
    x[:, 0] = torch.randint(0, vocab, (size,), generator=g)
    for t in range(1, length):
        noise = torch.rand(size, generator=g) < 0.2
        x[:, t] = torch.where(noise, torch.randint(0, vocab, (size,), generator=g), (5 * x[:, t - 1] + 3) % vocab)
    return x[:, :-1], x[:, 1:]


#: Four yes/no questions about a digit: >= 5, even, prime, drawn with a loop (0 6 8 9).
ATTRIBUTES = (lambda d: d >= 5, lambda d: d % 2 == 0, lambda d: (d == 2) | (d == 3) | (d == 5) | (d == 7),
              lambda d: (d == 0) | (d == 6) | (d == 8) | (d == 9))


def attributes(y: torch.Tensor) -> torch.Tensor:
    return torch.stack([a(y) for a in ATTRIBUTES], 1).float()


# -- training ---------------------------------------------------------------------------------


def train(log: Path, seed: int, build: Build, make_opt: MakeOpt, batch: BatchFn, steps: int,
          loss_fn: LossFn = F.cross_entropy, *, sched: MakeSched | None = None, clip: float | None = None) -> nn.Module:
    """Seed torch with `seed`, build the model and train it through `outside.fit`."""
    torch.manual_seed(seed)
    model = build()
    opt = make_opt(model)

    def clip_grad() -> None:
        assert clip is not None
        nn.utils.clip_grad_norm_(model.parameters(), clip)

    fit(model, opt, batch, loss_fn, steps, log, sched=sched(opt) if sched else None,
        after_backward=clip_grad if clip is not None else None)
    return model


def digits_run(log: Path, seed: int, build: Build, make_opt: MakeOpt, steps: int, size: int = 64, *,
               view: tuple[int, ...] = (-1, 64), scale: float = 1.0, **kw: Any) -> Graded:
    """Train on the digits split drawn with `seed` (features times `scale`, shaped to `view`)."""
    s = digit_split(seed)
    batch = feed((s.x_train * scale).view(view), s.y_train, seed, steps, size)
    m = train(log, seed, build, make_opt, batch, steps, **kw)
    return grade("acc", accuracy(m, (s.x_test * scale).view(view), s.y_test), 0.1, ACC_BAR, ACC_LOW)


IMAGE, ROWS, PIXELS = (-1, 1, 8, 8), (-1, 8, 8), (-1, 64, 1)


def table_run(log: Path, seed: int, split: Split, build: Build, make_opt: MakeOpt, steps: int, size: int,
              bar: float, low: float, **kw: Any) -> Graded:
    """Train a classifier on a table; chance is the majority class of its test part."""
    m = train(log, seed, build, make_opt, feed(split.x_train, split.y_train, seed, steps, size), steps, **kw)
    chance = float(torch.bincount(split.y_test).max()) / len(split.y_test)
    return grade("acc", accuracy(m, split.x_test, split.y_test), chance, bar, low)


def adam(lr: float) -> MakeOpt:
    return lambda m: torch.optim.Adam(m.parameters(), lr)


def sgd(lr: float, momentum: float = 0.9) -> MakeOpt:
    return lambda m: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr, momentum=momentum)


def rmsprop(lr: float) -> MakeOpt:
    return lambda m: torch.optim.RMSprop(m.parameters(), lr)


def adamw(lr: float, weight_decay: float = 0.01) -> MakeOpt:
    return lambda m: torch.optim.AdamW(m.parameters(), lr, weight_decay=weight_decay)


def exp_decay(gamma: float) -> MakeSched:
    return lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma)


# -- models -----------------------------------------------------------------------------------


def normal_init(model: nn.Module, var: float) -> nn.Module:
    """Every Linear's weights N(0, var / fan_in), its biases zero."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, math.sqrt(var / m.in_features))
            nn.init.zeros_(m.bias)
    return model


def biased(model: nn.Sequential, bias: float, *at: int) -> nn.Sequential:
    """PyTorch's default weights; the biases of the layers at `at` set to `bias`. With a
    negative bias, a ReLU unit whose reach over the inputs falls short never switches on."""
    for i in at:
        nn.init.constant_(model[i].bias, bias)
    return model


def tanh_mlp(*widths: int) -> nn.Sequential:
    """Linear layers of the given widths with a tanh between each pair."""
    return nn.Sequential(*[m for a, b in itertools.pairwise(widths) for m in (nn.Linear(a, b), nn.Tanh())][:-1])


class SeqLast(nn.Module):
    """A recurrent layer read out at its last step."""

    def __init__(self, rnn: nn.RNNBase, n_out: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def small_cnn(act: Callable[[], nn.Module], c: int = 16, *, drop: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1), act(), nn.Conv2d(c, 2 * c, 3, padding=1), act(), nn.MaxPool2d(2),
        nn.Dropout2d(drop), nn.Flatten(), nn.Linear(2 * c * 16, 64), act(), nn.Dropout(drop), nn.Linear(64, 10),
    )  # fmt: skip


class Bottleneck(nn.Module):
    """A 64 -> 4 linear projection, then a ReLU MLP 4-128-128-10."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 4)
        self.rest = relu_mlp(4, 128, 128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(self.proj(x))


def typo_groups(m: nn.Module) -> torch.optim.Optimizer:
    """Adam 1e-3, except the projection's parameter group, whose lr was typed 1e-8."""
    assert isinstance(m, Bottleneck)
    return torch.optim.Adam([{"params": m.proj.parameters(), "lr": 1e-8}, {"params": m.rest.parameters()}], 1e-3)


class BatchStandardise(nn.Module):
    """Standardises each feature over the batch with no epsilon: a feature constant over a
    batch gives 0/0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(0)) / x.std(0)


class BagClassifier(nn.Module):
    """Summed embeddings of the tokens, then a ReLU head."""

    def __init__(self, vocab: int, dim: int, classes: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = relu_mlp(dim, 32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x).sum(1))


def frozen(model: nn.Sequential, i: int) -> nn.Sequential:
    model[i].requires_grad_(False)
    return model


# -- the registry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A labelled run: `spec` holds the label, `train` the recipe, run once per seed."""

    spec: Spec
    train: Seeded

    def at(self, seed: int) -> Spec:
        return replace(self.spec, train=partial(self.train, seed=seed))


CASES: list[Case] = []


def case(name: str, note: str, expect: Iterable[gw.Kind] = (), allowed: Iterable[gw.Kind] = (),
         into: list[Case] | None = None) -> Callable[[Seeded], Seeded]:
    """Register the decorated `train(log, seed)` as a labelled run (no `expect`: healthy) in
    `into` (this set's `CASES` by default)."""

    def register(run: Seeded) -> Seeded:
        (CASES if into is None else into).append(Case(Spec(name, note, _unseeded, frozenset(expect), frozenset(allowed)), run))
        return run

    return register


def _unseeded(log: Path) -> Outcome:
    raise TypeError("a held-out run is trained through Case.at(seed)")


#: Kinds also true of a crippled net that learns slowly (as of a stuck one in suite.py).
SLOW = STUCK | {K.VANISHING_GRADIENT}
DEEP = BLOWN | SLOW


# == faulty: the loss falls, the run ends low =================================================


@case("f-relu1-bias-dead", "one ReLU layer of 256 with biases at -4: ~80% of the units never switch on, ~97% are on for under 1% of the digits; the few left learn a little",
      expect=[K.DEAD_UNITS], allowed=SLOW)
def f_relu1_bias_dead(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: biased(relu_mlp(64, 256, 10), -4.0, 0), adam(1e-3), 400, 32)


@case("f-cnn-conv2-bias-dead", "ReLU CNN whose second conv starts with biases at -1.7: 60-70% of its channels are off at every position for every digit, ~85% on under 1%",
      expect=[K.DEAD_UNITS], allowed=SLOW)
def f_cnn_conv2_bias_dead(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: biased(small_cnn(nn.ReLU, 8), -1.7, 2), sgd(0.02), 300, view=IMAGE)


@case("f-relu-blobs-bias-dead-rmsprop", "make_classification into ReLU 30-128-128-6 whose first layer starts with biases at -2.5: ~98% of its units never switch on",
      expect=[K.DEAD_UNITS], allowed=SLOW)
def f_relu_blobs_bias_dead(log: Path, seed: int) -> Outcome:
    return table_run(log, seed, blobs(seed), lambda: biased(relu_mlp(30, 128, 128, 6), -2.5, 0), rmsprop(1e-3), 400, 64, 0.8, 0.6)


@case("f-tanh2-init-var100-sgd", "tanh 64-32-32-10, weights N(0, 100/fan_in): most units sit at +-1",
      expect=[K.SATURATED_UNITS], allowed=SLOW)
def f_tanh2_init_var100(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: normal_init(mlp(64, 10, depth=2, width=32, activation="tanh"), 100.0), sgd(0.01), 400)


@case("f-tanh-inputs-x1000-sgd", "digits features multiplied by 1000 (a units bug) into a tanh 64-10-64-10: the first layer is a sign function",
      expect=[K.SATURATED_UNITS], allowed=SLOW)
def f_tanh_inputs_x1000(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: tanh_mlp(64, 10, 64, 10), sgd(0.01), 400, scale=1000.0)


@case("f-sigmoid3-init-var100-rmsprop", "sigmoid 64-24-24-24-10, weights N(0, 100/fan_in): most units pinned at 0 or 1",
      expect=[K.SATURATED_UNITS], allowed=SLOW)
def f_sigmoid3_init_var100(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: normal_init(mlp(64, 10, depth=3, width=24, activation="sigmoid"), 100.0), rmsprop(1e-3), 400)


@case("f-tanh18-chaotic-var8-sgd", "18-layer tanh MLP, weights N(0, 8/fan_in), zero biases: the chaotic phase",
      expect=[K.EXPLODING_GRADIENT], allowed=DEEP)
def f_tanh18_chaotic(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: normal_init(mlp(64, 10, depth=18, width=96, activation="tanh"), 8.0), sgd(0.005), 400)


@case("f-relu12-var3-sgd", "12-layer ReLU MLP, weights N(0, 3/fan_in) (He is 2): the signal and the gradient grow x1.5 a layer",
      expect=[K.EXPLODING_GRADIENT], allowed=DEEP)
def f_relu12_var3(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: normal_init(mlp(64, 10, depth=12, width=64), 3.0), sgd(1e-4), 400)


@case("f-tanh15-chaotic-var6-adamw-blobs", "make_classification into a 15-layer tanh MLP, weights N(0, 6/fan_in): the chaotic phase",
      expect=[K.EXPLODING_GRADIENT], allowed=DEEP)
def f_tanh15_chaotic_blobs(log: Path, seed: int) -> Outcome:
    return table_run(log, seed, blobs(seed), lambda: normal_init(mlp(30, 6, depth=15, width=64, activation="tanh"), 6.0), adamw(1e-3), 500, 64, 0.8, 0.6)


@case("f-sigmoid5-default-adam", "5-layer sigmoid MLP, PyTorch's default init, Adam: the gradient shrinks ~4x a layer",
      expect=[K.VANISHING_GRADIENT], allowed=STUCK | {K.SATURATED_UNITS})
def f_sigmoid5_default_adam(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: mlp(64, 10, depth=5, width=64, activation="sigmoid"), adam(1e-3), 400, 32)


@case("f-tanh24-ordered-var0.4-rmsprop", "24-layer tanh MLP, weights N(0, 0.4/fan_in): the ordered phase (chi ~ 0.4 a layer)",
      expect=[K.VANISHING_GRADIENT], allowed=STUCK)
def f_tanh24_ordered(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: normal_init(mlp(64, 10, depth=24, width=48, activation="tanh"), 0.4), rmsprop(3e-4), 300)


@case("f-rnn-tanh-adding-T40-rmsprop", "vanilla tanh RNN on the adding problem with 40 steps: the marked values are too far back",
      expect=[K.TEMPORAL_VANISHING], allowed=STUCK | {K.SATURATED_UNITS})
def f_rnn_tanh_adding_t40(log: Path, seed: int) -> Outcome:
    g = torch.Generator().manual_seed(seed)
    m = train(log, seed, lambda: SeqLast(nn.RNN(2, 32, batch_first=True), 1), rmsprop(1e-3), lambda t: adding_problem(32, 40, g), 500, F.mse_loss)
    x, y = adding_problem(1000, 40, torch.Generator().manual_seed(1000 + seed))
    with torch.no_grad():
        mse = float(F.mse_loss(m(x), y))
    return grade("MSE", mse, 1 / 6, 0.02, 0.08)  # predicting the mean gives MSE 1/6


@case("f-rnn-tanh-pixel-digits", "vanilla tanh RNN reads the digits pixel by pixel (64 steps): the top rows are out of its reach",
      expect=[K.TEMPORAL_VANISHING], allowed=STUCK | {K.SATURATED_UNITS})
def f_rnn_tanh_pixel_digits(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: SeqLast(nn.RNN(1, 64, batch_first=True), 10), adam(1e-3), 300, view=PIXELS)


@case("f-bottleneck-group-lr1e-8", "param groups: the 64->4 projection's group got lr 1e-8 (a typo for 1e-3), the rest Adam 1e-3: a random 4-d view of the digits",
      expect=[K.STALLED_WEIGHTS], allowed={K.FLAT_LOSS})
def f_bottleneck_group_lr(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, Bottleneck, typo_groups, 400)


@case("f-adamw-lr1e-5-gelu", "GELU MLP 64-128-128-10 under AdamW at lr 1e-5: every step is too small, the loss creeps down",
      expect=[K.STALLED_WEIGHTS], allowed={K.FLAT_LOSS})
def f_adamw_tiny_lr(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: mlp(64, 10, depth=2, width=128, activation="gelu"), adamw(1e-5), 400)


@case("f-lr-exp-decay-0.97", "SGD lr 0.01 under ExponentialLR(gamma 0.97) stepped every batch: the step size is gone by step 150, the loss stops high",
      expect=[K.FLAT_LOSS, K.STALLED_WEIGHTS], allowed=STUCK)
def f_lr_exp_decay(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: relu_mlp(64, 96, 96, 10), sgd(0.01), 400, sched=exp_decay(0.97))


@case("f-inputs-x1e-4-sgd", "digits features multiplied by 1e-4 (a units bug): every input looks the same, the output is almost constant",
      expect=[K.CONSTANT_OUTPUT], allowed=SLOW | {K.DEAD_UNITS})
def f_inputs_tiny(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: relu_mlp(64, 128, 64, 10), sgd(0.02), 300, scale=1e-4)


@case("f-relu-bias+20-features-constant", "ReLU 64-128-128-10 whose hidden biases start at +20: every feature ~20 plus a small ripple, the output almost constant",
      expect=[K.CONSTANT_OUTPUT], allowed=SLOW)
def f_relu_bias_plus20(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: biased(relu_mlp(64, 128, 128, 10), 20.0, 0, 2), sgd(1e-4), 400)


@case("f-batch-standardise-no-eps", "raw digits pixels standardised over each batch inside the model with no epsilon: the blank corner pixels give 0/0 = NaN",
      expect=[K.NONFINITE_GRADIENT], allowed=BLOWN)
def f_batch_standardise(log: Path, seed: int) -> Outcome:
    raw = table(*load_digits(return_X_y=True), seed, standardise=False)
    return table_run(log, seed, raw, lambda: nn.Sequential(BatchStandardise(), relu_mlp(64, 64, 64, 10)), adam(1e-3), 300, 64, ACC_BAR, ACC_LOW)


@case("f-lr-ramp-exp-sgd", "SGD whose lr grows x1.03 a step from 1e-3 (a range test left running): learns, then blows up",
      expect=[K.DIVERGING_LOSS], allowed=BLOWN)
def f_lr_ramp(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: relu_mlp(64, 128, 128, 10), sgd(1e-3), 300, sched=exp_decay(1.03))


# == healthy traps =============================================================================


@case("h-embeddingbag-50k-sgd", "EmbeddingBag of 50k rows: each batch touches ~1.5% of them (a sparse gradient)")
def h_embeddingbag_50k(log: Path, seed: int) -> Outcome:
    x, y = bag(50_000, 64 * 300, seed)
    m = train(log, seed, lambda: nn.Sequential(nn.EmbeddingBag(50_000, 16, mode="mean"), nn.Linear(16, 4)), sgd(2.0), feed(x, y, seed, 300), 300)
    return grade("acc", accuracy(m, *bag(50_000, 1000, 1000 + seed)), 0.25, 0.8, 0.5)


@case("h-embedding-150k-adam", "a 150k x 8 embedding (1.2M parameters) for 6 classes told by keywords: almost every row untouched")
def h_embedding_150k(log: Path, seed: int) -> Outcome:
    x, y = bag_of_tokens(150_000, 6, 64 * 250, seed)
    m = train(log, seed, lambda: BagClassifier(150_000, 8, 6), adam(1e-2), feed(x, y, seed, 250), 250)
    return grade("acc", accuracy(m, *bag_of_tokens(150_000, 6, 1000, 1000 + seed)), 1 / 6, 0.8, 0.5)


@case("h-multilabel-sigmoid-bce", "digits -> 4 yes/no attributes through nn.Sigmoid and BCE, trained on: most outputs end near 0 or 1")
def h_multilabel_sigmoid(log: Path, seed: int) -> Outcome:
    s = digit_split(seed)
    m = train(log, seed, lambda: relu_mlp(64, 128, 64, 4).append(nn.Sigmoid()), adam(2e-3), feed(s.x_train, attributes(s.y_train), seed, 500), 500, F.binary_cross_entropy)
    target = attributes(s.y_test)
    with torch.no_grad():
        acc = float(((m(s.x_test) > 0.5).float() == target).float().mean())
    return grade("label acc", acc, float(torch.maximum(target.mean(0), 1 - target.mean(0)).mean()), 0.9, 0.8)


@case("h-warmup-200-adamw-blobs", "make_classification, AdamW with a linear warm-up from 0 over 200 of 500 steps: a flat start")
def h_warmup_blobs(log: Path, seed: int) -> Outcome:
    def warmup(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, t / 200))

    return table_run(log, seed, blobs(seed), lambda: mlp(30, 6, depth=3, width=128, activation="gelu"), adamw(2e-3), 500, 64, 0.8, 0.6, sched=warmup)


@case("h-frozen-middle-random", "ReLU 64-256-256-10 whose middle layer is random and frozen (requires_grad False)")
def h_frozen_middle(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: frozen(relu_mlp(64, 256, 256, 10), 2), sgd(0.02), 300)


@case("h-cnn-dropout-adam", "ReLU CNN with Dropout2d 0.3 and dropout 0.3: noisy loss")
def h_cnn_dropout(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: small_cnn(nn.ReLU, 8, drop=0.3), adam(2e-3), 300, view=IMAGE)


@case("h-wine-converged-flat", "wine (178 samples), a 13-32-3 tanh net: converged within 100 steps, then a long flat loss")
def h_wine_converged(log: Path, seed: int) -> Outcome:
    return table_run(log, seed, table(*load_wine(return_X_y=True), seed), lambda: tanh_mlp(13, 32, 3), adam(1e-2), 500, 32, 0.85, 0.6)


@case("h-sigmoid1-breast-cancer-sgd", "breast cancer, one sigmoid layer of 16, plain SGD")
def h_sigmoid_breast_cancer(log: Path, seed: int) -> Outcome:
    split = table(*load_breast_cancer(return_X_y=True), seed)
    return table_run(log, seed, split, lambda: nn.Sequential(nn.Linear(30, 16), nn.Sigmoid(), nn.Linear(16, 2)), sgd(0.1, momentum=0.0), 400, 32, 0.9, 0.75)


@case("h-tanh2-digits-rmsprop", "tanh 64-64-64-10, default init, RMSprop")
def h_tanh2_rmsprop(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: tanh_mlp(64, 64, 64, 10), rmsprop(1e-3), 300)


@case("h-sigmoid12-bn-adam", "12-layer sigmoid MLP rescued by BatchNorm before each sigmoid")
def h_sigmoid12_bn(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: mlp(64, 10, depth=12, width=48, activation="sigmoid", batchnorm=True), adam(3e-3), 300)


@case("h-lstm-digit-rows", "LSTM reads a digit row by row (8 steps of 8 pixels)")
def h_lstm_rows(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: SeqLast(nn.LSTM(8, 48, batch_first=True), 10), adam(5e-3), 400, view=ROWS)


def logits_ce(out: Any, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on a Hugging Face output's logits, per token for a language model."""
    return seq_ce(out.logits, y)


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16, num_labels=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(
        vocab_size=32, n_positions=32, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0))


def eval_logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    m.eval()
    with torch.no_grad():
        return m(x).logits


@case("h-hf-bert-tiny-keyword", "transformers BertForSequenceClassification from a tiny BertConfig (2 layers, 32 wide): which keyword is in the sequence")
def h_hf_bert_tiny(log: Path, seed: int) -> Outcome:
    g = torch.Generator().manual_seed(seed)
    m = train(log, seed, tiny_bert, adamw(1e-3), lambda t: keyword_tokens(g, 32), 200, logits_ce)
    x, y = keyword_tokens(torch.Generator().manual_seed(1000 + seed), 1000)
    return grade("acc", float((eval_logits(m, x).argmax(-1) == y).float().mean()), 0.25, 0.8, 0.5)


@case("h-hf-gpt2-tiny-lm", "transformers GPT2LMHeadModel from a tiny GPT2Config (2 layers, 32 wide) on a noisy successor sequence")
def h_hf_gpt2_tiny(log: Path, seed: int) -> Outcome:
    g = torch.Generator().manual_seed(seed)
    m = train(log, seed, tiny_gpt2, adamw(3e-3), lambda t: successor_tokens(g, 32), 200, logits_ce)
    x, y = successor_tokens(torch.Generator().manual_seed(1000 + seed), 256)
    return grade("val CE", float(seq_ce(eval_logits(m, x), y)), math.log(32), 1.5, 2.5)


@case("h-relu-partly-dead", "ReLU 64-256-10 with hidden biases at -1.5: ~5-10% of the units never switch on and ~40% are on for under 1% of the digits; the rest learn them")
def h_relu_partly_dead(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: biased(relu_mlp(64, 256, 10), -1.5, 0), adam(1e-3), 400, 32)


@case("h-friedman1-regression", "make_friedman1 regression, GELU 10-64-64-1 under Adam with MSE")
def h_friedman1(log: Path, seed: int) -> Outcome:
    xs, ys = make_friedman1(3000, 10, noise=0.5, random_state=seed)
    s = table(xs, ys[:, None], seed)
    m = train(log, seed, lambda: mlp(10, 1, depth=2, width=64, activation="gelu"), adam(3e-3), feed(s.x_train, s.y_train.float(), seed, 500), 500, F.mse_loss)
    with torch.no_grad():
        mse = float(F.mse_loss(m(s.x_test), s.y_test.float()))
    var = float(s.y_test.float().var())
    return grade("test MSE", mse, var, 0.2 * var, 0.5 * var)


@case("h-cnn-elu-adamw", "ELU CNN 1-16-32 on 8x8 digit images, AdamW")
def h_cnn_elu(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: small_cnn(nn.ELU, 16), adamw(1e-3, 0.05), 300, view=IMAGE)


@case("h-clip-sgd-lr0.3", "SGD at lr 0.3 with momentum, held by clip_grad_norm_(1.0): large raw gradients, trains")
def h_clip_sgd(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: relu_mlp(64, 128, 128, 10), sgd(0.3), 400, clip=1.0)


# -- report ---------------------------------------------------------------------------------


def verdict(r: Result) -> str:
    assert isinstance(r.outcome, Graded)
    return r.outcome.verdict


def disagrees(r: Result) -> bool:
    """The outcome contradicts the label (a healthy run that did not train, a faulty one that
    did or ended in between): such a run-seed is left out of the scores."""
    return verdict(r) != ("trained" if r.spec.healthy else "low")


def outcome_text(o: Outcome) -> str:
    assert isinstance(o, Graded)
    return f"{o.verdict:<7} {o.metric} {o.value:.3f} (bar {o.bar:.3g}, low {o.low:.3g}, chance {o.baseline:.3g})"


ROW = "{:<36} {:>4}  {:<19} {:<56} {:<32} {}"


def print_row(r: Result, seed: int) -> None:
    flag = "   <- OUTCOME DISAGREES WITH THE LABEL: not scored" if disagrees(r) else ""
    print(ROW.format(r.spec.name, seed, label_text(r.spec), outcome_text(r.outcome), kinds_text(r.final), kinds_text(r.midrun)) + flag, flush=True)


def caught(r: Result) -> bool:
    return bool(r.alarms & r.spec.expect)


def unexpected(r: Result) -> set[gw.Kind]:
    return r.alarms - r.spec.expect - r.spec.allowed


@dataclass
class Score:
    """One seed's figures over its scored run-seeds (those whose outcome agrees with the label)."""

    recall: float
    end_alarms: float
    any_alarms: float
    odd: float


def names(results: Iterable[Result], extra: Callable[[Result], str] = lambda r: "") -> str:
    return ", ".join(r.spec.name + extra(r) for r in results) or "none"


def score(seed: int, results: list[Result]) -> Score:
    kept = [r for r in results if not disagrees(r)]
    healthy = [r for r in kept if r.spec.healthy]
    faulty = [r for r in kept if not r.spec.healthy]
    at_end = [r for r in healthy if r.alarms]
    at_any = [r for r in healthy if r.alarms or r.midrun]
    missed = [r for r in faulty if not caught(r)]
    odd = [r for r in faulty if unexpected(r)]
    out = [r for r in results if disagrees(r)]
    n_h, n_f = max(len(healthy), 1), max(len(faulty), 1)
    print(f"\nseed {seed}: recall on faulty runs (an expected kind at warning or above at the end): "
          f"{len(faulty) - len(missed)}/{len(faulty)}; missed: {names(missed)}")
    print(f"seed {seed}: false alarms on healthy runs (warning or above): at the end {len(at_end)}/{len(healthy)} "
          f"({names(at_end)}); at any point {len(at_any)}/{len(healthy)} ({names(at_any)})")
    print(f"seed {seed}: faulty runs with a kind outside their label and allowed kinds: {len(odd)}/{len(faulty)} "
          f"({names(odd, lambda r: ': ' + ' '.join(SHORT[k] for k in sorted(unexpected(r))))})")
    print(f"seed {seed}: outcome disagrees with the label, not scored: {len(out)} ({names(out)})\n")
    return Score((len(faulty) - len(missed)) / n_f, len(at_end) / n_h, len(at_any) / n_h, len(odd) / n_f)


def seeds_where(runs: dict[int, Result], test: Callable[[Result], bool]) -> list[int]:
    return [seed for seed, r in runs.items() if not disagrees(r) and test(r)]


def print_overall(by_seed: dict[int, list[Result]], scores: dict[int, Score]) -> None:
    s = list(scores.values())
    print(f"summary over seeds {' '.join(map(str, scores))}:")
    line = seed_line
    line("recall on faulty runs", [x.recall for x in s], min)
    line("false alarms on healthy runs, at the end", [x.end_alarms for x in s], max)
    line("false alarms on healthy runs, at any point", [x.any_alarms for x in s], max)
    line("faulty runs with an unexpected kind", [x.odd for x in s], max)
    runs: dict[str, dict[int, Result]] = {}
    for seed, results in by_seed.items():
        for r in results:
            runs.setdefault(r.spec.name, {})[seed] = r

    def listed(what: str, test: Callable[[Result], bool], faulty: bool) -> None:
        rows = [(name, where) for name, rs in runs.items()
                if rs and next(iter(rs.values())).spec.healthy != faulty and (where := seeds_where(rs, test))]
        print(f"  {what}: {len(rows)}")
        for name, where in rows:
            print(f"    {name} (seeds {' '.join(map(str, where))})")

    listed("faulty runs missed on some seed", lambda r: not caught(r), True)
    listed("healthy runs with a false alarm at the end", lambda r: bool(r.alarms), False)
    listed("healthy runs with a false alarm part-way only", lambda r: bool(r.midrun) and not r.alarms, False)
    listed("faulty runs with an unexpected kind", lambda r: bool(unexpected(r)), True)
    out = [f"{name} seed {seed} ({verdict(r)})" for name, rs in runs.items() for seed, r in rs.items() if disagrees(r)]
    print(f"  run-seeds whose outcome disagrees with the label (not scored): {len(out)}" + "".join(f"\n    {o}" for o in out))


def main(argv: list[str] | None = None, cases: list[Case] | None = None, doc: str | None = None) -> int:
    """Run `cases` (this set's by default) over the seeds asked for and print the scores."""
    cases = CASES if cases is None else cases
    p = argparse.ArgumentParser(description=doc or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run names to include")
    args = p.parse_args(argv)
    unknown = set(args.only or ()) - {c.spec.name for c in cases}
    if unknown:
        p.error(f"no such run: {', '.join(sorted(unknown))}")
    torch.set_num_threads(1)
    chosen = [c for c in cases if args.only is None or c.spec.name in args.only]
    t0 = time.perf_counter()
    legend = ", ".join(f"{v}={k.value}" for k, v in SHORT.items())
    print(f"kinds: {legend}; severities E/W/I = error/warning/info")
    print("outcome: trained (reached the healthy bar), low (ended beyond the low mark), between\n")
    print(ROW.format("run", "seed", "label", "outcome", "findings at the end", "warning+ part-way"))
    by_seed: dict[int, list[Result]] = {}
    scores: dict[int, Score] = {}
    with tempfile.TemporaryDirectory(prefix="gw-heldout-") as folder:
        for seed in args.seeds:
            logs = Path(folder) / str(seed)
            logs.mkdir()
            by_seed[seed] = []
            for c in chosen:
                by_seed[seed].append(evaluate(c.at(seed), logs))
                print_row(by_seed[seed][-1], seed)
            scores[seed] = score(seed, by_seed[seed])
    print("notes:")
    for c in chosen:
        print(f"  {c.spec.name}: {c.spec.note}")
    print()
    print_overall(by_seed, scores)
    n_h = sum(c.spec.healthy for c in chosen)
    print(f"\n{len(chosen)} runs ({len(chosen) - n_h} faulty, {n_h} healthy) x {len(args.seeds)} seeds in "
          f"{time.perf_counter() - t0:.0f} s, every={EVERY}, torch threads 1")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
