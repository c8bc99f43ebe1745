"""Did a run fit its training lengths? Final training accuracy beside the test score, as markdown.

Run from the repository root: ``python docs/results/table3/fit_table.py [RUNS_DIR]`` (default
``docs/results/table3/runs``; each run directory holds the ``log.jsonl`` and ``result.json`` of one run).
Each entry is "training accuracy / test score / training seconds" of the cell's best run (the only run
here). Training accuracy is the mean over the last 4 logged windows (the last 200 steps at
``log_every = 50``) on lengths 3-40; chance is 1/2 for parity and 1/5 for the arithmetic tasks.
"""

import sys
from pathlib import Path

from lrnn.training import read_log
from lrnn.training.report import cell_statistics, collect_results, markdown_table


def fit_entry(cell) -> str:
    run = cell.best_run
    last = [r["accuracy"] for r in read_log(Path(run["path"]) / "log.jsonl") if r["kind"] == "train"][-4:]
    return f"{sum(last) / len(last):.3f} / {run['score']:.3f} / {run['train_seconds']:.0f}"


root = sys.argv[1] if len(sys.argv) > 1 else "docs/results/table3/runs"
print(markdown_table(cell_statistics(collect_results(root)), entry=fit_entry), end="")
