"""A grid of runs (tasks x models x eigenvalue ranges x learning rates x seeds) in worker processes.

The grid is a ``SweepSpec``; every run gets its own directory ``<out>/runs/<name>``. ``plan_sweep``
checks everything before a run starts and decides what to do with each run; ``run_plan`` runs it.
Sweeps are resumable: a run whose ``result.json`` exists is reused, one with a ``checkpoint.pt``
continues from it (``lrnn.training.trainer``) -- but only if the directory's ``config.json`` is the
run's config; a directory of another config is refused, never reused or mixed into a report cell.
Workers are spawned processes (``multiprocessing`` "spawn": no forked torch state), each limited to
``threads`` intra-op threads (default 1) so that ``workers * threads`` cores are busy. At the end the
sweep writes the report (``lrnn.training.report.write_report``) into ``<out>``.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import torch

from lrnn.atomic import atomic_write_text
from lrnn.paths import check_writable_directory
from lrnn.layers import GENERIC_FIELDS, MIXERS, MixerSpec, mixer_spec
from lrnn.jsonconfig import JsonConfig
from lrnn.tasks import TASKS
from lrnn.training.config import PROTOCOLS, RESULT_NEUTRAL_FIELDS, RunConfig, config_differences
from lrnn.training.report import (check_report_destination, collect_results, mixed_cells,
                                  write_report)
from lrnn.training.trainer import CHECKPOINT_FILE, CONFIG_FILE, RESULT_FILE

RANGES = {"[0,1]": False, "[-1,1]": True}
"""Eigenvalue-range names accepted by a sweep spec (spaces are ignored)."""


@dataclass
class SweepSpec(JsonConfig):
    """A grid of runs.

    Attributes:
        tasks: task names. models: mixer names, optionally with the mixer's variant (its registry entry):
            ``:n_h`` for the DeltaNet family (e.g. ``"deltaproduct:2"``), ``"s4d:INIT"`` with INIT an S4D
            init ("legs", "lin", "inv", "real", "ptd"; plain "s4d": legs).
        ranges: eigenvalue ranges, "[0,1]" and/or "[-1,1]" (mixers without the eigenvalue switch --
            attention, LSTM, S4D -- run once, with range "-").
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
            parse_model(model)

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
        """(name, config) of every run of the grid, in a fixed order; names are unique directory names.

        Fields apply in this order, later ones winning: ``base``, ``task_overrides``, ``model_overrides``,
        then the grid's own axes (task, model and its variant, range, lr, seed). A grid shares ``base``
        and ``task_overrides`` across different mixers, so their generic size fields (heads, n_h,
        d_state, chunk_size) apply to the models whose mixer takes them; ``model_overrides`` are strict.
        """
        runs = []
        for task in self.tasks:
            for model in self.models:
                spec, variant = parse_model(model)
                shared = {name: value for name, value in {**self.base, **self.task_overrides.get(task, {})}.items()
                          if name not in GENERIC_FIELDS or name in spec.fields}
                ranges = self.ranges if spec.eigenvalue_switch else self.ranges[:1]
                for rng in ranges:
                    for lr in self.lrs:
                        for seed in self.seeds:
                            fields = {**shared, **self.model_overrides.get(model, {}), "task": task,
                                      "mixer": spec.name, "negative_eigenvalues": RANGES[rng] and spec.eigenvalue_switch,
                                      "lr": float(lr), "seed": int(seed)}
                            for name, value in variant.items():  # the ":VALUE" part of the model
                                fields[name] = {**fields.get(name, {}), **value} if name == "mixer_kwargs" else value
                            config = RunConfig.from_dict(fields)
                            if self.protocol is not None:
                                config = config.with_protocol(self.protocol)
                            runs.append((run_name(config), config))
        return runs


def run_name(config: RunConfig) -> str:
    """A directory name such as ``parity-deltaproduct2-neg-lr0.001-s0`` or ``listops-s4d-ptd-base-lr0.003-s0``."""
    model = mixer_spec(config.mixer).tag(config.mixer_arguments())
    rng = {"-": "base", "[0, 1]": "pos", "[-1, 1]": "neg"}[config.eigenvalue_range]
    return f"{config.task}-{model}-{rng}-lr{config.lr:g}-s{config.seed}"


SWEEP_RECORD = "sweep.json"
"""The file in a sweep directory that records the spec and overrides of the latest ``run_sweep`` there."""

GRID_FIELDS = {"task": "tasks", "mixer": "models", "negative_eigenvalues": "ranges", "lr": "lrs", "seed": "seeds"}
"""RunConfig fields set by the grid's axes -> the SweepSpec field that sets them (overrides may not)."""


@dataclass
class SweepPlan:
    """What a sweep will do, decided and checked before any run starts (``plan_sweep``).

    Attributes:
        spec: the grid. overrides: RunConfig fields set on every run last (the command line's ``--set``).
        out: the sweep directory; run ``name`` lives in ``out/runs/name``.
        runs: (name, config) of every run, overrides applied, in grid order.
        finished: names of runs finished with the same config: their results are reused.
        resumed: names of runs with a checkpoint of the same config: they continue from it.
        report: whether the report is written into ``out`` at the end.
    """

    spec: SweepSpec
    overrides: dict[str, Any]
    out: Path
    runs: list[tuple[str, RunConfig]]
    finished: list[str]
    resumed: list[str]
    report: bool = True

    @property
    def todo(self) -> list[tuple[str, RunConfig]]:
        """The runs to train (new or resumed), in grid order."""
        finished = set(self.finished)
        return [(name, config) for name, config in self.runs if name not in finished]

    def describe(self) -> str:
        """Exactly what the sweep runs: its grid, the overrides, and how many runs are reused or resumed."""
        spec = self.spec
        axes = [("tasks", spec.tasks), ("models", spec.models), ("ranges", spec.ranges),
                ("lrs", [f"{lr:g}" for lr in spec.lrs]), ("seeds", spec.seeds)]
        grid = " x ".join(f"{name} {','.join(map(str, values))}" for name, values in axes)
        protocol = f", protocol {spec.protocol}" if spec.protocol else ""
        lines = [f"sweep: {grid}{protocol} = {len(self.runs)} runs under {self.out / 'runs'}"]
        if self.overrides:
            lines.append("set on every run, over the spec: "
                         + ", ".join(f"{name}={json.dumps(value)}" for name, value in self.overrides.items()))
        lines.append(f"{len(self.finished)} finished (reused), {len(self.resumed)} resumed from a checkpoint, "
                     f"{len(self.todo) - len(self.resumed)} new")
        return "\n".join(lines)


def plan_sweep(spec: SweepSpec, out_dir: str | Path, overrides: dict[str, Any] | None = None,
               report: bool = True) -> SweepPlan:
    """Check a sweep of ``spec`` into ``out_dir`` and decide which of its runs to reuse, resume or start.

    ``overrides``: RunConfig fields set on every run after ``spec.runs()`` built it, so they win over the
    spec's base, task and model overrides and protocol (``_with_overrides``). A run directory that
    already exists is reused (finished) or resumed (checkpointed) only if its config.json equals the
    run's config up to ``RESULT_NEUTRAL_FIELDS``; otherwise, or if a run would share a report cell with a
    finished run of another config under ``out_dir/runs``, a ValueError names them: results of different
    configs are never mixed. Unknown tasks, duplicate run names and a destination that is a file (or
    holds files the report would clobber) are refused here too, before anything is written.
    """
    if not isinstance(spec, SweepSpec):
        raise TypeError(f"spec must be a SweepSpec, got {type(spec).__name__}")
    if overrides is not None and not isinstance(overrides, dict):
        raise TypeError(f"overrides must be a dict of RunConfig fields or None, got {overrides!r}")
    out = Path(out_dir)
    check_writable_directory(out / "runs", "the sweep's run directory")
    overrides = dict(overrides or {})
    runs = _with_overrides(spec.runs(), overrides)
    _check_unique_names(runs)
    _check_tasks(runs)
    states = {name: _run_state(out / "runs" / name, config) for name, config in runs}
    conflicts = [f"{out / 'runs' / name} ({_format_differences(differences)})"
                 for name, (_, differences) in states.items() if differences]
    if conflicts:
        raise ValueError(f"{len(conflicts)} run director{'y' if len(conflicts) == 1 else 'ies'} under "
                         f"{out / 'runs'} hold a different config, whose results must not be reused or mixed: "
                         f"{'; '.join(conflicts[:3])}{'; ...' if len(conflicts) > 3 else ''}; "
                         "give this sweep another --out (out_dir)")
    finished = [name for name, (state, _) in states.items() if state == "finished"]
    existing = collect_results(out / "runs") if (out / "runs").is_dir() else []
    _check_report_cells(out, runs, finished, existing)
    if report:
        check_report_destination(out, sorted({r["task"] for r in existing} | {c.task for _, c in runs}))
    return SweepPlan(spec, overrides, out, runs, finished,
                     [name for name, (state, _) in states.items() if state == "resumed"], report)


def run_sweep(spec: SweepSpec, out_dir: str | Path, workers: int = 1, threads: int = 1, quiet: bool = False,
              report: bool = True, overrides: dict[str, Any] | None = None, compile_backend: str | None = None) -> dict:
    """Plan (``plan_sweep``) and run (``run_plan``) a sweep of ``spec`` into ``out_dir``; see both."""
    return run_plan(plan_sweep(spec, out_dir, overrides, report), workers, threads, quiet, compile_backend)


def run_plan(plan: SweepPlan, workers: int = 1, threads: int = 1, quiet: bool = False,
             compile_backend: str | None = None) -> dict:
    """Run every unfinished run of ``plan`` under ``plan.out/runs`` with ``workers`` processes.

    ``threads``: torch intra-op threads per worker. The default 1 is deliberate: with two threads per
    worker the chunked ops stall 10-25x once workers share cores (measured on a loaded 2-core machine),
    so use ``workers * threads <=`` the number of free cores and prefer more workers to more threads.
    ``compile_backend``: None trains eager models; a ``torch.compile`` backend name ("inductor") trains
    every run as ``lrnn train --compile`` does (``train(compile_backend=...)``: the same loss on padded
    batches, evaluation eager). Compiling changes rounding, not the run's config, so finished and
    interrupted runs are reused and resumed either way; ``sweep.json`` records the backend.

    Returns ``{"runs": n, "skipped": finished before, "resumed": [names], "done": [names], "failed":
    {name: error}}``; a failing run is reported, not fatal, so one bad configuration does not stop the
    grid. With ``plan.report`` the markdown table and plots are written into ``plan.out`` at the end.
    """
    for name, value in (("workers", workers), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if compile_backend is not None and not isinstance(compile_backend, str):
        raise TypeError(f"compile_backend must be None or a torch.compile backend name, got {compile_backend!r}")
    out = plan.out
    (out / "runs").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SWEEP_RECORD, json.dumps({"spec": dataclasses.asdict(plan.spec),
                                                      "overrides": plan.overrides, "compile": compile_backend},
                                                     indent=2) + "\n")
    todo = [(str(out / "runs" / name), config.to_dict(), compile_backend) for name, config in plan.todo]
    summary = {"runs": len(plan.runs), "skipped": len(plan.finished), "resumed": list(plan.resumed),
               "done": [], "failed": {}}
    say(quiet, f"{plan.describe()}; {len(todo)} to run on {workers} worker(s) x {threads} thread(s)")
    started = time.perf_counter()
    fold_outcomes(map_in_workers(_run_one, todo, workers, threads), summary, len(todo), started, quiet)
    if plan.report and (summary["done"] or summary["skipped"]):
        summary["report"] = {k: str(v) for k, v in write_report(out / "runs", out).items()}
    return summary


def _with_overrides(runs: list[tuple[str, RunConfig]], overrides: dict[str, Any]) -> list[tuple[str, RunConfig]]:
    """``runs`` with ``overrides`` set on every config last, renamed (a field may be part of the name).

    Like the spec's ``base``, a generic size field (``GENERIC_FIELDS``) is set only on the runs whose mixer
    takes it, and a dict field (``mixer_kwargs``) is merged key by key, so a model's variant (an S4D init)
    survives. The grid's own axes (``GRID_FIELDS``) and a field that applies to no run are refused.
    """
    if not overrides:
        return runs
    grid = sorted(set(overrides) & set(GRID_FIELDS))
    if grid:
        raise ValueError(f"overrides may not set {grid}: the grid sets them (the sweep's "
                         f"{', '.join(GRID_FIELDS[name] for name in grid)})")
    applied: set[str] = set()
    renamed = []
    for _, config in runs:
        fields = config.to_dict()
        for name, value in overrides.items():
            if name in GENERIC_FIELDS and name not in mixer_spec(config.mixer).fields:
                continue
            applied.add(name)
            merge = isinstance(fields.get(name), dict) and isinstance(value, dict)
            fields[name] = {**fields[name], **value} if merge else value
        config = RunConfig.from_dict(fields)
        renamed.append((run_name(config), config))
    unused = sorted(set(overrides) - applied)
    if unused:
        raise ValueError(f"overrides {unused} apply to no run: no mixer of the sweep takes them")
    return renamed


def _check_unique_names(runs: list[tuple[str, RunConfig]]) -> None:
    names = [name for name, _ in runs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"the sweep produces the run(s) {repeated} more than once; check for repeated tasks, "
                         "models (plain 's4d' is 's4d:legs'), lrs or seeds")


def _check_tasks(runs: list[tuple[str, RunConfig]]) -> None:
    """Refuse unknown task and eval_task names before any run starts (a worker would only fail later)."""
    names = {c.task for _, c in runs} | {c.eval_task for _, c in runs if c.eval_task is not None}
    unknown = sorted(names - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known tasks: {sorted(TASKS)}")


def _run_state(run_dir: Path, config: RunConfig) -> tuple[str, dict[str, tuple[Any, Any]]]:
    """("finished" | "resumed" | "new", differences between the directory's saved config and ``config``).

    Differences in ``RESULT_NEUTRAL_FIELDS`` do not count. A directory with a result or checkpoint but no
    config.json cannot be matched to a config and is refused.
    """
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.is_file():
        leftovers = [name for name in (RESULT_FILE, CHECKPOINT_FILE) if (run_dir / name).exists()]
        if leftovers:
            raise ValueError(f"{run_dir} holds {', '.join(leftovers)} but no {CONFIG_FILE}, so the config that "
                             "wrote it is unknown; give this sweep another --out (out_dir)")
        return "new", {}
    try:
        saved = RunConfig.load(saved_path)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{saved_path} is not a run config this lrnn can compare ({err}); give this sweep "
                         "another --out (out_dir)") from None
    differences = config_differences(_as_json(saved), _as_json(config), RESULT_NEUTRAL_FIELDS)
    if (run_dir / RESULT_FILE).is_file():
        return "finished", differences
    return ("resumed" if (run_dir / CHECKPOINT_FILE).is_file() else "new"), differences


def _check_report_cells(out: Path, runs: list[tuple[str, RunConfig]], finished: list[str],
                        existing: list[dict]) -> None:
    """Refuse runs that would share a report cell with a finished run of another config under ``out/runs``
    (e.g. another seed of the same model trained for a different number of steps)."""
    reused = set(finished)
    planned = [{"task": c.task, "model": c.model_label, "range": c.eigenvalue_range, "config": _as_json(c),
                "path": str(out / "runs" / name)} for name, c in runs if name not in reused]
    problems = mixed_cells(existing + planned)
    if problems:
        raise ValueError(f"this sweep's runs would share report cells with finished runs of another config under "
                         f"{out / 'runs'}: {'; '.join(problems)}; give this sweep another --out (out_dir)")


def _as_json(config: RunConfig) -> dict[str, Any]:
    """``config`` as config.json and result.json hold it (tuples as lists), for comparisons."""
    return json.loads(json.dumps(config.to_dict()))


def _format_differences(differences: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{name}: saved {saved!r}, now {now!r}" for name, (saved, now) in differences.items())


def fold_outcomes(outcomes, summary: dict, total: int, started: float, quiet: bool) -> None:
    """Fold worker outcomes into ``summary``, printing one line per finished run."""
    for i, (name, score, error) in enumerate(outcomes, 1):
        elapsed = time.perf_counter() - started
        if error is None:
            summary["done"].append(name)
            say(quiet, f"[{i}/{total} {elapsed:6.0f}s] {name}: score {score:.4f}")
        else:
            summary["failed"][name] = error
            say(quiet, f"[{i}/{total} {elapsed:6.0f}s] {name}: FAILED: {error.splitlines()[-1]}")


def init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def map_in_workers(function: Callable[[Any], Any], jobs: list, workers: int, threads: int) -> Iterator[Any]:
    """``function(job)`` of every job, as each finishes: in ``min(workers, len(jobs))`` spawned processes
    (no forked torch state) of ``threads`` torch threads each, or, when that is one, in this process with
    ``threads`` threads (the caller's setting restored after)."""
    if min(workers, len(jobs)) <= 1:
        previous = torch.get_num_threads()
        init_worker(threads)
        try:
            yield from map(function, jobs)
        finally:
            torch.set_num_threads(previous)
        return
    with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs)), init_worker, (threads,)) as pool:
        yield from pool.imap_unordered(function, jobs)


def _run_one(job: tuple[str, dict, str | None]) -> tuple[str, float | None, str | None]:
    """Train one run (in a worker, whose thread count ``init_worker`` set) from (run directory, config
    fields, compile backend or None); returns (name, score, None) or (name, None, error text)."""
    from lrnn.training.trainer import train

    run_dir, config, compile_backend = job
    name = Path(run_dir).name
    try:
        outcome = train(RunConfig.from_dict(config), run_dir, resume=True, quiet=True, compile_backend=compile_backend)
        return name, float(outcome.result["score"]), None
    except Exception:  # report and go on: one failed run must not stop the grid
        return name, None, traceback.format_exc()


def parse_model(model: str) -> tuple[MixerSpec, dict[str, Any]]:
    """A sweep's model string -> (the mixer's spec, run-config fields of its variant):
    "mamba" -> (mamba, {}); "deltaproduct:2" -> (deltaproduct, {"n_h": 2});
    "s4d:ptd" -> (s4d, {"mixer_kwargs": {"init": "ptd"}}). The registry says which mixers have a variant."""
    if not isinstance(model, str):
        raise TypeError(f"a model must be a mixer name, optionally with ':VARIANT', got {model!r}")
    mixer, colon, variant = model.partition(":")
    if mixer not in MIXERS:
        raise ValueError(f"unknown model {model!r}; mixers: {sorted(MIXERS)} (with a ':VARIANT' where the mixer "
                         f"has one: {', '.join(n for n, s in MIXERS.items() if s.variant)})")
    spec = mixer_spec(mixer)
    return spec, (spec.parse_variant(model, variant) if colon else {})


def say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)
