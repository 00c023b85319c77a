"""repair's bookkeeping and watching (fix/_ledger.py, fix/_watching.py), checked on their own."""

from __future__ import annotations

import threading

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from gradwatch.fix._ledger import Budget, Session, Trial
from gradwatch.fix._watching import Watching


@given(
    full=st.integers(1, 400), spare=st.integers(0, 400), trial=st.integers(1, 400),
    spent=st.integers(0, 800), ahead=st.integers(0, 400), finish=st.booleans(), fallback=st.booleans(),
)
def test_the_second_round_never_overspends(
    full: int, spare: int, trial: int, spent: int, ahead: int, finish: bool, fallback: bool
) -> None:
    trial = min(trial, full)
    budget = Budget(full, full + spare, trial, finish, spent)
    e = budget.extension(ahead, fallback)
    assert 0 <= e <= full - trial
    if e == 0:
        return
    # the leader trains e more, the original is brought to the same length, then one model is
    # finished to N: the leader (N - s - e), or with `fallback` a run of s steps (N - s)
    kept_rest = (full - trial - (0 if fallback else e)) if finish else 0
    assert spent + e + max(0, e - ahead) + kept_rest <= budget.limit


def test_affordable_reserves_the_finishing_run() -> None:
    budget = Budget(full=100, limit=150, trial=5, finish=True, spent=40)
    # 40 spent + 10 more + the kept run's remaining 95 = 145 <= 150; 16 more would be 151
    assert budget.affordable(10, 5) and budget.affordable(15, 5) and not budget.affordable(16, 5)
    assert Budget(100, 150, 5, finish=False, spent=40).affordable(110, 5)


def test_the_ledger_records_each_run_and_spends_its_steps() -> None:
    seen: list[int] = []

    def train(model: nn.Module, advice: dict[str, float], steps: int) -> float:
        seen.append(steps)
        return float("nan") if advice.get("lr_scale") == 10.0 else 0.5

    session = Session(train, seed=0, budget=Budget(100, 150, 5, True), min_gain=0.02)
    model = nn.Linear(2, 2)
    first = session.run("original", model, {}, 0, 5)
    session.run("a @ lr x10", nn.Linear(2, 2), {"lr_scale": 10.0}, 0, 5, lr_factor=10.0, advised=first)
    on = session.carry_on(first, 7)
    assert seen == [5, 5, 7] and session.budget.spent == 17
    assert [t.name for t in session.ledger.trials] == ["original", "a @ lr x10", "original, continued"]
    assert session.ledger.score(1) == float("-inf")  # a non-finite score is a failure
    assert session.ledger[1].advised == first and session.ledger[1].trial.lr_scale == 10.0
    assert session.ledger[on].model is model and session.ledger[on].trained == 5 + 7
    assert session.ledger.latest_original(model) == on
    assert isinstance(session.ledger[0].trial, Trial)


def test_the_loss_tap_keeps_only_the_losses_of_its_own_thread() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    other = nn.Linear(3, 1)
    with Watching(model, diagnose=True, every=1) as watching:

        def elsewhere() -> None:  # another thread's backward passes through untouched
            other(torch.randn(5, 3)).pow(2).mean().backward()

        t = threading.Thread(target=elsewhere)
        t.start()
        t.join()
        assert watching._tap.pending == [] and other.weight.grad is not None
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        assert [float(v) for v in watching._tap.pending] == [float(loss.detach())]
        opt.step()
    assert watching.timeline is not None
    _, values = watching.timeline.loss()
    assert values.tolist() == [float(loss.detach())]


def test_a_first_forward_on_one_list_is_kept_as_that_call() -> None:
    """An example input is spread into the call (a tuple or list as positional arguments):
    a model called on one list keeps it inside a tuple, so the map's forward pass calls it
    the same way."""
    from gradwatch.anatomy.order import order_of

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(2, 3), nn.Linear(2, 3)

        def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
            return torch.sigmoid(self.a(xs[0]) + self.b(xs[1]))

    model = Pair()
    xs = [torch.randn(4, 2), torch.randn(4, 2)]
    with Watching(model, diagnose=False, every=1) as watching:
        model(xs)
        model([torch.zeros(4, 2), torch.zeros(4, 2)])  # only the first forward counts
    assert isinstance(watching.example_input, tuple) and watching.example_input[0] is xs
    order = order_of(model, watching.example_input)
    assert order.traced and [op.name for op in order.ops] == ["a", "b", ""]
    assert order.ops[-1].fn == "sigmoid"
