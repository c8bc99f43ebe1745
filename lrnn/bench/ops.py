"""``lrnn bench ops``: speed and memory of the core operators, in both modes.

For every case (an op at a shape, see ``lrnn.bench.cases``) and mode (``chunk``, ``recurrent``) it times
the forward pass and forward+backward, converts the times to GFLOP/s with the chunked-algorithm FLOP
count, and sets them beside the dense matmul rate measured in the same run. A small matmul probe is
timed before and after every measurement: when it ran far slower than its best in the run, or the
measurement's repeats spread widely, the row is flagged as disturbed (machine load or thread
contention), since its rate then says more about the neighbours than about the op. Forward+backward
runs are checked against a memory budget first and skipped, not crashed, when they would not fit. Then, for the
chunk mode, it measures the peak memory of forward+backward at several sequence lengths, one fresh
process per length, to show that memory grows linearly in T.

Progress goes to stderr; the final report (text, or markdown with ``--markdown``) to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import torch

from lrnn.device import resolve_device
from lrnn.ops import compute_dtype
from lrnn.bench import report as report_mod
from lrnn.bench.cases import (BACKWARD_FLOP_FACTOR, FLOP_DEFINITIONS, Case, as_leaves, default_cases,
                              forward_backward, grad_output, quick_cases, select_cases)
from lrnn.bench.memory import (ESTIMATE_MARGIN, GB, MemoryModel, ScalingPoint, fit_memory_model,
                               measure_scaling, scaling_exponent)
from lrnn.bench.timing import (DISTURBED, MAX_PROBE_SLOWDOWN, MAX_REPEAT_SPREAD, MatmulReference, Timing,
                               disturbance, measure_matmul, release_memory, time_calls)

__all__ = ["add_arguments", "run", "Settings", "machine_info"]

MODES = ("chunk", "recurrent")
DTYPES = ("float32", "float64", "bfloat16", "float16")
SHAPE_KEYS = ("B", "T", "H", "K", "V", "D", "W")

DESCRIPTION = "Speed (GFLOP/s beside the measured matmul rate) and memory of the core operators of lrnn.ops."

#: The issue's target: chunked delta rule forward >= 30% of the measured matmul rate.
TARGET = {"case": "delta", "mode": "chunk", "pass": "fwd", "threshold": 0.30}

#: The matmul probe timed beside every measurement: side (at most --matmul-size) and timed repeats.
PROBE_SIZE = 1024
PROBE_REPEATS = 3

THREADS_HELP = ("torch intra-op threads for every timing, the matmul reference included (default: 1 on the "
                "CPU, torch's setting on CUDA). One by default because with more threads than free cores (a "
                "shared or busy machine) the chunked ops' many short parallel regions each wait for a "
                "descheduled thread: 10-25x stalls were measured with 2 threads on a loaded 2-core machine. "
                "Raise it on an idle machine to measure multi-core speed")

Log = Callable[[str], None]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------
# Command line


def _shape_override(text: str) -> tuple[str, int]:
    """Parse one ``--shapes`` item, ``KEY=SIZE`` (e.g. ``T=1024``)."""
    key, sep, size = text.partition("=")
    if not sep or key not in SHAPE_KEYS or not size.isdigit() or int(size) < 1:
        raise argparse.ArgumentTypeError(f"expected KEY=SIZE with KEY in {'/'.join(SHAPE_KEYS)} and SIZE >= 1, "
                                         f"got {text!r}")
    return key, int(size)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``ops`` options on ``parser``."""
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="input dtype (default: float32)")
    parser.add_argument("--ops", nargs="+", metavar="NAME",
                        help="op names (delta_rule, decay_recurrence, short_conv) or case names (delta, "
                             "gated_delta, delta_product, mamba2, gla, short_conv); default: all")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="default: both")
    parser.add_argument("--shapes", nargs="+", type=_shape_override, metavar="KEY=SIZE",
                        help="override dimensions of every case that has them, e.g. --shapes T=1024 B=2 "
                             f"(keys {', '.join(SHAPE_KEYS)}; T counts tokens)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes, one timed run, short memory sweep: a smoke test in seconds")
    parser.add_argument("--chunk-size", type=int, default=None, help="chunk size (default 64; 16 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per chunk-mode measurement "
                        "(default 3; 1 with --quick); the median is reported")
    parser.add_argument("--recurrent-repeats", type=int, default=1,
                        help="timed runs per recurrent-mode measurement (default 1: the Python loop is slow)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed runs before timing (default 1; 0 with --quick)")
    parser.add_argument("--time-budget", type=float, default=60.0, metavar="SECONDS",
                        help="cap on the timed runs of one measurement: at most budget / warm-up time "
                             "(at least 1) (default 60)")
    parser.add_argument("--max-memory-gb", type=float, default=12.0,
                        help="skip a forward+backward whose estimated memory exceeds this (default 12)")
    parser.add_argument("--memory-lengths", nargs="+", type=int, default=None, metavar="T",
                        help="sequence lengths of the memory-vs-T sweep (default 512 1024 2048 4096; "
                             "32 64 with --quick)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory-vs-T sweep")
    parser.add_argument("--matmul-size", type=int, default=None,
                        help="side of the square reference matmul (default 4096; 256 with --quick)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--markdown", action="store_true", help="print the report as markdown")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a run needs, resolved from the command line."""

    device: torch.device
    dtype: torch.dtype
    threads: int
    cases: list[Case]
    modes: list[str]
    chunk_size: int
    warmup: int
    repeats: int
    recurrent_repeats: int
    time_budget_s: float
    max_memory_gb: float
    memory_lengths: list[int]
    matmul_size: int
    matmul_repeats: int

    @property
    def probe_size(self) -> int:
        return min(PROBE_SIZE, self.matmul_size)

    def repeats_for(self, mode: str) -> int:
        return self.recurrent_repeats if mode == "recurrent" else self.repeats

    def as_dict(self) -> dict[str, Any]:
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                "threads": self.threads, "probe_size": self.probe_size, "probe_repeats": PROBE_REPEATS,
                "max_probe_slowdown": MAX_PROBE_SLOWDOWN, "max_repeat_spread": MAX_REPEAT_SPREAD,
                "modes": self.modes, "chunk_size": self.chunk_size, "warmup": self.warmup,
                "repeats": self.repeats, "recurrent_repeats": self.recurrent_repeats,
                "time_budget_s": self.time_budget_s, "max_memory_gb": self.max_memory_gb,
                "memory_lengths": self.memory_lengths}


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Apply the --quick defaults and the overrides; raise ValueError for unusable values."""
    cases = select_cases(quick_cases() if args.quick else default_cases(), args.ops)
    if args.shapes:
        overrides = dict(args.shapes)
        cases = [case.with_shape(**overrides) for case in cases]
    positive = {"--threads": args.threads, "--chunk-size": args.chunk_size, "--repeats": args.repeats,
                "--recurrent-repeats": args.recurrent_repeats, "--matmul-size": args.matmul_size}
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.warmup is not None and args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    lengths = args.memory_lengths or ([32, 64] if args.quick else [512, 1024, 2048, 4096])
    device = resolve_device(args.device)
    return Settings(
        device=device,
        dtype=getattr(torch, args.dtype),
        threads=args.threads or (1 if device.type == "cpu" else torch.get_num_threads()),
        cases=cases,
        modes=[mode for mode in MODES if mode in args.modes],
        chunk_size=args.chunk_size or (16 if args.quick else 64),
        warmup=(0 if args.quick else 1) if args.warmup is None else args.warmup,
        repeats=args.repeats or (1 if args.quick else 3),
        recurrent_repeats=args.recurrent_repeats,
        time_budget_s=args.time_budget,
        max_memory_gb=args.max_memory_gb,
        memory_lengths=[] if args.no_memory else sorted(set(lengths)),
        matmul_size=args.matmul_size or (256 if args.quick else 4096),
        matmul_repeats=3 if args.quick else 5,
    )


# ----------------------------------------------------------------------------------------------------
# Machine


def _cpu_model() -> str:
    """``model name`` from /proc/cpuinfo, else whatever ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _git_revision() -> str | None:
    """``<short hash>`` of the checkout lrnn is imported from; ``+dirty`` when lrnn/ops has local changes."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "lrnn/ops"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def _load_average() -> float | None:
    """1-minute load average (None where the platform has none): other work on the CPU skews timings."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model, cores, torch/Python versions, intra-op threads, the device's name and the current load."""
    cpu = _cpu_model()
    return {
        "cpu_model": cpu,
        "logical_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "load_average_at_start": _load_average(),
        "lrnn_revision": _git_revision(),
    }


# ----------------------------------------------------------------------------------------------------
# One measurement


def _time_forward(case: Case, inputs: dict[str, torch.Tensor], mode: str, s: Settings) -> Timing:
    def step() -> None:
        with torch.no_grad():
            case.run(inputs, mode, s.chunk_size)

    return time_calls(step, s.device, warmup=s.warmup, repeats=s.repeats_for(mode), budget_s=s.time_budget_s)


def _time_forward_backward(case: Case, inputs: dict[str, torch.Tensor], mode: str, s: Settings) -> Timing:
    leaves = as_leaves(inputs)
    grad = grad_output(case.output_shape(), s.device, s.dtype)
    timing = time_calls(lambda: forward_backward(case, leaves, grad, mode, s.chunk_size), s.device,
                        warmup=s.warmup, repeats=s.repeats_for(mode), budget_s=s.time_budget_s)
    del leaves, grad
    return timing


def _result(case: Case, mode: str, pass_: str, flops: int, timing: Timing | None, matmul_gflops: float,
            estimate: MemoryModel | None = None, skipped: str | None = None) -> dict[str, Any]:
    """One row of the results (JSON-ready); ``fraction_of_matmul`` is relative to ``matmul_gflops``."""
    row: dict[str, Any] = {"case": case.name, "op": case.op, "shape": dict(case.shape),
                           "shape_label": case.shape_label(), "mode": mode, "pass": pass_, "flops": flops,
                           "skipped": skipped, "times_s": [], "median_s": None, "gflops": None,
                           "fraction_of_matmul": None, "estimated_peak_bytes": None,
                           "budget_bytes": None, "measured_peak_bytes": None, "probe_gflops": None,
                           "disturbed": None}
    if estimate is not None:
        row["estimated_peak_bytes"] = estimate.at(case.tokens).peak_above_inputs
        row["budget_bytes"] = estimate.budget_bytes(case.tokens)
    if timing is not None:
        gflops = flops / timing.median / 1e9
        row.update(times_s=timing.times, median_s=timing.median, gflops=gflops,
                   fraction_of_matmul=gflops / matmul_gflops)
    return row


def _set_reference(rows: list[dict[str, Any]], matmul_gflops: float) -> None:
    """Recompute every row's fraction of matmul against the final reference rate."""
    for row in rows:
        if row["gflops"] is not None:
            row["fraction_of_matmul"] = row["gflops"] / matmul_gflops


def _describe(row: dict[str, Any]) -> str:
    label = f"{row['case']} {row['mode']} {row['pass']}"
    if row["skipped"]:
        return f"{label}: {row['skipped']}"
    return (f"{label}: {report_mod.format_seconds(row['median_s'])} (median of {len(row['times_s'])}), "
            f"{row['gflops']:.1f} GFLOP/s = {100 * row['fraction_of_matmul']:.1f}% of matmul"
            + (f"; {row['disturbed']}" if row["disturbed"] else ""))


class MatmulProbe:
    """The small matmul timed before and after every measurement (median GFLOP/s of PROBE_REPEATS calls).

    It remembers the best rate seen, the yardstick ``lrnn.bench.timing.disturbance`` compares against.
    """

    def __init__(self, s: Settings) -> None:
        self.settings, self.best = s, 0.0

    def __call__(self) -> float:
        s = self.settings
        rate = measure_matmul(s.device, compute_dtype(s.dtype), s.probe_size, PROBE_REPEATS).median_gflops
        self.best = max(self.best, rate)
        return rate


def _check_disturbance(row: dict[str, Any], best_probe: float) -> None:
    """Set ``row["disturbed"]`` from its repeats and the probes beside it (timed rows only)."""
    if row["probe_gflops"] is not None:
        row["disturbed"] = disturbance(row["times_s"], *row["probe_gflops"], best_probe)


def _probe_after(row: dict[str, Any], before: float, probe: MatmulProbe) -> float:
    """Probe after ``row``'s timing, record both probe rates and the verdict; the probe is the next ``before``."""
    after = probe()
    row["probe_gflops"] = [before, after]
    _check_disturbance(row, probe.best)
    return after


def bench_case(case: Case, s: Settings, matmul_gflops: float, models: dict[tuple[str, str], MemoryModel],
               probe: MatmulProbe, log: Log = _log) -> list[dict[str, Any]]:
    """Forward and forward+backward of ``case`` in every selected mode (fills ``models`` per mode), each
    timing between two runs of ``probe``."""
    rows = []
    inputs = case.make_inputs(s.device, s.dtype)
    flops = case.flops(s.chunk_size)
    before = probe()
    for mode in s.modes:
        rows.append(_result(case, mode, "fwd", flops, _time_forward(case, inputs, mode, s), matmul_gflops))
        before = _probe_after(rows[-1], before, probe)
        log(_describe(rows[-1]))
        release_memory(s.device)

        model = models[(case.name, mode)] = fit_memory_model(case, mode, s.chunk_size, s.device, s.dtype)
        needs = model.budget_bytes(case.tokens)
        fwd_bwd_flops = BACKWARD_FLOP_FACTOR * flops
        if needs > s.max_memory_gb * GB:
            skipped = f"skipped (needs ~{needs / GB:.3g} GB)"
            rows.append(_result(case, mode, "fwd+bwd", fwd_bwd_flops, None, matmul_gflops, model, skipped))
        else:
            timing = _time_forward_backward(case, inputs, mode, s)
            rows.append(_result(case, mode, "fwd+bwd", fwd_bwd_flops, timing, matmul_gflops, model))
            before = _probe_after(rows[-1], before, probe)
        log(_describe(rows[-1]))
        release_memory(s.device)
    del inputs
    release_memory(s.device, collect=True)
    return rows


# ----------------------------------------------------------------------------------------------------
# Memory vs T


def _scaling_dicts(points: list[ScalingPoint]) -> list[dict[str, Any]]:
    """Points as dicts with bytes per token and the per-token ratio to the first measured length."""
    first = next((p for p in points if p.measured), None)
    out = []
    for p in points:
        per_token = None if p.measured is None else p.measured / p.tokens
        ratio = None if per_token is None or first is None else per_token / (first.measured / first.tokens)
        out.append({"case": p.case, "tokens": p.tokens, "measured_bytes": p.measured,
                    "estimated_bytes": p.estimated, "bytes_per_token": per_token, "per_token_ratio": ratio,
                    "note": p.note})
    return out


def memory_sweep(s: Settings, models: dict[tuple[str, str], MemoryModel], log: Log = _log) -> dict[str, Any] | None:
    """Chunk-mode forward+backward peak memory at each of ``s.memory_lengths``, per case."""
    if not s.memory_lengths or "chunk" not in s.modes:
        return None
    points, exponents = [], {}
    for case in s.cases:
        model = models.get((case.name, "chunk")) or fit_memory_model(case, "chunk", s.chunk_size, s.device, s.dtype)
        case_points = measure_scaling(case, s.memory_lengths, model, mode="chunk", chunk_size=s.chunk_size,
                                      device=s.device, dtype=s.dtype, budget_bytes=s.max_memory_gb * GB, log=log)
        points += _scaling_dicts(case_points)
        exponents[case.name] = scaling_exponent(case_points)
    return {"mode": "chunk", "lengths": s.memory_lengths, "points": points, "exponents": exponents}


def _attach_measured_peaks(rows: list[dict[str, Any]], sweep: dict[str, Any] | None) -> None:
    """Copy the sweep's measured peak into the chunk fwd+bwd row of the same case and T."""
    if sweep is None:
        return
    measured = {(p["case"], p["tokens"]): p["measured_bytes"] for p in sweep["points"]}
    for row in rows:
        if row["mode"] == "chunk" and row["pass"] == "fwd+bwd":
            row["measured_peak_bytes"] = measured.get((row["case"], row["shape"]["T"]))


# ----------------------------------------------------------------------------------------------------
# The command


def _log_disturbed(rows: list[dict[str, Any]], log: Log) -> None:
    """One warning naming every disturbed measurement (none: silence)."""
    disturbed = [f"{r['case']} {r['mode']} {r['pass']}" for r in rows if r["disturbed"]]
    if disturbed:
        log(f"warning: {len(disturbed)} of {len(rows)} measurements {DISTURBED} (their rates understate the "
            f"op): {', '.join(disturbed)}. Rerun on a quieter machine, or with fewer --threads.")


def _target(rows: list[dict[str, Any]]) -> dict[str, Any]:
    row = next((r for r in rows if (r["case"], r["mode"], r["pass"]) ==
                (TARGET["case"], TARGET["mode"], TARGET["pass"])), None)
    shape = row["shape_label"] if row else "B4 T2048 H16 K128 V128"
    return {"description": f"chunked delta rule forward ({shape})", "threshold": TARGET["threshold"],
            "fraction": None if row is None else row["fraction_of_matmul"]}


def _measure_matmul(s: Settings, when: str, log: Log) -> MatmulReference:
    matmul = measure_matmul(s.device, compute_dtype(s.dtype), s.matmul_size, s.matmul_repeats)
    log(f"matmul {matmul.size}x{matmul.size} {str(matmul.dtype).removeprefix('torch.')} ({when}): "
        f"{matmul.gflops:.1f} GFLOP/s (best of {matmul.repeats})")
    release_memory(s.device)
    return matmul


def run(s: Settings, command: str, log: Log = _log) -> dict[str, Any]:
    """Run every measurement with ``s.threads`` intra-op threads (restored afterwards); return the report.

    The matmul reference is measured before and after the timings; ratios use the higher of the two, so
    a slowdown of the whole machine during the run shows up as a gap between them. Each row also says
    whether it was disturbed (``lrnn.bench.timing.disturbance``), judged against the best probe rate.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        return _run(s, command, log)
    finally:
        torch.set_num_threads(previous)


def _run(s: Settings, command: str, log: Log) -> dict[str, Any]:
    machine = machine_info(s.device)
    load = machine["load_average_at_start"]
    log(f"lrnn bench ops: device {s.device}, dtype {str(s.dtype).removeprefix('torch.')}, torch {machine['torch']}, "
        f"{machine['torch_threads']} intra-op thread(s), {machine['cpu_model']}, {machine['logical_cores']} logical "
        f"cores, 1-minute load average {'unknown' if load is None else f'{load:.2f}'}")
    if load is not None and load > 0.5:
        log(f"warning: 1-minute load average is {load:.2f} before starting; other processes compete for the "
            "CPU and will inflate the timings")
    models: dict[tuple[str, str], MemoryModel] = {}
    # The memory sweep's child processes run first, while this process is still small: after the
    # recurrent-mode backward passes the allocator keeps many GB resident here, and a child measuring a
    # multi-GB peak beside it can push a 24 GB machine out of memory.
    sweep = memory_sweep(s, models, log)
    start = _measure_matmul(s, "start", log)
    probe = MatmulProbe(s)
    rows = [row for case in s.cases for row in bench_case(case, s, start.gflops, models, probe, log)]
    end = _measure_matmul(s, "end", log)
    reference = max(start, end, key=lambda m: m.gflops)
    _set_reference(rows, reference.gflops)
    for row in rows:  # judged again against the run's best probe rate, which may have come late
        _check_disturbance(row, probe.best)
    _log_disturbed(rows, log)
    _attach_measured_peaks(rows, sweep)
    return {
        "command": command,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine,
        "settings": s.as_dict(),
        "matmul": {"size": reference.size, "dtype": str(reference.dtype).removeprefix("torch."),
                   "repeats": reference.repeats, "best_seconds": reference.best_seconds,
                   "gflops": reference.gflops, "gflops_start": start.gflops, "gflops_end": end.gflops,
                   "probe_best_gflops": probe.best},
        "flop_definitions": FLOP_DEFINITIONS,
        "backward_flop_factor": BACKWARD_FLOP_FACTOR,
        "estimate_margin": ESTIMATE_MARGIN,
        "cases": [{"name": c.name, "op": c.op, "description": c.description, "shape": dict(c.shape),
                   "shape_label": c.shape_label()} for c in s.cases],
        "results": rows,
        "memory_scaling": sweep,
        "target": _target(rows),
    }


def run_from_args(args: argparse.Namespace, command: str, parser: argparse.ArgumentParser) -> int:
    """``lrnn bench ops``: resolve the settings, run, print the report, write JSON if asked."""
    return report_mod.run_and_emit(args, command, parser, settings_from_args, run, report_mod.render)
