"""Results -> a markdown table shaped like Table 3 of arXiv 2411.12537, and accuracy-vs-length plots.

A result is the ``result.json`` a finished run writes (see ``lrnn.training.trainer``). Runs are grouped
into cells by (task, model, eigenvalue range); a cell's **best** is the highest score over its runs
(learning rates x seeds: the paper's "best of seeds"), its **median ± MAD** is taken over the seeds of
the learning rate with the highest median. The score is scaled accuracy over the whole test range for
tasks with one answer per sequence, sequence accuracy for tasks with a target at every token.

A cell only ever pools runs of one experiment: runs whose configs differ in anything but the learning
rate, the seed and the logging / checkpoint cadence are refused, never averaged together. A report writes
only its own files (``report.md``, ``summary.json``, ``<task>.png``) and replaces them only where an earlier
report wrote them (or when told to overwrite).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lrnn.atomic import atomic_write_text, save_figure
from lrnn.paths import check_writable_directory
from lrnn.layers import label_order
from lrnn.training.config import RESULT_NEUTRAL_FIELDS, config_differences

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

CELL_AXES = ("lr", "seed")
"""Run-config fields that vary between the runs of one cell: the axes its statistics are taken over."""

REPORT_FILE = "report.md"
SUMMARY_FILE = "summary.json"


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


def mixed_cells(results: list[dict]) -> list[str]:
    """One line per (task, model, range) cell whose runs differ in config beyond ``CELL_AXES`` and
    ``RESULT_NEUTRAL_FIELDS``, naming two such runs (their ``path``) and the differing fields; [] if none.

    ``results`` are result.json dicts (``task``, ``model``, ``range``, ``config``, ``path``).
    """
    problems = []
    for (task, model, rng), runs in _group_cells(results).items():
        first = runs[0]
        for other in runs[1:]:
            differences = config_differences(first["config"], other["config"], CELL_AXES + RESULT_NEUTRAL_FIELDS)
            if differences:
                fields = ", ".join(f"{name} {a!r} vs {b!r}" for name, (a, b) in differences.items())
                problems.append(f"cell {task} / {model} / {rng}: {first['path']} and {other['path']} differ in "
                                f"{fields}")
                break
    return problems


def cell_statistics(results: list[dict]) -> list[Cell]:
    """Group results into (task, model, range) cells; best over all runs, median ± MAD over seeds.

    A ValueError names the cells whose runs differ in config beyond the learning rate and seed
    (``mixed_cells``): statistics over different experiments would mean nothing.
    """
    problems = mixed_cells(results)
    if problems:
        raise ValueError(f"{len(problems)} report cell(s) mix runs of different configs (only lr, seed and "
                         f"{', '.join(RESULT_NEUTRAL_FIELDS)} may differ within a cell): {'; '.join(problems[:3])}"
                         f"{'; ...' if len(problems) > 3 else ''}; report each config from a directory of its own")
    cells = []
    for (task, model, rng), runs in _group_cells(results).items():
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

    Each bin is drawn at its centre length with its ``score``; the train lengths are shaded. A model (the
    label without its range, e.g. "Mamba" of "Mamba [0, 1]") keeps one colour and marker; dashed curves
    (the [0, 1] range) are thin dashed lines with open markers, the others thick solid lines with filled
    ones. The legend sits outside the axes, so a dozen curves never hide the data. The file is written to
    a temporary name, then renamed.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2))
    ax.axvspan(train_range[0], train_range[1], color="0.9", label="train lengths")
    models: dict[str, int] = {}
    lowest = 0.0
    for label, dashed, bins in curves:
        index = models.setdefault(_without_range(label), len(models))
        x = [(b["min_length"] + b["max_length"]) / 2 for b in bins]
        y = [b["score"] for b in bins]
        lowest = min(lowest, *y)
        colour = f"C{index % 10}"
        ax.plot(x, y, color=colour, marker=MARKERS[index % len(MARKERS)], label=label,
                **(DASHED_STYLE if dashed else SOLID_STYLE), markeredgecolor=colour)
    ax.set(xlabel="sequence length", ylabel=metric, title=title, ylim=(min(-0.25, lowest - 0.05), 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return save_figure(fig, path)


def _without_range(label: str) -> str:
    """A curve label without its eigenvalue range: "DeltaNet [0, 1], 2500 steps" -> "DeltaNet, 2500 steps"."""
    for rng in RANGE_ORDER[1:]:  # "[0, 1]" and "[-1, 1]"; models without a range have none in their label
        label = label.replace(f" {rng}", "")
    return label


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
"""One marker per model of a plot (with 10 colours, every pair is distinct for up to 60 models)."""
SOLID_STYLE = dict(linestyle="-", linewidth=1.8, markersize=5)
DASHED_STYLE = dict(linestyle=(0, (5, 3)), linewidth=1.2, markersize=5, markerfacecolor="white")


def training_curves(result: dict) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """A finished run's curves from its ``log.jsonl`` (beside its result.json): ([(step, training accuracy)]
    of the "train" lines, [(step, score)] of the "eval" lines, the last one the final evaluation); two
    empty lists when the run has no log."""
    path = Path(result["path"]) / "log.jsonl"
    if not path.is_file():
        return [], []
    train, evals = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}, is not valid JSON: {err}") from None
        if record.get("kind") == "train":
            train.append((record["step"], record["accuracy"]))
        elif record.get("kind") == "eval":
            evals.append((record["step"], record["score"]))
    return train, evals


def plot_training(results: list[dict], task: str, path: str | Path) -> Path | None:
    """Write a PNG of every ``task`` run's training curves (``training_curves``): training accuracy vs step
    (left) and the test score vs step (right), one line per run, styled per model and range as in
    ``plot_curves`` (seeds of a cell share the look). Returns None, writing nothing, when no run of the
    task has a log. The file is written to a temporary name, then renamed."""
    runs = [(r, *training_curves(r)) for r in results if r["task"] == task]
    runs = [(r, train, evals) for r, train, evals in runs if train or evals]
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), sharex=True)
    models: dict[str, int] = {}
    labelled: set[str] = set()
    runs.sort(key=lambda run: (_model_key(run[0]["model"]), _order(RANGE_ORDER, run[0]["range"]), run[0]["seed"]))
    for result, train, evals in runs:
        index = models.setdefault(result["model"], len(models))
        label = result["model"] if result["range"] == "-" else f"{result['model']} {result['range']}"
        style = dict(DASHED_STYLE if result["range"] == "[0, 1]" else SOLID_STYLE, color=f"C{index % 10}",
                     label=None if label in labelled else label)
        labelled.add(label)
        if train:
            left.plot(*zip(*train), **{**style, "markersize": 0})
        if evals:
            right.plot(*zip(*evals), marker=MARKERS[index % len(MARKERS)], markeredgecolor=style["color"], **style)
    config = runs[0][0]["config"]
    left.set(xlabel="step", ylabel="training accuracy", ylim=(-0.02, 1.02),
             title=f"{task}: training accuracy, lengths {config['train_min']}-{config['train_max']}")
    right.set(xlabel="step", ylabel="score", ylim=(-0.25, 1.05),
              title=f"{task}: test score, lengths {config.get('eval_min', '?')}-{config.get('eval_max', '?')}")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def report_files(tasks: list[str]) -> list[str]:
    """The names of the files a report on ``tasks`` may write: report.md, summary.json, per task a PNG of
    score vs length and one of the training curves (``training_png``)."""
    return [REPORT_FILE, SUMMARY_FILE] + [name for task in tasks for name in (f"{task}.png", training_png(task))]


def training_png(task: str) -> str:
    """The file name of a task's training-curve plot (``plot_training``)."""
    return f"{task}_training.png"


def check_report_destination(out_dir: str | Path, tasks: list[str], overwrite: bool = False) -> None:
    """Raise a ValueError if a report on ``tasks`` may not be written into ``out_dir``.

    ``out_dir`` must be a directory (or not exist yet). The report's files (``report_files``) may replace
    files of the same names only where an earlier report wrote them (``out_dir`` holds its summary.json)
    or with ``overwrite``; other files in ``out_dir`` are never touched.
    """
    out = Path(out_dir)
    check_writable_directory(out, "the report destination")
    clashes = [name for name in report_files(tasks) if (out / name).exists()]
    if clashes and not overwrite and not _holds_report(out):
        raise ValueError(f"{out} holds {', '.join(clashes)}, not written by an earlier report; write the report "
                         "elsewhere or overwrite them (lrnn report --force)")


def _holds_report(out: Path) -> bool:
    """Whether ``out`` holds an earlier report: a summary.json listing cells as ``write_report`` writes it."""
    try:
        summary = json.loads((out / SUMMARY_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    cell_fields = {f.name for f in dataclasses.fields(Cell)}
    return (isinstance(summary, list) and bool(summary)
            and all(isinstance(c, dict) and cell_fields <= set(c) for c in summary))


@dataclass
class Report:
    """A checked report, ready to write (``prepare_report``): its runs, cells and destination."""

    results_dir: Path
    out: Path
    title: str
    results: list[dict]
    cells: list[Cell]
    published: str | None
    comparison: str | None

    @property
    def tasks(self) -> list[str]:
        """The tasks of the report's cells, in the table's order."""
        return sorted({c.task for c in self.cells}, key=lambda t: _order(TASK_ORDER, t))

    def write(self) -> dict[str, Path]:
        """Write ``report.md``, ``summary.json`` and one ``<task>.png`` per task into ``out``; returns the
        written paths by name ("report", "summary", and each task name)."""
        written = {task: plot_lengths(self.cells, task, self.out / f"{task}.png") for task in self.tasks}
        curves = {task: plot_training(self.results, task, self.out / training_png(task)) for task in self.tasks}
        text = [f"# {self.title}", "",
                f"{len(self.results)} finished runs under `{self.results_dir}`. Entry: **best** score over learning "
                "rates and seeds (median ± MAD over the seeds of the best learning rate, n = runs in the cell). "
                "Score: scaled accuracy `(acc - 1/|Y|)/(1 - 1/|Y|)` over the test lengths (sequence accuracy for "
                "tasks with a target at every token).", "", markdown_table(self.cells)]
        if self.comparison is not None:
            text += [f"Beside the published numbers: {PUBLISHED[self.published]['source']}.", "", self.comparison]
        for task in self.tasks:
            text += [f"![{task}]({written[task].name})", ""]
            if curves[task] is not None:
                written[training_png(task)] = curves[task]
                text += [f"Training curves of every {task} run (training accuracy on the train lengths, and the "
                         "test score at each evaluation during training):", "",
                         f"![{task} training]({curves[task].name})", ""]
        written["report"] = self.out / REPORT_FILE
        atomic_write_text(written["report"], "\n".join(text) + "\n")
        summary = [{k: v for k, v in vars(c).items() if k != "best_run"} | {"best_run": c.best_run["path"]}
                   for c in self.cells]
        written["summary"] = self.out / SUMMARY_FILE
        atomic_write_text(written["summary"], json.dumps(summary, indent=2) + "\n")
        return written


def prepare_report(results_dir: str | Path, out_dir: str | Path | None = None,
                   title: str = "State-tracking results", published: str | None = None,
                   overwrite: bool = False) -> Report:
    """Collect and check everything a report needs before a file is written.

    ``out_dir`` defaults to ``results_dir``. ``published``: a key of ``PUBLISHED`` whose scores are
    tabled beside ours. ValueErrors: an empty title, no finished runs, cells that mix configs
    (``cell_statistics``), an unknown ``published``, a destination the report may not write into
    (``check_report_destination``: files of its names are replaced only where an earlier report wrote
    them, or with ``overwrite``; nothing else in ``out_dir`` is touched).
    """
    if not isinstance(title, str) or not title.strip():
        raise ValueError(f"title must be a non-empty string, got {title!r}")
    results = collect_results(results_dir)
    if not results:
        raise ValueError(f"no finished runs (result.json with finished = true) under {results_dir}")
    out = Path(results_dir if out_dir is None else out_dir)
    cells = cell_statistics(results)
    comparison = None if published is None else published_table(cells, published)
    check_report_destination(out, sorted({c.task for c in cells}), overwrite)
    return Report(Path(results_dir), out, title, results, cells, published, comparison)


def write_report(results_dir: str | Path, out_dir: str | Path | None = None,
                 title: str = "State-tracking results", published: str | None = None,
                 overwrite: bool = False) -> dict[str, Path]:
    """``prepare_report(...).write()``: ``report.md`` (headed ``# title``), ``summary.json`` and one
    ``<task>.png`` per task in ``out_dir``; returns the written paths by name."""
    return prepare_report(results_dir, out_dir, title, published, overwrite).write()


def _group_cells(results: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """Results by (task, model, range), in the order they come."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in results:
        groups[(r["task"], r["model"], r["range"])].append(r)
    return groups


def _order(order: tuple[str, ...], name: str) -> tuple[int, str]:
    return (order.index(name) if name in order else len(order), name)


def _model_key(model: str) -> tuple[int, int, str]:
    """Rows in the mixer registry's order (baselines, S4D inits, Mamba, delta rule)."""
    return label_order(model)
