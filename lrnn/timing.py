"""Wall-clock timing of device work (``time.perf_counter``, the device synchronised) and the machine's
measured matmul rate: what benchmarks and training logs report achieved FLOP/s against. At the package
root so that training and the benchmarks share one implementation."""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["synchronize", "release_memory", "time_calls", "Timing", "MatmulReference", "measure_matmul", "ReadBandwidth",
           "measure_read_bandwidth"]


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


@dataclasses.dataclass(frozen=True)
class ReadBandwidth:
    """The machine's measured memory read rate: the best of several read-only kernels over one buffer."""

    nbytes: int
    kernel: str
    best_seconds: float
    rates: dict[str, float]  # kernel -> best GB/s

    @property
    def gb_per_s(self) -> float:
        return self.nbytes / self.best_seconds / 1e9


def measure_read_bandwidth(device: torch.device, nbytes: int = 2**29, repeats: int = 5) -> ReadBandwidth:
    """Read a float32 buffer of ``nbytes`` (default 512 MiB: far beyond the caches) with each of a few
    read-only kernels (a sum, a dot product, a matrix-vector product) and keep the fastest: the rate at which
    this device streams memory into its cores with the kernels PyTorch has -- the ceiling of a decode step,
    which reads every weight once."""
    rows = 4096
    cols = max(1, nbytes // 4 // rows)
    buffer = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0)).to(device)
    ones = torch.ones(cols, device=device)
    flat = buffer.view(-1)
    kernels = {"sum": lambda: flat.sum(), "dot": lambda: torch.dot(flat, flat), "mv": lambda: torch.mv(buffer, ones)}
    size = buffer.numel() * buffer.element_size()
    best = {name: min(time_calls(fn, device, warmup=1, repeats=repeats).times) for name, fn in kernels.items()}
    kernel = min(best, key=best.get)
    return ReadBandwidth(size, kernel, best[kernel], {name: size / s / 1e9 for name, s in best.items()})
