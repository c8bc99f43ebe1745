"""Pretraining runs -> the language-model comparison: a markdown table, a JSON summary, curves and samples.

A run is a directory that ``lrnn pretrain`` finished (``result.json``, ``log.jsonl``, ``model/``; see
``lrnn.training.pretrain``). Runs are grouped into rows by (model, eigenvalue range): the model is the
run directory's name without its ``-<pos|neg|base>-s<seed>`` suffix (the names ``lrnn pretrain-sweep``
gives, ``lrnn.training.pretrain_sweep.run_name``), or the whole name when it has no such suffix. A row
pools the seeds of one experiment only: runs whose configs differ in anything but the seed and the fields
a resumed run may change (logging, checkpoint cadence, engine) are refused, never averaged together.

A report writes only its own files (``REPORT_FILES``) and replaces them only where an earlier LM report
wrote them (its summary.json says so) or when told to overwrite.
"""

from __future__ import annotations

import json
import re
import shlex
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrnn.atomic import atomic_write_text, save_figure
from lrnn.paths import check_writable_directory
from lrnn.layers import label_order, mixer_spec
from lrnn.training.config import config_differences
from lrnn.training.pretrain import RESUMABLE_CHANGES, LOG_FILE, MODEL_DIR
from lrnn.training.report import DASHED_STYLE, MARKERS, SOLID_STYLE, collect_results
from lrnn.training.trainer import read_log

REPORT_FILE = "report.md"
SUMMARY_FILE = "summary.json"
SAMPLES_FILE = "samples.md"
CURVES_FILE = "comparison.png"
REPORT_FILES = (REPORT_FILE, SUMMARY_FILE, SAMPLES_FILE, CURVES_FILE)
"""The files an LM report writes into its destination (nothing else there is touched)."""
SUMMARY_KIND = "lrnn pretrain-report"
"""``summary.json``'s "kind": how a later report recognises the files an earlier one wrote."""

RANGE_NAMES = {"base": "-", "pos": "[0, 1]", "neg": "[-1, 1]"}
"""Run-name range part -> the eigenvalue range shown in the report ("-": a mixer without the switch)."""
RANGE_ORDER = tuple(RANGE_NAMES.values())
ROW_FIELDS = ("seed",) + RESUMABLE_CHANGES
"""Config fields in which the runs pooled into one row may differ."""

SPIKE_RATIO = 1.1
"""A logged training loss after warm-up is a *loss spike* when it exceeds ``SPIKE_RATIO`` times the lowest
training loss logged before it (each logged loss is the mean over ``log_every`` steps)."""

SAMPLE_PROMPTS = ("def ", "class ", "import ")
SAMPLE_TOKENS = 64
SAMPLE_TEMPERATURE = 0.8
SAMPLE_SEED = 0

_RUN_NAME = re.compile(r"^(?P<model>.+)-(?P<range>pos|neg|base)-s(?P<seed>\d+)$")


# ---- runs and rows -------------------------------------------------------------------------------
@dataclass
class LMRun:
    """One finished pretraining run: its result.json, its log and where it sits in the report."""

    name: str
    path: Path
    model: str
    range: str
    seed: int
    result: dict[str, Any]
    log: list[dict[str, Any]]

    @property
    def config(self) -> dict[str, Any]:
        return self.result["config"]

    @property
    def train_records(self) -> list[dict[str, Any]]:
        return [r for r in self.log if r.get("kind") == "train"]

    @property
    def val_records(self) -> list[dict[str, Any]]:
        return [r for r in self.log if r.get("kind") == "val"]

    @property
    def warmup_steps(self) -> int:
        """``round(warmup_fraction * steps)``, as ``lrnn.training.optim.learning_rate`` warms up."""
        return round(self.config["warmup_fraction"] * self.config["steps"])

    @property
    def final_train_loss(self) -> float:
        """The last logged training loss (nats / token, mean over the last ``log_every`` steps)."""
        return self.train_records[-1]["loss"]

    @property
    def tokens_per_s(self) -> float:
        """Median over the log lines of the training throughput (validation and checkpoints not timed)."""
        return statistics.median(r["tokens_per_s"] for r in self.train_records)

    @property
    def flops_fraction(self) -> float:
        """Median over the log lines of model FLOP/s (6 N per token) / the measured matmul FLOP/s."""
        return statistics.median(r["flops_fraction"] for r in self.train_records)

    @property
    def max_grad_norm(self) -> float | None:
        """The largest gradient norm (before clipping) logged after warm-up; None if none was logged."""
        norms = [r["grad_norm"] for r in self.train_records if r["step"] > self.warmup_steps]
        return max(norms) if norms else None

    @property
    def loss_spikes(self) -> int:
        """Logged training losses after warm-up above ``SPIKE_RATIO`` x the lowest one logged before."""
        spikes, lowest = 0, float("inf")
        for record in self.train_records:
            if record["step"] > self.warmup_steps and record["loss"] > SPIKE_RATIO * lowest:
                spikes += 1
            lowest = min(lowest, record["loss"])
        return spikes

    def numbers(self) -> dict[str, Any]:
        """The run's row in summary.json."""
        return {"name": self.name, "path": str(self.path), "model": self.model, "range": self.range,
                "seed": self.seed, "parameters": self.result["parameters"], "tokens": self.result["tokens"],
                "val_bpb": self.result["val_bpb"], "val_loss": self.result["val_loss"],
                "final_train_loss": self.final_train_loss, "tokens_per_s": self.tokens_per_s,
                "flops_fraction": self.flops_fraction, "max_grad_norm_after_warmup": self.max_grad_norm,
                "loss_spikes": self.loss_spikes, "train_seconds": self.result["train_seconds"]}


@dataclass
class LMRow:
    """The runs (seeds) of one (model, range) row."""

    model: str
    range: str
    runs: list[LMRun] = field(default_factory=list)

    def mean(self, name: str) -> float | None:
        """The mean over the row's runs of ``LMRun.numbers()[name]`` (None if any run has none)."""
        values = [run.numbers()[name] for run in self.runs]
        return None if any(v is None for v in values) else statistics.fmean(values)

    def numbers(self) -> dict[str, Any]:
        """The row in summary.json: means over its seeds, and the seeds' bits per byte."""
        means = ("parameters", "tokens", "val_bpb", "val_loss", "final_train_loss", "tokens_per_s",
                 "flops_fraction")
        norms = [run.max_grad_norm for run in self.runs if run.max_grad_norm is not None]
        return {"model": self.model, "range": self.range, "seeds": [run.seed for run in self.runs],
                "val_bpb_per_seed": [run.result["val_bpb"] for run in self.runs],
                **{name: self.mean(name) for name in means},
                "max_grad_norm_after_warmup": max(norms) if norms else None,
                "loss_spikes": sum(run.loss_spikes for run in self.runs), "runs": [run.name for run in self.runs]}


def eigenvalue_range(config: dict[str, Any]) -> str:
    """"-" for a model without an eigenvalue switch (attention), else "[0, 1]" or "[-1, 1]"."""
    mixers = config["mixer"] if isinstance(config["mixer"], list) else [config["mixer"]]
    if not any(mixer_spec(m).eigenvalue_switch for m in mixers):
        return "-"
    return "[-1, 1]" if config["negative_eigenvalues"] else "[0, 1]"


def collect_lm_runs(runs_dir: str | Path) -> list[LMRun]:
    """Every finished pretraining run under ``runs_dir`` (searched recursively), in path order.

    A ValueError names a result.json that is not a pretraining run's (no ``val_bpb`` or config) and a run
    whose name's range or seed contradicts its config."""
    runs = []
    for result in collect_results(runs_dir):
        path = Path(result["path"])
        config = result.get("config")
        if "val_bpb" not in result or not isinstance(config, dict) or "seq_len" not in config:
            raise ValueError(f"{path / 'result.json'} is not a pretraining run's result (no val_bpb or pretrain "
                             "config); give a directory of `lrnn pretrain` runs")
        runs.append(placed_run(path, result, read_log(path / LOG_FILE)))
    return runs


def placed_run(path: Path, result: dict[str, Any], log: list[dict[str, Any]]) -> LMRun:
    """The run in directory ``path`` with its row (model, range) and seed, read from the directory's name
    and ``result["config"]``; a ValueError if the name's range or seed contradicts the config."""
    config = result["config"]
    rng, seed = eigenvalue_range(config), int(config["seed"])
    match = _RUN_NAME.match(path.name)
    model = path.name
    if match:
        model = match["model"]
        if RANGE_NAMES[match["range"]] != rng or int(match["seed"]) != seed:
            raise ValueError(f"the run directory name {path.name!r} says range {RANGE_NAMES[match['range']]} "
                             f"and seed {match['seed']}, but its config has range {rng} and seed {seed}; "
                             "rename the directory")
    return LMRun(path.name, path, model, rng, seed, result, log)


def lm_rows(runs: list[LMRun]) -> list[LMRow]:
    """Runs grouped into (model, range) rows, in the mixer registry's order; a ValueError names rows whose
    runs differ in config beyond ``ROW_FIELDS`` (or share a seed)."""
    rows: dict[tuple[str, str], LMRow] = {}
    for run in runs:
        rows.setdefault((run.model, run.range), LMRow(run.model, run.range)).runs.append(run)
    problems = []
    for row in rows.values():
        first = row.runs[0]
        for other in row.runs[1:]:
            differences = config_differences(first.config, other.config, ROW_FIELDS)
            if differences or other.seed == first.seed:
                what = (", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in differences.items())
                        or f"nothing: both are seed {first.seed}")
                problems.append(f"{row.model} {row.range}: {first.path} and {other.path} differ in {what}")
                break
    if problems:
        raise ValueError(f"{len(problems)} report row(s) would pool runs that are not seeds of one experiment: "
                         f"{'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}; report each "
                         "experiment from a directory of its own")
    for row in rows.values():
        row.runs.sort(key=lambda run: run.seed)
    return sorted(rows.values(), key=_row_key)


def _row_key(row: LMRow) -> tuple:
    """Rows in the mixer registry's order (by the first run's mixer), then by model name and range."""
    mixer = row.runs[0].config["mixer"]
    label = mixer_spec(mixer).label if isinstance(mixer, str) else ""
    return label_order(label), row.model, RANGE_ORDER.index(row.range)


def range_differences(rows: list[LMRow]) -> list[dict[str, Any]]:
    """For every model with both ranges: mean val bits per byte of each and ``neg - pos`` (< 0: [-1, 1]
    compresses better)."""
    by_model: dict[str, dict[str, LMRow]] = {}
    for row in rows:
        by_model.setdefault(row.model, {})[row.range] = row
    differences = []
    for model, ranges in by_model.items():
        if "[0, 1]" in ranges and "[-1, 1]" in ranges:
            pos, neg = ranges["[0, 1]"].mean("val_bpb"), ranges["[-1, 1]"].mean("val_bpb")
            differences.append({"model": model, "pos_val_bpb": pos, "neg_val_bpb": neg, "neg_minus_pos": neg - pos})
    return differences


# ---- the report's text ---------------------------------------------------------------------------
def markdown_table(rows: list[LMRow]) -> str:
    """One line per (model, range) row; several seeds show each seed's bits per byte and their mean."""
    lines = ["| model | range | parameters | tokens | val bits/byte | val loss | final train loss | tokens/s | "
             "model-FLOP fraction | max grad norm after warm-up | loss spikes |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        numbers = row.numbers()
        bpb = f"{numbers['val_bpb']:.4f}"
        if len(row.runs) > 1:
            seeds = ", ".join(f"{run.result['val_bpb']:.4f} (s{run.seed})" for run in row.runs)
            bpb = f"{seeds}; mean **{bpb}**"
        norm = numbers["max_grad_norm_after_warmup"]
        lines.append(f"| {row.model} | {row.range} | {numbers['parameters']:,.0f} | {numbers['tokens']:,.0f} | {bpb} | "
                     f"{numbers['val_loss']:.4f} | {numbers['final_train_loss']:.4f} | "
                     f"{numbers['tokens_per_s']:,.0f} | {numbers['flops_fraction']:.3f} | "
                     f"{'-' if norm is None else f'{norm:.3f}'} | {numbers['loss_spikes']} |")
    return "\n".join(lines) + "\n"


def differences_table(differences: list[dict[str, Any]]) -> str:
    if not differences:
        return "No model was trained with both ranges.\n"
    lines = ["| model | [0, 1] val bits/byte | [-1, 1] val bits/byte | neg - pos |", "|---|---:|---:|---:|"]
    lines += [f"| {d['model']} | {d['pos_val_bpb']:.4f} | {d['neg_val_bpb']:.4f} | {d['neg_minus_pos']:+.4f} |"
              for d in differences]
    return "\n".join(lines) + "\n"


def shared_settings(runs: list[LMRun]) -> tuple[dict[str, Any], list[str]]:
    """(config fields equal in every run, names of the fields that differ between runs), resumable-change
    fields left out."""
    configs = [run.config for run in runs]
    names = sorted(set().union(*configs) - set(RESUMABLE_CHANGES))
    missing = object()
    shared = {n: configs[0].get(n) for n in names if all(c.get(n, missing) == configs[0].get(n, missing)
                                                         for c in configs)}
    return shared, [n for n in names if n not in shared]


def _fence(text: str) -> str:
    """A markdown code fence longer than any run of backticks in ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


# ---- plots and samples ---------------------------------------------------------------------------
def plot_lm_curves(rows: list[LMRow], path: str | Path) -> Path:
    """PNG: validation bits per byte (left) and training loss (right) vs tokens, one line per run; a model
    keeps one colour and marker, [0, 1] runs are dashed, the others solid."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours: dict[str, int] = {}
    for row in rows:
        index = colours.setdefault(row.model, len(colours))
        style = DASHED_STYLE if row.range == "[0, 1]" else SOLID_STYLE
        colour = f"C{index % 10}"
        for run in row.runs:
            label = row.model if row.range == "-" else f"{row.model} {row.range}"
            label += f" s{run.seed}" if len(row.runs) > 1 else ""
            val, train = run.val_records, run.train_records
            left.plot([r["tokens"] for r in val], [r["val_bpb"] for r in val], color=colour, label=label,
                      marker=MARKERS[index % len(MARKERS)], markeredgecolor=colour, **style)
            right.plot([r["tokens"] for r in train], [r["loss"] for r in train], color=colour, label=label,
                       **{k: v for k, v in style.items() if not k.startswith("marker")})
    left.set(xlabel="training tokens", ylabel="bits per byte", title="validation bits per byte")
    right.set(xlabel="training tokens", ylabel="nats / token", title="training loss (mean per log line)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return save_figure(fig, path)


def generate_samples(runs: list[LMRun], prompts: tuple[str, ...] = SAMPLE_PROMPTS,
                     max_new_tokens: int = SAMPLE_TOKENS, temperature: float = SAMPLE_TEMPERATURE,
                     seed: int = SAMPLE_SEED) -> list[dict[str, str]]:
    """Each run's exported model continues each prompt: ``[{"run", "prompt", "text"}]``, text = prompt +
    continuation, sampled at ``temperature`` with a generator seeded ``seed`` (the same for every call)."""
    import torch

    from lrnn.models import LanguageModel, SamplingConfig, generate_text
    from lrnn.models.tokenizer import Tokenizer

    sampling = SamplingConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature)
    samples = []
    for run in runs:
        model = LanguageModel.from_pretrained(run.path / MODEL_DIR).eval()
        tokenizer = Tokenizer(run.path / MODEL_DIR)
        for prompt in prompts:
            pieces = [prompt]
            with torch.no_grad():
                generate_text(model, tokenizer, prompt, sampling, seed=seed, write=pieces.append)
            samples.append({"run": run.name, "prompt": prompt, "text": "".join(pieces)})
    return samples


def samples_markdown(samples: list[dict[str, str]], command: str, max_new_tokens: int = SAMPLE_TOKENS,
                     temperature: float = SAMPLE_TEMPERATURE, seed: int = SAMPLE_SEED) -> str:
    lines = ["# Samples", "", f"Produced by `{command}`: each run's `model/` continues each prompt with up to "
             f"{max_new_tokens} new tokens (stopping at the end-of-document token), sampled at temperature "
             f"{temperature} with seed {seed}. Generated by code; not edited.", ""]
    run = None
    for sample in samples:
        if sample["run"] != run:
            run = sample["run"]
            lines += [f"## {run}", ""]
        fence = _fence(sample["text"])
        lines += [f"Prompt {json.dumps(sample['prompt'])}:", "", f"{fence}python", sample["text"], fence, ""]
    return "\n".join(lines)


# ---- writing -------------------------------------------------------------------------------------
def check_lm_report_destination(out_dir: str | Path, overwrite: bool = False) -> None:
    """Raise a ValueError unless an LM report may be written into ``out_dir``: a directory (or creatable),
    whose files of ``REPORT_FILES``' names, if any, an earlier LM report wrote (or ``overwrite``)."""
    out = Path(out_dir)
    check_writable_directory(out, "the report destination")
    clashes = [name for name in REPORT_FILES if (out / name).exists()]
    if clashes and not overwrite and not _holds_lm_report(out):
        raise ValueError(f"{out} holds {', '.join(clashes)}, not written by an earlier LM report; write the report "
                         "elsewhere (--out) or overwrite them (--force)")


def _holds_lm_report(out: Path) -> bool:
    try:
        summary = json.loads((out / SUMMARY_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(summary, dict) and summary.get("kind") == SUMMARY_KIND


@dataclass
class LMReport:
    """A checked LM report, ready to write (``prepare_lm_report``)."""

    runs_dir: Path
    out: Path
    command: str
    runs: list[LMRun]
    rows: list[LMRow]
    samples: bool = True

    def write(self) -> dict[str, Path]:
        """Write ``REPORT_FILES`` into ``out`` (samples.md only with ``samples``); returns the paths by name
        ("report", "summary", "curves", "samples")."""
        written = {"curves": plot_lm_curves(self.rows, self.out / CURVES_FILE)}
        if self.samples:
            text = samples_markdown(generate_samples(self.runs), self.command)
            written["samples"] = self.out / SAMPLES_FILE
            atomic_write_text(written["samples"], text)
        differences = range_differences(self.rows)
        shared, varying = shared_settings(self.runs)
        atomic_write_text(self.out / REPORT_FILE, self.markdown(differences, shared, varying))
        written["report"] = self.out / REPORT_FILE
        summary = {"kind": SUMMARY_KIND, "command": self.command, "runs_dir": str(self.runs_dir),
                   "spike_ratio": SPIKE_RATIO, "rows": [row.numbers() for row in self.rows],
                   "range_differences": differences, "runs": [run.numbers() for run in self.runs],
                   "shared_config": shared, "varying_config": varying}
        atomic_write_text(self.out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        written["summary"] = self.out / SUMMARY_FILE
        return written

    def markdown(self, differences: list[dict[str, Any]], shared: dict[str, Any], varying: list[str]) -> str:
        corpus = sorted({run.result.get("corpus", "?") for run in self.runs})
        settings = ", ".join(f"{name}={json.dumps(shared[name])}" for name in
                             ("steps", "batch_size", "seq_len", "d_model", "n_layers", "vocab_size", "lr", "min_lr",
                              "warmup_fraction", "weight_decay", "precision") if name in shared)
        text = ["# Language-model pretraining: eigenvalue range [0, 1] vs [-1, 1]", "",
                f"Produced by `{self.command}` from {len(self.runs)} finished run{'s' * (len(self.runs) != 1)} under `{self.runs_dir}` "
                f"(corpus: {'; '.join(corpus)}).", "",
                f"Shared by every run: {settings or 'no training setting'}. Runs differ in: "
                f"{', '.join(varying) or 'nothing'}.", "", markdown_table(self.rows),
                "Columns: **val bits/byte** and **val loss** (nats / token) on the validation split at the end "
                "(result.json; with several seeds, each seed's and the mean); **final train loss**: the last "
                "logged training loss (mean over its log_every steps); **tokens/s**: the median over the log "
                "lines of training throughput (validation and checkpoints not timed); **model-FLOP fraction**: "
                "the median of 6 N FLOPs per token x tokens/s over the measured matmul FLOP/s (N: parameters "
                "outside the embedding, plus the LM head); **max grad norm after warm-up**: the largest logged "
                "gradient norm before clipping (each log line records its last step); **loss spikes**: logged "
                f"training losses after warm-up above {SPIKE_RATIO} x the lowest one logged before them.", "",
                "## [-1, 1] minus [0, 1]", "", "Mean validation bits per byte; a negative difference means the "
                "[-1, 1] range compresses the validation text better.", "", differences_table(differences),
                f"![validation bits per byte and training loss]({CURVES_FILE})", ""]
        if self.samples:
            text += [f"Generated code: [{SAMPLES_FILE}]({SAMPLES_FILE}).", ""]
        return "\n".join(text)


def prepare_lm_report(runs_dir: str | Path, out_dir: str | Path | None = None, command: str | None = None,
                      overwrite: bool = False, samples: bool = True) -> LMReport:
    """Collect and check everything a report needs before a file is written: the finished runs
    (``collect_lm_runs``), their rows (``lm_rows``), their exported models (with ``samples``), the
    destination (``check_lm_report_destination``).

    ``out_dir`` defaults to ``runs_dir``; ``command`` is the command quoted in the report's header (default:
    the ``lrnn pretrain-report`` command that writes the same report)."""
    runs = collect_lm_runs(runs_dir)
    if not runs:
        raise ValueError(f"no finished pretraining runs (result.json with finished = true) under {runs_dir}")
    rows = lm_rows(runs)
    missing = [str(run.path / MODEL_DIR) for run in runs if samples and not (run.path / MODEL_DIR).is_dir()]
    if missing:
        raise ValueError(f"the samples need each run's exported model, missing: {', '.join(missing[:3])}"
                         f"{', ...' if len(missing) > 3 else ''}")
    out = Path(runs_dir if out_dir is None else out_dir)
    check_lm_report_destination(out, overwrite)
    if command is None:
        words = ["lrnn", "pretrain-report", str(runs_dir)] + ([] if out_dir is None else ["--out", str(out_dir)])
        command = shlex.join(words)
    return LMReport(Path(runs_dir), out, command, runs, rows, samples)


def write_lm_report(runs_dir: str | Path, out_dir: str | Path | None = None, command: str | None = None,
                    overwrite: bool = False, samples: bool = True) -> dict[str, Path]:
    """``prepare_lm_report(...).write()``: report.md, summary.json, comparison.png and (with ``samples``)
    samples.md in ``out_dir``; returns the written paths by name."""
    return prepare_lm_report(runs_dir, out_dir, command, overwrite, samples).write()


__all__ = ["LMReport", "LMRow", "LMRun", "REPORT_FILES", "SPIKE_RATIO", "check_lm_report_destination",
           "collect_lm_runs", "eigenvalue_range", "generate_samples", "lm_rows", "markdown_table", "placed_run",
           "plot_lm_curves", "prepare_lm_report", "range_differences", "write_lm_report"]
