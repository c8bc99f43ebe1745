"""The check that flags a benchmark measurement disturbed by machine load or thread contention. The timing
machinery itself (``time_calls``, ``measure_matmul``, ...) lives in ``lrnn.timing`` and is re-exported here
for the benchmarks."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from lrnn.timing import MatmulReference, Timing, measure_matmul, release_memory, synchronize, time_calls

__all__ = ["synchronize", "release_memory", "time_calls", "Timing", "MatmulReference", "measure_matmul",
           "DISTURBED", "MAX_PROBE_SLOWDOWN", "MAX_REPEAT_SPREAD", "disturbance"]

DISTURBED = "disturbed: machine load / thread contention"
"""The flag a measurement gets when ``disturbance`` finds the machine was not the same around it."""

MAX_PROBE_SLOWDOWN = 2.0
"""A measurement is disturbed when the matmul probe beside it ran this many times slower than the run's best."""

MAX_REPEAT_SPREAD = 3.0
"""A measurement is disturbed when its median timed repeat took this many times its fastest."""


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
