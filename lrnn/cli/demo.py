"""The demos: ``run_parity_demo`` (the default: trained models on parity, [0, 1] vs [-1, 1]) and
``run_ops_demo`` (the ops alone: parity tracked by negative eigenvalues, chunked and sequential).

The ops demo in a nutshell:
Parity of a bit stream is the product of per-token transitions ``a_t = -1`` (bit 1) or ``+1`` (bit 0):
a one-dimensional linear RNN with eigenvalue -1 tracks it exactly over any length, and one whose
eigenvalues are restricted to [0, 1] cannot (its state never changes sign). The same construction with
the delta rule uses a reflection ``I - 2 k k^T`` (beta = 2) on bit 1 and the identity (beta = 0) on 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lrnn.ops import decay_recurrence, delta_rule
from lrnn.validation import check_positive

if TYPE_CHECKING:  # the training layer is imported lazily: the ops demo does not need it
    from lrnn.training import RunConfig


@dataclass
class ParityRun:
    name: str
    mode: str
    accuracy: float
    seconds: float
    signs: torch.Tensor  # [T], +1 for even prefix parity


def parity_runs(bits: torch.Tensor, chunk_size: int = 64) -> list[ParityRun]:
    """Track the prefix parity of ``bits`` [T] with both ops, both modes, and the [0, 1] baseline."""
    t = bits.numel()
    target = 1 - 2 * (torch.cumsum(bits, 0) % 2)  # +1 where the prefix has an even number of ones
    ones = torch.ones(1, t, 1, 1)
    first = torch.zeros(1, t, 1, 1)
    first[:, 0] = 1.0  # write 1 into the state at t = 0 (after the first decay)
    runs = []

    def record(name, mode, fn):
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        signs = torch.sign(out.reshape(t))
        runs.append(ParityRun(name, mode, (signs == target).float().mean().item(), seconds, signs))

    negative = (bits == 1).reshape(1, t, 1)
    zeros = torch.zeros(1, t, 1)
    for mode in ("recurrent", "chunk"):
        # H_t = a_t H_{t-1} + k_t v_t with a_t = -1 on bit 1; the write at t = 0 happens after a_0.
        init = (1.0 - 2.0 * negative[0, 0, 0].float()).reshape(1, 1, 1, 1)
        record("diagonal, a in {-1, +1}", mode, lambda: decay_recurrence(
            ones, 0 * first, ones, zeros, negative, scale=1.0, initial_state=init, mode=mode,
            chunk_size=chunk_size)[0])
    for mode in ("recurrent", "chunk"):
        # Reflection I - 2 e e^T on bit 1 flips the state's sign; v = 0 so nothing else is written.
        beta = 2.0 * bits.float().reshape(1, t, 1)
        init = torch.ones(1, 1, 1, 1)
        record("delta rule, beta in {0, 2}", mode, lambda: delta_rule(
            ones, ones, 0 * first, beta, scale=1.0, initial_state=init, mode=mode, chunk_size=chunk_size)[0])
    # Best a [0, 1] diagonal can do on bit 1: a = 0 (forget) -- its state is never negative.
    log_zero_on_one = torch.where(bits == 1, float("-inf"), 0.0).reshape(1, t, 1)
    record("diagonal, a in [0, 1]", "chunk", lambda: decay_recurrence(
        ones, ones, ones, log_zero_on_one, scale=1.0, initial_state=torch.ones(1, 1, 1, 1),
        chunk_size=chunk_size)[0])
    return runs


def agreement_table(length: int, seed: int) -> list[tuple[str, float, float]]:
    """Chunk vs recurrent on random signed inputs: (op, max |diff| of outputs, of final states)."""
    g = torch.Generator().manual_seed(seed)
    b, h, dk, dv = 1, 2, 16, 16

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    q, k, v = rand(b, length, h, dk), F.normalize(rand(b, length, h, dk), dim=-1), rand(b, length, h, dv)
    a = 2 * torch.rand(b, length, h, generator=g, dtype=torch.float64) - 1
    a_channel = 2 * torch.rand(b, length, h, dk, generator=g, dtype=torch.float64) - 1
    beta = 2 * torch.rand(b, length, h, generator=g, dtype=torch.float64)
    cases = {
        "diagonal, scalar decay in [-1, 1]": lambda m: decay_recurrence(
            q, k, v, a.abs().log(), a < 0, mode=m, output_final_state=True),
        "diagonal, per-channel decay in [-1, 1]": lambda m: decay_recurrence(
            q, k, v, a_channel.abs().log(), a_channel < 0, mode=m, output_final_state=True),
        "delta rule, beta in [0, 2]": lambda m: delta_rule(q, k, v, beta, mode=m, output_final_state=True),
        "gated delta rule, gate in [-1, 1]": lambda m: delta_rule(
            q, k, v, beta, a.abs().log(), a < 0, mode=m, output_final_state=True),
    }
    rows = []
    for name, run in cases.items():
        (o_r, s_r), (o_c, s_c) = run("recurrent"), run("chunk")
        rows.append((name, (o_r - o_c).abs().max().item(), (s_r - s_c).abs().max().item()))
    return rows


def run_ops_demo(length: int = 10_000, seed: int = 0, chunk_size: int = 64) -> int:
    """Print the parity table and the chunk/recurrent agreement table. Returns a process exit code."""
    torch.manual_seed(seed)
    bits = torch.randint(0, 2, (length,))
    print(f"Parity of {length} random bits, tracked by one-state linear RNNs (chunk size {chunk_size}).")
    print(f"Prefix parity accuracy over all {length} positions:\n")
    runs = parity_runs(bits, chunk_size)
    print(f"  {'transition':<28} {'mode':<10} {'accuracy':>9} {'seconds':>8}")
    for r in runs:
        print(f"  {r.name:<28} {r.mode:<10} {r.accuracy:>9.4f} {r.seconds:>8.3f}")
    print(f"\n  {'last 24 bits':<40} " + "".join(str(int(x)) for x in bits[-24:]))
    for r in runs:
        if r.mode == "chunk":
            marks = "".join("+" if x > 0 else "-" for x in r.signs[-24:])
            print(f"  {'state sign, ' + r.name:<40} {marks}")
    print("\nChunked vs sequential on random float64 inputs (T = 2049, chunk 64):\n")
    print(f"  {'op':<40} {'max |o diff|':>13} {'max |state diff|':>17}")
    for name, do, ds in agreement_table(2049, seed):
        print(f"  {name:<40} {do:>13.2e} {ds:>17.2e}")
    exact = all(r.accuracy == 1.0 for r in runs if "[0, 1]" not in r.name)
    print("\nEigenvalue -1 tracks parity exactly in every mode." if exact
          else "\nMISMATCH: a negative-eigenvalue run did not track parity exactly.")
    return 0 if exact else 1


# ---- the state-tracking demo -----------------------------------------------------------------------
DEMO_MODELS = ("deltanet", "mamba2", "mamba")
"""The mixers the parity demo trains (fastest first), each with [0, 1] and [-1, 1] eigenvalues."""


DEMO_SETTINGS = {
    # mixer: (RunConfig fields, default steps), tuned by hand (docs/training.md, "Demo status"): with
    # [-1, 1], DeltaNet learns parity within 2500 steps at lr 1e-2 cosine-decayed to 1e-3 (a constant 1e-2
    # left its longest bins at 0.906 / 0.359 for seeds 0 / 1 after the exact-arithmetic speed-ups of
    # 2026-12-01 changed its rounding; the decay gave worst bins 0.984 / 0.969 / 0.969 for seeds 0-2) and Mamba-2
    # within 600 (only without weight decay in our runs). Mamba (S6) needs channels that start with negative eigenvalues: with mamba_ssm's
    # dt in [1e-3, 0.1] and A_n = n + 1 <= 4, every 2 exp(dt A) - 1 starts above 0.34 and it never left
    # chance; with dt up to 1 some start near -1, and at a constant learning rate it learns parity
    # abruptly after ~1100 steps (seed 0; seed 1 had not within 2500 steps).
    "mamba": (dict(d_model=16, d_state=4, lr=3e-3, min_lr=3e-3, mixer_kwargs={"dt_max": 1.0}), 2500),
    "mamba2": (dict(d_model=32, heads=4, d_state=16, lr=3e-3), 600),
    "deltanet": (dict(d_model=32, heads=2, lr=1e-2, min_lr=1e-3), 2500),
}


def parity_demo_config(mixer: str, negative: bool, steps: int | None = None, seed: int = 0) -> "RunConfig":
    """The small run of one demo model: 1 layer, parity with train lengths 3-40, test lengths 40-256.

    ``steps=None`` uses the mixer's default budget from ``DEMO_SETTINGS``.
    """
    from lrnn.training import RunConfig

    if mixer not in DEMO_SETTINGS:
        raise ValueError(f"demo models are {sorted(DEMO_SETTINGS)}, got {mixer!r}")
    fields, default_steps = DEMO_SETTINGS[mixer]
    return RunConfig(task="parity", mixer=mixer, negative_eigenvalues=negative, n_layers=1,
                     steps=default_steps if steps is None else steps, batch_size=64, weight_decay=0.0,
                     warmup_fraction=0.1, train_min=3, train_max=40, eval_min=40, eval_max=256, eval_bins=6,
                     eval_samples=128, seed=seed, log_every=25, **fields)


def run_parity_demo(steps: int | None = None, seed: int = 0, plot: str | None = "runs/demo/parity.png",
                    models: tuple[str, ...] = DEMO_MODELS, workers: int | None = None, threads: int = 1) -> int:
    """Train each model of ``models`` with both eigenvalue ranges on parity, print the length table, plot it.

    The runs go to ``workers`` spawned processes with ``threads`` torch threads each (default: up to 2
    workers, the CPU count permitting, of one thread): tiny models scale better across processes than
    across threads. ``steps`` overrides every model's step budget. Prints which [-1, 1] models reach
    scaled accuracy >= 0.95 in every test bin (40-256) and which [0, 1] models stay near chance. Returns
    0 (the demo ran); the verdict is in the output, since whether a model learns parity in a short
    budget is the finding.
    """
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from lrnn.training.report import plot_curves

    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    check_positive(workers=workers, threads=threads)
    configs = [parity_demo_config(m, negative, steps, seed) for m in models for negative in (False, True)]
    print(f"Parity: train on lengths 3-40, test on 40-256 (scaled accuracy: 0 = chance, 1 = perfect); "
          f"{len(configs)} runs on {workers} worker process(es).", flush=True)
    started = time.perf_counter()
    results: dict[int, dict] = {}
    # Longest runs first so the workers finish together.
    order = sorted(range(len(configs)), key=lambda i: -_expected_cost(configs[i]))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(_train_quietly, configs[i].to_dict()): i for i in order}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            c = configs[i]
            print(f"  [{time.perf_counter() - started:5.0f} s] {c.model_label} {c.eigenvalue_range}: {c.steps} steps "
                  f"in {results[i]['train_seconds']:.0f} s, scaled accuracy {results[i]['score']:.3f}", flush=True)
    rows = [(f"{c.model_label} {c.eigenvalue_range}", c.negative_eigenvalues, results[i]["eval"]["bins"], c.steps)
            for i, c in enumerate(configs)]
    print()
    print(_length_table(rows))
    if plot:
        curves = [(name, not negative, bins) for name, negative, bins, _ in rows]
        path = plot_curves(curves, plot, "Parity: length generalisation (train 3-40)", "scaled accuracy", (3, 40))
        print(f"\nPlot written to {path}")
    print(f"\nTotal time {time.perf_counter() - started:.0f} s.")
    for name, negative, bins, budget in rows:
        worst = min(b["scaled_accuracy"] for b in bins)
        if negative:
            verdict = ("tracks parity out to length 256 (>= 0.95 in every bin)" if worst >= 0.95 else
                       f"has not learned parity within {budget} steps; worst bin {worst:.3f}")
        else:
            # Pooled over all bins (768 sequences: chance gives |scaled accuracy| < 0.1 about 99 % of the time).
            overall = sum(b["scaled_accuracy"] for b in bins) / len(bins)
            verdict = ("stays near chance, as [0, 1] eigenvalues must" if abs(overall) < 0.15 else
                       f"is above chance on average ({overall:.3f})")
        print(f"  {name:<20} {verdict}")
    return 0


def _train_quietly(config: dict) -> dict:
    """Worker: train one demo run in memory; returns its result (without the model)."""
    from lrnn.training import RunConfig, train

    return train(RunConfig.from_dict(config), None, quiet=True).result


def _expected_cost(config) -> float:
    """Rough relative cost of a run: steps x per-step cost (Mamba's per-channel scan is the slowest)."""
    return config.steps * {"mamba": 2.0, "mamba2": 1.0, "deltanet": 1.2}.get(config.mixer, 1.0)


def _length_table(rows: list[tuple[str, bool, list[dict], int]]) -> str:
    """Rows: model and range; columns: test-length bins; entries: scaled accuracy."""
    spans = [f"{b['min_length']}-{b['max_length']}" for b in rows[0][2]]
    lines = [f"  {'model':<20}" + "".join(f"{s:>9}" for s in spans)]
    for name, _, bins, _ in rows:
        lines.append(f"  {name:<20}" + "".join(f"{b['scaled_accuracy']:>9.3f}" for b in bins))
    return "\n".join(lines)
