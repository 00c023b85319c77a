"""The `gradwatch` command: a thin shell over the public API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from gradwatch.lab import demo

    demo.run(steps=args.steps, depth=args.depth, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradwatch",
        description="Find out why a network is not learning when the cause is its gradients.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("demo", help="watch a deep sigmoid MLP fail and a ReLU one learn, on real data")
    p.add_argument("--steps", type=int, default=300, help="training steps per network (default 300)")
    p.add_argument("--depth", type=int, default=16, help="hidden layers (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
