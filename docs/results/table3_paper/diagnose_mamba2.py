"""Why a Mamba-2 [-1, 1] parity run generalises or not: how close its decays come to -1 and +1.

Mamba-2's state decays once per head and token by a_t = 2 exp(dt_t A) - 1 in [-1, 1]. A head that tracks
parity needs a_t = -1 on the 1-bits (the state flips sign) and a_t = +1 on the 0-bits (it is kept); a
decay of magnitude 0.99 keeps only 0.99^256 = 0.08 of the state over a 256-bit string. For each finished
Mamba-2 [-1, 1] run under runs/ (the model/ directories are written by the sweep and not committed:
re-run the sweep first), on 64 test strings of 256 bits:

* per layer and head, the mean decay on 1-bits and on 0-bits, and the state fraction surviving the whole
  string (mean over strings of |prod_t a_t|);
* the scaled accuracy per test-length bin: as trained; with every decay of magnitude > 0.9 snapped to
  exactly -1 or +1 (|a_t| = 1, its sign kept; nothing else changed); and with the *reflecting* heads
  (mean decay on 1-bits < -0.9) made exact counters: a_t = -1 on every 1-bit and +1 on every 0-bit.

Usage: python docs/results/table3_paper/diagnose_mamba2.py [RUN_DIR ...]   (one thread, ~1 min per run)
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from lrnn.layers import Mamba2
from lrnn.training import evaluate_run

from feature_hooks import features_hook, trained_runs

torch.set_num_threads(1)
HERE = Path(__file__).parent
runs = [Path(p) for p in sys.argv[1:]] or sorted(HERE.glob("runs/parity-mamba2-neg-*"))
SNAP = 0.9  # decays of larger magnitude are snapped to exactly +-1


def decays(log_a: torch.Tensor, negative: torch.Tensor | None) -> torch.Tensor:
    """The signed decays a_t [B, T, H] from ``_features``' (log|a|, a < 0)."""
    magnitude = log_a.exp()
    return magnitude if negative is None else torch.where(negative, -magnitude, magnitude)


def snapped(z, x, bmat, cmat, dt, log_a, negative):
    """Every decay with |a_t| > SNAP set to exactly +-1 (log|a| = 0, the sign kept)."""
    return z, x, bmat, cmat, dt, torch.where(log_a.exp() > SNAP, torch.zeros_like(log_a), log_a), negative


@contextmanager
def exact_counters(model, reflecting: list[torch.Tensor]):
    """In layer i, the heads ``reflecting[i]`` (bool [H]) get a_t = -1 on 1-bits and +1 on 0-bits: the
    model's input ids are stashed by a wrapper of its forward, the decays edited from them."""
    stash = {}
    real_forward = model.forward

    def forward(input_ids, *args, **kwargs):
        stash["ones"] = input_ids == 1
        return real_forward(input_ids, *args, **kwargs)

    layer_index = iter(range(10**9))

    def edit(z, x, bmat, cmat, dt, log_a, negative):
        heads = reflecting[next(layer_index) % len(reflecting)]
        ones = stash["ones"][:, :, None].expand_as(log_a)
        log_a = torch.where(heads, torch.zeros_like(log_a), log_a)
        negative = torch.where(heads, ones, log_a.new_zeros((), dtype=torch.bool) if negative is None else negative)
        return z, x, bmat, cmat, dt, log_a, negative

    model.forward = forward
    try:
        with features_hook(model, Mamba2, edit=edit):
            yield
    finally:
        del model.forward


def bins(result: dict) -> str:
    return " ".join(f"{b['scaled_accuracy']:.3f}" for b in result["bins"])


for run, model, config, ids, ones in trained_runs(runs):
    seen = []
    with features_hook(model, Mamba2, record=lambda *out: seen.append(decays(out[5], out[6]))), torch.no_grad():
        model(ids)
    print(f"== {run.name}")
    reflecting = [a[ones].mean(0) < -0.9 for a in seen]
    for i, a in enumerate(seen):  # a: [64, 256, H]
        survive = a.abs().prod(dim=1).mean(0)
        heads = [f"{a[ones][:, h].mean():+.3f} / {a[~ones][:, h].mean():+.3f} ({survive[h]:.2g})"
                 for h in range(a.shape[-1])]
        print(f"  layer {i}: mean decay on 1-bits / 0-bits (state surviving 256 tokens) per head: {'; '.join(heads)}")
    result = evaluate_run(model, config)
    lengths = ", ".join(f"{b['min_length']}-{b['max_length']}" for b in result["bins"])
    print(f"  scaled accuracy per bin ({lengths}):")
    print(f"    as trained:               {bins(result)}")
    with features_hook(model, Mamba2, edit=snapped):
        print(f"    |a| > {SNAP} snapped to +-1: {bins(evaluate_run(model, config))}")
    if any(heads.any() for heads in reflecting):
        which = ", ".join(f"layer {i} head {h}" for i, heads in enumerate(reflecting) for h in heads.nonzero().flatten().tolist())
        with exact_counters(model, reflecting):
            print(f"    exact counters ({which}): {bins(evaluate_run(model, config))}")
