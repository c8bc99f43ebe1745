"""A resumable sweep of pretraining runs (models x eigenvalue ranges x seeds) in worker processes, then the
LM comparison report.

The grid is a ``PretrainSweepSpec``; run ``<model>-<pos|neg|base>-s<seed>`` lives in ``<out>/runs/<name>``.
``plan_pretrain_sweep`` checks everything before a run starts and decides what each run does: a run
directory holding this run's config finished (result.json) is reused, one with a checkpoint resumes from
it (``lrnn.training.pretrain``), a missing or empty one starts; a directory of another config (outside
the fields a resumed run may change) is refused, never reused or overwritten. ``run_pretrain_plan`` runs
the unfinished ones in spawned worker processes (``multiprocessing`` "spawn", one torch thread each by
default) and writes the report (``lrnn.training.lm_report``) into ``<out>``.
"""

from __future__ import annotations

import json
import os
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from lrnn.atomic import is_temporary
from lrnn.paths import check_writable_directory
from lrnn.jsonconfig import JsonConfig
from lrnn.layers import MIXERS, mixer_spec
from lrnn.training.lm_report import (check_lm_report_destination, collect_lm_runs, lm_rows, placed_run,
                                     write_lm_report)
from lrnn.training.pretrain import (CHECKPOINT_DIR, CONFIG_FILE, LATEST_FILE, RESULT_FILE, PretrainConfig,
                                    _changed_fields)
from lrnn.training.sweep import RANGES, fold_outcomes, map_in_workers, parse_model, say

GRID_FIELDS = ("mixer", "negative_eigenvalues", "seed")
"""PretrainConfig fields the grid sets (models / variants, ranges, seeds): base and overrides may not."""
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9_.+]+(-[A-Za-z0-9_.+]+)*$")


@dataclass
class PretrainSweepSpec(JsonConfig):
    """A grid of pretraining runs.

    Attributes:
        models: model strings: a mixer name ("mamba2"), a mixer with its registry variant ("deltaproduct:2",
            "s4d:ptd", as in ``lrnn sweep``), or a key of ``variants``.
        ranges: eigenvalue ranges, "[0,1]" and/or "[-1,1]"; a model whose mixer has no eigenvalue switch
            (attention) runs once, as range "base".
        seeds: seeds (model init and data order).
        base: PretrainConfig fields shared by every run (steps, d_model, ...), applied first.
        variants: named models: name -> PretrainConfig fields, ``mixer`` among them, e.g.
            ``{"mamba-td_positive": {"mixer": "mamba", "mixer_kwargs": {"mamba": {"token_dynamics":
            "positive"}}}}``; applied after ``base``. A name is letters, digits, ``_ . +`` in ``-``-joined
            parts, and no mixer's name.
        model_overrides: PretrainConfig fields per model string (e.g. ``{"mamba2": {"d_intermediate": 768}}``),
            applied last. ``mixer_kwargs`` of base, variant and override are merged per mixer and argument.
    """

    config_kind = "pretrain sweep spec"

    models: list[str] = field(default_factory=lambda: ["gated_deltanet"])
    ranges: list[str] = field(default_factory=lambda: ["[0,1]", "[-1,1]"])
    seeds: list[int] = field(default_factory=lambda: [0])
    base: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("models", "ranges", "seeds"):
            value = getattr(self, name)
            if not isinstance(value, list) or not value:
                raise ValueError(f"{name} must be a non-empty list, got {value!r}")
        self.ranges = [r.replace(" ", "") if isinstance(r, str) else r for r in self.ranges]
        bad = [r for r in self.ranges if r not in RANGES]
        if bad:
            raise ValueError(f"ranges must be among {sorted(RANGES)}, got {bad}")
        bad = [s for s in self.seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
        if bad:
            raise ValueError(f"seeds must be integers >= 0, got {bad}")
        for name in ("models", "ranges", "seeds"):
            values = getattr(self, name)
            repeated = sorted({str(v) for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"{name} lists {repeated} more than once")
        _check_fields("base", self.base)
        for what in ("variants", "model_overrides"):
            if not isinstance(getattr(self, what), dict):
                raise TypeError(f"{what} must be a JSON object (model string -> fields), got "
                                f"{getattr(self, what)!r}")
        for name, fields_ in self.variants.items():
            _check_variant(name, fields_)
        for model, fields_ in self.model_overrides.items():
            _check_fields(f"model_overrides[{model!r}]", fields_)
        for model in self.models:
            self.model_fields(model)
        for what, keys in (("variants", self.variants), ("model_overrides", self.model_overrides)):
            unused = sorted(set(keys) - set(self.models))
            if unused:
                raise ValueError(f"{what} {unused} name no model of models {self.models}: add them to models or "
                                 f"remove them")
        self.runs()  # every run's PretrainConfig checks its values

    def model_fields(self, model: str) -> dict[str, Any]:
        """The PretrainConfig fields a model string sets (``mixer``, and ``mixer_kwargs`` for a variant)."""
        if not isinstance(model, str):
            raise TypeError(f"a model must be a string (a mixer name, 'mixer:VARIANT' or a key of variants), "
                            f"got {model!r}")
        if model in self.variants:
            return self.variants[model]
        spec, variant = parse_model(model)
        mixer_fields = {"mixer": spec.name}
        if variant:  # a registry variant: a generic field (n_h) or mixer_kwargs -> the mixer's own arguments
            generic = {k: v for k, v in variant.items() if k != "mixer_kwargs"}
            d_model = self.base.get("d_model", PretrainConfig.d_model)
            arguments = spec.arguments(d_model, generic, variant.get("mixer_kwargs", {}))
            mixer_fields["mixer_kwargs"] = {spec.name: arguments}
        return mixer_fields

    def runs(self) -> list[tuple[str, PretrainConfig]]:
        """(name, config) of every run, in grid order (models, then ranges, then seeds).

        Fields apply in this order, later ones winning: ``base``, the model's own fields (its mixer, its
        variant), ``model_overrides[model]``, then the range and seed; ``mixer_kwargs`` is merged."""
        runs = []
        for model in self.models:
            fields_ = _merged(_merged(self.base, self.model_fields(model)), self.model_overrides.get(model, {}))
            switch = mixer_spec(fields_["mixer"]).eigenvalue_switch
            for rng in self.ranges if switch else self.ranges[:1]:
                for seed in self.seeds:
                    config = PretrainConfig.from_dict({**fields_, "negative_eigenvalues": switch and RANGES[rng],
                                                       "seed": seed})
                    runs.append((run_name(model, config), config))
        return runs


def run_name(model: str, config: PretrainConfig) -> str:
    """``<model>-<pos|neg|base>-s<seed>``: "mamba2-neg-s0", "attention-base-s0", "deltaproduct2-pos-s1" (a
    registry variant as in ``lrnn sweep``), "mamba-td_positive-neg-s0" (a named variant)."""
    spec = mixer_spec(config.mixer)
    if model.partition(":")[0] == spec.name:  # a mixer (with its registry variant): the registry's tag
        model = spec.tag(config.mixer_kwargs.get(spec.name, {}))
    rng = "base" if not spec.eigenvalue_switch else "neg" if config.negative_eigenvalues else "pos"
    return f"{model}-{rng}-s{config.seed}"


def _check_fields(what: str, fields_: Any) -> None:
    """Refuse a non-dict, unknown PretrainConfig fields and the grid's own fields, naming ``what``."""
    if not isinstance(fields_, dict):
        raise TypeError(f"{what} must be a JSON object of PretrainConfig fields, got {fields_!r}")
    known = {f.name for f in fields(PretrainConfig)}
    unknown = sorted(set(fields_) - known)
    if unknown:
        raise ValueError(f"{what} has unknown PretrainConfig field(s) {unknown}; known: {sorted(known)}")
    grid = sorted(set(fields_) & set(GRID_FIELDS))
    if grid:
        raise ValueError(f"{what} may not set {grid}: the sweep's models (or a variant's mixer), ranges and seeds "
                         "set them")


def _check_variant(name: Any, fields_: Any) -> None:
    """Refuse a variant name that is no directory-name part or is a mixer's, and fields without a mixer."""
    if not isinstance(name, str) or not _VARIANT_NAME.match(name):
        raise ValueError(f"a variant name must be letters, digits, '_', '.', '+' in '-'-joined parts (a directory "
                         f"name part), got {name!r}")
    if name in MIXERS:
        raise ValueError(f"variant {name!r} is named like a mixer; give it a name of its own (e.g. '{name}-mine')")
    if not isinstance(fields_, dict):
        raise TypeError(f"variants[{name!r}] must be a JSON object of PretrainConfig fields, got {fields_!r}")
    if not isinstance(fields_.get("mixer"), str):
        raise ValueError(f"variant {name!r} must set its mixer (a mixer name), got {fields_.get('mixer')!r}")
    mixer_spec(fields_["mixer"])  # an unknown mixer is a ValueError listing the known ones
    _check_fields(f"variants[{name!r}]", {k: v for k, v in fields_.items() if k != "mixer"})


def _merged(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """``{**first, **second}`` with ``mixer_kwargs`` merged per mixer and argument."""
    merged = {**first, **second}
    earlier, later = first.get("mixer_kwargs"), second.get("mixer_kwargs")
    if isinstance(earlier, dict) and isinstance(later, dict):  # else PretrainConfig names the bad value
        kwargs = dict(earlier)
        for mixer, arguments in later.items():
            both = isinstance(kwargs.get(mixer), dict) and isinstance(arguments, dict)
            kwargs[mixer] = {**kwargs[mixer], **arguments} if both else arguments
        merged["mixer_kwargs"] = kwargs
    return merged


# ---- the plan ------------------------------------------------------------------------------------
@dataclass
class PretrainSweepPlan:
    """What a pretraining sweep will do, decided and checked before any run starts.

    Attributes:
        spec: the grid. out: the sweep directory (runs in ``out/runs/<name>``, the report in ``out``).
        runs: (name, config) in grid order. states: name -> "finished" (reused), "resumed" (continues from
            its checkpoint) or "new" (starts; its directory is missing, empty, or holds this run's config
            with no checkpoint yet). parameters: name -> the model's parameter count.
        report: whether the report is written into ``out`` at the end.
    """

    spec: PretrainSweepSpec
    out: Path
    runs: list[tuple[str, PretrainConfig]]
    states: dict[str, str]
    parameters: dict[str, int]
    report: bool = True

    @property
    def todo(self) -> list[tuple[str, PretrainConfig]]:
        """The runs to train (new or resumed), in grid order."""
        return [(name, config) for name, config in self.runs if self.states[name] != "finished"]

    def describe(self) -> str:
        """The grid, then one line per run: its state and parameter count."""
        spec = self.spec
        counts = {state: sum(s == state for s in self.states.values()) for state in ("finished", "resumed", "new")}
        lines = [f"pretrain sweep: models {','.join(spec.models)} x ranges {','.join(spec.ranges)} x seeds "
                 f"{','.join(map(str, spec.seeds))} = {len(self.runs)} runs under {self.out / 'runs'}: "
                 f"{counts['finished']} finished (reused), {counts['resumed']} resumed from a checkpoint, "
                 f"{counts['new']} new"]
        lines += [f"  {name}: {self.states[name]} ({self.parameters[name]:,} parameters)" for name, _ in self.runs]
        return "\n".join(lines)


def plan_pretrain_sweep(spec: PretrainSweepSpec, out_dir: str | Path, report: bool = True) -> PretrainSweepPlan:
    """Check a sweep of ``spec`` into ``out_dir`` and decide what each run does; nothing is written.

    ValueErrors, before anything runs: a process started by torchrun, duplicate run names, a model that cannot be built
    (``model_parameters``), a destination that is a file, run directories that hold another config (or
    files without a config.json), and with ``report``: runs the report could not pool with the finished
    runs already under ``out_dir/runs`` (another seed of a model and range, of another config) and report
    files in ``out_dir`` that no LM report wrote."""
    if not isinstance(spec, PretrainSweepSpec):
        raise TypeError(f"spec must be a PretrainSweepSpec, got {type(spec).__name__}")
    if "WORLD_SIZE" in os.environ:  # its spawned workers would each try to join torchrun's process group
        raise ValueError("run the pretrain sweep as one plain process, not under torchrun: each of its runs trains "
                         "in one worker process (use `torchrun ... -m lrnn pretrain` for one run on many)")
    out = Path(out_dir)
    check_writable_directory(out / "runs", "the sweep's run directory")
    runs = spec.runs()
    names = [name for name, _ in runs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"the sweep produces the run(s) {repeated} more than once; check models for a mixer given "
                         "twice (plain 's4d' is 's4d:legs')")
    parameters = {name: model_parameters(name, config) for name, config in runs}
    states, conflicts = {}, []
    for name, config in runs:
        states[name], problem = run_state(out / "runs" / name, config)
        if problem is not None:
            conflicts.append(f"{out / 'runs' / name} ({problem})")
    if conflicts:
        raise ValueError(f"{len(conflicts)} run director{'y' if len(conflicts) == 1 else 'ies'} hold another run, "
                         f"which this sweep must not reuse or overwrite: {'; '.join(conflicts[:3])}"
                         f"{'; ...' if len(conflicts) > 3 else ''}; give this sweep another --out (out_dir)")
    if report:
        _check_report_rows(out, runs, states)
        check_lm_report_destination(out)
    return PretrainSweepPlan(spec, out, runs, states, parameters, report)


def _check_report_rows(out: Path, runs: list[tuple[str, PretrainConfig]], states: dict[str, str]) -> None:
    """Refuse, before hours of training, runs that the final report could not pool with the finished runs
    already under ``out/runs`` (a seed of the same model and range with another config)."""
    finished = collect_lm_runs(out / "runs") if (out / "runs").is_dir() else []
    planned = [placed_run(out / "runs" / name, {"config": json.loads(json.dumps(config.to_dict()))}, [])
               for name, config in runs if states[name] != "finished"]
    try:
        lm_rows(finished + planned)
    except ValueError as err:
        raise ValueError(f"{err} (this sweep's runs would join the finished runs under {out / 'runs'} in the "
                         "report); give this sweep another --out (out_dir)") from None


def model_parameters(name: str, config: PretrainConfig) -> int:
    """The parameter count of run ``name``'s model, built on the meta device (no memory, no init): a model
    its mixer cannot build (e.g. a width its heads do not divide) is a ValueError naming the run."""
    from lrnn.models import LanguageModel

    try:
        with torch.device("meta"):
            model = LanguageModel(config.model_config())
    except (ValueError, TypeError) as err:
        raise ValueError(f"run {name}: its model cannot be built: {err}") from None
    return sum(p.numel() for p in model.parameters())


def run_state(run_dir: Path, config: PretrainConfig) -> tuple[str, str | None]:
    """("finished" | "resumed" | "new", None) for a directory ``lrnn pretrain`` may continue as ``config``'s
    run, or ("refused", what it holds instead): files without a config.json, or a config.json that differs
    from ``config`` outside the fields a resumed run may change."""
    check_writable_directory(run_dir, "the run directory")
    contents = sorted(p.name for p in run_dir.iterdir() if not is_temporary(p)) if run_dir.is_dir() else []
    if not contents:
        return "new", None
    try:
        changed = _changed_fields(json.loads((run_dir / CONFIG_FILE).read_text()), config)
    except FileNotFoundError:
        return "refused", f"no {CONFIG_FILE}, but {', '.join(contents[:5])}{', ...' if len(contents) > 5 else ''}"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return "refused", f"its {CONFIG_FILE} is not a pretrain config"
    if changed:
        return "refused", f"its {CONFIG_FILE} differs in {changed}"
    if (run_dir / RESULT_FILE).is_file():
        return "finished", None
    return ("resumed" if (run_dir / CHECKPOINT_DIR / LATEST_FILE).is_file() else "new"), None


# ---- running -------------------------------------------------------------------------------------
def run_pretrain_plan(plan: PretrainSweepPlan, workers: int = 1, threads: int = 1, quiet: bool = False,
                      cache_dir: str | Path | None = None, command: str | None = None) -> dict:
    """Train every unfinished run of ``plan`` in ``workers`` spawned processes of ``threads`` torch threads.

    The tokenizer and token shards of each corpus are built in this process first (``prepare_corpus``),
    so workers never tokenise the same corpus at once. A failing run is reported, not fatal. With
    ``plan.report`` the LM report (headed by ``command``) is written into ``plan.out`` at the end.
    Returns ``{"runs": n, "skipped": finished before, "resumed": [names], "done": [names], "failed":
    {name: error}}`` plus ``"report"`` (name -> path) when written.
    """
    for name, value in (("workers", workers), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    todo = plan.todo
    summary = {"runs": len(plan.runs), "skipped": len(plan.runs) - len(todo),
               "resumed": [name for name, _ in todo if plan.states[name] == "resumed"], "done": [], "failed": {}}
    say(quiet, f"{plan.describe()}\n{len(todo)} to run on {min(workers, max(len(todo), 1))} worker(s) x "
                f"{threads} thread(s); a run's score: its validation bits per byte")
    prepare_corpora(plan, cache_dir, print_fn=lambda text: say(quiet, text))
    jobs = [(str(plan.out / "runs" / name), config.to_dict(), None if cache_dir is None else str(cache_dir))
            for name, config in todo]
    fold_outcomes(map_in_workers(_run_one, jobs, workers, threads), summary, len(jobs), time.perf_counter(),
                   quiet)
    if plan.report and (summary["done"] or summary["skipped"]):
        summary["report"] = write_lm_report(plan.out / "runs", plan.out, command=command)
    return summary


def run_pretrain_sweep(spec: PretrainSweepSpec, out_dir: str | Path, workers: int = 1, threads: int = 1,
                       quiet: bool = False, report: bool = True, cache_dir: str | Path | None = None,
                       command: str | None = None) -> dict:
    """``run_pretrain_plan(plan_pretrain_sweep(spec, out_dir, report), ...)``; see both."""
    return run_pretrain_plan(plan_pretrain_sweep(spec, out_dir, report), workers, threads, quiet, cache_dir,
                             command)


def prepare_corpora(plan: PretrainSweepPlan, cache_dir: str | Path | None = None,
                    print_fn: Callable[[str], None] = print) -> None:
    """``prepare_corpus`` once per distinct (corpus, tokenizer, vocabulary, validation split) of the runs
    ``plan`` will train; a second call finds everything in the cache."""
    seen: set[str] = set()
    for _, config in plan.todo:
        key = json.dumps([config.data, config.tokenizer, config.vocab_size, config.val_fraction])
        if key not in seen:
            seen.add(key)
            prepare_corpus(config, cache_dir, print_fn)


def prepare_corpus(config: PretrainConfig, cache_dir: str | Path | None = None,
                   print_fn: Callable[[str], None] = print) -> None:
    """Build (or find in the cache) the tokenizer and token shards ``config``'s runs will read, as
    ``open_pretrain`` would; a missing or empty corpus or a tokenizer that does not fit is a ValueError."""
    from lrnn.data import build_shards, check_has_text, corpus_files, default_corpus_files
    from lrnn.paths import default_cache_dir
    from lrnn.training.pretrain import Processes, corpus_tokenizer

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    files = corpus_files(config.data) if config.data else default_corpus_files()
    check_has_text(files)
    tokenizer = corpus_tokenizer(config, files, cache, Processes(0, 1, torch.device("cpu"), False), print_fn)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"the tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens, more than the model's "
                         f"vocab_size {config.vocab_size}")
    build_shards(files, tokenizer, cache, config.val_fraction, on_start=lambda: print_fn("tokenising the corpus ..."))


def _run_one(job: tuple[str, dict, str | None]) -> tuple[str, float | None, str | None]:
    """Train (or resume) one run in a worker; returns (name, val bits per byte, None) or (name, None, error)."""
    from lrnn.training.pretrain import pretrain

    run_dir, config, cache_dir = job
    name = Path(run_dir).name
    try:
        result = pretrain(PretrainConfig.from_dict(config), run_dir, resume=True, cache_dir=cache_dir, quiet=True,
                          print_fn=lambda _: None)
        return name, float(result["val_bpb"]), None
    except Exception:  # report and go on: one failed run must not stop the grid
        return name, None, traceback.format_exc()


__all__ = ["PretrainSweepPlan", "PretrainSweepSpec", "model_parameters", "plan_pretrain_sweep",
           "prepare_corpora", "prepare_corpus", "run_name", "run_pretrain_plan", "run_pretrain_sweep", "run_state"]
