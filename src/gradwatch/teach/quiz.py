"""`gradwatch quiz`: flashcards in Leitner boxes.

The deck holds basic cards (written answers, graded by the learner) and cards computed
from mean-field theory (`gradwatch.explain.theory`: numeric answers, graded by the quiz).
A card answered right moves up a box, a card answered wrong goes back to box 1; box ``b``
comes up every ``2**(b-1)`` sessions. Progress lives in
``$XDG_STATE_HOME/gradwatch/quiz.json`` (``~/.local/state`` when the variable is unset).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from gradwatch.explain import theory

__all__ = ["BOXES", "QuizCard", "deck", "deck_text", "lab_cards", "load_state", "reset", "session", "state_path"]

BOXES = 5
#: Weight scales sigma_w^2 of the common initialisations (REFERENCES §1): PyTorch's
#: default U(+-1/sqrt(fan_in)) has variance 1/(3 fan_in).
INITS = {"default": 1.0 / 3.0, "Xavier": 1.0, "He": 2.0}


@dataclass(frozen=True)
class QuizCard:
    id: str
    question: str
    answer: str
    value: float | None = None  # numeric cards: the computed answer
    decades: float = 0.5  # numeric cards: how far (in log10) a typed answer may be off

    def check(self, typed: str) -> bool | None:
        """True/False for a numeric card's typed answer; None when the learner must judge."""
        if self.value is None:
            return None
        m = re.search(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", typed.replace(" ", ""))
        if not m:
            return False
        x = float(m.group(0))
        if x <= 0 or self.value <= 0:
            return x == self.value
        return abs(math.log10(x) - math.log10(self.value)) <= self.decades


_BASICS: tuple[tuple[str, str, str], ...] = (
    ("what-vanishing", "What is a vanishing gradient?",
     "The gradient that reaches the layers near the input (or early time steps) is orders of "
     "magnitude smaller than at the output, so those layers hardly learn."),
    ("why-product", "Why do gradients vanish or explode with depth?",
     "Backpropagation multiplies one Jacobian per layer; a product of many factors below 1 "
     "shrinks geometrically, of factors above 1 grows geometrically."),
    ("sigmoid-max", "What is the largest value of the sigmoid's derivative, and where?",
     "1/4, at 0. tanh's derivative is at most 1, also at 0."),
    ("where-models", "In which models do vanishing gradients show up most?",
     "Deep plain stacks of sigmoid/tanh layers, vanilla RNNs over long sequences, deep nets "
     "without normalisation or skip connections."),
    ("fixes", "Name four remedies for vanishing gradients.",
     "ReLU-family activations with He init; BatchNorm/LayerNorm; residual connections; "
     "LSTM/GRU instead of a vanilla RNN (plus a forget-gate bias)."),
    ("exploding-fix", "What is the standard remedy for exploding gradients, in PyTorch and Keras?",
     "Gradient clipping: torch.nn.utils.clip_grad_norm_(params, max_norm); clipnorm= on a "
     "Keras optimizer. Also a smaller step or init."),
    ("he-init", "Which initialisation suits ReLU, and what variance does it give the weights?",
     "He (Kaiming): variance 2/fan_in, i.e. sigma_w^2 = 2, so chi = sigma_w^2 / 2 = 1."),
    ("lstm-why", "Why does an LSTM carry gradients across long lags?",
     "Its cell state is updated additively; the gradient along it is multiplied only by the "
     "forget gate per step, which can stay near 1."),
    ("dead-relu", "What is a dead ReLU, and how do you avoid it?",
     "A unit whose pre-activation is negative for every input: output and gradient are 0 for "
     "good. Avoid with sensible init and biases, a smaller learning rate, or LeakyReLU."),
    ("tools", "Which library tools measure or guard gradients?",
     "torch.nn.utils.clip_grad_norm_, torch.autograd.detect_anomaly (slow), gradwatch's "
     "gw.watch/gw.inspect; Keras clipnorm, TerminateOnNaN; TensorBoard histograms."),
    ("order-chaos", "What are the ordered and the chaotic phase in mean-field theory?",
     "chi < 1: ordered, gradients vanish with depth; chi > 1: chaotic, they explode. At chi = 1 "
     "(the edge of chaos) signals travel deepest; nets train up to about 6 xi, xi = -1/ln chi."),
)


def _share(act: str, sigma_w2: float, depth: int) -> float:
    """Mean-field share of the last layer's gradient norm reaching the first of a plain chain."""
    chain = [theory.ChainLayer(str(i), 64, sigma_w2, 0.0, act) for i in range(depth)]
    return math.sqrt(float(theory.gains(chain).backward[0]))


def _theory_cards() -> list[QuizCard]:
    cards: list[QuizCard] = []
    for act, init, depth in (
        ("sigmoid", "default", 16), ("sigmoid", "default", 8), ("sigmoid", "He", 16),
        ("tanh", "default", 16), ("tanh", "Xavier", 16), ("relu", "default", 16),
        ("relu", "He", 16), ("relu", "Xavier", 30),
    ):
        v = _share(act, INITS[init], depth)
        cards.append(QuizCard(
            f"share-{act}-{init.lower()}-{depth}",
            f"A {depth}-layer {act} MLP at {init} initialisation (sigma_w^2 = {INITS[init]:.3g}, "
            "no biases, unit-variance inputs): what share of the last layer's back-propagated "
            "gradient norm reaches the first? (a number; within half a decade counts)",
            f"about {v:.1e} (mean-field theory: the square root of the product of chi over the layers)",
            value=v,
        ))
    for act in ("tanh", "leaky_relu(negative_slope=0.2)", "sigmoid"):
        crit = theory.critical_sigma_w2(act, 16)
        if crit is None:
            continue
        cards.append(QuizCard(
            f"critical-{act.split('(')[0]}",
            f"Which weight scale sigma_w^2 keeps the gradient norm level through 16 {act} layers "
            "(unit-variance inputs, no biases)? (a number; within 10% counts)",
            f"sigma_w^2 = {crit:.3g} (chi = 1 over the chain)",
            value=crit, decades=math.log10(1.1),
        ))
    for act, sw in (("relu", 1.0 / 3.0), ("tanh", 1.0 / 3.0)):
        c = float(theory.gains([theory.ChainLayer(str(i), 64, sw, 0.0, act) for i in range(2)]).chi[0])
        cards.append(QuizCard(
            f"chi-{act}-default",
            f"Per layer, by what factor does the squared gradient norm change in a {act} net at "
            "PyTorch's default init (sigma_w^2 = 1/3)? (a number; within 10% counts)",
            f"chi = {c:.3g}",
            value=c, decades=math.log10(1.1),
        ))
    chain = [theory.ChainLayer(str(i), 64, 0.5, 0.0, "tanh") for i in range(40)]
    xi = theory.gains(chain).depth_scale
    cards.append(QuizCard(
        "depth-tanh-0.5",
        "A tanh net with sigma_w^2 = 0.5: about how many layers deep can it still train "
        "(6 depth scales, xi = -1/ln chi)? (a number; within 20% counts)",
        f"about {6 * xi:.0f} layers (xi = {xi:.2f})",
        value=6 * xi, decades=math.log10(1.2),
    ))
    return cards


_CELL_NAMES = {"rnn": "tanh RNN", "irnn": "IRNN (a ReLU RNN started at the identity)", "lstm": "LSTM", "gru": "GRU"}


def lab_cards(results: dict) -> list[QuizCard]:
    """Cards whose answers are what `gradwatch lab` measured (a results.json, seed 0 rows)."""
    cards: list[QuizCard] = []
    for r in results.get("rows", []):
        if r.get("seed") != 0:
            continue
        s, o = r["setting"], r["observed"]
        if r["experiment"] == "depth" and o.get("test_accuracy") is not None:
            bn = " with BatchNorm" if s.get("batchnorm") else ""
            cards.append(QuizCard(
                f"lab-depth-{s['activation']}-{s['init']}-{s['depth']}{'-bn' if bn else ''}-{s['lr']}",
                f"In the lab, a {s['depth']}-layer {s['activation']} MLP{bn} at {s['init']} "
                f"initialisation learns 8x8 digits with SGD (lr {s['lr']}, momentum 0.9) for "
                f"{o['steps']} steps: what test accuracy does it reach? (within 30% counts)",
                f"{o['test_accuracy']:.2f} ({r['outcome']}; gradwatch reported: "
                f"{', '.join(r['verdict']) or 'nothing'})",
                value=float(o["test_accuracy"]), decades=math.log10(1.3),
            ))
        elif r["experiment"] == "adding" and o.get("test_mse") is not None:
            clip = s.get("clip")
            cards.append(QuizCard(
                f"lab-adding-{s['cell']}-{s['length']}" + (f"-clip{clip}" if clip else ""),
                f"In the lab, a {_CELL_NAMES.get(s['cell'], s['cell'])} (hidden 32) learns the adding problem at sequence "
                f"length {s['length']} for {o['steps']} Adam steps"
                + (f", its gradient norm clipped at {clip}" if clip else "") + ": what test MSE does it reach? "
                "(predicting the mean gives 0.167; within half a decade counts)",
                f"{o['test_mse']:.3g} ({r['outcome']})",
                value=float(o["test_mse"]),
            ))
    return cards


def deck(lab_results: dict | None = None) -> list[QuizCard]:
    """Every card: the basics, those computed from theory, and those from a lab run when given."""
    extra = lab_cards(lab_results) if lab_results else []
    return [QuizCard(i, q, a) for i, q, a in _BASICS] + _theory_cards() + extra


def deck_text(cards: Iterable[QuizCard]) -> str:
    out = []
    for n, c in enumerate(cards, 1):
        out.append(f"{n}. [{c.id}] {c.question}\n   -> {c.answer}")
    return "\n".join(out)


# -- state -------------------------------------------------------------------------------------
def state_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "gradwatch" / "quiz.json"


def load_state(path: Path) -> dict:
    """``{"session": int, "boxes": {card id: box}}``; a missing or unreadable file is a fresh start."""
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("boxes"), dict):
            return {"session": int(data.get("session", 0)), "boxes": {str(k): int(v) for k, v in data["boxes"].items()}}
    except (OSError, ValueError, TypeError):
        pass
    return {"session": 0, "boxes": {}}


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    tmp.replace(path)


def reset(path: Path) -> None:
    path.unlink(missing_ok=True)


def due(cards: list[QuizCard], state: dict, n: int) -> list[QuizCard]:
    """Up to `n` cards for this session: those whose box is due, lowest boxes first."""
    s = state["session"]
    box = {c.id: state["boxes"].get(c.id, 1) for c in cards}
    ready = [c for c in cards if s % (2 ** (box[c.id] - 1)) == 0]
    if not ready:
        ready = list(cards)
    return sorted(ready, key=lambda c: box[c.id])[:n]


def session(path: Path, n: int, inp: TextIO, out: TextIO, lab_results: dict | None = None) -> int:
    """One quiz session on `inp`/`out`; the state is saved after every card (Ctrl-D ends early)."""
    state = load_state(path)
    state["session"] += 1
    cards = due(deck(lab_results), state, n)
    right = 0
    print(f"gradwatch quiz: session {state['session']}, {len(cards)} cards "
          "(type an answer, Enter; Ctrl-D to stop)", file=out, flush=True)
    asked = 0
    for c in cards:
        box = state["boxes"].get(c.id, 1)
        print(f"\n[box {box}] {c.question}", file=out)
        print("your answer> ", end="", file=out, flush=True)
        typed = inp.readline()
        if not typed:
            break
        verdict = c.check(typed.strip())
        print(f"answer: {c.answer}", file=out)
        if verdict is None:
            print("did you know it? [y/n]> ", end="", file=out, flush=True)
            yn = inp.readline()
            if not yn:
                break
            verdict = yn.strip().lower().startswith("y")
        else:
            print("right" if verdict else "wrong", file=out)
        new = min(box + 1, BOXES) if verdict else 1
        state["boxes"][c.id] = new
        right += bool(verdict)
        asked += 1
        print(f"-> box {new}", file=out, flush=True)
        _save(path, state)
    _save(path, state)
    print(f"\n{right} of {asked} right; progress saved to {path}", file=out, flush=True)
    return 0
