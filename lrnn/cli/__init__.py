"""The ``lrnn`` command line.

Each subcommand has an ``_add_<name>(subparsers)`` function that declares its arguments and a
``_run_<name>(args) -> int`` function; ``COMMANDS`` maps names to runners. The work itself lives in
the library layers (``lrnn.training``, ``lrnn.tasks``, ``lrnn.models``, ...): this module only parses
arguments, calls them and turns user errors into one-line messages.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Callable

from lrnn.validation import check_int


class CommandError(Exception):
    """A user-input error: ``main`` prints it as one line and exits 2. Any other exception is a bug
    and shows its traceback."""


@contextlib.contextmanager
def user_input() -> Iterator[None]:
    """Run a block that reads user input (flags, config files, run directories): the ValueError,
    TypeError or OSError it raises becomes a ``CommandError``. Wrap only input handling in it, never
    the work itself, so that an internal bug keeps its traceback."""
    try:
        yield
    except (ValueError, TypeError, OSError) as err:
        raise CommandError(str(err)) from err


def _int_at_least(minimum: int):
    """An argparse type: an int >= ``minimum``, with a one-line error naming what was given."""
    def parse(text: str) -> int:
        try:
            return check_int("value", int(text), minimum)
        except ValueError:  # not an integer (int() refused it) or below minimum (check_int)
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


# ---- flags and checks shared by several commands -------------------------------------------------
THREADS_HELP = ("torch intra-op CPU threads{of} (default 1: when other processes share the cores, a second "
                "thread can stall the chunked ops 10-25x, as measured on a loaded 2-core machine; give more on an "
                "idle machine with cores to spare)")


def _add_threads(parser: argparse.ArgumentParser, of: str = "") -> None:
    parser.add_argument("--threads", type=_positive_int, default=1, help=THREADS_HELP.format(of=of))


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _check_output_file(path: str | os.PathLike, flag: str) -> None:
    """Refuse, before any work, an output file that could not be written at the end: a path that names a
    directory or lies under a file."""
    from lrnn.paths import check_writable_file

    with user_input():
        check_writable_file(path, flag)


# ---- demo --------------------------------------------------------------------------------------
DEMO_STEPS_HELP = "DeltaNet 2500, Mamba-2 600, Mamba 2500"  # lrnn.cli.demo.DEMO_SETTINGS (tested to agree)


def _add_demo(sub) -> None:
    demo = sub.add_parser(
        "demo", help="train small Mamba, Mamba-2 and DeltaNet with [0, 1] and [-1, 1] eigenvalues on parity "
                     "(lengths 3-40), test out to 256, print the table and plot it (--ops: the ops demo)")
    demo.add_argument("--ops", action="store_true",
                      help="run the ops demo instead: parity tracked by eigenvalue -1, chunked vs sequential ops")
    demo.add_argument("--steps", type=_positive_int, default=None,
                      help=f"training steps of every model (default: per model, {DEMO_STEPS_HELP})")
    demo.add_argument("--plot", default="runs/demo/parity.png",
                      help="where to write the PNG plot (default runs/demo/parity.png; '' for none)")
    demo.add_argument("--workers", type=_positive_int, default=None,
                      help="worker processes, --threads torch threads each (default: 2, or 1 on a one-core "
                           "machine)")
    demo.add_argument("--length", type=_positive_int, default=10_000,
                      help="--ops only: number of random bits (default 10000)")
    demo.add_argument("--chunk-size", type=_positive_int, default=64,
                      help="--ops only: chunk size of the chunked mode (default 64)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _add_threads(demo, of=" of the --ops demo and of each worker process")


def _run_demo(args: argparse.Namespace) -> int:
    from lrnn.cli.demo import run_ops_demo, run_parity_demo

    _set_threads(args.threads)
    if args.ops:
        return run_ops_demo(length=args.length, seed=args.seed, chunk_size=args.chunk_size)
    if args.plot:
        _check_output_file(args.plot, "--plot")
    return run_parity_demo(steps=args.steps, seed=args.seed, plot=args.plot or None, workers=args.workers,
                           threads=args.threads)


# ---- train / eval / sweep / report -------------------------------------------------------------
_RUN_FLAGS: dict[str, str] = {
    "task": "task name (see lrnn.tasks.TASKS)",
    "mixer": "token mixer", "negative_eigenvalues": "eigenvalue range [-1, 1] instead of [0, 1]",
    "n_layers": "number of blocks", "d_model": "model width",
    "heads": "heads", "n_h": "Householder steps per token", "d_state": "state size",
    "d_intermediate": "MLP width after each mixer (0: no MLP)", "chunk_size": "chunked-scan block length",
    "mixer_kwargs": "extra mixer constructor arguments as a JSON object, e.g. '{\"conv_size\": 0}'",
    "lr": "peak learning rate", "min_lr": "final learning rate of the cosine", "weight_decay": "AdamW weight decay",
    "ssm_lr": "peak learning rate of S4D's A, B, dt (no weight decay; scaled with the schedule; 'none': same as --lr)",
    "warmup_fraction": "fraction of steps of linear warm-up", "grad_clip": "global gradient-norm clip (0: off)",
    "steps": "optimiser steps", "batch_size": "sequences per step",
    "train_min": "shortest training length", "train_max": "longest training length",
    "eval_task": "task to evaluate on (None: the training task's held-out split if it has one, e.g. "
                 "sequential_digits_test, else the task itself)",
    "eval_min": "shortest test length", "eval_max": "longest test length", "eval_bins": "test length bins",
    "eval_samples": "test sequences per bin", "eval_batch_size": "sequences per evaluation forward",
    "eval_every": "evaluate every N steps (0: only at the end)", "eval_seed": "seed of the fixed test set",
    "log_every": "steps per log.jsonl line", "checkpoint_every": "steps per checkpoint (0: only at the end)",
    "seed": "seed of the model init and the training data", "device": "torch device, e.g. cpu or cuda",
}
"""RunConfig fields exposed as ``lrnn train`` flags (``--n-layers`` for ``n_layers``), with their help
(the model flags' help is completed from the mixer registry by ``_model_flag_help``)."""


def _model_flag_help() -> dict[str, str]:
    """Help of the mixer and model-size flags, read from the mixer registry: which mixers exist, which
    have the eigenvalue switch, which take each generic size field (others refuse it)."""
    from lrnn.layers import GENERIC_FIELDS, MIXERS, mixers_with_switch

    takers = {f: ", ".join(n for n, spec in MIXERS.items() if f in spec.fields) for f in GENERIC_FIELDS}
    texts = {"mixer": "token mixer: " + "; ".join(f"{n} = {spec.summary}" for n, spec in MIXERS.items()),
             "negative_eigenvalues": f"{_RUN_FLAGS['negative_eigenvalues']}; only for {', '.join(mixers_with_switch())}"}
    for field in GENERIC_FIELDS:
        texts[field] = f"{_RUN_FLAGS[field]}, for {takers[field]} (an error for other mixers)"
    texts["heads"] += "; Mamba-2: headdim = expand * d_model / heads"
    return texts


def _json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


_NONE = object()
"""What ``--ssm-lr none`` parses to before it becomes None (argparse's None means "flag not given")."""


def _float_or_none(text: str) -> float | object:
    if text.strip().lower() == "none":
        return _NONE
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


_EVAL_FLAGS = ("eval_task", "eval_min", "eval_max", "eval_bins", "eval_samples", "eval_batch_size", "eval_seed",
               "device")
"""The RunConfig fields that ``lrnn eval`` can override (the test set and where it runs)."""


def _add_run_flags(parser: argparse.ArgumentParser, fields: tuple[str, ...] = tuple(_RUN_FLAGS),
                   default_is_the_runs: bool = False) -> None:
    """One flag per RunConfig field in ``fields``; unset flags stay None so --config (or the run's config)
    and the defaults show through. ``default_is_the_runs``: the help says the default is the run's value
    (lrnn eval) instead of RunConfig's default."""
    import dataclasses

    from lrnn.training import RunConfig

    defaults, help_texts = RunConfig(), {**_RUN_FLAGS, **_model_flag_help()}
    for f in dataclasses.fields(RunConfig):
        if f.name not in fields:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        shown = "the run's" if default_is_the_runs else default
        if default is None and f.name in help_texts and f.name in ("heads", "n_h", "d_state", "chunk_size"):
            shown = "the mixer's own"
        text = f"{help_texts[f.name]} (default {shown})"
        if f.name == "negative_eigenvalues":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif f.name == "mixer_kwargs":
            parser.add_argument(flag, type=_json_object, default=None, help=text)
        elif f.name == "ssm_lr":
            parser.add_argument(flag, type=_float_or_none, default=None, help=text)
        elif f.name == "eval_task":
            parser.add_argument(flag, type=str, default=None, help=text)
        else:
            kind = {"int": int, "float": float}.get(type(default).__name__, str) if default is not None else int
            names = [flag, "--model"] if f.name == "mixer" else [flag]
            parser.add_argument(*names, dest=f.name, type=kind, default=None, help=text)


def _run_config(args: argparse.Namespace):
    """RunConfig from --config (if given), then --protocol, then every flag given on the command line."""
    from lrnn.training import RunConfig

    config = RunConfig.load(args.config) if args.config else RunConfig()
    if args.protocol:
        config = config.with_protocol(args.protocol)
    return RunConfig.from_dict({**config.to_dict(), **_given_run_flags(args)})


def _given_run_flags(args: argparse.Namespace) -> dict:
    """The RunConfig fields given as flags on the command line (``--ssm-lr none`` as None)."""
    given = {name: getattr(args, name, None) for name in _RUN_FLAGS}
    return {name: None if value is _NONE else value for name, value in given.items() if value is not None}


def _add_train(sub) -> None:
    from lrnn.training import PROTOCOLS

    train = sub.add_parser("train", help="train one model on one task, evaluate length generalisation",
                           description="Train one run; writes config.json, log.jsonl, checkpoint.pt, model/ and "
                                       "result.json into --out. If --out holds this run (the same config), an "
                                       "interrupted run resumes from its checkpoint and a finished one shows its "
                                       "stored result; a directory holding anything else is refused (--force).")
    train.add_argument("--out", default=None, help="run directory (default runs/<task>-<model>-<range>-lr<lr>-s<seed>)")
    train.add_argument("--config", default=None, help="a run config JSON file (e.g. a run's config.json); "
                                                      "flags override its fields")
    train.add_argument("--protocol", choices=sorted(PROTOCOLS), default=None,
                       help="length protocol: " + "; ".join(f"{k}: {p.description}" for k, p in PROTOCOLS.items()))
    train.add_argument("--no-resume", action="store_true",
                       help="start over even if --out holds this run's checkpoint or finished result")
    train.add_argument("--force", action="store_true",
                       help="replace the run files of an --out that holds another run (another config, or files "
                            "without a run config) instead of refusing it")
    train.add_argument("--compile", action="store_true",
                       help="train a torch.compile'd model (batch lengths padded to a multiple of 8, so lengths "
                            "3-40 compile 5 graphs at most; compiling takes a minute or more before the first step); "
                            "the weights differ from an eager run only by float rounding")
    _add_threads(train)
    _add_quiet(train)
    _add_run_flags(train)


def _run_train(args: argparse.Namespace) -> int:
    from lrnn.training import format_bins, open_run
    from lrnn.training.sweep import run_name

    _set_threads(args.threads)
    with user_input():
        config = _run_config(args)
        out = args.out or f"runs/{run_name(config)}"
        run = open_run(config, out, resume=not args.no_resume, force=args.force)
    if run.finished:
        print(f"{out} is already finished (--no-resume trains it again); its stored result:")
    elif run.resumed:
        print(f"resuming {out} from step {run.start_step} of {config.steps}", flush=True)
    result = run.train(quiet=args.quiet, compile_backend="inductor" if args.compile else None).result
    print(f"{config.task} {config.model_label} {config.eigenvalue_range}: score {result['score']:.4f} "
          f"over lengths {config.eval_min}-{config.eval_max}")
    print(format_bins(result["eval"]))
    print(f"run directory: {out}")
    return 0


def _add_eval(sub) -> None:
    evaluate = sub.add_parser("eval", help="evaluate a run directory's model per length bin",
                              description="Evaluate the model of a run directory (written by lrnn train or "
                                          "lrnn sweep) on its fixed test set; flags override the run's test set "
                                          "and device. An unfinished run is scored at its last checkpoint (and "
                                          "says so).")
    evaluate.add_argument("run_dir", help="run directory (holds config.json and model/ or checkpoint.pt)")
    _add_run_flags(evaluate, _EVAL_FLAGS, default_is_the_runs=True)
    _add_threads(evaluate)
    _add_quiet(evaluate)
    evaluate.add_argument("--json", default=None, help="also write the result as JSON to this path")


def _run_eval(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from lrnn.atomic import atomic_write_text
    from lrnn.device import resolve_device
    from lrnn.training import evaluate_run, format_bins, load_run, make_eval_task

    _set_threads(args.threads)
    with user_input():
        if args.json:
            _check_output_file(args.json, "--json")
            from pathlib import Path

            if Path(args.json).resolve().is_relative_to(Path(args.run_dir).resolve()):
                raise CommandError(f"--json {args.json} lies inside the run directory {args.run_dir}, whose files "
                                   "an evaluation must not replace: write it elsewhere")
        saved = load_run(args.run_dir)
        config = dataclasses.replace(saved.config, **_given_run_flags(args))
        device = resolve_device(config.device)
        eval_task = make_eval_task(config)
    if not saved.finished:
        print(f"{args.run_dir} is not finished (no final model): scoring its checkpoint of step {saved.step} "
              f"of {config.steps}", flush=True)
    result = evaluate_run(saved.model.to(device), config, device, task=eval_task, quiet=args.quiet)
    print(f"{config.task} {config.model_label} {config.eigenvalue_range}: score {result['overall']['score']:.4f} "
          f"on {eval_task.name}")
    print(format_bins(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


def _csv(kind):
    def parse(text: str) -> list:
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None
    return parse


def _add_sweep(sub) -> None:
    from lrnn.training import PROTOCOLS

    sweep = sub.add_parser(
        "sweep", help="run a grid of tasks x models x ranges x learning rates x seeds in parallel",
        description="Run a grid in worker processes under OUT/runs/<name>, then write OUT/report.md, "
                    "OUT/summary.json and two PNGs per task (lrnn report's). The grid comes from --spec, or from --tasks and "
                    "--models (both required without --spec); it is printed before anything runs. Grid flags "
                    "replace the spec's lists, and --set wins over every field of the spec (base, "
                    "task_overrides, model_overrides, protocol). A finished run is reused and an interrupted "
                    "one resumed only if its saved config is the run's config (logging and checkpoint "
                    "cadence aside); a run directory of another config is refused: use another --out.")
    sweep.add_argument("--out", required=True, help="sweep directory")
    sweep.add_argument("--spec", default=None, help="a JSON or TOML file with SweepSpec fields (tasks, models, "
                                                    "ranges, lrs, seeds, protocol, base, task_overrides, model_overrides)")
    sweep.add_argument("--tasks", type=_csv(str), default=None, help="comma-separated task names")
    sweep.add_argument("--models", type=_csv(str), default=None,
                       help="comma-separated mixer names, optionally with a variant: :n_h for the DeltaNet family, "
                            ":INIT for s4d, e.g. mamba,deltanet,deltaproduct:2,s4d:lin")
    sweep.add_argument("--ranges", choices=("pos", "neg", "both"), default=None,
                       help="eigenvalue ranges: pos = [0, 1], neg = [-1, 1], both (default: the spec's, else both)")
    sweep.add_argument("--lrs", type=_csv(float), default=None, help="comma-separated learning rates")
    sweep.add_argument("--seeds", type=_csv(int), default=None, help="comma-separated seeds")
    sweep.add_argument("--protocol", choices=sorted(PROTOCOLS), default=None, help="length protocol of every run")
    sweep.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="a RunConfig field for every run, e.g. --set steps=2000; it wins over the spec's base, "
                            "task_overrides, model_overrides and protocol (heads, n_h, d_state, chunk_size go to "
                            "the models that take them; mixer_kwargs is merged). Repeatable; VALUE is JSON or a "
                            "plain string; the grid's own fields (task, mixer, negative_eigenvalues, lr, seed) "
                            "are set with --tasks, --models, --ranges, --lrs, --seeds")
    sweep.add_argument("--workers", type=_positive_int, default=1, help="worker processes (default 1)")
    _add_threads(sweep, " per worker")
    sweep.add_argument("--compile", action="store_true",
                       help="train every run as lrnn train --compile does (torch.compile'd model, batch lengths padded "
                            "to a multiple of 8; minutes of compiling per run before its first step, so worth it for "
                            "runs of many steps); finished and interrupted runs are reused and resumed either way")
    sweep.add_argument("--quiet", action="store_true", help="print neither the plan nor a line per run")


def _run_sweep(args: argparse.Namespace) -> int:
    from lrnn.training.sweep import plan_sweep, run_plan

    with user_input():
        plan = plan_sweep(_sweep_spec(args), args.out, overrides=_set_fields(args.set))
    summary = run_plan(plan, workers=args.workers, threads=args.threads, quiet=args.quiet,
                       compile_backend="inductor" if args.compile else None)
    if "report" in summary:
        print(f"report: {summary['report']['report']}")
    for name, error in summary["failed"].items():
        print(f"failed: {name}: {error.strip().splitlines()[-1]}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def _sweep_spec(args: argparse.Namespace):
    """The SweepSpec of --spec with the grid flags given replacing its lists; without --spec, --tasks and
    --models are required (no silent default grid)."""
    import dataclasses

    from lrnn.training.sweep import SweepSpec

    if args.spec is None and (args.tasks is None or args.models is None):
        raise ValueError("give the grid: --spec FILE, or at least --tasks and --models (unset --ranges, --lrs and "
                         "--seeds take SweepSpec's defaults, printed before the sweep starts)")
    fields = dataclasses.asdict(SweepSpec.load(args.spec) if args.spec else SweepSpec())
    for name in ("tasks", "models", "lrs", "seeds", "protocol"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.ranges is not None:
        fields["ranges"] = {"pos": ["[0,1]"], "neg": ["[-1,1]"], "both": ["[0,1]", "[-1,1]"]}[args.ranges]
    return SweepSpec.from_dict(fields)


def _set_fields(items: list[str]) -> dict:
    """``--set FIELD=VALUE`` items -> {field: value}; VALUE is parsed as JSON, else kept as a string."""
    import json

    fields: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        if key in fields:
            raise ValueError(f"--set {key} is given twice ({fields[key]!r} and {value!r})")
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value
    return fields


PUBLISHED_NAMES = ("table3",)  # lrnn.training.report.PUBLISHED (not imported: keeps --help fast)


def _print_report(written: dict) -> None:
    """Show a report command's report.md, then every file it wrote."""
    print(written["report"].read_text(), end="")
    print(f"written: {', '.join(str(p) for p in written.values())}")


def _add_report(sub) -> None:
    report = sub.add_parser(
        "report", help="results directory -> markdown table (like Table 3 of arXiv 2411.12537) and "
                       "accuracy-vs-length and training-curve PNGs",
        description="Collect every finished result.json under RESULTS_DIR and write report.md, summary.json, "
                    "one <task>.png (score vs length) and one <task>_training.png (training accuracy and test "
                    "score vs step, from the runs' log.jsonl) per task into --out; nothing else there is touched. Runs of one cell "
                    "(task, model, range) may differ only in lr, seed and logging / checkpoint cadence: "
                    "cells that mix configs are refused.")
    report.add_argument("results_dir", help="directory searched recursively for result.json files")
    report.add_argument("--out", default=None, help="directory for report.md, summary.json and the PNGs (default: "
                                                    "results_dir); files of those names are replaced only if an "
                                                    "earlier report wrote them there")
    report.add_argument("--force", action="store_true",
                        help="replace report.md, summary.json or <task>.png in --out even if no report wrote them")
    report.add_argument("--title", default="State-tracking results",
                        help="heading of report.md (default 'State-tracking results')")
    report.add_argument("--published", default=None, choices=sorted(PUBLISHED_NAMES),
                        help="add a table of our best scores beside published ones (table3: arXiv 2411.12537)")


def _run_report(args: argparse.Namespace) -> int:
    from lrnn.training.report import prepare_report

    with user_input():
        report = prepare_report(args.results_dir, args.out, title=args.title, published=args.published,
                                overwrite=args.force)
    written = report.write()
    _print_report(written)
    return 0


# ---- convert / generate (interop with peer checkpoints) ----------------------------------------
_FORMATS = ("lrnn", "mamba_ssm", "hf", "fla")  # lrnn.models.interop.FORMATS (not imported: keeps --help fast)


def _add_convert(sub) -> None:
    convert = sub.add_parser("convert", help="convert a checkpoint between lrnn, mamba_ssm, HF and fla formats",
                             description="Read SRC (format auto-detected from its config.json unless --from is "
                                         "given) and write it to DST in --to's format; options the target cannot "
                                         "express are refused by name. DST must be absent or empty unless --force; "
                                         "the files are written into a temporary directory that replaces DST only "
                                         "once complete, so a failed conversion leaves DST as it was.")
    convert.add_argument("src", help="source checkpoint directory")
    convert.add_argument("dst", help="destination directory (absent or empty unless --force)")
    convert.add_argument("--to", required=True, choices=_FORMATS, help="target format")
    convert.add_argument("--from", dest="source_format", choices=_FORMATS, default=None,
                         help="source format (default: detected)")
    convert.add_argument("--force", action="store_true",
                         help="replace a non-empty DST (its current contents are removed)")


def _run_convert(args: argparse.Namespace) -> int:
    from lrnn.models.interop import prepare_conversion, write_model

    with user_input():
        loaded = prepare_conversion(args.src, args.dst, args.to, args.source_format, overwrite=args.force)
    written = write_model(loaded.model, args.dst, args.to, overwrite=args.force)
    print(f"converted {args.src} ({loaded.format}) -> {args.dst} ({written})")
    return 0


def _add_generate(sub) -> None:
    gen = sub.add_parser("generate", help="stream a text continuation from a local model directory",
                         description="Load a model directory in any supported format (lrnn, mamba_ssm, HF, fla) "
                                     "and its tokenizer.json, then stream the continuation of --prompt.")
    gen.add_argument("--model", required=True, help="model directory")
    gen.add_argument("--prompt", required=True, help="text to continue")
    gen.add_argument("--tokenizer", default=None, help="directory with tokenizer.json (default: --model)")
    gen.add_argument("--format", choices=_FORMATS, default=None, help="model format (default: detected)")
    gen.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16", "float64"), default="auto",
                     help="compute dtype of the weights (default auto: the dtype they are stored in)")
    gen.add_argument("--weights", choices=("float32", "bfloat16", "int8"), default=None,
                     help="CPU inference weight format (lrnn.models.prepare_for_inference): float32 = the same "
                          "model in a faster decode layout; bfloat16 / int8 = fewer bytes per token, a slightly "
                          "different model (accuracy cost: lrnn bench decode --weights). Needs float32 weights, "
                          "a CPU and an lrnn model; default: the weights as loaded")
    gen.add_argument("--max-new-tokens", type=_nonnegative_int, default=64,
                     help="default 64; 0 only reads the prompt (no decode rate is printed below 2 tokens)")
    gen.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    gen.add_argument("--top-k", type=_nonnegative_int, default=0, help="keep the k most likely tokens (0: all)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0: all)")
    gen.add_argument("--greedy", action="store_true", help="always take the most likely token")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    spec = gen.add_argument_group("speculative decoding", "draft tokens cheaply, verify several per forward of the "
                                  "model: greedy output is unchanged, sampled output keeps its distribution; prints "
                                  "accepted draft tokens per step and tokens/s")
    spec.add_argument("--speculative", choices=("lookup", "draft"), default=None,
                      help="draft by prompt lookup (continue an earlier match of the last n-gram of the context) "
                           "or by a small draft model (--draft-model)")
    spec.add_argument("--draft-model", default=None,
                      help="draft model directory (any format, the model's vocabulary) for --speculative draft")
    spec.add_argument("--draft-tokens", type=_positive_int, default=None,
                      help="most draft tokens verified per forward of the model (default 4)")
    spec.add_argument("--ngram", type=_positive_int, default=None,
                      help="longest n-gram that --speculative lookup matches (default 3; shorter ones are tried next)")
    spec.add_argument("--tree", type=_branching, default=None, metavar="B1,B2,..",
                      help="verify a draft tree instead of a chain: B_d children per node at depth d (e.g. 2,2,1: "
                           "the draft model's top-k, or the continuations of several lookup matches); greedy or "
                           "sampled")
    spec.add_argument("--tree-nodes", type=_positive_int, default=None, metavar="N",
                      help="with --tree: a dynamic tree of at most N nodes within --tree's branching instead of "
                           "every node it allows: the draft model's N most likely paths (a beam of N per level), or "
                           "the N lookup nodes that most earlier occurrences continue through")


def _speculative_decode(args: argparse.Namespace, model, dtype):
    """(decode loop for ``generate_text``, the ``SpeculativeStats`` it fills) from the --speculative flags;
    (None, None) without --speculative. Flags that the chosen drafter does not use are refused."""
    from functools import partial

    from lrnn.models import ModelDrafter, PromptLookupDrafter, SpeculativeStats, speculative_generate
    from lrnn.models.interop import load_model
    from lrnn.models.speculative import check_drafter
    from lrnn.models.tree_speculative import (ModelTreeDrafter, PromptLookupTreeDrafter, check_tree_drafter,
                                              tree_speculative_generate)

    unused = {"lookup": ("draft_model",), "draft": ("ngram",),
              None: ("draft_model", "draft_tokens", "ngram", "tree", "tree_nodes")}
    given = ["--" + name.replace("_", "-") for name in unused[args.speculative] if getattr(args, name) is not None]
    if given:
        context = "without --speculative" if args.speculative is None else f"with --speculative {args.speculative}"
        raise CommandError(f"{', '.join(given)} cannot be used {context}")
    if args.speculative is None:
        return None, None
    if args.speculative == "draft" and args.draft_model is None:
        raise CommandError("--speculative draft needs --draft-model DIR")
    tree = args.tree is not None  # a draft tree, else a chain
    if tree and args.draft_tokens is not None:
        raise CommandError("--draft-tokens cannot be used with --tree (the tree's branching sets its size)")
    if not tree and args.tree_nodes is not None:
        raise CommandError("--tree-nodes needs --tree (the branching within which the dynamic tree grows)")
    if args.speculative == "draft":
        draft_model = load_model(args.draft_model, None, dtype)
        drafter = ModelTreeDrafter(draft_model, args.tree_nodes) if tree else ModelDrafter(draft_model)
        (check_tree_drafter if tree else check_drafter)(drafter, model)
    else:
        ngram = {} if args.ngram is None else {"max_ngram": args.ngram}
        drafter = PromptLookupTreeDrafter(**ngram, max_nodes=args.tree_nodes) if tree else PromptLookupDrafter(**ngram)
    stats = SpeculativeStats()
    if tree:
        return partial(tree_speculative_generate, drafter=drafter, branching=args.tree, stats=stats), stats
    options = {} if args.draft_tokens is None else {"num_draft_tokens": args.draft_tokens}
    return partial(speculative_generate, drafter=drafter, stats=stats, **options), stats


def _branching(text: str) -> tuple[int, ...]:
    """``--tree`` "2,2,1" -> (2, 2, 1): children per node at each depth, positive ints."""
    parts = text.split(",")
    if not all(part.strip().isdigit() and int(part) >= 1 for part in parts):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas (e.g. 2,2,1), got {text!r}")
    return tuple(int(part) for part in parts)


def _run_generate(args: argparse.Namespace) -> int:
    import torch

    from lrnn.models import SamplingConfig, generate_text, prepare_for_inference
    from lrnn.models.interop import load_model
    from lrnn.models.text import encode_prompt
    from lrnn.models.tokenizer import Tokenizer

    if args.greedy and (args.temperature != 1.0 or args.top_k != 0 or args.top_p != 1.0):
        raise CommandError("--temperature, --top-k and --top-p shape sampling: drop them or drop --greedy")
    with user_input():
        sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, do_sample=not args.greedy,
                                  temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
        dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
        model = load_model(args.model, args.format, dtype)  # first: a missing model is named before its tokenizer
        if args.weights is not None:  # after load_model: an lrnn LanguageModel on the CPU, whatever the format
            model = prepare_for_inference(model, args.weights)
        tokenizer = Tokenizer(args.tokenizer or args.model)
        encode_prompt(model, tokenizer, args.prompt)
        decode, speculative_stats = _speculative_decode(args, model, dtype)
    print(args.prompt, end="", flush=True)
    stats = generate_text(model, tokenizer, args.prompt, sampling, seed=args.seed,
                          write=lambda piece: print(piece, end="", flush=True), decode=decode)
    print()
    print(f"[{stats.summary()}]", file=sys.stderr)
    if speculative_stats is not None:
        print(f"[speculative {args.speculative}: {speculative_stats.summary()}]", file=sys.stderr)
    return 0


# ---- pretrain / tokenizer (language-model pretraining on text) ---------------------------------
_PRETRAIN_FLAGS: dict[str, str] = {
    "data": "corpus files or directories: plain text, JSONL with a 'text' field, parquet (JSONL / parquet need "
            "pip install 'lrnn[data]'); none: the default corpus, the Python standard library's *.py files",
    "tokenizer": "a tokenizer.json (or its directory) with an <|endoftext|> token; none: train a byte-level BPE "
                 "of --vocab-size tokens on the corpus (cached)",
    "vocab_size": "model vocabulary (and the size of a trained tokenizer)",
    "val_fraction": "every round(1/f)-th document is held out for validation",
    "mixer": "token mixer of every layer", "negative_eigenvalues": "eigenvalue range [-1, 1] instead of [0, 1]",
    "d_model": "model width", "n_layers": "number of blocks", "d_intermediate": "MLP width after each mixer (0: none)",
    "attention_every": "every N-th layer is attention (0: none)",
    "mixer_kwargs": "mixer constructor arguments per mixer name, as JSON",
    "seq_len": "tokens per packed row", "batch_size": "rows per optimiser step, all processes together",
    "micro_batch": "rows per forward pass of one process (gradient accumulation; 0: batch_size / processes)",
    "steps": "optimiser steps", "lr": "peak learning rate", "min_lr": "final learning rate of the cosine",
    "warmup_fraction": "fraction of steps of linear warm-up", "weight_decay": "AdamW weight decay",
    "grad_clip": "global gradient-norm clip (0: off)", "seed": "seed of the model init and the data order",
    "eval_every": "validate every N steps (0: at the end only)",
    "eval_tokens": "validation tokens (the first rows of the validation split)",
    "log_every": "steps per log.jsonl line", "checkpoint_every": "steps per checkpoint (0: at the end only)",
    "parallel": "engine with several processes (torchrun): fsdp (FSDP2 fully_shard) or ddp",
    "precision": "float32, or bfloat16 mixed precision (FSDP: MixedPrecisionPolicy; else autocast)",
    "activation_checkpointing": "recompute each block's activations in the backward pass",
    "compile": "torch.compile each block", "device": "auto (cuda:LOCAL_RANK if CUDA is available, else cpu), cpu, cuda",
}
"""PretrainConfig fields exposed as ``lrnn pretrain`` flags, with their help."""


def _add_pretrain(sub) -> None:
    import dataclasses

    from lrnn.training.pretrain import PARALLEL_MODES, PRECISIONS, PretrainConfig

    pretrain = sub.add_parser(
        "pretrain", help="pretrain a language model on text (no arguments: a small code LM on the Python "
                         "standard library, a few minutes on 2 CPU cores)",
        description="Pretrain a causal LM on packed documents and write --out (config.json, log.jsonl, "
                    "checkpoints/, curves.png, result.json and model/, which `lrnn generate --model OUT/model` "
                    "loads). With no arguments: trains a byte-level BPE of 2048 tokens on the Python standard "
                    "library's *.py files (~31 MB, present on every machine with Python; no download; tokenised once "
                    "and cached), then a 4-layer Gated DeltaNet with [-1, 1] eigenvalues (d_model 128, 1.0M "
                    "parameters) for 150 steps of 8 x 256 tokens, into runs/pretrain: about 4 minutes on 2 CPU "
                    "cores. Several processes: torchrun --nproc_per_node N -m lrnn pretrain "
                    "... (FSDP2 or DDP; gloo on CPU, NCCL on GPU). An interrupted run resumes from its latest "
                    "checkpoint when re-run with the same --out and config. docs/pretraining.md has the details.")
    pretrain.add_argument("--out", default="runs/pretrain", help="run directory (default runs/pretrain)")
    pretrain.add_argument("--config", default=None, help="a pretrain config JSON file (e.g. a run's config.json); "
                                                         "flags override its fields")
    pretrain.add_argument("--no-resume", action="store_true", help="start over even if --out holds this run")
    pretrain.add_argument("--force", action="store_true",
                          help="replace the run files of an --out that holds another run instead of refusing it")
    pretrain.add_argument("--stop-after", type=_positive_int, default=None,
                          help="stop after this step with a checkpoint (resume later with the same command)")
    pretrain.add_argument("--cache-dir", default=None,
                          help="where trained tokenizers and token shards are cached (default $LRNN_CACHE_DIR, "
                               "else ~/.cache/lrnn)")
    _add_threads(pretrain, of=" per process")
    _add_quiet(pretrain)
    defaults = PretrainConfig()
    choices = {"parallel": PARALLEL_MODES, "precision": PRECISIONS}
    for f in dataclasses.fields(PretrainConfig):
        flag, text = "--" + f.name.replace("_", "-"), _PRETRAIN_FLAGS[f.name]
        default = getattr(defaults, f.name)
        text += f" (default {default if default != [] else 'the default corpus'})"
        if f.name == "data":
            pretrain.add_argument(flag, nargs="+", default=None, metavar="PATH", help=text)
        elif isinstance(default, bool):
            pretrain.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif f.name == "mixer_kwargs":
            pretrain.add_argument(flag, type=_json_object, default=None, help=text)
        elif f.name in choices:
            pretrain.add_argument(flag, choices=choices[f.name], default=None, help=text)
        else:
            kind = {"int": int, "float": float}.get(type(default).__name__, str)
            pretrain.add_argument(flag, dest=f.name, type=kind, default=None, help=text)


def _run_pretrain(args: argparse.Namespace) -> int:
    from lrnn.training.pretrain import PretrainConfig, open_pretrain, start_processes, stop_processes

    _set_threads(args.threads)
    with user_input():
        config = PretrainConfig.load(args.config) if args.config else PretrainConfig()
        given = {name: getattr(args, name) for name in _PRETRAIN_FLAGS if getattr(args, name) is not None}
        config = PretrainConfig.from_dict({**config.to_dict(), **given})
        processes = start_processes(config.device)
    say = print if processes.is_main else (lambda *_, **__: None)
    try:
        with user_input():
            run = open_pretrain(config, args.out, processes, resume=not args.no_resume, force=args.force,
                                cache_dir=args.cache_dir, print_fn=lambda text: say(text, flush=True))
        say(f"corpus {run.corpus}: {run.shards.summary()}")
        written_by = run.resumed_from_world
        moved = f" (its checkpoint was written by {written_by})" if written_by not in (None, processes.world) else ""
        say(f"{'resuming' if run.start_step else 'training'} {args.out} from step {run.start_step} of "
            f"{config.steps} on {processes.world} process(es){moved}, {processes.device}", flush=True)
        result = run.train(stop_after=args.stop_after, quiet=args.quiet)
    finally:
        stop_processes(processes)
    if result["finished"]:
        say(f"validation loss {result['val_loss']:.4f} nats/token, {result['val_bpb']:.4f} bits/byte after "
            f"{result['tokens']:,} tokens ({result['train_seconds']:.0f} s)")
        say(f"model: {args.out}/model (lrnn generate --model {args.out}/model --prompt 'def ')")
    else:
        say(f"stopped after step {result['step']} with a checkpoint; run the same command to resume")
    return 0


def _add_tokenizer(sub) -> None:
    tokenizer = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer on a corpus")
    actions = tokenizer.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", help="train a byte-level BPE (with an <|endoftext|> token) and write "
                                             "OUT/tokenizer.json and OUT/tokenizer_config.json")
    train.add_argument("--data", nargs="+", default=None, metavar="PATH", help=_PRETRAIN_FLAGS["data"])
    train.add_argument("--vocab-size", type=_int_at_least(257), default=2048,
                       help="tokens, the 256 bytes and <|endoftext|> included (default 2048)")
    train.add_argument("--out", required=True, help="directory for tokenizer.json (its tokenizer files are "
                                                    "replaced only with --force)")
    train.add_argument("--force", action="store_true", help="replace an existing OUT/tokenizer.json")


def _run_tokenizer(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lrnn.data import check_has_text, corpus_files, default_corpus_files, iter_corpus, train_tokenizer
    from lrnn.models.tokenizer import TOKENIZER_NAME

    with user_input():
        target = Path(args.out) / TOKENIZER_NAME
        if target.exists() and not args.force:
            raise CommandError(f"{target} exists; pass --force to replace it, or another --out")
        _check_output_file(target, "--out")
        files = corpus_files(args.data) if args.data else default_corpus_files()
        check_has_text(files)
    path = train_tokenizer(iter_corpus(files), args.vocab_size, args.out)
    from tokenizers import Tokenizer as Vocabulary

    size = Vocabulary.from_file(str(path)).get_vocab_size()  # a small corpus gives fewer merges than asked
    print(f"trained a {size}-token byte-level BPE (--vocab-size {args.vocab_size}) on {len(files)} file(s): {path}")
    return 0


def _add_pretrain_sweep(sub) -> None:
    sweep = sub.add_parser(
        "pretrain-sweep", help="pretrain models x eigenvalue ranges x seeds (resumable), then the LM comparison "
                               "report",
        description="Train every run of --spec (a JSON PretrainSweepSpec: models, ranges, seeds, base, variants, "
                    "model_overrides; see lrnn.training.pretrain_sweep) under OUT/runs/<model>-<pos|neg|base>-"
                    "s<seed>, one process per run in --workers spawned processes, then write the report of "
                    "`lrnn pretrain-report` into OUT. The plan is printed and checked before anything runs: a "
                    "finished run of the same config is reused, an interrupted one resumes from its checkpoint, "
                    "and a run directory of another config is refused (use another --out). Re-running the "
                    "command after an interruption continues the sweep.")
    sweep.add_argument("--spec", required=True, help="a JSON file with PretrainSweepSpec fields")
    sweep.add_argument("--out", required=True, help="sweep directory (runs in OUT/runs, the report in OUT)")
    sweep.add_argument("--workers", type=_positive_int, default=1,
                       help="runs trained at once, each in its own process (default 1)")
    _add_threads(sweep, " per worker")
    sweep.add_argument("--cache-dir", default=None,
                       help="where trained tokenizers and token shards are cached (default $LRNN_CACHE_DIR, else "
                            "~/.cache/lrnn)")
    sweep.add_argument("--dry-run", action="store_true", help="print and check the plan; train nothing")
    sweep.add_argument("--quiet", action="store_true", help="print neither the plan nor a line per run")


def _run_pretrain_sweep(args: argparse.Namespace) -> int:
    from lrnn.training.pretrain_sweep import PretrainSweepSpec, plan_pretrain_sweep, prepare_corpora, run_pretrain_plan

    with user_input():
        plan = plan_pretrain_sweep(PretrainSweepSpec.load(args.spec), args.out)
    if args.dry_run:
        print(plan.describe())
        return 0
    with user_input():  # a missing or empty corpus, or a tokenizer too large, is refused before any run starts
        prepare_corpora(plan, args.cache_dir, print_fn=lambda text: None if args.quiet else print(text, flush=True))
    summary = run_pretrain_plan(plan, workers=args.workers, threads=args.threads, quiet=args.quiet,
                                cache_dir=args.cache_dir, command=args.command_line)
    if "report" in summary:
        print(f"report: {summary['report']['report']}")
    for name, error in summary["failed"].items():
        print(f"failed: {name}: {error.strip().splitlines()[-1]}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def _add_pretrain_report(sub) -> None:
    report = sub.add_parser(
        "pretrain-report", help="pretraining runs -> LM comparison table (bits per byte, [-1, 1] minus [0, 1]), "
                                "curves and generated samples",
        description="Collect every finished `lrnn pretrain` run under RUNS_DIR and write report.md (a row per "
                    "model and eigenvalue range: parameters, tokens, validation bits per byte and loss, final "
                    "training loss, throughput, model-FLOP fraction, instability; the [-1, 1] minus [0, 1] "
                    "difference per model), summary.json, comparison.png and samples.md (each run's model "
                    "continuing fixed code prompts, seeded) into --out. Seeds of one model and range are pooled; "
                    "runs of a row that differ in anything else are refused.")
    report.add_argument("runs_dir", help="directory searched recursively for finished runs (result.json)")
    report.add_argument("--out", default=None, help="directory for the report files (default: RUNS_DIR); files of "
                                                    "their names are replaced only if an earlier LM report wrote "
                                                    "them there")
    report.add_argument("--force", action="store_true",
                        help="replace report.md, summary.json, comparison.png or samples.md in --out even if no "
                             "LM report wrote them")


def _run_pretrain_report(args: argparse.Namespace) -> int:
    from lrnn.training.lm_report import prepare_lm_report

    with user_input():
        report = prepare_lm_report(args.runs_dir, args.out, command=args.command_line, overwrite=args.force)
    written = report.write()
    _print_report(written)
    return 0


# ---- analyze (diagnoses of trained models) -----------------------------------------------------
def _float_in(low: float, high: float):
    """An argparse type: a float in the open interval (low, high), with a one-line error naming what was given."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in ({low:g}, {high:g}), got {text!r}") from None
        if not low < value < high:
            raise argparse.ArgumentTypeError(f"expected a number in ({low:g}, {high:g}), got {value:g}")
        return value
    return parse


def _add_analyze(sub) -> None:
    analyze = sub.add_parser("analyze", help="diagnose a model: analyze dynamics (token dynamics of its S6 layers)",
                             description="Analyses of a model directory in any supported format.")
    kinds = analyze.add_subparsers(dest="analysis", required=True)
    dynamics = kinds.add_parser(
        "dynamics", help="per Mamba (S6) layer: the spectrum of sym(S_C^T S_B), its regime, token norms vs time",
        description="For every Mamba (S6) layer: the eigenvalues of the symmetric part of S_C^T S_B (x_proj's C and "
                    "B rows), the regime they imply (all negative: convergent, all positive: divergent, both: mixed), "
                    "and the continuous-time token system of docs/token_dynamics.md integrated (float64 RK4) from the "
                    "layer's x_proj inputs on a prompt. Prints one line per layer; with --out also writes "
                    "dynamics.json, spectra.png and norms.png.")
    dynamics.add_argument("model", help="model directory (lrnn, mamba_ssm or HF format)")
    dynamics.add_argument("--format", choices=_FORMATS, default=None, help="model format (default: detected)")
    dynamics.add_argument("--prompt-ids", default=None,
                          help="comma-separated token ids (default: 16 ids drawn uniformly from the vocabulary with "
                               "--seed)")
    dynamics.add_argument("--seed", type=int, default=0, help="seed of the default prompt (default 0)")
    dynamics.add_argument("--horizon", type=_float_in(0.0, float("inf")), default=1e4,
                          help="integrate for this many natural times of each layer (1 / the fastest initial "
                               "relative rate of a token; default 1e4)")
    dynamics.add_argument("--rel-step", type=_float_in(0.0, 1.0), default=0.05,
                          help="RK4 step as a fraction of the fastest relative rate (default 0.05)")
    dynamics.add_argument("--max-steps", type=_positive_int, default=2000, help="RK4 steps per layer at most")
    dynamics.add_argument("--rtol", type=_float_in(0.0, 1.0), default=1e-6,
                          help="eigenvalues within rtol * max |eigenvalue| of 0 count as zero (default 1e-6)")
    dynamics.add_argument("--out", default=None, help="directory for dynamics.json and the PNGs (default: print only)")
    dynamics.add_argument("--force", action="store_true", help="replace those files if --out already holds them")
    _add_threads(dynamics)
    experiment = kinds.add_parser(
        "experiment", help="the token-dynamics experiment's report from finished runs (docs/results/token_dynamics)",
        description="Write OUT/report.md and OUT/summary.json: for lrnn pretrain runs of Mamba (--lm-runs), the "
                    "validation bits per byte of each x_proj parametrisation (token_dynamics default / positive / "
                    "negative / mixed) per seed and the regime of every layer of each trained model on a fixed code "
                    "prompt; for lrnn train runs (--classification-runs), the held-out score with and without "
                    "reorder_tau.")
    experiment.add_argument("--lm-runs", default=None, help="directory of lrnn pretrain run directories")
    experiment.add_argument("--classification-runs", default=None, help="directory of lrnn train run directories")
    experiment.add_argument("--out", required=True, help="directory for report.md and summary.json")
    experiment.add_argument("--force", action="store_true", help="replace report.md / summary.json in --out")
    _add_threads(experiment)


def _prompt_ids(text: str | None, vocab_size: int, seed: int):
    """--prompt-ids as a [T] tensor of ids in [0, vocab_size), or 16 seeded random ids when not given."""
    import torch

    if text is None:
        return torch.randint(0, vocab_size, (16,), generator=torch.Generator().manual_seed(seed))
    try:
        ids = [int(piece) for piece in text.split(",")]
    except ValueError:
        raise ValueError(f"--prompt-ids must be comma-separated integers, got {text!r}") from None
    if not all(0 <= i < vocab_size for i in ids):
        raise ValueError(f"--prompt-ids must lie in [0, {vocab_size}) (the model's vocabulary), got {text!r}")
    return torch.tensor(ids)


def _run_analyze(args: argparse.Namespace) -> int:
    from lrnn.analysis import analyze_model, check_output_directory, require_mamba_layers, write_dynamics
    from lrnn.models.interop import load_model

    _set_threads(args.threads)
    if args.analysis == "experiment":
        return _run_experiment_report(args)
    with user_input():
        model = load_model(args.model, args.format)
        ids = _prompt_ids(args.prompt_ids, model.config.vocab_size, args.seed)
        require_mamba_layers(model)
        out = None if args.out is None else check_output_directory(args.out, overwrite=args.force)
    results = analyze_model(model, ids, horizon=args.horizon, rel_step=args.rel_step, max_steps=args.max_steps,
                            rtol=args.rtol)
    print(f"token dynamics of {args.model} on prompt ids {ids.tolist()}: eigenvalues of sym(S_C^T S_B) per layer")
    for result in results:
        print(result.summary())
    if out is not None:
        written = write_dynamics(results, out, {"model": str(args.model), "prompt_ids": ids.tolist(),
                                                "horizon": args.horizon, "rel_step": args.rel_step,
                                                "max_steps": args.max_steps, "rtol": args.rtol})
        print(f"written: {', '.join(str(p) for p in written.values())}")
    return 0


# ---- bench ---------------------------------------------------------------------------------------
def _add_bench(sub) -> None:
    from lrnn.bench import add_subcommands

    bench = sub.add_parser("bench", help="benchmarks and device checks: ops, decode, hf, check, tasks, train, speculative",
                           description="Benchmarks of lrnn (speed, memory) and the fast-path-vs-reference checks "
                                       "on a device. `python -m lrnn.bench ...` is an alias of `lrnn bench ...`.")
    add_subcommands(bench)


def _run_bench(args: argparse.Namespace) -> int:
    from lrnn.device import resolve_device

    with user_input():
        if getattr(args, "device", None) is not None:
            resolve_device(args.device)
        if getattr(args, "json", None):
            _check_output_file(args.json, "--json")
    return args.bench_run(args, args.command_line, args.bench_parser)


# ---- registry ----------------------------------------------------------------------------------
PARSERS: list[Callable] = [_add_demo, _add_train, _add_eval, _add_sweep, _add_report]
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"demo": _run_demo, "train": _run_train, "eval": _run_eval,
                                                            "sweep": _run_sweep, "report": _run_report}

PARSERS += [_add_convert, _add_generate, _add_bench]
COMMANDS.update(convert=_run_convert, generate=_run_generate, bench=_run_bench)
PARSERS += [_add_pretrain, _add_tokenizer]
COMMANDS.update(pretrain=_run_pretrain, tokenizer=_run_tokenizer)
PARSERS += [_add_pretrain_sweep, _add_pretrain_report]
COMMANDS.update({"pretrain-sweep": _run_pretrain_sweep, "pretrain-report": _run_pretrain_report})
PARSERS += [_add_analyze]
def _run_experiment_report(args: argparse.Namespace) -> int:
    from lrnn.analysis import write_experiment_report

    command = "lrnn analyze experiment " + " ".join(
        f"--{name.replace('_', '-')} {value}" for name, value in
        (("lm_runs", args.lm_runs), ("classification_runs", args.classification_runs), ("out", args.out))
        if value is not None)
    with user_input():
        written = write_experiment_report(args.lm_runs, args.classification_runs, args.out, command,
                                          overwrite=args.force)
    _print_report(written)
    return 0


COMMANDS.update(analyze=_run_analyze)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrnn", description="Linear RNNs with negative eigenvalues.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``lrnn ARGV`` (default: ``sys.argv[1:]``); returns the exit status. A user-input error exits 2
    with one line on stderr; any other exception propagates with its traceback."""
    import shlex

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["lrnn", *argv])  # what reports and benchmark headers quote
    try:
        return COMMANDS[args.command](args)
    except CommandError as err:
        parser.exit(2, f"lrnn {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"lrnn {args.command}: interrupted\n")


if __name__ == "__main__":
    sys.exit(main())
