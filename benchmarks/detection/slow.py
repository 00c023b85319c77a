"""Slow: a development sweep of runs that learn slowly and end low, each with a healthy twin.

    PYTHONPATH=src python benchmarks/detection/slow.py                 # 23 runs x seeds 0 1 2
    PYTHONPATH=src python benchmarks/detection/slow.py --seeds 0 --only s-tanh3-init-var60-adam

What it is. Not a held-out set: it was written after `heldout.py`'s figures showed which
mechanisms of the "sick but still improving" kind go unreported at the end of a run
(units saturated by the initialisation, deep sigmoid and ordered-phase tanh chains under
adaptive optimizers, a vanilla RNN that must carry its input far, steps far too small
everywhere or for one parameter group, features made constant by large biases, a ReLU
chain whose signal grows through depth). Its runs are new variants of those mechanisms
(other depths, widths, optimizers, data), and each faulty run has a healthy twin of the
same shape built to train, so a rule that reads the mechanism and not the shape can be
developed here and judged on `heldout.py`, which stays as it was written.

Rules may be tuned on this file; that is what it is for. Its figures are reported as a
development set, never as held out. The runner, outcomes and scoring are `heldout.py`'s.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import heldout as H  # noqa: E402
from heldout import (  # noqa: E402
    IMAGE,
    SLOW,
    STUCK,
    Case,
    Outcome,
    adam,
    biased,
    blobs,
    digits_run,
    normal_init,
    relu_mlp,
    rmsprop,
    sgd,
    table_run,
)

import gradwatch as gw  # noqa: E402
from gradwatch.lab.models import mlp  # noqa: E402

K = gw.Kind
CASES: list[Case] = []


def case(name: str, note: str, expect: list[gw.Kind] | None = None, allowed: set[gw.Kind] | None = None):  # type: ignore[no-untyped-def]
    return H.case(name, note, expect or (), allowed or (), into=CASES)


def bn_sigmoid(depth: int, width: int) -> nn.Sequential:
    """Linear -> BatchNorm -> sigmoid, `depth` times, then a linear head (digits)."""
    layers: list[nn.Module] = []
    fan_in = 64
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.BatchNorm1d(width), nn.Sigmoid()]
        fan_in = width
    return nn.Sequential(*layers, nn.Linear(fan_in, 10))


class FirstStep(nn.Module):
    """A recurrent layer that sees a table's row at step 0 and zeros for `gap` more steps,
    read out at its last step: the input must be carried `gap` steps."""

    def __init__(self, rnn: nn.RNNBase, n_out: int, gap: int) -> None:
        super().__init__()
        self.rnn, self.gap = rnn, gap
        self.head = nn.Linear(rnn.hidden_size, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = torch.cat([x[:, None], x.new_zeros(x.shape[0], self.gap, x.shape[1])], 1)
        return self.head(self.rnn(seq)[0][:, -1])


def groups(first_lr: float, rest: float) -> H.MakeOpt:
    """SGD with momentum; the first layer's parameter group at `first_lr`, the rest at `rest`."""

    def make(m: nn.Module) -> torch.optim.Optimizer:
        assert isinstance(m, nn.Sequential)
        first = list(m[0].parameters())
        others = [p for p in m.parameters() if all(p is not q for q in first)]
        return torch.optim.SGD([{"params": first, "lr": first_lr}, {"params": others}], rest, momentum=0.9)

    return make


def sgd_plain(lr: float) -> H.MakeOpt:
    return lambda m: torch.optim.SGD(m.parameters(), lr)


def first_step_run(log: Path, seed: int, rnn: type[nn.RNNBase], gap: int, steps: int) -> Outcome:
    return table_run(log, seed, blobs(seed), lambda: FirstStep(rnn(30, 32, batch_first=True), 6, gap), adam(1e-3), steps, 64, 0.8, 0.6)


# == faulty ======================================================================================


@case("s-tanh3-init-var60-adam", "tanh 64-48-48-48-10, weights N(0, 60/fan_in), Adam: most units start at +-1",
      [K.SATURATED_UNITS], SLOW)
def s_tanh3_var60(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: normal_init(mlp(64, 10, depth=3, width=48, activation="tanh"), 60.0), adam(1e-3), 300)


@case("s-sigmoid2-init-var80-sgd-blobs", "make_classification into sigmoid 30-64-64-6, weights N(0, 80/fan_in), SGD: units pinned at 0 or 1",
      [K.SATURATED_UNITS], SLOW)
def s_sigmoid2_var80(log: Path, seed: int) -> Outcome:
    return table_run(log, seed, blobs(seed), lambda: normal_init(mlp(30, 6, depth=2, width=64, activation="sigmoid"), 80.0), sgd(0.005), 400, 64, 0.8, 0.6)


@case("s-tanh1-init-var150-sgd", "tanh 64-40-10, weights N(0, 150/fan_in), SGD: one hidden layer, four units in five pinned at +-1",
      [K.SATURATED_UNITS], SLOW)
def s_tanh1_var150(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: normal_init(mlp(64, 10, depth=1, width=40, activation="tanh"), 150.0), sgd(0.02), 300)


@case("s-sigmoid6-default-rmsprop", "6-layer sigmoid MLP 48 wide, PyTorch's default init, RMSprop: the gradient shrinks ~4x a layer",
      [K.VANISHING_GRADIENT], STUCK | {K.SATURATED_UNITS})
def s_sigmoid6(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: mlp(64, 10, depth=6, width=48, activation="sigmoid"), rmsprop(1e-3), 300)


@case("s-tanh30-ordered-var0.3-adam", "30-layer tanh MLP 32 wide, weights N(0, 0.3/fan_in), Adam: the ordered phase",
      [K.VANISHING_GRADIENT], STUCK)
def s_tanh30_ordered(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: normal_init(mlp(64, 10, depth=30, width=32, activation="tanh"), 0.3), adam(3e-4), 300)


@case("s-rnn-tanh-first-step-gap30", "vanilla tanh RNN sees a table row at step 0, then 30 steps of zeros: the row is out of reach",
      [K.TEMPORAL_VANISHING], STUCK | {K.SATURATED_UNITS, K.VANISHING_GRADIENT})
def s_rnn_gap(log: Path, seed: int) -> Outcome:
    return first_step_run(log, seed, nn.RNN, 30, 400)


@case("s-sgd-lr1e-4-plain", "ReLU 64-128-128-10 under plain SGD at lr 1e-4: every step is too small",
      [K.STALLED_WEIGHTS], {K.FLAT_LOSS})
def s_sgd_tiny(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: relu_mlp(64, 128, 128, 10), sgd_plain(1e-4), 400)


@case("s-adam-lr3e-6-blobs", "make_classification into ReLU 30-128-128-6 under Adam at lr 3e-6",
      [K.STALLED_WEIGHTS], {K.FLAT_LOSS})
def s_adam_tiny(log: Path, seed: int) -> Outcome:
    return table_run(log, seed, blobs(seed), lambda: relu_mlp(30, 128, 128, 6), adam(3e-6), 400, 64, 0.8, 0.6)


@case("s-group-first-lr1e-9", "ReLU 64-6-128-10 whose first layer's parameter group got lr 1e-9, the rest SGD 0.05: a random 6-d view",
      [K.STALLED_WEIGHTS], {K.FLAT_LOSS})
def s_group_first(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: relu_mlp(64, 6, 128, 10), groups(1e-9, 0.05), 400)


@case("s-relu-bias+12-adam", "ReLU 64-96-96-10 whose hidden biases start at +12, Adam 1e-4: features ~12 plus a ripple",
      [K.CONSTANT_OUTPUT], SLOW)
def s_relu_bias12(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: biased(relu_mlp(64, 96, 96, 10), 12.0, 0, 2), adam(1e-4), 300)


@case("s-relu10-var4-adam", "10-layer ReLU MLP 64 wide, weights N(0, 4/fan_in) (He is 2), Adam 1e-4: the signal grows x1.4 a layer",
      [K.EXPLODING_GRADIENT], H.DEEP)
def s_relu10_var4(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: normal_init(mlp(64, 10, depth=10, width=64), 4.0), adam(1e-4), 300)


# == healthy twins ==============================================================================


@case("s-h-tanh1-lecun-sgd", "tanh 64-40-10, weights N(0, 1/fan_in), SGD")
def s_h_tanh1(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: normal_init(mlp(64, 10, depth=1, width=40, activation="tanh"), 1.0), sgd(0.02), 300)


@case("s-h-tanh3-xavier-adam", "tanh 64-48-48-48-10, weights N(0, 1/fan_in), Adam")
def s_h_tanh3(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: normal_init(mlp(64, 10, depth=3, width=48, activation="tanh"), 1.0), adam(1e-3), 300)


@case("s-h-sigmoid2-default-adam-blobs", "make_classification into sigmoid 30-64-64-6, default init, Adam")
def s_h_sigmoid2(log: Path, seed: int) -> Outcome:
    return table_run(log, seed, blobs(seed), lambda: mlp(30, 6, depth=2, width=64, activation="sigmoid"), adam(3e-3), 400, 64, 0.8, 0.6)


@case("s-h-sigmoid6-bn-rmsprop", "6-layer sigmoid MLP 48 wide with BatchNorm before each sigmoid, RMSprop")
def s_h_sigmoid6_bn(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: bn_sigmoid(6, 48), rmsprop(1e-3), 300)


@case("s-h-tanh8-var1-adam", "8-layer tanh MLP 32 wide, weights N(0, 1/fan_in) (critical), Adam")
def s_h_tanh_critical(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: normal_init(mlp(64, 10, depth=8, width=32, activation="tanh"), 1.0), adam(1e-3), 300)


@case("s-h-gru-first-step-gap30", "GRU sees a table row at step 0, then 30 steps of zeros (800 steps)")
def s_h_gru_gap(log: Path, seed: int) -> Outcome:
    return first_step_run(log, seed, nn.GRU, 30, 800)


@case("s-h-sgd-lr0.05-plain", "ReLU 64-128-128-10 under plain SGD at lr 0.05")
def s_h_sgd(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: relu_mlp(64, 128, 128, 10), sgd_plain(0.05), 400)


@case("s-h-adam-lr1e-4-long", "ReLU 64-128-128-10 under Adam at lr 1e-4 for 800 steps: slow, steady, trains")
def s_h_adam_slow(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: relu_mlp(64, 128, 128, 10), adam(1e-4), 800)


@case("s-h-group-first-lr0.005", "ReLU 64-6-128-10, the first layer's group at lr 0.005 and the rest 0.05 (a smaller step, on purpose)")
def s_h_group_first(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: relu_mlp(64, 6, 128, 10), groups(0.005, 0.05), 400)


@case("s-h-relu-bias+1-adam", "ReLU 64-96-96-10 whose hidden biases start at +1, Adam 1e-3")
def s_h_relu_bias1(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: biased(relu_mlp(64, 96, 96, 10), 1.0, 0, 2), adam(1e-3), 300)


@case("s-h-relu10-he-adam", "10-layer ReLU MLP 64 wide, weights N(0, 2/fan_in) (He), Adam 1e-3")
def s_h_relu10_he(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: normal_init(mlp(64, 10, depth=10, width=64), 2.0), adam(1e-3), 300)


@case("s-h-cnn-relu-sgd", "ReLU CNN 1-8-16 on 8x8 digit images, SGD 0.02 with momentum")
def s_h_cnn(log: Path, seed: int) -> Outcome:
    return digits_run(log, seed, lambda: H.small_cnn(nn.ReLU, 8), sgd(0.02), 300, view=IMAGE)


if __name__ == "__main__":
    raise SystemExit(H.main(cases=CASES, doc=__doc__))
