"""Memory of forward+backward: a cheap estimate before running, and measured peaks in fresh processes.

Estimate
    One forward pass at two short lengths (``chunk_size`` and ``2 * chunk_size`` tokens) with
    ``torch.autograd.graph.saved_tensors_hooks`` adds up the distinct storages autograd keeps for the
    backward pass (the inputs' own storages excluded). Every footprint is affine in T, so the two points
    extrapolate to any length. The estimated peak above the inputs is
    ``saved + input grads + output``; transient buffers of the backward pass are not included, so the
    estimate is a lower bound and the budget check adds ``ESTIMATE_MARGIN`` on top.

Measurement
    ``python -m lrnn.bench.memory SPEC`` runs one forward+backward in a new interpreter and prints the
    peak above a baseline taken once the inputs exist. On the CPU that is the peak resident set size
    (``VmHWM`` from /proc/self/status, reset at the baseline through /proc/self/clear_refs) minus the
    resident set size at the baseline (``VmRSS``); ``ru_maxrss`` is not used because after fork+exec it
    starts from the parent's peak. On CUDA it is ``torch.cuda.max_memory_allocated`` (reset at the
    baseline) minus ``memory_allocated``. A fresh process per length keeps one run's peak, allocator
    caches and heap from leaking into the next.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import subprocess
import sys

import torch

from lrnn.bench.cases import Case, as_leaves, case_by_name, forward_backward, grad_output
from lrnn.timing import release_memory, synchronize

__all__ = ["Footprint", "MemoryModel", "fit_memory_model", "measure_footprint", "peak_above_inputs",
           "ScalingPoint", "measure_scaling", "scaling_exponent", "ESTIMATE_MARGIN", "GB"]

GB = 1e9

#: Budget checks use ``ESTIMATE_MARGIN * estimate``: transients of the backward pass are not in it.
ESTIMATE_MARGIN = 1.25

_CHILD_TIMEOUT_S = 1800


# ----------------------------------------------------------------------------------------------------
# Estimate


@dataclasses.dataclass(frozen=True)
class Footprint:
    """Bytes of one forward+backward: inputs, their grads, the output, and tensors saved for backward."""

    inputs: int
    grads: int
    output: int
    saved: int

    @property
    def peak_above_inputs(self) -> int:
        """The estimated peak on top of the inputs: saved tensors, input grads and the output."""
        return self.saved + self.grads + self.output

    @property
    def total(self) -> int:
        return self.inputs + self.peak_above_inputs


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return str(t.device), t.untyped_storage().data_ptr()


def measure_footprint(case: Case, mode: str, chunk_size: int, device: torch.device,
                      dtype: torch.dtype) -> Footprint:
    """Run the forward pass once and add up what autograd saves (distinct storages, inputs excluded)."""
    leaves = as_leaves(case.make_inputs(device, dtype))
    input_keys = {_storage_key(t) for t in leaves.values()}
    saved: dict[tuple[str, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in input_keys:
            saved[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = case.run(leaves, mode, chunk_size)
    nbytes = lambda t: t.numel() * t.element_size()  # noqa: E731
    footprint = Footprint(
        inputs=sum(nbytes(t) for t in leaves.values()),
        grads=sum(nbytes(t) for t in leaves.values() if t.requires_grad),
        output=nbytes(out),
        saved=sum(saved.values()),
    )
    del out, leaves
    release_memory(device)
    return footprint


@dataclasses.dataclass(frozen=True)
class MemoryModel:
    """Footprints measured at two lengths, extrapolated linearly in T."""

    short: tuple[int, Footprint]
    long: tuple[int, Footprint]

    def at(self, tokens: int) -> Footprint:
        """The footprint at ``tokens`` tokens (each field affine in T)."""
        (t0, f0), (t1, f1) = self.short, self.long
        if t1 == t0:
            return f1

        def line(field: str) -> int:
            y0, y1 = getattr(f0, field), getattr(f1, field)
            return max(0, round(y0 + (y1 - y0) * (tokens - t0) / (t1 - t0)))

        return Footprint(**{field.name: line(field.name) for field in dataclasses.fields(Footprint)})

    def budget_bytes(self, tokens: int) -> int:
        """What a run must fit in: the inputs plus ``ESTIMATE_MARGIN`` times the estimated peak above them."""
        footprint = self.at(tokens)
        return round(footprint.inputs + ESTIMATE_MARGIN * footprint.peak_above_inputs)


def fit_memory_model(case: Case, mode: str, chunk_size: int, device: torch.device,
                     dtype: torch.dtype) -> MemoryModel:
    """Probe the forward pass at ``chunk_size`` and ``2 * chunk_size`` tokens (capped at the case's T)."""
    lengths = sorted({min(case.tokens, chunk_size), min(case.tokens, 2 * chunk_size)})
    points = [(t, measure_footprint(case.with_shape(T=t), mode, chunk_size, device, dtype)) for t in lengths]
    return MemoryModel(points[0], points[-1])


# ----------------------------------------------------------------------------------------------------
# Measurement in a child process


def _proc_status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes; None where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _baseline_bytes(device: torch.device) -> int:
    """Memory in use now, after resetting the peak counter where the platform allows it.

    On the CPU, ``ru_maxrss`` is not used: after fork+exec it starts from the parent's peak RSS. The
    peak is ``VmHWM``, reset here through /proc/self/clear_refs; without /proc the fallback is
    ``ru_maxrss`` (kB on Linux, bytes on macOS), which is only meaningful in a small parent process.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    _reset_peak_rss()
    current = _proc_status_bytes("VmRSS")
    return _ru_maxrss_bytes() if current is None else current


def _ru_maxrss_bytes() -> int:
    unit = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit


def _peak_bytes(device: torch.device) -> int:
    """Peak memory since ``_baseline_bytes``."""
    if device.type == "cuda":
        synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    peak = _proc_status_bytes("VmHWM")
    return _ru_maxrss_bytes() if peak is None else peak


def peak_above_inputs(case: Case, mode: str, chunk_size: int, device: torch.device, dtype: torch.dtype) -> int:
    """Peak bytes of one forward+backward above a baseline taken with inputs and upstream grad allocated.

    Meant for a fresh process: a short warm-up run first loads kernels and starts thread pools.
    """
    warm = case.with_shape(T=min(case.tokens, chunk_size))
    forward_backward(warm, as_leaves(warm.make_inputs(device, dtype)),
                     grad_output(warm.output_shape(), device, dtype), mode, chunk_size)
    release_memory(device)
    leaves = as_leaves(case.make_inputs(device, dtype))
    grad = grad_output(case.output_shape(), device, dtype)
    baseline = _baseline_bytes(device)
    forward_backward(case, leaves, grad, mode, chunk_size)
    return _peak_bytes(device) - baseline


def _child_main(argv: list[str]) -> None:
    """Entry point of ``python -m lrnn.bench.memory SPEC``: print ``{"peak_above_inputs": bytes}``."""
    spec = json.loads(argv[0])
    case = case_by_name(spec["case"]).with_shape(**spec["shape"])
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    peak = peak_above_inputs(case, spec["mode"], spec["chunk_size"], device, dtype)
    print(json.dumps({"peak_above_inputs": peak}))


# ----------------------------------------------------------------------------------------------------
# Scaling over T, one child process per length


@dataclasses.dataclass(frozen=True)
class ScalingPoint:
    """One length of a case: measured peak above the inputs (None if not run), the estimate, and why not."""

    case: str
    tokens: int
    measured: int | None
    estimated: int
    note: str | None = None


def _run_child(case: Case, mode: str, chunk_size: int, device: torch.device, dtype: torch.dtype) -> int:
    """Measure ``peak_above_inputs`` in a new interpreter; raises RuntimeError with its stderr on failure."""
    spec = {"case": case.name, "shape": dict(case.shape), "mode": mode, "chunk_size": chunk_size,
            "device": str(device), "dtype": str(dtype).removeprefix("torch.")}
    proc = subprocess.run([sys.executable, "-m", "lrnn.bench.memory", json.dumps(spec)],
                          capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S, env=dict(os.environ))
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise RuntimeError(f"child failed (exit {proc.returncode}): {tail}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_above_inputs"])


def measure_scaling(case: Case, lengths: list[int], model: MemoryModel, *, mode: str, chunk_size: int,
                    device: torch.device, dtype: torch.dtype, budget_bytes: float,
                    log=print) -> list[ScalingPoint]:
    """Peak memory of forward+backward at each length in ``lengths``, one fresh process each."""
    points = []
    for tokens in lengths:
        estimated = model.at(tokens).peak_above_inputs
        needs = model.budget_bytes(tokens)
        if needs > budget_bytes:
            note = f"skipped (needs ~{needs / GB:.3g} GB)"
            points.append(ScalingPoint(case.name, tokens, None, estimated, note))
            log(f"  memory {case.name} T={tokens}: {note}")
            continue
        try:
            measured = _run_child(case.with_shape(T=tokens), mode, chunk_size, device, dtype)
            points.append(ScalingPoint(case.name, tokens, measured, estimated))
            log(f"  memory {case.name} T={tokens}: {measured / 2**20:.1f} MiB above inputs "
                f"(estimate {estimated / 2**20:.1f} MiB)")
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as err:
            points.append(ScalingPoint(case.name, tokens, None, estimated, f"failed: {err}"))
            log(f"  memory {case.name} T={tokens}: failed: {err}")
    return points


def scaling_exponent(points: list[ScalingPoint]) -> float | None:
    """``log(peak_last / peak_first) / log(T_last / T_first)`` over the measured points: 1 is linear in T."""
    measured = [p for p in points if p.measured]
    if len(measured) < 2:
        return None
    first, last = measured[0], measured[-1]
    return math.log(last.measured / first.measured) / math.log(last.tokens / first.tokens)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
