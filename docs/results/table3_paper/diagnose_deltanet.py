"""Why the DeltaNet family falls short on long parity strings: leaks in the reflection and in the gate.

For each finished DeltaNet / Gated DeltaNet [-1, 1] parity run under runs/ (the model/ directories are
written by the sweep and not committed: re-run the sweep first), on 64 test strings of 256 bits:

* per layer and head, the Householder eigenvalue 1 - beta_t on the tokens of bit 1 where the head reflects
  (1 - beta < -0.9): its mean, and on which share of the 1-bits (a head that counts 1s by reflection needs
  exactly -1: the state along k_t flips sign; -0.98 also shrinks it 0.98x per 1-bit, ~0.08x over the ~128
  ones of a 256-bit string); with a gate, per head the state fraction surviving the whole string (mean of
  prod_t a_t);
* the scaled accuracy per test-length bin: as trained; with every beta_t > 1.9 set to exactly 2 (exact
  reflections, nothing else changed); with a gate, also with the gate of the *carrier* heads (state
  surviving 256 tokens > 1e-3) set to 1 (A_log -> -inf there, log a_t = 0), and with both changes.

Usage: python docs/results/table3_paper/diagnose_deltanet.py [RUN_DIR ...]   (one thread, ~1 min per run)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from lrnn.layers import DeltaNet
from lrnn.training import evaluate_run

from feature_hooks import features_hook, trained_runs

torch.set_num_threads(1)
HERE = Path(__file__).parent
runs = [Path(p) for p in sys.argv[1:]] or sorted([*HERE.glob("runs/parity-deltanet-neg-*"),
                                                  *HERE.glob("runs/parity-gated_deltanet-neg-*")])


def bins(result: dict) -> str:
    return " ".join(f"{b['scaled_accuracy']:.3f}" for b in result["bins"])


def exact_reflections(q, k, v, beta, log_a):
    return q, k, v, torch.where(beta > 1.9, torch.full_like(beta, 2.0), beta), log_a


for run, model, config, ids, ones in trained_runs(runs):
    seen = []
    record = lambda q, k, v, beta, log_a: seen.append((beta, log_a))  # noqa: E731
    with features_hook(model, DeltaNet, record=record), torch.no_grad():
        model(ids)
    print(f"== {run.name}")
    carriers = []
    for i, (beta, log_a) in enumerate(seen):
        eig = (1 - beta)[ones]  # [ones, H]
        reflecting = eig < -0.9  # the 1-bits a head reflects on
        per_head = [f"{eig[reflecting[:, h], h].mean():+.4f} on {reflecting[:, h].float().mean():.0%}"
                    if reflecting[:, h].any() else "-" for h in range(eig.shape[1])]
        line = f"  layer {i}: 1 - beta where < -0.9 on 1-bits, per head: {', '.join(per_head)}"
        if log_a is not None:
            a = log_a.exp()
            survive = a.prod(dim=1).mean(0)
            carriers.append(survive > 1e-3)
            line += "\n           gate a_t: state surviving 256 tokens per head " + \
                    ", ".join(f"{x:.2g}" for x in survive.tolist())
        print(line)
    bins_of = [f"{b['min_length']}-{b['max_length']}" for b in evaluate_run(model, config)["bins"]]
    print(f"  scaled accuracy per bin ({', '.join(bins_of)}):")
    print(f"    as trained:              {bins(evaluate_run(model, config))}")
    with features_hook(model, DeltaNet, edit=exact_reflections):
        print(f"    beta > 1.9 set to 2:     {bins(evaluate_run(model, config))}")
    if carriers:
        layers = [m for m in model.modules() if isinstance(m, DeltaNet)]
        for layer, carrier in zip(layers, carriers):
            layer.A_log.data[carrier] = -float("inf")  # exp(A_log) = 0: log a = 0, a = 1 on those heads
        print(f"    carrier gates set to 1:  {bins(evaluate_run(model, config))}")
        with features_hook(model, DeltaNet, edit=exact_reflections):
            print(f"    both:                    {bins(evaluate_run(model, config))}")
