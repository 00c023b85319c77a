"""The `gradwatch` command: a thin shell over the public API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def _demo(args: argparse.Namespace) -> int:
    from gradwatch.lab import demo

    demo.run(steps=args.steps, depth=args.depth, seed=args.seed, html=args.html)
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    import gradwatch as gw

    if not Path(args.log).is_file():
        print(f"gradwatch report: no such file: {args.log}", file=sys.stderr)
        return 2
    try:
        run = gw.load(args.log)
    except gw.LogFormatError as e:
        print(f"gradwatch report: {e}", file=sys.stderr)
        return 2
    r = gw.report(run, html=args.html, png_dir=args.png)
    if r.html is not None:
        print(f"HTML report: {r.html}")
    if r.pngs:
        print(f"figures: {', '.join(str(p) for p in r.pngs)}")
    return 0


def _guess_input(model: object) -> Any:
    """A batch of 8 for a model whose first layer says what it takes (Linear, Conv, Embedding); else None."""
    import torch
    from torch import nn

    if not isinstance(model, nn.Module):
        return None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return torch.randn(8, m.in_features)
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(m)]
            return torch.randn(8, m.in_channels, *([32] * dims))
        if isinstance(m, nn.Embedding):
            return torch.randint(0, m.num_embeddings, (8, 16))
    return None


def _float_tensor(x: Any) -> bool:
    import torch

    return isinstance(x, torch.Tensor) and x.is_floating_point()


def _inspect(args: argparse.Namespace) -> int:
    import importlib.util
    from pathlib import Path

    import gradwatch as gw

    path, _, factory = args.target.rpartition(":")
    if not path or not factory:
        print(f"gradwatch inspect: expected FILE.py:FACTORY, got {args.target!r}", file=sys.stderr)
        return 2
    if not Path(path).is_file():
        print(f"gradwatch inspect: no such file: {path}", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    made = getattr(module, factory, None)
    if not callable(made):
        print(f"gradwatch inspect: {path} has no callable {factory!r}", file=sys.stderr)
        return 2
    result = made()
    if isinstance(result, tuple) and len(result) == 2:
        model, example = result
    else:
        model, example = result, _guess_input(result)
        if example is None:
            print(f"gradwatch inspect: cannot guess an input for {type(result).__name__}; "
                  f"make {factory}() return (model, example_input)", file=sys.stderr)
            return 2
        print(f"(example input guessed from the first layer: shape {tuple(example.shape)})")
    d = gw.inspect(model, example, jacobian=bool(args.html) and _float_tensor(example))
    print(d)
    print(f"\n{'layer':<32} {'type':<14} {'measured':>10} {'predicted':>10}")
    for r in d.layers:
        m = "-" if r.measured_grad_norm is None else f"{r.measured_grad_norm:.2e}"
        p = "-" if r.predicted_grad_norm is None else f"{r.predicted_grad_norm:.2e}"
        print(f"{r.name[:32]:<32} {r.type[:14]:<14} {m:>10} {p:>10}")
    print("\ncauses:" if d.causes else "\nno risk found in the structure")
    for c in d.causes:
        print(f"  [{c.score:.2f}] {c}")
    if args.html:
        page = gw.report(d, html=args.html, terminal=False).html
        print(f"\nHTML report: {page}")
    return 0


EXIT_CODES = """exit codes:
  0  done (for lab: every verdict agreed)
  1  lab: some result disagreed with the literature or gradwatch's verdict did not match
  2  bad usage: an unknown verb or option, a bad value, a missing file"""


class _Parser(argparse.ArgumentParser):
    """An argument error is one line on stderr and exit code 2, not the usage block."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gradwatch",
        description="Find out why a network is not learning when the cause is its gradients.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("demo", help="watch a deep sigmoid MLP fail and a ReLU one learn, on real data")
    p.add_argument("--steps", type=int, default=300, help="training steps per network (default 300)")
    p.add_argument("--depth", type=int, default=16, help="hidden layers (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--html", default="gradwatch-demo.html", metavar="OUT",
        help="where to write the HTML report of the sigmoid run (default gradwatch-demo.html)",
    )
    p.set_defaults(func=_demo)
    p = sub.add_parser("inspect", help="judge a model before training: gradient per layer, theory, risks")
    p.add_argument(
        "target", metavar="FILE.py:FACTORY",
        help="FACTORY() returns (model, example_input), or a model whose first layer shows its input",
    )
    p.add_argument("--html", metavar="OUT", help="also write an HTML report (with the Jacobian's spectrum) here")
    p.set_defaults(func=_inspect)
    p = sub.add_parser("report", help="the report of a recorded run: terminal, HTML page, figures")
    p.add_argument("log", metavar="RUN.jsonl", help="a log written by gw.watch(..., log=...)")
    p.add_argument("--html", metavar="OUT", help="write one self-contained HTML page here")
    p.add_argument("--png", metavar="DIR", help="write each figure to DIR/<name>.png")
    p.set_defaults(func=_report)
    from gradwatch.teach.cli import add_parsers as add_teach

    add_teach(sub)
    from gradwatch.lab.cli import add_parser as add_lab

    add_lab(sub)
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
