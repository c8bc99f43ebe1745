"""Benchmarks for lrnn: ``python -m lrnn.bench SUBCOMMAND``.

Subcommands:
    ops      speed (GFLOP/s beside the measured matmul rate) and memory of the core operators.
    decode   cached decode tokens/s (flat in context length) and prefill tokens/s of 130M-shaped models.
    hf       CPU decode tokens/s of a 130M-shaped Mamba-2 beside HF transformers' Mamba2 (same weights).
    check    fast paths vs the sequential reference on any device (e.g. a GPU), outputs and gradients.
    tasks    generation speed (real tokens/s) of the sequence tasks in ``lrnn.tasks``.

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
    from lrnn.bench import hf

    hf_parser = commands.add_parser("hf", help="CPU decode speed vs HF transformers' Mamba2 (same weights)",
                                    description=hf.__doc__.split("\n\n")[0])
    hf.add_arguments(hf_parser)
    hf_parser.set_defaults(handler=hf.run_from_args, parser=hf_parser)
    from lrnn.bench import check

    check_parser = commands.add_parser("check", help="fast paths vs the sequential reference on a device",
                                       description=check.__doc__.split("\n\n")[0])
    check.add_arguments(check_parser)
    check_parser.set_defaults(handler=check.run_from_args, parser=check_parser)
    from lrnn.bench import tasks

    tasks_parser = commands.add_parser("tasks", help="generation speed (tokens/s) of the sequence tasks",
                                       description=tasks.__doc__.split("\n\n")[0])
    tasks.add_arguments(tasks_parser)
    tasks_parser.set_defaults(handler=tasks.run_from_args, parser=tasks_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default: ``sys.argv[1:]``) to its subcommand; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser().parse_args(argv)
    command = " ".join(["python -m lrnn.bench", *map(shlex.quote, argv)])
    return args.handler(args, command, args.parser)
