"""Generation speed of the sequence tasks: real (unpadded) tokens per second of ``Task.sample``.

For each task and length range, time ``task.sample(batch, min_length, max_length)`` (median of the
timed repeats, one fresh batch per call from a generator seeded the same way) and divide the number of
real tokens in the batch by it. The default ranges are the state-tracking benchmark's train (3-40) and
test (40-256) ranges.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lrnn.bench.report import render_table
from lrnn.timing import time_calls
from lrnn.models.io import atomic_write_text
from lrnn.tasks import TASKS, make_task

DEFAULT_RANGES = ("3-40", "40-256")


def _length_range(text: str) -> tuple[int, int]:
    """``"3-40"`` -> (3, 40); ``"64"`` -> (64, 64)."""
    try:
        lo, _, hi = text.partition("-")
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX or LENGTH, e.g. 3-40, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``tasks`` options on ``parser``."""
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), metavar="NAME",
                        help="task names (default: all registered tasks)")
    parser.add_argument("--lengths", nargs="+", type=_length_range, metavar="MIN-MAX",
                        default=[_length_range(r) for r in DEFAULT_RANGES],
                        help=f"length ranges to sample (default {' '.join(DEFAULT_RANGES)})")
    parser.add_argument("--batch", type=int, default=256, help="sequences per batch (default 256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls; the median is reported (default 5)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's setting); on a "
                        "busy machine 1 avoids waiting for a descheduled second thread")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")


def measure(name: str, batch: int, min_length: int, max_length: int, repeats: int) -> dict:
    """Tokens/s of one task and length range (a dict row of the report)."""
    task = make_task(name)
    lo = max(min_length, task.min_supported_length)
    draw = lambda: task.sample(batch, lo, max_length, generator=torch.Generator().manual_seed(0))  # noqa: E731
    tokens = int(draw().lengths.sum())
    timing = time_calls(draw, torch.device("cpu"), warmup=1, repeats=repeats)
    return {"task": name, "batch": batch, "min_length": lo, "max_length": max_length, "tokens": tokens,
            "median_s": timing.median, "tokens_per_s": tokens / timing.median,
            "best_tokens_per_s": tokens / min(timing.times)}


def run_from_args(args: argparse.Namespace, command: str, parser: argparse.ArgumentParser) -> int:
    for flag, value in (("--batch", args.batch), ("--repeats", args.repeats), ("--threads", args.threads or 1)):
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    for lo, hi in args.lengths:
        if lo < 1 or hi < lo:
            parser.error(f"--lengths must satisfy 1 <= MIN <= MAX, got {lo}-{hi}")
    names = args.tasks or sorted(TASKS)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {command}\n# cpu, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"median of {args.repeats} calls; tokens = real (unpadded) tokens\n")
    rows = []
    for name in names:
        for lo, hi in args.lengths:
            try:
                rows.append(measure(name, args.batch, lo, hi, args.repeats))
            except ValueError as err:  # e.g. a fixed odd length for an even-length task
                print(f"  skipped {name} {lo}-{hi}: {err}")
    table = [[r["task"], f"{r['min_length']}-{r['max_length']}", str(r["tokens"]),
              f"{r['median_s'] * 1e3:.2f}", f"{r['tokens_per_s'] / 1e6:.2f}", f"{r['best_tokens_per_s'] / 1e6:.2f}"]
             for r in rows]
    headers = ["task", "lengths", "tokens/batch", "median ms/batch", "M tokens/s (median)", "M tokens/s (best)"]
    print(render_table(headers, table, args.markdown))
    if rows:
        slowest = min(rows, key=lambda r: r["tokens_per_s"])
        print(f"\nslowest: {slowest['task']} {slowest['min_length']}-{slowest['max_length']} at "
              f"{slowest['tokens_per_s'] / 1e6:.2f} M tokens/s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    return 0
