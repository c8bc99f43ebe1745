"""Plain (unscaled) test accuracy per model and seed from a sweep's result.json files, as markdown.

Run from the repository root after the sweep: ``python docs/results/s4d/accuracy_table.py runs/s4d/runs``.
``lrnn report`` gives scaled accuracy (0 = chance); this prints accuracy = 0.1 + 0.9 * scaled (10 classes),
per seed and as a mean, plus the training time per run.
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from lrnn.layers import label_order
from lrnn.training.report import TASK_ORDER

root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/s4d/runs")
cells = defaultdict(list)
for path in sorted(root.rglob("result.json")):
    r = json.loads(path.read_text())
    if r.get("finished"):
        cells[(r["task"], r["model"])].append((r["seed"], r["eval"]["overall"]["accuracy"], r["train_seconds"],
                                               r.get("eval_task", r["task"])))
tasks = sorted({t for t, _ in cells}, key=lambda t: TASK_ORDER.index(t) if t in TASK_ORDER else len(TASK_ORDER))
models = sorted({m for _, m in cells}, key=label_order)  # the mixer registry's order
head = "| model |" + "".join(f" {t} accuracy (seeds) | mean | s/run |" for t in tasks)
print(head)
print("|---|" + "---|---|---|" * len(tasks))
for model in models:
    row = f"| {model} |"
    for task in tasks:
        runs = sorted(cells.get((task, model), []))
        if not runs:
            row += " | | |"
            continue
        accs = ", ".join(f"{a:.3f}" for _, a, _, _ in runs)
        row += (f" {accs} | {statistics.mean(a for _, a, _, _ in runs):.3f} |"
                f" {statistics.mean(s for _, _, s, _ in runs):.0f} |")
    print(row)
print()
print("evaluated on: " + ", ".join(sorted({f"{t} -> {e}" for (t, _), rs in cells.items() for *_, e in rs})))
