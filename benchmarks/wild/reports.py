"""The reports of `benchmarks/wild`: training failures people posted in public, reproduced.

Each report has an entry in `threads.json` (its citation: the thread's address and title,
what the thread reported: model, data scale, recipe, and what the thread itself concluded:
the label, and the healthy level it reports) and a `report(...)` line here that rebuilds the
run at the thread's scale with synthetic or bundled data. Where a thread leaves a detail out
(a hidden width, a learning rate, the size of a data set), the value used is marked
"(assumed)" in its entry and was chosen before any run was diagnosed; the only tuning was on
outcomes (does the recipe fail as the thread says, does the thread's own remedy train),
never on what gradwatch reports.

`expect` maps the thread's conclusion to what a right diagnosis must say: the finding kinds
that count (any one at `warning` or above; none listed: any finding at `warning` or above),
and groups of clues, each group satisfied by any one of its clues (a finding kind at
`warning` or above, a cause kind among the three the diagnosis ranks first, a pattern in
the words gradwatch shows a person, or a piece of `fix` advice). `remedy` is the thread's
own fix, used only by `run.py --remedy` to show that the healthy level can be reached.
Controls (`expect is None`) are runs whose cause was not a gradient problem.

Tried and left out before the set was frozen, on outcomes alone: the Cross Validated thread
"Bad performance with ReLU activation function on MNIST data set" (367057; raw 0..255
pixels), because scikit-learn's digits at that scale train fine with the posted recipe (0.92
to 0.96), so it does not reproduce; a Stack Overflow thread with a tanh output asked for y =
10x ("Issue in simple neural network"), because its answer's remedy does not train within
this budget either; and the HARD level of the NYU temporal-order task, where the notes' LSTM
needs far more steps than the budget allows (the NORMAL level is used instead).

Frozen: see run.py.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from sklearn.datasets import load_digits, make_classification
from torch import nn
from torch.nn import functional as F

import gradwatch as gw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "detection"))
from outside import SeqHead

K = gw.Kind
C = gw.CauseKind

# -- what a right diagnosis may say, as patterns over the words gradwatch shows --------------------

_SCALE = r"(standardi[sz]|normali[sz]|rescal|re-scal|\bscal(e|ed|es|ing)\b|z-score|magnitude|far from zero|not centred|not centered)"
#: The inputs' scale named as the problem or the remedy.
INPUT_SCALE = rf"{_SCALE}[^.;\n]{{0,80}}\b(inputs?|features?)\b|\b(inputs?|features?)\b[^.;\n]{{0,80}}{_SCALE}"
#: The targets' scale named as the problem or the remedy.
TARGET_SCALE = rf"{_SCALE}[^.;\n]{{0,80}}\b(targets?|labels?|y values?|regression values?)\b|\b(targets?|labels?|y values?|regression values?)\b[^.;\n]{{0,80}}({_SCALE}|out of (the )?range|outside)"
#: An output activation that cannot produce the targets.
_OUT = r"((output|final|last)[- ](activation|layer|unit|nonlinearity|sigmoid|relu|tanh)|(sigmoid|logistic|tanh|relu)[- ](output|on the output))"
OUTPUT_RANGE = rf"{_OUT}[^.;\n]{{0,80}}(range|reach|cannot|can't|bounded|remove|replac|linear|identity)|(range|reach|cannot|bounded|remove|replac|drop|swap)[^.;\n]{{0,80}}{_OUT}"
#: A gated recurrent layer named as the remedy.
GATED = r"\b(LSTM|GRU)\b"


@dataclass(frozen=True)
class Clue:
    """One thing a diagnosis may say: a finding kind (at warning or above), a cause kind (among
    the first three), a regex over the words shown, or advice (`lr_down`: `lr_scale` < 1,
    `clip`: a `clip_grad_norm`)."""

    kind: gw.Kind | None = None
    cause: gw.CauseKind | None = None
    text: str | None = None
    advice: str | None = None

    def __str__(self) -> str:
        if self.kind is not None:
            return f"kind {self.kind}"
        if self.cause is not None:
            return f"cause {self.cause}"
        if self.advice is not None:
            return f"advice {self.advice}"
        return {INPUT_SCALE: "words: input scale", TARGET_SCALE: "words: target scale",
                OUTPUT_RANGE: "words: output activation's range", GATED: "words: LSTM/GRU"}.get(
                    self.text or "", f"words /{self.text}/")


def kind(k: gw.Kind) -> Clue:
    return Clue(kind=k)


def cause(c: gw.CauseKind) -> Clue:
    return Clue(cause=c)


def words(pattern: str) -> Clue:
    return Clue(text=pattern)


LR_DOWN = Clue(advice="lr_down")
CLIP = Clue(advice="clip")
BLOWUP = frozenset({K.DIVERGING_LOSS, K.NONFINITE_GRADIENT, K.EXPLODING_GRADIENT})


@dataclass(frozen=True)
class Expect:
    kinds: frozenset[gw.Kind] = frozenset()  # any one at warning+; empty: any finding at warning+
    groups: tuple[tuple[Clue, ...], ...] = ()  # every group needs one of its clues


# -- data, recipes, outcomes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    """Tensors of one run. `task`: `reg` (MSE-style, R² on the test split), `multi` (logits,
    accuracy), `binary` (a probability in [0, 1], accuracy at 0.5)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    task: str = "reg"


@dataclass(frozen=True)
class Recipe:
    optimizer: str  # "sgd", "adam", "rmsprop"
    lr: float
    steps: int
    batch: int | None = None  # None: the whole training set every step
    loss: str = "mse"  # "mse", "sse" (summed), "msle", "ce", "bce"
    momentum: float = 0.0

    def make(self, params: Iterable[nn.Parameter], lr_scale: float = 1.0) -> torch.optim.Optimizer:
        lr = self.lr * lr_scale
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr)
        if self.optimizer == "rmsprop":
            return torch.optim.RMSprop(params, lr=lr)
        return torch.optim.SGD(params, lr=lr, momentum=self.momentum)

    def loss_fn(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss == "ce":
            return F.cross_entropy(out, y)
        if self.loss == "bce":
            return F.binary_cross_entropy(out, y)
        if self.loss == "sse":
            return F.mse_loss(out, y, reduction="sum")
        if self.loss == "msle":  # Keras' mean_squared_logarithmic_error
            return F.mse_loss(torch.log1p(out.clamp(min=1e-7)), torch.log1p(y.clamp(min=1e-7)))
        return F.mse_loss(out, y)


@dataclass(frozen=True)
class Healthy:
    """The level a working run reaches: R² (`reg`) or accuracy, and what the thread says."""

    level: float
    reported: str


@dataclass(frozen=True)
class Remedy:
    """The thread's own fix: another model, a data step, another rate."""

    make: Callable[[int], nn.Module] | None = None
    x_std: bool = False
    y_std: bool = False
    y_log: bool = False
    y_div: float | None = None
    lr: float | None = None
    loss: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Report:
    name: str
    url: str
    title: str
    thread: str  # model, data scale and recipe as the thread reported them
    label: str  # the thread's own conclusion
    make: Callable[[int], nn.Module]
    data: Callable[[int], Data]
    recipe: Recipe
    healthy: Healthy
    expect: Expect | None  # None: a control
    remedy: Remedy | None = None

    @property
    def control(self) -> bool:
        return self.expect is None


REPORTS: list[Report] = []
#: The citations, the threads' own words and labels, by run name.
THREADS: dict[str, dict[str, str]] = {
    t["name"]: t for t in json.loads((Path(__file__).resolve().parent / "threads.json").read_text())
}


def report(name: str, make: Callable[[int], nn.Module], data: Callable[[int], Data], recipe: Recipe,
           level: float, expect: Expect | None, remedy: Remedy | None = None) -> Report:
    """Register a run; its citation, description and label come from `threads.json`."""
    t = THREADS[name]
    r = Report(name, t["url"], t["title"], t["thread"], t["label"], make, data, recipe,
               Healthy(level, t["healthy"]), expect, remedy)
    REPORTS.append(r)
    return r


# -- building blocks ----------------------------------------------------------------------------------


def keras_init(model: nn.Module) -> nn.Module:
    """Keras' defaults for Dense: glorot_uniform weights, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def stack(sizes: list[int], act: Callable[[], nn.Module], out: nn.Module | None = None) -> nn.Sequential:
    """Linear layers of `sizes` with `act` after each hidden one and `out` (if any) at the end."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    if out is not None:
        layers.append(out)
    return nn.Sequential(*layers)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def split(x: torch.Tensor, y: torch.Tensor, seed: int, test: float = 0.2, task: str = "reg") -> Data:
    perm = torch.randperm(len(x), generator=seeded(10_000 + seed))
    n_test = max(1, round(len(x) * test))
    return Data(x[perm[n_test:]], y[perm[n_test:]], x[perm[:n_test]], y[perm[:n_test]], task)


def whole(x: torch.Tensor, y: torch.Tensor, task: str = "reg") -> Data:
    """A fit to all of the data (threads that fit a curve and judge the fit on the same points)."""
    return Data(x, y, x, y, task)


def column(v: torch.Tensor) -> torch.Tensor:
    return v.float().reshape(-1, 1)


class Readout(SeqHead):
    """A recurrent layer read at the last time step by a linear layer (the NYU notebook's model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[:, -1]


def temporal_order(n: int, seed: int, length: tuple[int, int], t1: tuple[int, int],
                   t2: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Hochreiter & Schmidhuber's task 6a as the NYU notebook's generator draws it: symbols X Y a b
    c d B E one-hot, B first and E last, X or Y at t1 and t2; the class (of 4) is the order of X
    and Y. Sequences are padded in front (Keras' pad_sequences), so the last step is always E."""
    g = seeded(seed)
    lmax = length[1] - 1
    x = torch.zeros(n, lmax, 8)
    y = torch.randint(0, 4, (n,), generator=g)
    for i in range(n):
        ln = int(torch.randint(length[0], length[1], (1,), generator=g))
        s = torch.randint(2, 6, (ln,), generator=g)  # distractors a b c d
        s[0], s[-1] = 6, 7  # B ... E
        a, b = int(torch.randint(t1[0], t1[1], (1,), generator=g)), int(torch.randint(t2[0], t2[1], (1,), generator=g))
        s[a], s[b] = int(y[i]) // 2, int(y[i]) % 2  # X=0, Y=1: XX->Q, XY->R, YX->S, YY->U
        x[i, lmax - ln :] = F.one_hot(s, 8).float()
    return x, y


def nyu_rnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return Readout(nn.RNN(8, 4, nonlinearity="relu", batch_first=True), 4, 4)


def nyu_lstm(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return Readout(nn.LSTM(8, 4, batch_first=True), 4, 4)


def raw_digits(seed: int, binary: bool = False) -> Data:
    """scikit-learn's digits as raw pixels (0..16). `binary`: the class is "digit >= 5"."""
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    if binary:
        y = (y >= 5).long()
    return split(x, y, seed, task="multi")


# -- failures reported in public ----------------------------------------------------------------------


def _cubic(seed: int) -> Data:
    x = torch.arange(1, 4000, dtype=torch.float32)
    return split(column(x), column(x**3), seed)


def _cubic_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return stack([1, 50, 1], nn.ReLU)


report("pt-cubic-raw", _cubic_model, _cubic, Recipe("adam", 1e-3, steps=300), level=0.95,
       expect=Expect(groups=((words(INPUT_SCALE),), (words(TARGET_SCALE),))),
       remedy=Remedy(x_std=True, y_std=True, note="standardise x and y"))


def _x4(seed: int) -> Data:
    x = torch.arange(-100, 100, 0.5)
    return split(column(x), column(x**4), seed)


def _x4_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return keras_init(nn.Sequential(nn.Linear(1, 50), nn.Sigmoid(), nn.Linear(50, 50), nn.ELU(), nn.Linear(50, 1)))


report("so-x4-keras", _x4_model, _x4, Recipe("adam", 1e-3, steps=600), level=0.9,
       expect=Expect(groups=((words(INPUT_SCALE),), (words(TARGET_SCALE),))),
       remedy=Remedy(x_std=True, y_std=True, note="scale inputs and outputs"))


def _heart(seed: int) -> Data:
    g = seeded(seed)
    hr = 92.0 + 10.0 * torch.randn(1000, generator=g)
    return split(column(hr), column((hr > 91).float()), seed, task="binary")


def _heart_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 4), nn.Sigmoid(), nn.Linear(4, 1), nn.Sigmoid())


report("so-heart-rate", _heart_model, _heart, Recipe("adam", 1e-3, steps=300, loss="bce"), level=0.95,
       expect=Expect(groups=((words(INPUT_SCALE),),)),
       remedy=Remedy(x_std=True, lr=0.01, note="standardise x, Adam 0.01"))


def _bits(seed: int) -> Data:
    g = seeded(seed)
    x = torch.randint(0, 2, (4000, 32), generator=g).float()
    teacher = torch.randn(32, 16, generator=g) / math.sqrt(8)
    y = torch.tanh((x - 0.5) @ teacher).sum(1)
    return split(x, column((y - y.mean()) / y.std()), seed)


def _deep_sigmoid(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return keras_init(stack([32, 500, 500, 500, 500, 1], nn.Sigmoid))


def _deep_relu(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return keras_init(stack([32, 500, 500, 500, 500, 1], nn.ReLU))


report("aise-4x500-sigmoid", _deep_sigmoid, _bits, Recipe("sgd", 0.1, steps=400, batch=64), level=0.8,
       expect=Expect(groups=((kind(K.VANISHING_GRADIENT), kind(K.SATURATED_UNITS), cause(C.SATURATING_ACTIVATIONS)),)),
       remedy=Remedy(make=_deep_relu, note="ReLU instead of sigmoid"))


def _line(seed: int) -> Data:
    x = torch.arange(200, dtype=torch.float32)
    return whole(column(x), column(2 * x))


def _dense1(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return keras_init(nn.Sequential(nn.Linear(1, 1)))


report("keras-linreg-nan", _dense1, _line, Recipe("sgd", 1e-3, steps=200, batch=1), level=0.99,
       expect=Expect(kinds=BLOWUP, groups=((cause(C.STEP_SIZE_TOO_LARGE), LR_DOWN),)),
       remedy=Remedy(lr=1e-5, note="a lower rate"))


def _ames(seed: int) -> Data:
    g = seeded(seed)
    n = 2930
    numeric = torch.randn(n, 30, generator=g)
    levels = torch.randint(0, 8, (n, 20), generator=g)
    onehot = F.one_hot(levels, 8).float().reshape(n, 160)[:, :158]
    x = torch.cat([numeric, onehot], 1)  # 188 columns, as in the workshop
    w = torch.randn(188, generator=g) * torch.cat([torch.full((30,), 0.05), torch.full((158,), 0.03)])
    log_price = 12.0 + x @ w + 0.1 * torch.randn(n, generator=g)
    x_tr, y_tr = x[:1640], column(log_price[:1640].exp())
    x_te, y_te = x[2051:], column(log_price[2051:].exp())
    return Data(x_tr, y_tr, x_te, y_te)


def _ames_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return keras_init(stack([188, 128, 1], nn.ReLU))


report("ames-mse-nan", _ames_model, _ames, Recipe("sgd", 0.1, steps=300, batch=16), level=0.8,
       expect=Expect(kinds=BLOWUP, groups=((words(TARGET_SCALE),),)),
       remedy=Remedy(y_std=True, note="standardised price (MSLE itself needs far more steps)"))


def _marks(seed: int) -> Data:
    g = seeded(seed)
    x = torch.randn(1000, 43, generator=g)
    t = torch.randn(43, 8, generator=g) / math.sqrt(43)
    y = 100 * torch.sigmoid(torch.tanh(x @ t).sum(1))
    return split(x, column(y), seed)


def all_sigmoid(sizes: list[int]) -> Callable[[int], nn.Module]:
    """A net of sigmoid units throughout, the output included (PyTorch's default draws)."""

    def make(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return stack(sizes, nn.Sigmoid, nn.Sigmoid())

    return make


#: Targets the output activation cannot produce: their scale or the activation must be named.
OUT_OF_RANGE = Expect(groups=((words(TARGET_SCALE), words(OUTPUT_RANGE)),))


report("so-sigmoid-out-0-100", all_sigmoid([43, 20, 1]), _marks, Recipe("sgd", 0.1, steps=800, batch=1),
       level=0.6, expect=OUT_OF_RANGE,
       remedy=Remedy(y_div=100.0, note="targets / 100"))


def _sin_sum(seed: int) -> Data:
    grid = torch.cartesian_prod(*[torch.tensor([-1.0, 0.0, 1.0])] * 4)
    x = torch.cat([grid, torch.ones(len(grid), 1)], 1)  # the poster's bias input
    return whole(x, column(torch.sin(grid.sum(1))))


def _sin_model(seed: int, out: type[nn.Module] = nn.Sigmoid) -> nn.Module:
    torch.manual_seed(seed)
    return stack([5, 6, 1], nn.Sigmoid, out())


report("so-sigmoid-no-negatives", _sin_model, _sin_sum, Recipe("sgd", 0.5, steps=3000), level=0.9,
       expect=OUT_OF_RANGE,
       remedy=Remedy(make=lambda s: _sin_model(s, nn.Tanh), note="tanh output"))


def _longer(seed: int) -> Data:
    x, y = temporal_order(2048, seed, (30, 41), (2, 6), (20, 28))
    xt, yt = temporal_order(320, 50_000 + seed, (30, 41), (2, 6), (20, 28))
    return Data(x, y, xt, yt, "multi")


report("nyu-rnn-longer", nyu_rnn, _longer, Recipe("rmsprop", 1e-3, steps=1500, batch=32, loss="ce"), level=0.9,
       expect=Expect(groups=((kind(K.TEMPORAL_VANISHING), cause(C.VANILLA_RNN_LONG_SEQUENCE), words(GATED)),)),
       remedy=Remedy(make=nyu_lstm, note="LSTM"))


def _positive(seed: int) -> Data:
    g = seeded(seed)
    x = torch.rand(1000, 2, generator=g)
    return split(x, column((x.sum(1) > 1).float()), seed, task="binary")


def _unlucky_relu(seed: int) -> nn.Module:
    """Hidden ReLU unit drawn from U(-0.05, 0.05) until both weights and the bias are negative:
    the unlucky initialisation the question asks about (one draw in eight)."""
    g = seeded(seed)
    model = nn.Sequential(nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 1), nn.Sigmoid())
    while True:
        for p in model.parameters():
            with torch.no_grad():
                p.copy_(torch.rand(p.shape, generator=g) * 0.1 - 0.05)
        if bool((model[0].weight < 0).all()) and float(model[0].bias) < 0:
            return model


report("cv-dead-relu-positive-inputs", _unlucky_relu, _positive, Recipe("sgd", 0.5, steps=300, loss="bce"), level=0.9,
       expect=Expect(groups=((kind(K.DEAD_UNITS), cause(C.DEAD_RELU_BIAS)),)),
       remedy=Remedy(x_std=True, note="standardise the inputs"))


def _weighted_sum(seed: int) -> Data:
    g = seeded(seed)
    x = torch.rand(100, 2, generator=g) * 20
    return whole(x, column((3 * x[:, 0] + 5 * x[:, 1]) / 2))


def _leaky_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return keras_init(stack([2, 8, 8, 8, 1], lambda: nn.LeakyReLU(0.01), nn.LeakyReLU(0.01)))


report("aise-leaky-explodes", _leaky_model, _weighted_sum, Recipe("sgd", 1e-3, steps=1000, batch=1, loss="sse"), level=0.99,
       expect=Expect(kinds=BLOWUP, groups=((cause(C.STEP_SIZE_TOO_LARGE), LR_DOWN, CLIP),)),
       remedy=Remedy(lr=5e-4, note="the poster's working rate"))


def _population(seed: int) -> Data:
    g = seeded(seed)
    x = torch.randn(2000, 8, generator=g)
    t = torch.randn(8, generator=g)
    return split(x, column(3 * F.softplus(0.7 * x @ t + 1.5)), seed)


def _relu_out(seed: int, out: type[nn.Module] = nn.ReLU) -> nn.Module:
    """Default PyTorch draws, repeated until the output's pre-activation is negative on every
    training input: the "sometimes" of the issue, on every seed."""
    g, x = seeded(seed), _population(seed).x_train
    while True:
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        body = stack([8, 64, 64, 1], nn.ReLU)
        with torch.no_grad():
            if bool((body(x) < 0).all()):
                return nn.Sequential(*body, out())


report("gh-relu-output-zeros", _relu_out, _population, Recipe("adam", 1e-3, steps=300, batch=64), level=0.9,
       expect=Expect(groups=((kind(K.DEAD_UNITS), words(OUTPUT_RANGE)),)),
       remedy=Remedy(make=lambda s: nn.Sequential(*_relu_out(s)[:-1], nn.Softplus()), note="Softplus output"))


def _square(seed: int) -> Data:
    g = seeded(seed)
    x = torch.rand(500, generator=g) * 10
    return split(column(x), column(x**2), seed)


report("so-square-sigmoid-out", all_sigmoid([1, 4, 1]), _square, Recipe("sgd", 0.5, steps=1000, batch=1),
       level=0.9, expect=OUT_OF_RANGE,
       remedy=Remedy(y_div=100.0, note="targets / 100"))


def _half(seed: int) -> Data:
    x = torch.arange(1, 21, dtype=torch.float32)
    return whole(column(x), column(0.5 * x))


report("so-keras-loss-grows", _dense1, _half, Recipe("sgd", 0.01, steps=500), level=0.99,
       expect=Expect(kinds=BLOWUP, groups=((cause(C.STEP_SIZE_TOO_LARGE), LR_DOWN),)),
       remedy=Remedy(lr=1e-4, note="SGD 0.0001"))


def _square_plus_3(seed: int) -> Data:
    x = torch.arange(100, dtype=torch.float32)
    return whole(column((x - x.mean()) / x.std()), column(x**2 + 3))


def _linear_linear(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return keras_init(nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 1)))


report("cv-linear-net-diverges", _linear_linear, _square_plus_3, Recipe("sgd", 0.01, steps=400, batch=32), level=0.9,
       expect=Expect(kinds=BLOWUP, groups=((words(TARGET_SCALE),),)),
       remedy=Remedy(y_std=True, note="standardise the target"))


# -- controls: the cause was not a gradient problem ------------------------------------------------


def _motion(seed: int) -> Data:
    g = seeded(seed)
    pos = torch.rand(640, 2, generator=g) * 100
    vel = torch.rand(640, 2, generator=g) * 100 - 50
    x = torch.cat([pos, pos + vel], 1)
    return split(x, pos + 2 * vel, seed)


def _linear_4_2(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 2))


report("ctl-pt-cant-get-lower-loss", _linear_4_2, _motion, Recipe("adam", 1e-3, steps=8000, batch=64), level=0.999,
       expect=None)


def _tabular(seed: int) -> Data:
    x, y = make_classification(n_samples=6000, n_features=64, n_informative=20, random_state=seed)
    return split(torch.tensor(x, dtype=torch.float32), column(torch.tensor(y)), seed, task="binary")


def _small_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return keras_init(stack([64, 16, 16, 1], nn.ReLU, nn.Sigmoid()))


report("ctl-dsse-loss-slows", _small_mlp, _tabular, Recipe("adam", 0.01, steps=400, batch=200, loss="bce"), level=0.85,
       expect=None)


def _few_images(seed: int) -> Data:
    g = seeded(seed)
    protos = torch.randn(12, 1, 16, 16, generator=g)

    def draw(n_per: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(12).repeat_interleave(n_per)
        x = 0.15 * protos[y] + torch.randn(len(y), 1, 16, 16, generator=g)
        return x, y

    x, y = draw(100)
    xt, yt = draw(25)
    return Data(x, y, xt, yt, "multi")


def _small_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, 12),
    )


report("ctl-cv-too-little-data", _small_cnn, _few_images, Recipe("adam", 1e-3, steps=400, batch=32, loss="ce"), level=0.5,
       expect=None)


def _easy(seed: int) -> Data:
    x, y = temporal_order(1024, seed, (7, 9), (1, 3), (4, 6))
    xt, yt = temporal_order(320, 50_000 + seed, (7, 9), (1, 3), (4, 6))
    return Data(x, y, xt, yt, "multi")


report("ctl-nyu-rnn-easy-needs-epochs", nyu_rnn, _easy, Recipe("rmsprop", 1e-3, steps=310, batch=32, loss="ce"), level=0.95,
       expect=None)


def _misaligned(seed: int) -> Data:
    d = raw_digits(seed, binary=True)
    perm = torch.randperm(len(d.y_train), generator=seeded(20_000 + seed))
    return Data(d.x_train / 16.0, d.y_train[perm], d.x_test / 16.0, d.y_test, "multi")


def _digit_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return stack([64, 64, 2], nn.ReLU)


report("ctl-labels-misaligned", _digit_mlp, _misaligned, Recipe("adam", 1e-3, steps=300, batch=64, loss="ce"), level=0.9,
       expect=None)


def _houses(seed: int) -> Data:
    g = seeded(seed)
    x = torch.randn(1460, 30, generator=g)
    w = torch.randn(30, generator=g) * 12_000
    y = 180_000 + x @ w + 20_000 * torch.randn(1460, generator=g)
    return split(x, column(y), seed)


def _zero_linear(seed: int) -> nn.Module:
    model = nn.Sequential(nn.Linear(30, 1))
    nn.init.zeros_(model[0].weight)
    nn.init.zeros_(model[0].bias)
    return model


report("ctl-dlai-huge-cost", _zero_linear, _houses, Recipe("sgd", 0.1, steps=300), level=0.8,
       expect=None)
