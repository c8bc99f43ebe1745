"""Sequence accuracy vs length of every trained word-problem model: JSON + one PNG per task.

Run from the repository root after the sweeps (it needs the run directories with their weights):
``python docs/results/words/length_curves.py OUT_DIR RUNS_DIR [RUNS_DIR ...]``. The sweep's own evaluation is a single bin at length 512 (the protocol); this
evaluates each model on 8 length bins over 16-512, 128 fresh sequences per bin (seed 1234), and writes
``length_curves.json``, ``<task>_vs_length.png`` (sequence accuracy: every prefix product right) and
``<task>_token_accuracy.png`` (fraction of positions right), train length 128 shaded.
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

from lrnn.atomic import atomic_write_text
from lrnn.training import evaluate, load_run
from lrnn.training.report import collect_results, plot_curves
from lrnn.training.trainer import make_eval_task

if len(sys.argv) < 3:
    sys.exit("usage: python docs/results/words/length_curves.py OUT_DIR RUNS_DIR [RUNS_DIR ...]")
out, run_dirs = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
torch.set_num_threads(2)
curves = defaultdict(list)
for run in (r for runs in run_dirs for r in collect_results(runs)):
    saved = load_run(run["path"])
    config, model = saved.config, saved.model
    result = evaluate(model, make_eval_task(config), 16, 512, 8, 128, seed=1234)
    label = f"{config.model_label} {config.eigenvalue_range}, {config.steps} steps"
    curves[config.task].append((label, not config.negative_eigenvalues, result["bins"]))
    print(config.task, label, "sequence", " ".join(f"{b['score']:.3f}" for b in result["bins"]),
          "token", " ".join(f"{b['accuracy']:.3f}" for b in result["bins"]), flush=True)
for task, task_curves in curves.items():
    plot_curves(sorted(task_curves), out / f"{task}_vs_length.png",
                f"{task.upper()} word problem: sequence accuracy vs length (train length 128)",
                "sequence accuracy", (128, 128))
    per_token = [(label, dashed, [b | {"score": b["accuracy"]} for b in bins])
                 for label, dashed, bins in sorted(task_curves)]
    plot_curves(per_token, out / f"{task}_token_accuracy.png",
                f"{task.upper()} word problem: token accuracy vs length (train length 128)",
                "token accuracy", (128, 128))
atomic_write_text(out / "length_curves.json",
                  json.dumps({t: [{"model": l, "bins": b} for l, _, b in c] for t, c in curves.items()}, indent=2) + "\n")
