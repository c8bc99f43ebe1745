"""Wall-clock timing (``time.perf_counter``, device synchronised), the matmul reference rate, and the check
that flags a measurement disturbed by machine load or thread contention."""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from collections.abc import Callable, Sequence

import torch

__all__ = ["synchronize", "release_memory", "time_calls", "Timing", "MatmulReference", "measure_matmul",
           "DISTURBED", "MAX_PROBE_SLOWDOWN", "MAX_REPEAT_SPREAD", "disturbance"]

DISTURBED = "disturbed: machine load / thread contention"
"""The flag a measurement gets when ``disturbance`` finds the machine was not the same around it."""

MAX_PROBE_SLOWDOWN = 2.0
"""A measurement is disturbed when the matmul probe beside it ran this many times slower than the run's best."""

MAX_REPEAT_SPREAD = 3.0
"""A measurement is disturbed when its median timed repeat took this many times its fastest."""


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a timer read afterwards covers them (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device, collect: bool = False) -> None:
    """Hand cached CUDA blocks back so one case's memory does not carry over into the next.

    Tensors are freed by reference counting as soon as they go out of scope; ``collect`` also runs the
    cycle collector, which is slow (~0.1 s with torch loaded), so callers ask for it once per case.
    """
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call: every timed repeat, and their median."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``, with the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_calls(fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int,
               budget_s: float | None = None) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then up to ``repeats`` times timed, one timer per call.

    With ``budget_s``, slow calls get fewer timed repeats: ``max(1, budget_s // t_warmup)``, where
    ``t_warmup`` is the last warm-up call's time (so a call slower than the budget runs warm-up + 1).
    """
    last_warmup = None
    for _ in range(warmup):
        last_warmup = _timed(fn, device)
    if budget_s is not None and last_warmup:
        repeats = max(1, min(repeats, int(budget_s // last_warmup)))
    return Timing([_timed(fn, device) for _ in range(repeats)])


@dataclasses.dataclass(frozen=True)
class MatmulReference:
    """The best (and the median) rate of ``repeats`` square ``size x size`` matmuls in ``dtype``."""

    size: int
    dtype: torch.dtype
    repeats: int
    best_seconds: float
    median_seconds: float

    @property
    def flops(self) -> int:
        return 2 * self.size ** 3

    @property
    def gflops(self) -> float:
        return self.flops / self.best_seconds / 1e9

    @property
    def median_gflops(self) -> float:
        """The typical rate: unlike the best one, it drops when the machine is busy for most of the calls."""
        return self.flops / self.median_seconds / 1e9


def measure_matmul(device: torch.device, dtype: torch.dtype, size: int = 4096, repeats: int = 5) -> MatmulReference:
    """Measure the machine's dense matmul throughput (best and median of ``repeats`` after one warm-up)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    timing = time_calls(lambda: a @ b, device, warmup=1, repeats=repeats)
    return MatmulReference(size, dtype, repeats, min(timing.times), timing.median)


def disturbance(times: Sequence[float], probe_before: float, probe_after: float, probe_best: float, *,
                max_slowdown: float = MAX_PROBE_SLOWDOWN, max_spread: float = MAX_REPEAT_SPREAD) -> str | None:
    """Why a measurement cannot be trusted, or None when nothing says so.

    On a shared machine, or with more intra-op threads than free cores, a busy neighbour can stall an
    op 10-25x (its many short parallel regions each wait for a descheduled thread), which no single
    number shows. Two symptoms are checked:

    * the matmul probe rate (GFLOP/s) measured right before or right after the measurement fell below
      ``probe_best / max_slowdown``, where ``probe_best`` is the best probe rate of the whole run;
    * the timed repeats ``times`` (seconds) spread: ``median(times) / min(times) > max_spread``. The
      median, not the slowest, so that one repeat preempted once (which the reported median absorbs)
      is no reason; most repeats running far slower than the fastest one is.

    Returns ``DISTURBED`` plus the evidence, e.g. ``"disturbed: machine load / thread contention
    (matmul probe beside it at 20% of the run's best)"``.
    """
    times = list(times)
    if not times or any(not t > 0 for t in times):
        raise ValueError(f"times must be a non-empty sequence of seconds > 0, got {times!r}")
    for name, value in (("probe_before", probe_before), ("probe_after", probe_after), ("probe_best", probe_best)):
        if not value > 0:
            raise ValueError(f"{name} must be a rate > 0 (GFLOP/s), got {value!r}")
    for name, value in (("max_slowdown", max_slowdown), ("max_spread", max_spread)):
        if not value >= 1:
            raise ValueError(f"{name} must be a ratio >= 1, got {value!r}")
    evidence = []
    slowest_probe = min(probe_before, probe_after) / probe_best
    if slowest_probe < 1 / max_slowdown:
        evidence.append(f"matmul probe beside it at {100 * slowest_probe:.0f}% of the run's best")
    spread = statistics.median(times) / min(times)
    if spread > max_spread:
        evidence.append(f"median of {len(times)} repeats took {spread:.1f}x the fastest")
    return f"{DISTURBED} ({'; '.join(evidence)})" if evidence else None
