"""Results -> a markdown table shaped like Table 3 of arXiv 2411.12537, and accuracy-vs-length plots.

A result is the ``result.json`` a finished run writes (see ``lrnn.training.trainer``). Runs are grouped
into cells by (task, model, eigenvalue range); a cell's **best** is the highest score over its runs
(learning rates x seeds: the paper's "best of seeds"), its **median ± MAD** is taken over the seeds of
the learning rate with the highest median. The score is scaled accuracy over the whole test range for
tasks with one answer per sequence, sequence accuracy for tasks with a target at every token.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lrnn.atomic import atomic_write, atomic_write_text

MODEL_ORDER = ("Transformer", "LSTM", "S4D-LegS", "S4D-Lin", "S4D-Inv", "S4D-Real", "S4D-PTD", "Mamba", "Mamba-2",
               "DeltaNet", "Gated DeltaNet", "DeltaProduct")
RANGE_ORDER = ("-", "[0, 1]", "[-1, 1]")
TASK_ORDER = ("parity", "arithmetic", "arithmetic_brackets", "even_pairs", "parity_check", "cycle_navigation",
              "modular_arithmetic_simple", "s3", "s4", "a5", "s5", "z60", "a4xz5", "s5_swaps",
              "listops", "sequential_digits", "selective_copy", "associative_recall")


PUBLISHED = {
    "table3": {
        "source": "Table 3 of arXiv 2411.12537 (best of 3 seeds; width 128, batch 1024, 100k steps, "
                  "4 learning rates)",
        # (model label, range) -> (the paper's row name, {task: scaled accuracy})
        "rows": {
            ("Transformer", "-"): ("Transformer", {"parity": 0.022, "arithmetic": 0.031, "arithmetic_brackets": 0.067}),
            ("LSTM", "-"): ("sLSTM", {"parity": 1.000, "arithmetic": 0.787, "arithmetic_brackets": 0.178}),
            ("Mamba", "[0, 1]"): ("Mamba [0,1]", {"parity": 0.000, "arithmetic": 0.095, "arithmetic_brackets": 0.123}),
            ("Mamba", "[-1, 1]"): ("Mamba [-1,1]", {"parity": 1.000, "arithmetic": 0.241, "arithmetic_brackets": 0.116}),
            ("DeltaNet", "[0, 1]"): ("DeltaNet [0,1]", {"parity": 0.017, "arithmetic": 0.314,
                                                        "arithmetic_brackets": 0.194}),
            ("DeltaNet", "[-1, 1]"): ("DeltaNet [-1,1]", {"parity": 1.000, "arithmetic": 0.971,
                                                          "arithmetic_brackets": 0.260}),
        },
    },
}
"""Published scores to set beside ours (``lrnn report --published NAME``); values from the papers."""


@dataclass
class Cell:
    """Statistics of one (task, model, range) cell over its runs."""

    task: str
    model: str
    range: str
    best: float
    median: float
    mad: float
    best_lr: float
    runs: int
    best_run: dict


def collect_results(results_dir: str | Path) -> list[dict]:
    """Every finished run's result.json under ``results_dir`` (searched recursively), in path order."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results directory not found: {root}")
    results = []
    for path in sorted(root.rglob("result.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        if data.get("finished"):
            data["path"] = str(path.parent)
            results.append(data)
    return results


def median_mad(values: list[float]) -> tuple[float, float]:
    """(median, median absolute deviation ``median(|x - median|)``) of a non-empty list."""
    if not values:
        raise ValueError("median_mad needs at least one value, got an empty list")
    med = statistics.median(values)
    return med, statistics.median(abs(v - med) for v in values)


def cell_statistics(results: list[dict]) -> list[Cell]:
    """Group results into (task, model, range) cells; best over all runs, median ± MAD over seeds."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in results:
        groups[(r["task"], r["model"], r["range"])].append(r)
    cells = []
    for (task, model, rng), runs in groups.items():
        by_lr: dict[float, list[float]] = defaultdict(list)
        for r in runs:
            by_lr[r["lr"]].append(r["score"])
        best_lr = max(by_lr, key=lambda lr: (statistics.median(by_lr[lr]), lr))
        med, mad = median_mad(by_lr[best_lr])
        best_run = max(runs, key=lambda r: r["score"])
        cells.append(Cell(task, model, rng, best_run["score"], med, mad, best_lr, len(runs), best_run))
    return sorted(cells, key=lambda c: (_order(TASK_ORDER, c.task), _model_key(c.model), _order(RANGE_ORDER, c.range)))


def markdown_table(cells: list[Cell], entry: Callable[[Cell], str] | None = None) -> str:
    """Rows model x range, columns tasks; each entry ``entry(cell)``, by default "best (median ± MAD)"."""
    if not cells:
        return "No finished runs.\n"
    tasks = sorted({c.task for c in cells}, key=lambda t: _order(TASK_ORDER, t))
    rows = sorted({(c.model, c.range) for c in cells}, key=lambda mr: (_model_key(mr[0]), _order(RANGE_ORDER, mr[1])))
    index = {(c.task, c.model, c.range): c for c in cells}
    lines = ["| model | range | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for model, rng in rows:
        entries = []
        for task in tasks:
            c = index.get((task, model, rng))
            if c is None:
                entries.append("")
            else:
                entries.append(entry(c) if entry else f"**{c.best:.3f}** ({c.median:.3f} ± {c.mad:.3f}, n={c.runs})")
        lines.append(f"| {model} | {rng} | " + " | ".join(entries) + " |")
    return "\n".join(lines) + "\n"


def published_table(cells: list[Cell], name: str) -> str:
    """Our best score beside the published one for every (model, range) row the publication has."""
    if name not in PUBLISHED:
        raise ValueError(f"published must be one of {sorted(PUBLISHED)}, got {name!r}")
    rows = PUBLISHED[name]["rows"]
    index = {(c.task, c.model, c.range): c for c in cells}
    tasks = sorted({t for _, scores in rows.values() for t in scores} & {c.task for c in cells},
                   key=lambda t: _order(TASK_ORDER, t))
    if not tasks:
        return f"No finished runs on the tasks of {name}.\n"
    lines = ["| model | range | published row | " + " | ".join(f"{t}: ours / published" for t in tasks) + " |",
             "|---|---|---|" + "---|" * len(tasks)]
    for (model, rng), (paper_row, scores) in rows.items():
        entries = []
        for task in tasks:
            ours = index.get((task, model, rng))
            entries.append(f"{'-' if ours is None else f'{ours.best:.3f}'} / {scores[task]:.3f}")
        lines.append(f"| {model} | {rng} | {paper_row} | " + " | ".join(entries) + " |")
    return "\n".join(lines) + "\n"


def plot_lengths(cells: list[Cell], task: str, path: str | Path) -> Path:
    """PNG of score vs length (bin centres) for the best run of every model x range on ``task``."""
    chosen = [c for c in cells if c.task == task]
    if not chosen:
        raise ValueError(f"no results for task {task!r}")
    curves = []
    for c in chosen:
        label = c.model if c.range == "-" else f"{c.model} {c.range}"
        curves.append((label, c.range == "[0, 1]", c.best_run["eval"]["bins"]))
    config = chosen[0].best_run["config"]
    every = chosen[0].best_run["eval"]["answer_positions"] == "every"
    if all(len(bins) == 1 for _, _, bins in curves):  # one test length bin (e.g. 64-pixel digits): bars
        eval_task = chosen[0].best_run.get("eval_task", task)
        return plot_bars([(label, bins[0]["score"]) for label, _, bins in curves], path,
                         f"{task}, evaluated on {eval_task} (best run per model)",
                         "sequence accuracy" if every else "scaled accuracy")
    return plot_curves(curves, path, f"{task} (best run per model)",
                       "sequence accuracy" if every else "scaled accuracy", (config["train_min"], config["train_max"]))


def plot_curves(curves: list[tuple[str, bool, list[dict]]], path: str | Path, title: str, metric: str,
                train_range: tuple[int, int]) -> Path:
    """Write a PNG of score vs length: one line per ``(label, dashed, bins)``, bins as in ``evaluate``.

    Each bin is drawn at its centre length with its ``score``; the train lengths are shaded. The file is
    written to a temporary name, then renamed.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.axvspan(train_range[0], train_range[1], color="0.9", label="train lengths")
    colours: dict[str, str] = {}
    lowest = 0.0
    for label, dashed, bins in curves:
        model = label.split(" [")[0]  # one colour per model; [0, 1] dashed, [-1, 1] solid
        colour = colours.setdefault(model, f"C{len(colours) % 10}")
        x = [(b["min_length"] + b["max_length"]) / 2 for b in bins]
        y = [b["score"] for b in bins]
        lowest = min(lowest, *y)
        ax.plot(x, y, "--" if dashed else "-", color=colour, marker="o", markersize=3, label=label)
    ax.set(xlabel="sequence length", ylabel=metric, title=title, ylim=(min(-0.25, lowest - 0.05), 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save_png(fig, path)


def _save_png(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)
    return Path(path)


def plot_bars(bars: list[tuple[str, float]], path: str | Path, title: str, metric: str) -> Path:
    """Write a PNG bar chart of one score per ``(label, score)`` (tasks with a single test length bin).

    The file is written to a temporary name, then renamed.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    labels, scores = [b[0] for b in bars], [b[1] for b in bars]
    ax.bar(range(len(bars)), scores, color=[f"C{i % 10}" for i in range(len(bars))])
    for i, score in enumerate(scores):
        ax.text(i, score + 0.01 if score >= 0 else score - 0.05, f"{score:.3f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(bars)), labels, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel=metric, title=title, ylim=(min(-0.05, min(scores) - 0.1), 1.05))
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.grid(axis="y", alpha=0.3)
    return _save_png(fig, path)


def write_report(results_dir: str | Path, out_dir: str | Path | None = None,
                 title: str = "State-tracking results", published: str | None = None) -> dict[str, Path]:
    """Write ``report.md`` (headed ``# title``), ``summary.json`` and one ``<task>.png`` per task into ``out_dir``.

    ``out_dir`` defaults to ``results_dir``. ``published``: a key of ``PUBLISHED`` whose scores are
    tabled beside ours. Returns the written paths by name ("report", "summary", and each task name).
    """
    if not isinstance(title, str) or not title.strip():
        raise ValueError(f"title must be a non-empty string, got {title!r}")
    results = collect_results(results_dir)
    if not results:
        raise ValueError(f"no finished runs (result.json with finished = true) under {results_dir}")
    out = Path(results_dir if out_dir is None else out_dir)
    cells = cell_statistics(results)
    # Built before any file is written: published_table also rejects an unknown name.
    comparison = None if published is None else published_table(cells, published)
    written: dict[str, Path] = {}
    for task in sorted({c.task for c in cells}):
        written[task] = plot_lengths(cells, task, out / f"{task}.png")
    text = [f"# {title}", "",
            f"{len(results)} finished runs under `{results_dir}`. Entry: **best** score over learning rates and "
            "seeds (median ± MAD over the seeds of the best learning rate, n = runs in the cell). Score: "
            "scaled accuracy `(acc - 1/|Y|)/(1 - 1/|Y|)` over the test lengths (sequence accuracy for tasks "
            "with a target at every token).", "", markdown_table(cells)]
    if comparison is not None:
        text += [f"Beside the published numbers: {PUBLISHED[published]['source']}.", "", comparison]
    for task in sorted(written, key=lambda t: _order(TASK_ORDER, t)):
        text.append(f"![{task}]({written[task].name})")
    written["report"] = out / "report.md"
    atomic_write_text(written["report"], "\n".join(text) + "\n")
    summary = [{k: v for k, v in vars(c).items() if k != "best_run"} | {"best_run": c.best_run["path"]}
               for c in cells]
    written["summary"] = out / "summary.json"
    atomic_write_text(written["summary"], json.dumps(summary, indent=2) + "\n")
    return written


def _order(order: tuple[str, ...], name: str) -> tuple[int, str]:
    return (order.index(name) if name in order else len(order), name)


def _model_key(model: str) -> tuple[int, str]:
    base = "DeltaProduct" if model.startswith("DeltaProduct") else model  # S4D-<init> labels are listed
    return (_order(MODEL_ORDER, base)[0], model)
