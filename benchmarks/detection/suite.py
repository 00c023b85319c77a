"""The labelled runs of the detection benchmark.

Each `Spec` trains one small model under `gw.watch(..., log=...)` and returns its
`Outcome`. A run's label comes from how it was built and from its outcome (did it
train? final test accuracy or error against chance), never from a detector:

- `healthy` runs train; many of them look alarming on purpose (a shallow sigmoid net,
  an LSTM whose gradient through time is tiny at first, a converged run with a flat
  loss, a sparse embedding, frozen layers, dropout, AMP overflow skips).
- faulty runs fail to train because of a known mechanism; `labels` are the kinds a
  correct diagnosis must contain, `allowed` the kinds that are also true of the run
  (a net stuck by vanishing gradients also has a flat loss) and may be reported.

`needs` names the Part 2 measurements (activation statistics, gradient through time)
a label depends on; the runner leaves a kind out of the scoring when the recorded logs
do not carry them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tasks import RECALL_SYMBOLS, bag_of_tokens, digits_split, sequence_task
from torch import nn
from torch.nn import functional as F

import gradwatch as gw
from gradwatch.lab.data import accuracy, batches
from gradwatch.lab.models import mlp

K = gw.Kind


@dataclass
class Outcome:
    metric: str  # "test accuracy" or "test MSE"
    value: float
    chance: float  # the same metric for a model that learned nothing useful
    trained: bool
    final_loss: float
    seconds: float = 0.0


@dataclass
class Spec:
    name: str
    family: str
    optimizer: str
    healthy: bool
    story: str
    train: Callable[[Path | None, int], Outcome]
    labels: frozenset[gw.Kind] = frozenset()
    allowed: frozenset[gw.Kind] = frozenset()
    needs: frozenset[str] = frozenset()
    quick: bool = False  # part of the fast subset run by the test suite


# -- training loops ------------------------------------------------------------------------


#: Weights, batch order, data splits and generated data are drawn from this seed (run.py
#: --seeds); 0 is the suite as written.
SEED = 0

def _loop(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: Iterator[tuple[torch.Tensor, torch.Tensor]] | list[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    log: Path | None,
    every: int,
    *,
    optimizer_mode: bool = False,
    clip: float | None = None,
) -> float:
    """Train one pass over `data` under gw.watch; return the mean loss of the last 20 steps."""
    recent: list[float] = []
    with gw.watch(model, every=every, log=log, optimizer=opt if optimizer_mode else None) as w:
        for x, y in data:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.step(loss=loss)
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            recent.append(float(loss.detach()))
            del recent[:-20]
    return float(sum(recent) / max(len(recent), 1))


def _digits_outcome(model: nn.Module, split: object, final_loss: float, t0: float, *, image: bool = False, tokens: bool = False) -> Outcome:
    x, y = split.x_test, split.y_test  # type: ignore[attr-defined]
    if image:
        x = x.view(-1, 1, 8, 8)
    if tokens:
        x = x.view(-1, 8, 8)
    acc = accuracy(model, x, y) if math.isfinite(final_loss) else 0.1
    # Trained: well above chance (10%); the healthy runs reach 80-98%.
    return Outcome("test accuracy", acc, 0.1, acc >= 0.5, final_loss, time.perf_counter() - t0)


def _digits_run(
    make: Callable[[], nn.Module],
    make_opt: Callable[[nn.Module], torch.optim.Optimizer],
    steps: int,
    *,
    image: bool = False,
    tokens: bool = False,
    batch: int = 64,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    labels: Callable[[torch.Tensor], torch.Tensor] | None = None,
    optimizer_mode: bool = False,
    seed: int | None = None,
) -> Callable[[Path | None, int], Outcome]:
    def train(log: Path | None, every: int) -> Outcome:
        t0 = time.perf_counter()
        run_seed = SEED if seed is None else seed
        torch.manual_seed(run_seed)
        split = digits_split(run_seed)
        model = make()
        opt = make_opt(model)
        data = []
        for x, y in batches(split.x_train, split.y_train, batch, steps, seed=run_seed):
            if transform is not None:
                x = transform(x)
            if image:
                x = x.view(-1, 1, 8, 8)
            if tokens:
                x = x.view(-1, 8, 8)
            data.append((x, labels(y) if labels is not None else y))
        final = _loop(model, opt, data, F.cross_entropy, log, every, optimizer_mode=optimizer_mode)
        return _digits_outcome(model, split, final, t0, image=image, tokens=tokens)

    return train


def _seq_run(
    task_name: str,
    length: int,
    make: Callable[[int, int], nn.Module],
    make_opt: Callable[[nn.Module], torch.optim.Optimizer],
    steps: int,
    *,
    batch: int = 32,
    clip: float | None = None,
    optimizer_mode: bool = False,
    seed: int | None = None,
) -> Callable[[Path | None, int], Outcome]:
    def train(log: Path | None, every: int) -> Outcome:
        t0 = time.perf_counter()
        run_seed = SEED if seed is None else seed
        torch.manual_seed(run_seed)
        task = sequence_task(task_name, length, seed=run_seed)
        n_in = int(task.x_test.shape[-1])
        n_out = 1 if task.kind == "regression" else RECALL_SYMBOLS
        model = make(n_in, n_out)
        opt = make_opt(model)
        loss_fn = F.mse_loss if task.kind == "regression" else F.cross_entropy
        data = (task.batch(batch) for _ in range(steps))
        final = _loop(model, opt, data, loss_fn, log, every, optimizer_mode=optimizer_mode, clip=clip)
        model.eval()
        with torch.no_grad():
            out = model(task.x_test)
        if task.kind == "regression":
            mse = float(F.mse_loss(out, task.y_test)) if math.isfinite(final) else math.inf
            # The baseline is 1/6 (always predict the mean sum); trained means well below it.
            return Outcome("test MSE", mse, 1 / 6, mse < 0.05, final, time.perf_counter() - t0)
        acc = float((out.argmax(-1) == task.y_test).float().mean()) if math.isfinite(final) else 0.0
        chance = 1 / RECALL_SYMBOLS
        return Outcome("test accuracy", acc, chance, acc >= 0.6, final, time.perf_counter() - t0)

    return train


# -- models ----------------------------------------------------------------------------------


class SeqNet(nn.Module):
    """A recurrent layer read out at the last time step (`kw` go to the layer)."""

    def __init__(self, cell: str, n_in: int, hidden: int, n_out: int, **kw: object) -> None:
        super().__init__()
        cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = cls(n_in, hidden, batch_first=True, **kw)  # type: ignore[arg-type]
        self.head = nn.Linear(hidden * (2 if kw.get("bidirectional") else 1), n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def small_cnn(act: type[nn.Module] = nn.ReLU, depth: int = 3, channels: int = 16, bias: float | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = 1
    for _ in range(depth):
        conv = nn.Conv2d(c, channels, 3, padding=1)
        if bias is not None:
            nn.init.constant_(conv.bias, bias)
        layers += [conv, act()]
        c = channels
    layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(channels * 4, 10)]
    return nn.Sequential(*layers)


class TinyTransformer(nn.Module):
    """Digits as 8 tokens (rows) of 8 pixels: embed, two encoder layers, mean-pool, classify."""

    def __init__(self, d: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.pos = nn.Parameter(torch.randn(8, d) * 0.1)
        block = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x) + self.pos)
        return self.head(h.mean(dim=1))


class BagOfEmbeddings(nn.Module):
    def __init__(self, vocab: int, dim: int, n_out: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x).mean(dim=1))


class SqrtFeatures(nn.Module):
    """A layer whose outputs are compressed with ``torch.where(h > 0, sqrt(h), 0)``.

    The forward pass is finite, but autograd also differentiates the branch `where`
    discarded: sqrt of a negative number is NaN, and 0 * NaN = NaN. The well-known
    NaN-gradient trap of `torch.where`; after one step the layer's weights are NaN.
    """

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.head(torch.where(h > 0, torch.sqrt(h), torch.zeros_like(h)))


def _deep_mlp(depth: int, activation: str, init: str = "default", width: int = 64, batchnorm: bool = False, seed: int | None = None) -> Callable[[], nn.Module]:
    return lambda: mlp(64, 10, depth=depth, width=width, activation=activation, init=init, batchnorm=batchnorm, seed=SEED if seed is None else seed)


def _normal_init(std: float, activation: str, depth: int) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        model = mlp(64, 10, depth=depth, width=64, activation=activation)
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, std / math.sqrt(m.in_features))
                nn.init.zeros_(m.bias)
        return model

    return make


def _scaled_rnn(scale: float) -> Callable[[int, int], nn.Module]:
    """A tanh RNN whose recurrent matrix is `scale` times a random orthogonal one: every
    singular value is `scale`, beyond Pascanu et al.'s bound of 1 for vanishing."""

    def make(n_in: int, n_out: int) -> nn.Module:
        model = SeqNet("rnn", n_in, 32, n_out)
        with torch.no_grad():
            q, _ = torch.linalg.qr(torch.randn(32, 32))
            model.rnn.weight_hh_l0.copy_(scale * q)
        return model

    return make


def _dead_bias_mlp() -> nn.Module:
    model = mlp(64, 10, depth=4, width=64, activation="relu", init="he")
    for m in list(model)[:-1]:
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, -6.0)  # every unit starts below zero on standardised inputs
    return model


def _biased_mlp(activation: str, bias: float) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        model = mlp(64, 10, depth=3, width=64, activation=activation, seed=SEED)
        for m in list(model)[:-1]:
            if isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, bias)  # pre-activations near +bias on standardised inputs
        return model

    return make


def _frozen_mlp() -> nn.Module:
    model = mlp(64, 10, depth=4, width=64, activation="relu", init="he")
    for m in list(model)[:-3]:
        for p in m.parameters():
            p.requires_grad_(False)  # a frozen random feature extractor; only the top trains
    return model


def _dropout_mlp() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, 10),
    )


def sgd(lr: float, momentum: float = 0.9) -> Callable[[nn.Module], torch.optim.Optimizer]:
    return lambda m: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=lr, momentum=momentum)


def adam(lr: float) -> Callable[[nn.Module], torch.optim.Optimizer]:
    return lambda m: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr)


def _detached_adam(m: nn.Module) -> torch.optim.Optimizer:
    """The classic bug: the optimizer was built for another copy of the parameters."""
    return torch.optim.Adam([p.detach().clone().requires_grad_() for p in m.parameters()], lr=1e-3)


# -- special loops ---------------------------------------------------------------------------


def _amp_run(manual: bool) -> Callable[[Path | None, int], Outcome]:
    """Mixed precision (fp16 autocast on CPU) with a GradScaler whose scale starts high and
    regrows often, so several steps overflow and are skipped: normal AMP behaviour."""

    def train(log: Path | None, every: int) -> Outcome:
        t0 = time.perf_counter()
        torch.manual_seed(SEED)
        split = digits_split(SEED)
        model = mlp(64, 10, depth=4, width=64, activation="relu", init="he", seed=SEED)
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=20)
        recent: list[float] = []
        with gw.watch(model, every=every, log=log, optimizer=None if manual else opt) as w:
            for x, y in batches(split.x_train, split.y_train, 64, 300, seed=SEED):
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                scaler.scale(loss).backward()
                if manual:
                    scaler.unscale_(opt)  # read unscaled gradients, as the AMP recipe says
                    w.step(loss=loss.float())
                else:
                    w.step(loss=loss.float())
                scaler.step(opt)
                scaler.update()
                recent.append(float(loss.detach()))
                del recent[:-20]
        return _digits_outcome(model, split, sum(recent) / len(recent), t0)

    return train


def _embedding_run(log: Path | None, every: int) -> Outcome:
    t0 = time.perf_counter()
    torch.manual_seed(SEED)
    vocab, n_classes = 20000, 5
    model = BagOfEmbeddings(vocab, 16, n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x_train, y_train = bag_of_tokens(vocab, n_classes, 64 * 300, seed=2 * SEED)
    x_test, y_test = bag_of_tokens(vocab, n_classes, 1000, seed=2 * SEED + 1)
    data = [(x_train[i : i + 64], y_train[i : i + 64]) for i in range(0, 64 * 300, 64)]
    final = _loop(model, opt, data, F.cross_entropy, log, every, optimizer_mode=True)
    acc = accuracy(model, x_test, y_test)
    return Outcome("test accuracy", acc, 1 / n_classes, acc >= 0.6, final, time.perf_counter() - t0)


# -- the suite -------------------------------------------------------------------------------

DIGITS_MLP = "mlp"
A = frozenset


def specs() -> list[Spec]:
    ACT = frozenset({"activations"})
    TIME = frozenset({"grad_t"})
    stuck = A({K.FLAT_LOSS, K.CONSTANT_OUTPUT, K.STALLED_WEIGHTS})
    blown = A({K.DIVERGING_LOSS, K.NONFINITE_GRADIENT, K.EXPLODING_GRADIENT, K.FLAT_LOSS, K.CONSTANT_OUTPUT, K.DEAD_UNITS, K.SATURATED_UNITS})
    return [
        # ---- healthy runs, many of them alarming at first sight -------------------------
        Spec("mlp3-sigmoid-sgd", "mlp", "SGD", True,
             "shallow sigmoid MLP: gradient shrinks ~4x per layer, still trains",
             _digits_run(_deep_mlp(3, "sigmoid"), sgd(0.1), 600), quick=True),
        Spec("mlp16-sigmoid-bn-sgd", "mlp", "SGD", True,
             "16-layer sigmoid MLP rescued by BatchNorm",
             _digits_run(_deep_mlp(16, "sigmoid", batchnorm=True), sgd(0.01), 300)),
        Spec("mlp16-relu-he-sgd", "mlp", "SGD", True,
             "16-layer ReLU MLP with He init: gradients even across depth",
             _digits_run(_deep_mlp(16, "relu", "he"), sgd(0.01), 300)),
        Spec("mlp2-converged-adam", "mlp", "Adam", True,
             "converges early, then a long flat loss near zero",
             _digits_run(_deep_mlp(2, "relu", "he", width=128), adam(3e-3), 600)),
        Spec("mlp4-frozen-sgd", "mlp", "SGD", True,
             "first three layers frozen; only the top layers train",
             _digits_run(_frozen_mlp, sgd(0.05), 300)),
        Spec("mlp-dropout-adam", "mlp", "Adam", True,
             "dropout 0.5: noisy loss and gradients, trains",
             _digits_run(_dropout_mlp, adam(1e-3), 400, optimizer_mode=True)),
        Spec("cnn3-relu-sgd", "cnn", "SGD", True,
             "small ReLU CNN on 8x8 digit images",
             _digits_run(lambda: small_cnn(), sgd(0.05), 300, image=True), quick=True),
        Spec("transformer-digits-adam", "transformer", "Adam", True,
             "2-layer transformer encoder over the 8 rows of a digit",
             _digits_run(lambda: TinyTransformer(), adam(1e-3), 300, tokens=True, optimizer_mode=True)),
        Spec("embedding-sparse-adam", "embedding", "Adam", True,
             "20k-row embedding: each batch touches ~6% of rows (sparse gradient, not dead units)",
             _embedding_run),
        Spec("mlp-amp-skips-optmode", "mlp", "SGD", True,
             "fp16 AMP with overflow-skipped steps, watched in optimizer mode",
             _amp_run(manual=False)),
        Spec("mlp-amp-skips-manual", "mlp", "SGD", True,
             "fp16 AMP: inf gradients on the skipped steps, read after unscale_",
             _amp_run(manual=True), quick=True),
        Spec("mlp8-tanh-xavier-adam", "mlp", "Adam", True,
             "8-layer tanh net, Xavier init, Adam",
             _digits_run(_deep_mlp(8, "tanh", "xavier"), adam(1e-3), 300)),
        Spec("lstm-adding-adam", "lstm", "Adam", True,
             "LSTM on the adding problem (T=30): gradient through time tiny at first, then learns",
             _seq_run("adding", 30, lambda i, o: SeqNet("lstm", i, 32, o), adam(1e-2), 600), needs=TIME, quick=True),
        Spec("gru-adding-adam", "gru", "Adam", True,
             "GRU on the adding problem (T=30): learns to look back",
             _seq_run("adding", 30, lambda i, o: SeqNet("gru", i, 32, o), adam(1e-2), 600), needs=TIME),
        Spec("gru-recall-adam", "gru", "Adam", True,
             "GRU recalls the first of 10 symbols",
             _seq_run("recall", 10, lambda i, o: SeqNet("gru", i, 32, o), adam(3e-3), 400), needs=TIME),
        Spec("rnn-tanh-orth2-recall-adam", "rnn", "Adam", True,
             "tanh RNN with recurrent weights 2x orthogonal: gradient grows ~50x back through time, learns",
             _seq_run("recall", 20, _scaled_rnn(2.0), adam(1e-3), 300), needs=TIME),
        # ---- faulty runs ------------------------------------------------------------------
        Spec("mlp16-sigmoid-sgd", "mlp", "SGD", False,
             "16-layer sigmoid MLP, default init: first layer gets ~1e-13 of the last layer's gradient",
             _digits_run(_deep_mlp(16, "sigmoid"), sgd(0.01), 300),
             labels=A({K.VANISHING_GRADIENT}), allowed=stuck | A({K.SATURATED_UNITS}), quick=True),
        Spec("mlp24-tanh-default-sgd", "mlp", "SGD", False,
             "24-layer tanh MLP, PyTorch default init (chi ~ 1/3 per layer)",
             _digits_run(_deep_mlp(24, "tanh"), sgd(0.01), 300),
             labels=A({K.VANISHING_GRADIENT}), allowed=stuck),
        Spec("cnn10-sigmoid-sgd", "cnn", "SGD", False,
             "10-layer sigmoid CNN, default init",
             _digits_run(lambda: small_cnn(nn.Sigmoid, depth=10), sgd(0.01), 300, image=True),
             labels=A({K.VANISHING_GRADIENT}), allowed=stuck),
        Spec("rnn-tanh-adding-adam", "rnn", "Adam", False,
             "tanh RNN on the adding problem (T=30): cannot look back, stays at the baseline",
             _seq_run("adding", 30, lambda i, o: SeqNet("rnn", i, 32, o), adam(1e-2), 600),
             labels=A({K.TEMPORAL_VANISHING}), allowed=A({K.SATURATED_UNITS, K.FLAT_LOSS}), needs=TIME, quick=True),
        Spec("rnn-tanh-recall-sgd", "rnn", "SGD", False,
             "tanh RNN must recall the first of 40 symbols",
             _seq_run("recall", 40, lambda i, o: SeqNet("rnn", i, 32, o), sgd(0.05), 400),
             labels=A({K.TEMPORAL_VANISHING}), allowed=stuck | A({K.SATURATED_UNITS}), needs=TIME),
        # At 0.1 the run sits on the edge: whether it diverges or its units die first
        # depends on the CPU's floating-point reduction order; 0.3 diverges on any.
        Spec("mlp20-relu-he-sgd-lr0.3", "mlp", "SGD", False,
             "20-layer ReLU He MLP with SGD lr 0.3, momentum 0.9: the step size is too large",
             _digits_run(_deep_mlp(20, "relu", "he"), sgd(0.3), 300),
             labels=A({K.DIVERGING_LOSS}), allowed=blown, quick=True),
        Spec("mlp3-adam-lr1", "mlp", "Adam", False,
             "Adam with lr 1.0: the first steps switch every ReLU off for good",
             _digits_run(_deep_mlp(3, "relu", "he"), adam(1.0), 300),
             labels=A({K.DEAD_UNITS}), allowed=blown | stuck, needs=ACT),
        Spec("transformer-sgd-lr1", "transformer", "SGD", False,
             "transformer with SGD lr 1.0, momentum 0.9",
             _digits_run(lambda: TinyTransformer(), sgd(1.0), 300, tokens=True),
             labels=A({K.DIVERGING_LOSS}), allowed=blown),
        Spec("lstm-adding-sgd-lr", "lstm", "SGD", False,
             "LSTM, SGD lr 20 on the adding problem",
             _seq_run("adding", 30, lambda i, o: SeqNet("lstm", i, 32, o), sgd(20.0), 300),
             labels=A({K.DIVERGING_LOSS}), allowed=blown | A({K.TEMPORAL_VANISHING})),
        Spec("mlp30-tanh-chaotic-adam", "mlp", "Adam", False,
             "30-layer tanh MLP, weights N(0, 9/fan_in): chaotic phase, the gradient grows toward the input",
             _digits_run(_normal_init(3.0, "tanh", 30), adam(1e-3), 300),
             labels=A({K.EXPLODING_GRADIENT}), allowed=blown | stuck),
        Spec("mlp20-tanh-chaotic-adam", "mlp", "Adam", False,
             "20-layer tanh MLP, weights N(0, 9/fan_in): chaotic phase",
             _digits_run(_normal_init(3.0, "tanh", 20), adam(1e-3), 300),
             labels=A({K.EXPLODING_GRADIENT}), allowed=blown | stuck),
        Spec("rnn-tanh-orth3-adding-adam", "rnn", "Adam", False,
             "tanh RNN with recurrent weights 3x orthogonal: the gradient grows ~1e4x back through time",
             _seq_run("adding", 30, _scaled_rnn(3.0), adam(1e-3), 300),
             labels=A({K.EXPLODING_GRADIENT}), allowed=blown | stuck, needs=TIME),
        Spec("mlp4-dead-bias-sgd", "mlp", "SGD", False,
             "ReLU biases start at -6: every hidden unit is off from the first step",
             _digits_run(_dead_bias_mlp, sgd(0.05), 300),
             labels=A({K.DEAD_UNITS}), allowed=stuck | A({K.VANISHING_GRADIENT}), needs=ACT, quick=True),
        Spec("cnn3-dead-bias-sgd", "cnn", "SGD", False,
             "conv biases start at -5: every ReLU channel is off",
             _digits_run(lambda: small_cnn(bias=-5.0), sgd(0.05), 300, image=True),
             labels=A({K.DEAD_UNITS}), allowed=stuck, needs=ACT),
        Spec("mlp3-sigmoid-bias8-sgd", "mlp", "SGD", False,
             "sigmoid biases start at +8: every unit pinned near 1, where sigmoid' is 3e-4",
             _digits_run(_biased_mlp("sigmoid", 8.0), sgd(0.05), 300),
             labels=A({K.SATURATED_UNITS}), allowed=stuck | A({K.VANISHING_GRADIENT}), needs=ACT),
        Spec("mlp3-tanh-bias5-sgd", "mlp", "SGD", False,
             "tanh biases start at +5: every unit pinned near 1, where tanh' is 2e-4",
             _digits_run(_biased_mlp("tanh", 5.0), sgd(0.05), 300),
             labels=A({K.SATURATED_UNITS}), allowed=stuck | A({K.VANISHING_GRADIENT}), needs=ACT),
        Spec("mlp-zero-input-sgd", "mlp", "SGD", False,
             "a data bug: inputs zeroed before the model, so every output is the same",
             _digits_run(_deep_mlp(3, "relu", "he"), sgd(0.05), 300, transform=torch.zeros_like),
             labels=A({K.CONSTANT_OUTPUT}), needs=ACT,
             # With one input for every sample, each ReLU is either always on or never: the
             # ones never on are dead over the batch, as a consequence, not the cause.
             allowed=A({K.FLAT_LOSS, K.STALLED_WEIGHTS, K.DEAD_UNITS})),
        Spec("mlp-lr-tiny-sgd", "mlp", "SGD", False,
             "SGD lr 1e-6: the weights barely move",
             _digits_run(_deep_mlp(3, "relu", "he"), sgd(1e-6), 300),
             labels=A({K.STALLED_WEIGHTS}), allowed=A({K.FLAT_LOSS})),
        Spec("mlp-detached-optimizer", "mlp", "Adam", False,
             "a code bug: the optimizer holds copies of the parameters, the model never changes",
             _digits_run(_deep_mlp(3, "relu", "he"), _detached_adam, 300),
             labels=A({K.STALLED_WEIGHTS}), allowed=A({K.FLAT_LOSS}), quick=True),
        Spec("mlp-where-sqrt-nan", "mlp", "Adam", False,
             "torch.where(h > 0, sqrt(h), 0): finite loss, NaN gradient from the discarded branch",
             _digits_run(SqrtFeatures, adam(1e-3), 200),
             labels=A({K.NONFINITE_GRADIENT}), allowed=blown),
        Spec("mlp-shuffled-labels-sgd", "mlp", "SGD", False,
             "labels drawn at random: nothing to learn, the loss stays at chance; gradients are fine",
             _digits_run(_deep_mlp(2, "relu", "he", width=32), sgd(0.01), 300,
                         labels=lambda y: torch.randint(0, 10, y.shape)),
             labels=A({K.FLAT_LOSS}), allowed=A()),
    ]
