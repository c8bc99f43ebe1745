"""The ``lrnn`` command line."""

from __future__ import annotations

import argparse
import sys


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrnn", description="Linear RNNs with negative eigenvalues.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="parity tracked by eigenvalue -1; chunked vs sequential ops side by side")
    demo.add_argument("--length", type=_positive_int, default=10_000, help="number of random bits (default 10000)")
    demo.add_argument("--chunk-size", type=_positive_int, default=64, help="chunk size of the chunked mode (default 64)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from lrnn.demo import run_demo

        return run_demo(length=args.length, seed=args.seed, chunk_size=args.chunk_size)
    return 2


if __name__ == "__main__":
    sys.exit(main())
