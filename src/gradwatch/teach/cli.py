"""The `explain` and `quiz` verbs of the `gradwatch` command."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _fail(verb: str, message: str) -> int:
    print(f"gradwatch {verb}: {message}", file=sys.stderr)
    return 2


def explain(args: argparse.Namespace) -> int:
    from gradwatch.teach.cards import CARDS, card, render

    if not args.name:
        print("Cards (gradwatch explain NAME):")
        for key, c in CARDS.items():
            print(f"  {key:<28} {'finding' if c.is_kind else 'cause  '}  {c.title}")
        return 0
    try:
        c = card(args.name)
    except ValueError as e:
        return _fail("explain", str(e))
    diagnosis = None
    if args.run:
        import gradwatch as gw

        try:
            run = gw.load(args.run)
        except FileNotFoundError:
            return _fail("explain", f"no such run log: {args.run}")
        except ValueError as e:
            return _fail("explain", f"cannot read {args.run}: {e}")
        diagnosis = run.diagnose()
    print(render(c, diagnosis, run_name=str(args.run or "")))
    return 0


def quiz(args: argparse.Namespace) -> int:
    from gradwatch.teach import quiz as q

    if args.cards < 1:
        return _fail("quiz", f"--cards must be at least 1, got {args.cards}")
    lab_results = None
    if args.lab:
        import json
        from pathlib import Path

        path = Path(args.lab)
        path = path / "results.json" if path.is_dir() else path
        try:
            lab_results = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            return _fail("quiz", f"cannot read lab results {path}: {e}")
    state = q.state_path()
    if args.reset:
        q.reset(state)
        print(f"quiz progress reset ({state})")
        if not args.non_interactive:
            return 0
    if args.non_interactive:
        print(q.deck_text(q.deck(lab_results)))
        return 0
    return q.session(state, n=args.cards, inp=sys.stdin, out=sys.stdout, lab_results=lab_results)


def add_parsers(sub: Any) -> None:
    """Add `explain` and `quiz` to the `gradwatch` command's subparsers."""
    p = sub.add_parser(
        "explain", help="a card on a finding kind or cause: what, where, math, symptoms, fixes",
        description="Explain a finding kind or a cause; without NAME, list the cards.",
    )
    p.add_argument("name", nargs="?", metavar="KIND|CAUSE", help="e.g. vanishing_gradient, init_mismatch")
    p.add_argument("--run", metavar="RUN.jsonl", help="a gw.watch(log=...) log: show what this run shows for it")
    p.set_defaults(func=explain)
    p = sub.add_parser(
        "quiz", help="flashcards on vanishing and exploding gradients, with spaced repetition",
        description="Flashcards in Leitner boxes; progress is kept in $XDG_STATE_HOME/gradwatch/quiz.json.",
    )
    p.add_argument("--cards", type=int, default=10, help="cards per session (default 10)")
    p.add_argument("--non-interactive", action="store_true", help="print the whole deck, questions and answers")
    p.add_argument("--reset", action="store_true", help="forget all progress (every card back to box 1)")
    p.add_argument("--lab", metavar="DIR", help="add cards from a `gradwatch lab` run (its results.json or folder)")
    p.set_defaults(func=quiz)
