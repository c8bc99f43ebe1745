"""The token-dynamics experiment's report (issue #15, ``docs/results/token_dynamics/``), from finished runs.

Two groups of runs, each a directory of run directories with a ``result.json``:

* **language models** (``lrnn pretrain`` runs of Mamba with ``token_dynamics`` None / "positive" / "negative"
  / "mixed"): validation bits per byte, and the regime every Mamba layer of the trained model is in
  (``analyze_model`` on a fixed code prompt encoded with the run's own tokenizer): the spectrum of
  sym(S_C^T S_B) and the token norms of the integrated continuous-time system;
* **classification** (``lrnn train`` runs, e.g. Mamba on ``sequential_digits`` with and without
  ``reorder_tau``): the held-out score.

Rows group runs that differ only in their seed; each row shows every seed's value and the mean.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lrnn.analysis.dynamics import analyze_model
from lrnn.atomic import atomic_write_text
from lrnn.models import LanguageModel
from lrnn.models.tokenizer import Tokenizer
from lrnn.paths import check_not_replacing, check_writable_directory

PROMPT = '''def mean(values):
    """Return the arithmetic mean of a non-empty list of numbers."""
    total = 0
    for value in values:
        total += value
    return total / len(values)
'''
"""The code the trained models' dynamics are measured on (real tokens of the corpus' language)."""

REPORT_FILES = ("report.md", "summary.json")


@dataclass
class Row:
    """Runs of one variant: its label, and per seed the metric (and, for LMs, the layers' regimes)."""

    label: str
    seeds: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    regimes: list[list[str]] = field(default_factory=list)
    norm_ratios: list[tuple[float, float]] = field(default_factory=list)  # (min, max) over layers and tokens

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def spread(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def finished_runs(directory: str | Path) -> list[tuple[Path, dict]]:
    """(run directory, result) of every finished ``result.json`` under ``directory``, sorted by path."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"runs directory not found: {directory}")
    runs = []
    for path in sorted(directory.rglob("result.json")):
        result = json.loads(path.read_text())
        if result.get("finished"):
            runs.append((path.parent, result))
    if not runs:
        raise ValueError(f"no finished run (result.json with finished: true) under {directory}")
    return runs


def lm_variant(config: dict) -> str:
    """The Mamba parametrisation of a pretraining config: its ``token_dynamics`` or "default"."""
    kwargs = config.get("mixer_kwargs", {}).get("mamba", {})
    return kwargs.get("token_dynamics") or "default"


def classification_variant(config: dict) -> str:
    """Whether a training config reorders tokens: "reorder tau=T" or "no reordering"."""
    tau = config.get("mixer_kwargs", {}).get("reorder_tau")
    return "no reordering" if tau is None else f"reorder tau={tau:g}"


def lm_rows(directory: str | Path, max_steps: int = 2000,
            order: tuple[str, ...] = ("default", "positive", "negative", "mixed")) -> list[Row]:
    """One row per Mamba parametrisation of the pretraining runs under ``directory``: validation bits per
    byte per seed, and each trained model's per-layer regime on ``PROMPT`` (``analyze_model`` with at most
    ``max_steps`` RK4 steps per layer)."""
    rows: dict[str, Row] = {}
    for run_dir, result in finished_runs(directory):
        config = result["config"]
        if config.get("mixer") != "mamba":
            raise ValueError(f"{run_dir} is not a Mamba run (mixer {config.get('mixer')!r})")
        row = rows.setdefault(lm_variant(config), Row(lm_variant(config)))
        row.seeds.append(config["seed"])
        row.values.append(result["val_bpb"])
        layers = _model_dynamics(run_dir / "model", max_steps)
        row.regimes.append([layer.spectrum.regime for layer in layers])
        ratios = torch.cat([layer.trajectory.norms[-1] / layer.trajectory.norms[0] for layer in layers])
        row.norm_ratios.append((ratios.min().item(), ratios.max().item()))
    return sorted(rows.values(), key=lambda r: order.index(r.label) if r.label in order else len(order))


def _model_dynamics(model_dir: Path, max_steps: int):
    model = LanguageModel.from_pretrained(model_dir, dtype=torch.float64).eval()
    ids = torch.tensor(Tokenizer(model_dir).encode(PROMPT))
    return analyze_model(model, ids, max_steps=max_steps)


def classification_rows(directory: str | Path) -> list[Row]:
    """One row per reordering setting of the training runs under ``directory``: the held-out score."""
    rows: dict[str, Row] = {}
    for _, result in finished_runs(directory):
        label = classification_variant(result["config"])
        row = rows.setdefault(label, Row(label))
        row.seeds.append(result["seed"])
        row.values.append(result["score"])
    return sorted(rows.values(), key=lambda r: (r.label != "no reordering", r.label))


def _values(row: Row, digits: int) -> str:
    return ", ".join(f"{v:.{digits}f}" for _, v in sorted(zip(row.seeds, row.values)))


def lm_table(rows: list[Row]) -> str:
    lines = ["| x_proj parametrisation | seeds | val bits/byte per seed | mean (sd) | layer regimes (per seed) | "
             "token norm ratio at the end, min / max |", "|---|---|---|---|---|---|"]
    for row in rows:
        regimes = "; ".join(", ".join(_short(r) for r in seed) for seed in row.regimes)
        ratios = "; ".join(f"{lo:.2g} / {hi:.2g}" for lo, hi in row.norm_ratios)
        lines.append(f"| {row.label} | {len(row.values)} | {_values(row, 4)} | {row.mean:.4f} ({row.spread:.4f}) | "
                     f"{regimes} | {ratios} |")
    return "\n".join(lines)


def _short(regime: str) -> str:
    return {"convergent": "conv", "divergent": "div", "mixed": "mixed", "none": "none"}[regime]


def classification_table(rows: list[Row]) -> str:
    lines = ["| model | seeds | held-out score per seed | mean (sd) |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| Mamba, {row.label} | {len(row.values)} | {_values(row, 3)} | {row.mean:.3f} "
                     f"({row.spread:.3f}) |")
    return "\n".join(lines)


def write_report(lm_runs: str | Path | None, classification_runs: str | Path | None, out_dir: str | Path,
                 command: str, overwrite: bool = False, max_steps: int = 2000) -> dict[str, Path]:
    """Write ``report.md`` and ``summary.json`` into ``out_dir`` (each atomically) from the runs given;
    files of those names are replaced only with ``overwrite``."""
    if lm_runs is None and classification_runs is None:
        raise ValueError("give the language-model runs, the classification runs, or both")
    out = check_writable_directory(out_dir, "the output directory")
    check_not_replacing(out, REPORT_FILES, overwrite, "pass overwrite (--force)")
    lm = lm_rows(lm_runs, max_steps) if lm_runs is not None else []
    classification = classification_rows(classification_runs) if classification_runs is not None else []
    parts = [f"# Token dynamics experiment\n\nGenerated by `{command}`.\n"]
    if lm:
        parts.append("## Language models: Mamba with each x_proj parametrisation\n\nRegimes: conv = every "
                     "non-zero eigenvalue of sym(S_C^T S_B) negative, div = all positive, mixed = both; per "
                     "layer, measured on the trained model with the prompt below. Token norm ratio: "
                     "|x_l(t)| / |x_l(0)| at the end of the integrated continuous-time system (docs/"
                     "token_dynamics.md), over every layer and token.\n\n" + lm_table(lm) + "\n\nPrompt:\n\n```python\n"
                     + PROMPT + "```\n")
    if classification:
        parts.append("## Classification with and without importance reordering\n\n" + classification_table(classification)
                     + "\n")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "report.md", "summary": out / "summary.json"}
    atomic_write_text(paths["report"], "\n".join(parts))
    summary = {"command": command, "prompt": PROMPT,
               "language_models": [vars(r) for r in lm], "classification": [vars(r) for r in classification]}
    atomic_write_text(paths["summary"], json.dumps(summary, indent=1) + "\n")
    return paths
