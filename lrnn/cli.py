"""The ``lrnn`` command line.

Each subcommand has an ``_add_<name>(subparsers)`` function that declares its arguments and a
``_run_<name>(args) -> int`` function; ``COMMANDS`` maps names to runners. The work itself lives in
the library layers (``lrnn.training``, ``lrnn.tasks``, ``lrnn.models``, ...): this module only parses
arguments, calls them and turns user errors into one-line messages.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# ---- demo --------------------------------------------------------------------------------------
def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="parity tracked by eigenvalue -1; chunked vs sequential ops side by side")
    demo.add_argument("--length", type=_positive_int, default=10_000, help="number of random bits (default 10000)")
    demo.add_argument("--chunk-size", type=_positive_int, default=64, help="chunk size of the chunked mode (default 64)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _run_demo(args: argparse.Namespace) -> int:
    from lrnn.demo import run_demo

    return run_demo(length=args.length, seed=args.seed, chunk_size=args.chunk_size)


# ---- registry ----------------------------------------------------------------------------------
PARSERS: list[Callable] = [_add_demo]
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"demo": _run_demo}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrnn", description="Linear RNNs with negative eigenvalues.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        # User errors (bad task name, missing checkpoint, ...) get one line, not a traceback.
        parser.exit(2, f"lrnn {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"lrnn {args.command}: interrupted\n")


if __name__ == "__main__":
    sys.exit(main())
