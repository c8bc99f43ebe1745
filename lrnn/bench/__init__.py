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


_SUBCOMMANDS = {
    "ops": "time and size the core operators (lrnn.ops)",
    "decode": "cached decode and prefill speed of 130M-shaped models",
    "hf": "CPU decode speed vs HF transformers' Mamba2 (same weights)",
    "check": "fast paths vs the sequential reference on a device",
    "tasks": "generation speed (tokens/s) of the sequence tasks",
}
"""Subcommand -> one-line help; each is the module ``lrnn.bench.<name>`` with ``add_arguments`` and
``run_from_args(args, command, parser)``."""


def _build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="python -m lrnn.bench", description="lrnn benchmarks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name, help_text in _SUBCOMMANDS.items():
        module = importlib.import_module(f"lrnn.bench.{name}")
        description = getattr(module, "DESCRIPTION", None) or module.__doc__.split("\n\n")[0]
        sub = commands.add_parser(name, help=help_text, description=description)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run_from_args, parser=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default: ``sys.argv[1:]``) to its subcommand; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser().parse_args(argv)
    command = " ".join(["python -m lrnn.bench", *map(shlex.quote, argv)])
    return args.handler(args, command, args.parser)
