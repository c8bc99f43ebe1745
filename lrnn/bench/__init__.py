"""Benchmarks for lrnn: ``python -m lrnn.bench SUBCOMMAND``.

Subcommands:
    ops      speed (GFLOP/s beside the measured matmul rate) and memory of the core operators.
    decode   cached decode tokens/s (flat in context length) and prefill tokens/s of 130M-shaped models.

Submodules are imported only when a subcommand runs, so ``python -m lrnn.bench.memory`` (the memory
sweep's child process) starts without loading the rest.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    from lrnn.bench import ops

    parser = argparse.ArgumentParser(prog="python -m lrnn.bench", description="lrnn benchmarks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    ops_parser = commands.add_parser("ops", help="time and size the core operators (lrnn.ops)",
                                     description=ops.DESCRIPTION)
    ops.add_arguments(ops_parser)
    ops_parser.set_defaults(handler=ops.run_from_args, parser=ops_parser)
    from lrnn.bench import decode

    decode_parser = commands.add_parser("decode", help="cached decode and prefill speed of 130M-shaped models",
                                        description=decode.__doc__.split("\n\n")[0])
    decode.add_arguments(decode_parser)
    decode_parser.set_defaults(handler=decode.run_from_args, parser=decode_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default: ``sys.argv[1:]``) to its subcommand; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser().parse_args(argv)
    command = " ".join(["python -m lrnn.bench", *map(shlex.quote, argv)])
    return args.handler(args, command, args.parser)
