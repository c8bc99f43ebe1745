"""The ``lrnn`` command line.

Each subcommand has an ``_add_<name>(subparsers)`` function that declares its arguments and a
``_run_<name>(args) -> int`` function; ``COMMANDS`` maps names to runners. The work itself lives in
the library layers (``lrnn.training``, ``lrnn.tasks``, ``lrnn.models``, ...): this module only parses
arguments, calls them and turns user errors into one-line messages.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def _int_at_least(minimum: int):
    """An argparse type: an int >= ``minimum``, with a one-line error naming what was given."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


# ---- demo --------------------------------------------------------------------------------------
DEMO_STEPS_HELP = "DeltaNet 1200, Mamba-2 600, Mamba 2500"  # lrnn.demo.DEMO_SETTINGS (tested to agree)


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
                      help="worker processes, one torch thread each (default: 2, or 1 on a one-core machine)")
    demo.add_argument("--length", type=_positive_int, default=10_000,
                      help="--ops only: number of random bits (default 10000)")
    demo.add_argument("--chunk-size", type=_positive_int, default=64,
                      help="--ops only: chunk size of the chunked mode (default 64)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _run_demo(args: argparse.Namespace) -> int:
    from lrnn.demo import run_ops_demo, run_parity_demo

    if args.ops:
        return run_ops_demo(length=args.length, seed=args.seed, chunk_size=args.chunk_size)
    return run_parity_demo(steps=args.steps, seed=args.seed, plot=args.plot or None, workers=args.workers)


# ---- train / eval / sweep / report -------------------------------------------------------------
_RUN_FLAGS: dict[str, str] = {
    "task": "task name (see lrnn.tasks.TASKS)",
    "mixer": "token mixer: mamba, mamba2, deltanet, gated_deltanet, deltaproduct, attention (Transformer), lstm",
    "negative_eigenvalues": "eigenvalue range [-1, 1] (--no-negative-eigenvalues: the original [0, 1])",
    "n_layers": "number of blocks", "d_model": "model width",
    "heads": "heads of DeltaNet-family / attention mixers; Mamba-2 headdim = 2 * d_model / heads",
    "n_h": "Householder steps per token (DeltaProduct)", "d_state": "Mamba / Mamba-2 state size",
    "d_intermediate": "MLP width after each mixer (0: no MLP)", "chunk_size": "chunked-scan block length",
    "mixer_kwargs": "extra mixer constructor arguments as a JSON object, e.g. '{\"conv_size\": 0}'",
    "lr": "peak learning rate", "min_lr": "final learning rate of the cosine", "weight_decay": "AdamW weight decay",
    "ssm_lr": "peak learning rate of S4D's A, B, dt (no weight decay; scaled with the schedule; 'none': same as --lr)",
    "warmup_fraction": "fraction of steps of linear warm-up", "grad_clip": "global gradient-norm clip (0: off)",
    "steps": "optimiser steps", "batch_size": "sequences per step",
    "train_min": "shortest training length", "train_max": "longest training length",
    "eval_task": "task to evaluate on (default: the task's held-out split if it has one, e.g. "
                 "sequential_digits_test, else the task itself)",
    "eval_min": "shortest test length", "eval_max": "longest test length", "eval_bins": "test length bins",
    "eval_samples": "test sequences per bin", "eval_batch_size": "sequences per evaluation forward",
    "eval_every": "evaluate every N steps (0: only at the end)", "eval_seed": "seed of the fixed test set",
    "log_every": "steps per log.jsonl line", "checkpoint_every": "steps per checkpoint (0: only at the end)",
    "seed": "seed of the model init and the training data", "device": "torch device, e.g. cpu or cuda",
}
"""RunConfig fields exposed as ``lrnn train`` flags (``--n-layers`` for ``n_layers``), with their help."""


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


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field; unset flags stay None so --config and the defaults show through."""
    import dataclasses

    from lrnn.training import RunConfig

    defaults = RunConfig()
    for f in dataclasses.fields(RunConfig):
        if f.name not in _RUN_FLAGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        text = f"{_RUN_FLAGS[f.name]} (default {default})"
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
    given = {name: getattr(args, name) for name in _RUN_FLAGS if getattr(args, name) is not None}
    given = {name: None if value is _NONE else value for name, value in given.items()}
    return RunConfig.from_dict({**config.to_dict(), **given})


def _add_train(sub) -> None:
    from lrnn.training import PROTOCOLS

    train = sub.add_parser("train", help="train one model on one task, evaluate length generalisation",
                           description="Train one run; writes config.json, log.jsonl, checkpoint.pt, model/ and "
                                       "result.json into --out. An existing checkpoint in --out is resumed.")
    train.add_argument("--out", default=None, help="run directory (default runs/<task>-<model>-<range>-lr<lr>-s<seed>)")
    train.add_argument("--config", default=None, help="a run config JSON file (e.g. a run's config.json); "
                                                      "flags override its fields")
    train.add_argument("--protocol", choices=sorted(PROTOCOLS), default=None,
                       help="length protocol: " + "; ".join(f"{k}: {p.description}" for k, p in PROTOCOLS.items()))
    train.add_argument("--no-resume", action="store_true", help="start over even if --out has a checkpoint")
    train.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_run_flags(train)


def _run_train(args: argparse.Namespace) -> int:
    import torch

    from lrnn.training import format_bins, train
    from lrnn.training.sweep import run_name

    config = _run_config(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or f"runs/{run_name(config)}"
    outcome = train(config, out, resume=not args.no_resume, quiet=args.quiet)
    print(f"{config.task} {config.model_label} {config.eigenvalue_range}: score {outcome.result['score']:.4f} "
          f"over lengths {config.eval_min}-{config.eval_max}")
    print(format_bins(outcome.result["eval"]))
    print(f"run directory: {out}")
    return 0


def _add_eval(sub) -> None:
    evaluate = sub.add_parser("eval", help="evaluate a run directory's model per length bin",
                              description="Evaluate the model of a run directory (written by lrnn train or "
                                          "lrnn sweep) on fresh test sequences; flags override the run's test range.")
    evaluate.add_argument("run_dir", help="run directory (holds config.json and model/ or checkpoint.pt)")
    evaluate.add_argument("--eval-task", default=None,
                          help="task to evaluate on (default: the run's eval task: its task's held-out split "
                               "if it has one, else the task)")
    evaluate.add_argument("--eval-min", type=_positive_int, default=None, help="shortest test length")
    evaluate.add_argument("--eval-max", type=_positive_int, default=None, help="longest test length")
    evaluate.add_argument("--eval-bins", type=_positive_int, default=None, help="number of length bins")
    evaluate.add_argument("--eval-samples", type=_positive_int, default=None, help="test sequences per bin")
    evaluate.add_argument("--device", default="cpu", help="torch device (default cpu)")
    evaluate.add_argument("--json", default=None, help="also write the result as JSON to this path")


def _run_eval(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    from pathlib import Path

    from lrnn.models.io import atomic_write_text
    from lrnn.training import evaluate, format_bins, load_run
    from lrnn.training.trainer import make_eval_task, resolve_device

    device = resolve_device(args.device)
    config, model = load_run(args.run_dir, device)
    changes = {k: getattr(args, k) for k in ("eval_task", "eval_min", "eval_max", "eval_bins", "eval_samples")
               if getattr(args, k) is not None}
    config = dataclasses.replace(config, **changes)
    eval_task = make_eval_task(config)
    result = evaluate(model, eval_task, config.eval_min, config.eval_max, config.eval_bins,
                      config.eval_samples, seed=config.eval_seed, batch_size=config.eval_batch_size, device=device)
    print(f"{config.task} {config.model_label} {config.eigenvalue_range}: score {result['overall']['score']:.4f} "
          f"on {eval_task.name}")
    print(format_bins(result))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result, indent=2) + "\n")
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

    sweep = sub.add_parser("sweep", help="run a grid of tasks x models x ranges x learning rates x seeds in parallel",
                           description="Run a grid in worker processes under OUT/runs/<name>, skipping finished runs "
                                       "and resuming interrupted ones, then write OUT/report.md, OUT/summary.json "
                                       "and one PNG per task. Flags override the fields of --spec.")
    sweep.add_argument("--out", required=True, help="sweep directory")
    sweep.add_argument("--spec", default=None, help="a JSON or TOML file with SweepSpec fields (tasks, models, "
                                                    "ranges, lrs, seeds, protocol, base, task_overrides, model_overrides)")
    sweep.add_argument("--tasks", type=_csv(str), default=None, help="comma-separated task names")
    sweep.add_argument("--models", type=_csv(str), default=None,
                       help="comma-separated mixer names, optionally with :n_h, e.g. mamba,deltanet,deltaproduct:2")
    sweep.add_argument("--ranges", choices=("pos", "neg", "both"), default=None,
                       help="eigenvalue ranges: pos = [0, 1], neg = [-1, 1], both (default: the spec's, else both)")
    sweep.add_argument("--lrs", type=_csv(float), default=None, help="comma-separated learning rates")
    sweep.add_argument("--seeds", type=_csv(int), default=None, help="comma-separated seeds")
    sweep.add_argument("--protocol", choices=sorted(PROTOCOLS), default=None, help="length protocol of every run")
    sweep.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="a RunConfig field for every run, e.g. --set steps=2000 (repeatable; VALUE is JSON "
                            "or a plain string)")
    sweep.add_argument("--workers", type=_positive_int, default=1, help="worker processes (default 1)")
    sweep.add_argument("--threads", type=_positive_int, default=1, help="torch threads per worker (default 1)")
    sweep.add_argument("--quiet", action="store_true", help="no per-run lines")


def _run_sweep(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from lrnn.training.sweep import SweepSpec, run_sweep

    spec = SweepSpec.load(args.spec) if args.spec else SweepSpec()
    fields = dataclasses.asdict(spec)
    for name in ("tasks", "models", "lrs", "seeds", "protocol"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.ranges is not None:
        fields["ranges"] = {"pos": ["[0,1]"], "neg": ["[-1,1]"], "both": ["[0,1]", "[-1,1]"]}[args.ranges]
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            fields["base"][key] = json.loads(value)
        except json.JSONDecodeError:
            fields["base"][key] = value
    summary = run_sweep(SweepSpec.from_dict(fields), args.out, workers=args.workers, threads=args.threads,
                        quiet=args.quiet)
    if "report" in summary:
        print(f"report: {summary['report']['report']}")
    for name, error in summary["failed"].items():
        print(f"failed: {name}: {error.strip().splitlines()[-1]}", file=sys.stderr)
    return 1 if summary["failed"] else 0


PUBLISHED_NAMES = ("table3",)  # lrnn.training.report.PUBLISHED (not imported: keeps --help fast)


def _add_report(sub) -> None:
    report = sub.add_parser("report", help="results directory -> markdown table (like Table 3 of arXiv 2411.12537) "
                                           "and accuracy-vs-length PNGs")
    report.add_argument("results_dir", help="directory searched recursively for result.json files")
    report.add_argument("--out", default=None, help="where to write report.md, summary.json and the PNGs "
                                                    "(default: results_dir)")
    report.add_argument("--title", default="State-tracking results",
                        help="heading of report.md (default 'State-tracking results')")
    report.add_argument("--published", default=None, choices=sorted(PUBLISHED_NAMES),
                        help="add a table of our best scores beside published ones (table3: arXiv 2411.12537)")


def _run_report(args: argparse.Namespace) -> int:
    from lrnn.training.report import write_report

    written = write_report(args.results_dir, args.out, title=args.title, published=args.published)
    print(written["report"].read_text(), end="")
    print(f"written: {', '.join(str(p) for p in written.values())}")
    return 0


# ---- convert / generate (interop with peer checkpoints) ----------------------------------------
_FORMATS = ("lrnn", "mamba_ssm", "hf", "fla")  # lrnn.models.interop.FORMATS (not imported: keeps --help fast)


def _add_convert(sub) -> None:
    convert = sub.add_parser("convert", help="convert a checkpoint between lrnn, mamba_ssm, HF and fla formats",
                             description="Read SRC (format auto-detected from its config.json unless --from is "
                                         "given) and write it to DST in --to's format; options the target cannot "
                                         "express are refused by name.")
    convert.add_argument("src", help="source checkpoint directory")
    convert.add_argument("dst", help="destination directory (files are written atomically)")
    convert.add_argument("--to", required=True, choices=_FORMATS, help="target format")
    convert.add_argument("--from", dest="source_format", choices=_FORMATS, default=None,
                         help="source format (default: detected)")


def _run_convert(args: argparse.Namespace) -> int:
    from lrnn.models.interop import convert

    source, written = convert(args.src, args.dst, args.to, args.source_format)
    print(f"converted {args.src} ({source}) -> {args.dst} ({written})")
    return 0


def _add_generate(sub) -> None:
    gen = sub.add_parser("generate", help="stream a text continuation from a local model directory",
                         description="Load a model directory in any supported format (lrnn, mamba_ssm, HF, fla) "
                                     "and its tokenizer.json, then stream the continuation of --prompt.")
    gen.add_argument("--model", required=True, help="model directory")
    gen.add_argument("--prompt", required=True, help="text to continue")
    gen.add_argument("--tokenizer", default=None, help="directory with tokenizer.json (default: --model)")
    gen.add_argument("--format", choices=_FORMATS, default=None, help="model format (default: detected)")
    gen.add_argument("--max-new-tokens", type=_nonnegative_int, default=64, help="default 64")
    gen.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    gen.add_argument("--top-k", type=_nonnegative_int, default=0, help="keep the k most likely tokens (0: all)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0: all)")
    gen.add_argument("--greedy", action="store_true", help="always take the most likely token")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")


def _run_generate(args: argparse.Namespace) -> int:
    from lrnn.models import SamplingConfig
    from lrnn.models.interop import load_model
    from lrnn.models.tokenizer import Tokenizer, generate_text

    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, do_sample=not args.greedy,
                              temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    tokenizer = Tokenizer(args.tokenizer or args.model)
    model = load_model(args.model, args.format)
    print(args.prompt, end="", flush=True)
    stats = generate_text(model, tokenizer, args.prompt, sampling, seed=args.seed,
                          write=lambda piece: print(piece, end="", flush=True))
    print()
    print(f"[{stats.new_tokens} new tokens after a {stats.prompt_tokens}-token prompt; prefill {stats.prefill_s:.2f} s; "
          f"decode {stats.tokens_per_s:.1f} tokens/s]", file=sys.stderr)
    return 0


# ---- registry ----------------------------------------------------------------------------------
PARSERS: list[Callable] = [_add_demo, _add_train, _add_eval, _add_sweep, _add_report]
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"demo": _run_demo, "train": _run_train, "eval": _run_eval,
                                                            "sweep": _run_sweep, "report": _run_report}

PARSERS += [_add_convert, _add_generate]
COMMANDS.update(convert=_run_convert, generate=_run_generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrnn", description="Linear RNNs with negative eigenvalues.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        # User errors (bad task name, missing checkpoint, ...) get one line, not a traceback.
        parser.exit(2, f"lrnn {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"lrnn {args.command}: interrupted\n")


if __name__ == "__main__":
    sys.exit(main())
