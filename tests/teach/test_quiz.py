from __future__ import annotations

import json
import math
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from gradwatch.cli import main
from gradwatch.teach import quiz


def _cards() -> dict[str, quiz.QuizCard]:
    return {c.id: c for c in quiz.deck()}


def test_theory_answers_match_an_independent_computation() -> None:
    cards = _cards()
    # ReLU: chi = sigma_w^2 / 2 exactly, so the share after L layers is (sigma_w^2 / 2)^((L-1)/2).
    assert math.isclose(cards["share-relu-default-16"].value, (1 / 6) ** 7.5, rel_tol=1e-9)
    assert math.isclose(cards["share-relu-he-16"].value, 1.0, rel_tol=1e-9)
    assert math.isclose(cards["chi-relu-default"].value, 1 / 6, rel_tol=1e-9)
    # Sigmoid: the forward map and E[sigmoid'(h)^2] by a plain Riemann sum instead of Gauss-Hermite.
    u = np.linspace(-40, 40, 400_001)

    def expect(f, q):
        w = np.exp(-(u**2) / (2 * q))
        return float(np.sum(f(u) * w) / np.sum(w))

    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    dsig2 = lambda x: (sig(x) * (1 - sig(x))) ** 2  # noqa: E731
    sw, q, log_share = 1 / 3, 1 / 3, 0.0
    for _ in range(15):
        log_share += 0.5 * math.log(sw * expect(dsig2, q))
        q = sw * expect(lambda x: sig(x) ** 2, q)
    assert math.isclose(cards["share-sigmoid-default-16"].value, math.exp(log_share), rel_tol=1e-3)


def test_numeric_answers_are_checked_within_their_tolerance() -> None:
    c = _cards()["share-relu-default-16"]  # 1.5e-6, half a decade either way
    assert c.check("1.5e-6") and c.check("about 1e-6") and c.check("4e-6")
    assert not c.check("1e-5") and not c.check("no idea") and not c.check("-1")
    assert _cards()["what-vanishing"].check("anything") is None  # the learner judges written answers


def test_non_interactive_prints_the_whole_deck(capsys) -> None:
    assert main(["quiz", "--non-interactive"]) == 0
    out = capsys.readouterr().out
    for c in quiz.deck():
        assert f"[{c.id}] {c.question}" in out and c.answer in out


def test_bad_arguments_are_one_line_and_exit_2(capsys) -> None:
    assert main(["quiz", "--cards", "0"]) == 2
    assert capsys.readouterr().err == "gradwatch quiz: --cards must be at least 1, got 0\n"


def _expect(fd: int, text: str, buf: list[str], timeout: float = 60.0) -> str:
    end = time.monotonic() + timeout
    while text not in "".join(buf):
        left = end - time.monotonic()
        assert left > 0, f"timed out waiting for {text!r}; got {''.join(buf)[-500:]!r}"
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                buf.append(os.read(fd, 4096).decode(errors="replace"))
            except OSError:  # the child closed the terminal
                break
    out = "".join(buf)
    buf.clear()
    i = out.index(text) + len(text)
    buf.append(out[i:])
    return out[:i]


def _session(state_home: Path, answers: list[str], cards: int) -> str:
    master, slave = pty.openpty()
    env = {**os.environ, "XDG_STATE_HOME": str(state_home), "PYTHONPATH": "src"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradwatch", "quiz", "--cards", str(cards)],
        stdin=slave, stdout=slave, stderr=slave, env=env, cwd=Path(__file__).parents[2],
    )
    os.close(slave)
    buf: list[str] = []
    seen = []
    try:
        for a in answers:
            seen.append(_expect(master, ">", buf))
            os.write(master, (a + "\n").encode())
        seen.append(_expect(master, "progress saved", buf))
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        os.close(master)
    return "".join(seen)


def test_a_session_through_a_real_terminal_moves_cards_between_boxes(tmp_path, monkeypatch, capsys) -> None:
    state = tmp_path / "gradwatch" / "quiz.json"
    # Session 1: three written cards, all in box 1; knew, did not know, knew.
    out = _session(tmp_path, ["", "y", "", "n", "", "y"], cards=3)
    assert "session 1, 3 cards" in out and "2 of 3 right" in out
    saved = json.loads(state.read_text())
    assert saved == {"session": 1, "boxes": {"what-vanishing": 2, "why-product": 1, "sigmoid-max": 2}}
    # Session 2: box 2 is due every second session; put every written card in box 3 (not due
    # at session 2) so the computed cards come up, and answer the first right, the second wrong.
    saved["boxes"] = {i: 3 for i, _, _ in quiz._BASICS}
    state.write_text(json.dumps(saved))
    first, second = [c for c in quiz.deck() if c.value is not None][:2]
    out = _session(tmp_path, [f"{first.value:.3g}", "42"], cards=2)
    assert "session 2, 2 cards" in out and out.count("right") == 2  # "right" once, then "1 of 2 right"
    assert "wrong" in out and "1 of 2 right" in out
    boxes = json.loads(state.read_text())["boxes"]
    assert boxes[first.id] == 2 and boxes[second.id] == 1 and boxes["what-vanishing"] == 3
    # --reset forgets it all
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert main(["quiz", "--reset"]) == 0
    assert f"quiz progress reset ({state})" in capsys.readouterr().out and not state.exists()


def test_lab_results_become_cards_with_the_measured_answers(tmp_path, capsys) -> None:
    from gradwatch.lab.schema import validate

    row = {
        "experiment": "depth", "seed": 0, "citation": "c", "expected": "chance", "outcome": "chance",
        "agrees": True, "verdict_expected": "one of: vanishing_gradient", "verdict": ["vanishing_gradient"],
        "verdict_agrees": True,
        "setting": {"activation": "sigmoid", "init": "default", "depth": 16, "batchnorm": False, "lr": 0.1},
        "observed": {"test_accuracy": 0.086, "steps": 300, "first_to_last_grad": 1e-13},
    }
    adding = {**row, "experiment": "adding", "setting": {"cell": "rnn", "length": 50},
              "observed": {"test_mse": 0.16, "steps": 1500, "reach_change_decades": 2.9}, "expected": "fails",
              "outcome": "fails"}
    results = {"gradwatch": "0", "quick": False, "seeds": 2, "experiments": [],
               "rows": [row, adding, {**row, "seed": 1},
                        {**adding, "setting": {"cell": "rnn", "length": 50, "clip": 1.0}}]}
    assert validate(results) == []
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["quiz", "--non-interactive", "--lab", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    cards = {c.id: c for c in quiz.lab_cards(results)}
    # seed 0 rows only; a clipped run is a card of its own
    assert set(cards) == {"lab-depth-sigmoid-default-16-0.1", "lab-adding-rnn-50", "lab-adding-rnn-50-clip1.0"}
    assert "its gradient norm clipped at 1.0" in cards["lab-adding-rnn-50-clip1.0"].question
    assert cards["lab-depth-sigmoid-default-16-0.1"].value == 0.086
    assert cards["lab-adding-rnn-50"].value == 0.16 and cards["lab-adding-rnn-50"].check("0.2")
    assert "0.09 (chance; gradwatch reported: vanishing_gradient)" in out
    assert main(["quiz", "--lab", str(tmp_path / "none.json")]) == 2
    assert capsys.readouterr().err.startswith("gradwatch quiz: cannot read lab results")
