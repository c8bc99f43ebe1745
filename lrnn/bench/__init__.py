"""Benchmarks for lrnn: ``lrnn bench SUBCOMMAND`` (``python -m lrnn.bench SUBCOMMAND`` is an alias).

Subcommands:
    ops      speed (GFLOP/s beside the measured matmul rate) and memory of the core operators.
    decode   cached decode tokens/s (flat in context length) and prefill tokens/s of 130M-shaped models.
    hf       CPU decode tokens/s of a 130M-shaped Mamba-2 beside HF transformers' Mamba2 (same weights).
    check    fast paths vs the sequential reference on any device (e.g. a GPU), outputs and gradients.
    tasks    generation speed (real tokens/s) of the sequence tasks in ``lrnn.tasks``.
    train    one full training step (fwd, bwd, AdamW) of every mixer: ms/step, model FLOP/s vs matmul.
    speculative  greedy decoding of trained models: autoregressive vs chain / tree speculative, tokens/s,
             accepted tokens per step, outputs checked token for token.
    verify   what a speculative step's target work costs per mixer (random weights of an LM shape): the
             decode step, a chain's chunked forward, chain- and tree-shaped passes with the select commit.

Submodules are imported only when ``add_subcommands`` builds the parser, so ``python -m lrnn.bench.memory``
(the memory sweep's child process) starts without loading the rest.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["SUBCOMMANDS", "add_subcommands", "main"]


SUBCOMMANDS = {
    "ops": "time and size the core operators (lrnn.ops)",
    "decode": "cached decode and prefill speed of 130M-shaped models",
    "hf": "CPU decode speed vs HF transformers' Mamba2 (same weights)",
    "check": "fast paths vs the sequential reference on a device",
    "tasks": "generation speed (tokens/s) of the sequence tasks",
    "train": "time a full training step of every mixer (parity, word-problem and LM configs)",
    "speculative": "greedy decoding speed: autoregressive vs chain and tree speculative decoding",
    "verify": "cost of a speculative step's verification pass and commit per mixer (decode step = 1)",
}
"""Subcommand -> one-line help; each is the module ``lrnn.bench.<name>`` with ``add_arguments(parser)``
and ``run_from_args(args, command, parser) -> int``."""


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    """Declare the benchmark subcommands on ``parser`` (the ``lrnn bench`` parser): the one definition
    of their arguments. A parsed namespace carries ``bench_command`` (the name), ``bench_run`` (the
    module's ``run_from_args``) and ``bench_parser`` (the subcommand's parser, for usage errors)."""
    import importlib

    commands = parser.add_subparsers(dest="bench_command", required=True, metavar="SUBCOMMAND")
    for name, help_text in SUBCOMMANDS.items():
        module = importlib.import_module(f"lrnn.bench.{name}")
        description = getattr(module, "DESCRIPTION", None) or module.__doc__.split("\n\n")[0]
        sub = commands.add_parser(name, help=help_text, description=description)
        module.add_arguments(sub)
        sub.set_defaults(bench_run=module.run_from_args, bench_parser=sub)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lrnn.bench ARGS``: an alias of ``lrnn bench ARGS`` (the same parser and error handling;
    ``argv`` defaults to ``sys.argv[1:]``). Imports the command line, the application above this package,
    only when called: the alias is an entry point, not library code."""
    from lrnn.cli import main as lrnn_main

    return lrnn_main(["bench", *(sys.argv[1:] if argv is None else argv)])
