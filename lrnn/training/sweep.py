"""A grid of runs (tasks x models x eigenvalue ranges x learning rates x seeds) in worker processes.

The grid is a ``SweepSpec``; every run gets its own directory ``<out>/runs/<name>``. Sweeps are
resumable: a run whose ``result.json`` exists is skipped, one with a ``checkpoint.pt`` continues from
it (``lrnn.training.trainer``). Workers are spawned processes (``multiprocessing`` "spawn": no forked
torch state), each limited to ``threads`` intra-op threads so that ``workers * threads`` cores are busy.
At the end the sweep writes the report (``lrnn.training.report.write_report``) into ``<out>``.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrnn.layers import MIXERS, RECURRENT_MIXERS
from lrnn.models.config import JsonConfig
from lrnn.training.config import PROTOCOLS, RunConfig
from lrnn.training.trainer import RESULT_FILE

RANGES = {"[0,1]": False, "[-1,1]": True}
"""Eigenvalue-range names accepted by a sweep spec (spaces are ignored)."""


@dataclass
class SweepSpec(JsonConfig):
    """A grid of runs.

    Attributes:
        tasks: task names. models: mixer names, optionally with ``:n_h`` (e.g. ``"deltaproduct:2"``), or
            ``"s4d:INIT"`` with INIT an S4D init ("legs", "lin", "inv", "real", "ptd"; plain "s4d": legs).
        ranges: eigenvalue ranges, "[0,1]" and/or "[-1,1]" (attention and LSTM run once, with range "-").
        lrs: learning rates. seeds: seeds.
        protocol: a name in ``PROTOCOLS`` applied to every run (None: the base's lengths).
        base: RunConfig fields shared by every run (steps, batch_size, d_model, ...).
        task_overrides / model_overrides: RunConfig fields per task name / per model string
            (e.g. ``{"arithmetic": {"n_layers": 3}}``), applied after ``base``.
    """

    tasks: list[str] = field(default_factory=lambda: ["parity"])
    models: list[str] = field(default_factory=lambda: ["deltanet"])
    ranges: list[str] = field(default_factory=lambda: ["[0,1]", "[-1,1]"])
    lrs: list[float] = field(default_factory=lambda: [1e-3])
    seeds: list[int] = field(default_factory=lambda: [0])
    protocol: str | None = None
    base: dict[str, Any] = field(default_factory=dict)
    task_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("tasks", "models", "ranges", "lrs", "seeds"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"{name} must be a non-empty list, got {value!r}")
        self.ranges = [r.replace(" ", "") for r in self.ranges]
        bad = [r for r in self.ranges if r not in RANGES]
        if bad:
            raise ValueError(f"ranges must be among {sorted(RANGES)}, got {bad}")
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)} or null, got {self.protocol!r}")
        for model in self.models:
            _parse_model(model)

    config_kind = "sweep spec"

    @classmethod
    def load(cls, path: str | Path) -> "SweepSpec":
        """Read a spec from a .json or .toml file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sweep spec not found: {path}")
        text = path.read_text()
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10: the same parser, packaged as tomli
                import tomli as tomllib
            try:
                return cls.from_dict(tomllib.loads(text))
            except tomllib.TOMLDecodeError as err:
                raise ValueError(f"{path} is not valid TOML: {err}") from None
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON (use .toml for TOML): {err}") from None

    def runs(self) -> list[tuple[str, RunConfig]]:
        """(name, config) of every run of the grid, in a fixed order; names are unique directory names."""
        runs = []
        for task in self.tasks:
            for model in self.models:
                mixer, variant = _parse_model(model)
                ranges = self.ranges if mixer in RECURRENT_MIXERS else self.ranges[:1]
                for rng in ranges:
                    for lr in self.lrs:
                        for seed in self.seeds:
                            fields = {**self.base, **self.task_overrides.get(task, {}),
                                      **self.model_overrides.get(model, {}), "task": task, "mixer": mixer,
                                      "negative_eigenvalues": RANGES[rng] and mixer in RECURRENT_MIXERS,
                                      "lr": float(lr), "seed": int(seed)}
                            if mixer == "s4d" and variant is not None:
                                fields["mixer_kwargs"] = {**fields.get("mixer_kwargs", {}), "init": variant}
                            elif variant is not None:
                                fields["n_h"] = int(variant)
                            config = RunConfig.from_dict(fields)
                            if self.protocol is not None:
                                config = config.with_protocol(self.protocol)
                            runs.append((run_name(config), config))
        return runs


def run_name(config: RunConfig) -> str:
    """A directory name such as ``parity-deltaproduct2-neg-lr0.001-s0`` or ``listops-s4d-ptd-base-lr0.003-s0``."""
    model = config.mixer + (str(config.n_h) if config.mixer == "deltaproduct" else "")
    if config.mixer == "s4d":
        model += "-" + str(config.mixer_arguments().get("init", "legs"))
    rng = {"-": "base", "[0, 1]": "pos", "[-1, 1]": "neg"}[config.eigenvalue_range]
    return f"{config.task}-{model}-{rng}-lr{config.lr:g}-s{config.seed}"


def run_sweep(spec: SweepSpec, out_dir: str | Path, workers: int = 1, threads: int = 1,
              quiet: bool = False, report: bool = True) -> dict:
    """Run every unfinished run of ``spec`` under ``out_dir/runs`` with ``workers`` processes.

    Returns ``{"runs": n, "skipped": finished before, "done": [names], "failed": {name: error}}``; a
    failing run is reported, not fatal, so one bad configuration does not stop the grid. With
    ``report`` the markdown table and plots are written into ``out_dir`` at the end.
    """
    for name, value in (("workers", workers), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    out = Path(out_dir)
    runs = spec.runs()
    names = [n for n, _ in runs]
    if len(set(names)) != len(names):
        raise ValueError("the sweep produces duplicate run names; check for repeated tasks, models, lrs or seeds")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    from lrnn.models.io import atomic_write_text

    atomic_write_text(out / "sweep.json", json.dumps(dataclasses.asdict(spec), indent=2) + "\n")
    todo = [(str(out / "runs" / n), c.to_dict(), threads) for n, c in runs if not (out / "runs" / n / RESULT_FILE).is_file()]
    summary = {"runs": len(runs), "skipped": len(runs) - len(todo), "done": [], "failed": {}}
    _say(quiet, f"sweep: {len(runs)} runs, {summary['skipped']} already finished, {len(todo)} to run "
                f"on {workers} worker(s) x {threads} thread(s)")
    started = time.perf_counter()
    if workers == 1 or len(todo) <= 1:
        _init_worker(threads)
        outcomes = map(_run_one, todo)
        _fold_outcomes(outcomes, summary, len(todo), started, quiet)
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(threads,)) as pool:
            _fold_outcomes(pool.imap_unordered(_run_one, todo), summary, len(todo), started, quiet)
    if report and (summary["done"] or summary["skipped"]):
        from lrnn.training.report import write_report

        summary["report"] = {k: str(v) for k, v in write_report(out / "runs", out).items()}
    return summary


def _fold_outcomes(outcomes, summary: dict, total: int, started: float, quiet: bool) -> None:
    """Fold worker outcomes into ``summary``, printing one line per finished run."""
    for i, (name, score, error) in enumerate(outcomes, 1):
        elapsed = time.perf_counter() - started
        if error is None:
            summary["done"].append(name)
            _say(quiet, f"[{i}/{total} {elapsed:6.0f}s] {name}: score {score:.4f}")
        else:
            summary["failed"][name] = error
            _say(quiet, f"[{i}/{total} {elapsed:6.0f}s] {name}: FAILED: {error.splitlines()[-1]}")


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_one(job: tuple[str, dict, int]) -> tuple[str, float | None, str | None]:
    """Train one run (in a worker); returns (name, score, None) or (name, None, error text)."""
    from lrnn.training.trainer import train

    run_dir, config, _ = job
    name = Path(run_dir).name
    try:
        outcome = train(RunConfig.from_dict(config), run_dir, resume=True, quiet=True)
        return name, float(outcome.result["score"]), None
    except Exception:  # report and go on: one failed run must not stop the grid
        return name, None, traceback.format_exc()


def _parse_model(model: str) -> tuple[str, str | None]:
    """"deltaproduct:2" -> ("deltaproduct", "2"); "s4d:ptd" -> ("s4d", "ptd"); "mamba" -> ("mamba", None).

    The part after ':' is n_h (a positive integer) for every mixer but S4D, whose variant is its init.
    """
    if not isinstance(model, str):
        raise TypeError(f"a model must be a mixer name, optionally ':n_h' (':init' for s4d), got {model!r}")
    mixer, _, variant = model.partition(":")
    if mixer not in MIXERS:
        raise ValueError(f"unknown model {model!r}; mixers: {sorted(MIXERS)} (optionally with ':n_h', "
                         f"or 's4d:INIT')")
    if not variant:
        return mixer, None
    if mixer == "s4d":
        from lrnn.layers.hippo import INITS

        if variant not in INITS:
            raise ValueError(f"the init of model {model!r} must be one of {list(INITS)}")
        return mixer, variant
    if not variant.isdigit() or int(variant) < 1:
        raise ValueError(f"the n_h of model {model!r} must be a positive integer")
    return mixer, variant


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)
