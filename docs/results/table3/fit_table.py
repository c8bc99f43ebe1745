"""Did a run fit its training lengths? Final training accuracy beside the test score, as markdown.

Run from the repository root: ``python docs/results/table3/fit_table.py [RUNS_DIR]`` (default
``docs/results/table3/runs``; each run directory holds the ``log.jsonl`` and ``result.json`` of one run).
Training accuracy is the mean over the last 4 logged windows of the run (the last 200 steps at
``log_every = 50``) on lengths 3-40; chance is 1/2 for parity and 1/5 for the arithmetic tasks.
"""

import json
import sys
from pathlib import Path

from lrnn.training.report import MODEL_ORDER, RANGE_ORDER, TASK_ORDER

root = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/table3/runs")
cells = {}
for path in sorted(root.rglob("result.json")):
    result = json.loads(path.read_text())
    if not result.get("finished"):
        continue
    train = [json.loads(line) for line in (path.parent / "log.jsonl").read_text().splitlines()]
    last = [r["accuracy"] for r in train if r["kind"] == "train"][-4:]
    cells[(result["task"], result["model"], result["range"])] = (sum(last) / len(last), result["score"],
                                                                 result["train_seconds"])


def order(names, name):
    return names.index(name) if name in names else len(names)


tasks = sorted({t for t, _, _ in cells}, key=lambda t: order(TASK_ORDER, t))
rows = sorted({(m, r) for _, m, r in cells},
              key=lambda mr: (order(MODEL_ORDER, mr[0].split(" n_h")[0]), order(RANGE_ORDER, mr[1])))
print("| model | range |" + "".join(f" {t}: train acc. / test score / s |" for t in tasks))
print("|---|---|" + "---|" * len(tasks))
for model, rng in rows:
    entries = []
    for task in tasks:
        cell = cells.get((task, model, rng))
        entries.append("" if cell is None else f"{cell[0]:.3f} / {cell[1]:.3f} / {cell[2]:.0f}")
    print(f"| {model} | {rng} | " + " | ".join(entries) + " |")
