"""``lrnn bench train``: the time of one full training step of every mixer, beside the matmul rate.

A step is what ``lrnn train`` does per batch (``lrnn.training.trainer.training_step``): forward,
cross-entropy, backward, global-norm gradient clipping (1.0) and an AdamW step over the trainer's
parameter groups. Three configurations (``CONFIGS``):

* ``parity`` (a): the paper's parity config -- 2 blocks, d_model 128, 4 heads, batch 256, lengths 3-40
  from the parity task (real right-padded batches, drawn once up front: every mixer gets the same ones);
* ``words`` (b): the word-problem config -- 1 block, d_model 128, 8 heads, T 128, batch 256, task s3;
* ``lm`` (c): language modelling -- d_model 512, 8 blocks, 8 heads, T 2048, batch 4, a byte-level
  vocabulary of 256 (random tokens: the speed does not depend on them). On a CPU the default
  ``--scale`` runs it at 1/8 of its length (T 256); the report says so.

Every block is (norm, mixer) with no MLP (``d_intermediate`` 0, the configuration of the state-tracking
runs), so the step measures the mixers. Mixers with the eigenvalue switch run in the [-1, 1] range;
DeltaProduct with n_h = 2 (its default); every other size is the mixer's default.

**Model FLOPs** (one definition for every mixer; a multiply-add counts 2). Per step, over the
``B x T`` positions of the batch as the task pads it::

    model FLOPs = 3 x (2 x P_matmul x B x T  +  sum over layers of  B x T x core(layer, T))

``P_matmul`` counts the weights of every ``nn.Linear`` (projections, LSTM gates, the head; a tied head
counts, the embedding lookup does not); 3 = forward + a backward counted as twice the forward (the
usual 6 x parameters x tokens). ``core`` is the mixer's token-mixing work per position, forward, in its
recurrent form (the chunked forms do more arithmetic than this, which is not credited); each rule is its
mixer's registry entry (``MixerSpec.core_flops``):

* Transformer: ``4 x T x d_model`` (``Q K^T`` and ``scores V`` over all T keys: the PaLM convention,
  not halved for causality);
* Mamba-2, Mamba (S6) and other decay recurrences: ``4 x K x V`` per head -- the state update
  ``k v^T`` (2KV) and the readout ``H^T q`` (2KV); Mamba-2: K = d_state, V = headdim, H heads; Mamba
  (S6): K = d_state, V = 1, one head per inner channel;
* DeltaNet / Gated DeltaNet / DeltaProduct: ``(4 n_h + 2) x K x V`` per head -- per Householder step
  ``k^T S`` and the rank-1 update (2KV each), then the readout (2KV);
* S4D: ``4 x d_state`` per channel (a diagonal state of d_state real numbers, V = 1);
* LSTM: 0 (its recurrent matmul is an ``nn.Linear``, already in ``P_matmul``).

Decays, gates, norms, activations, short convolutions and the softmax are element-wise work and not
counted. ``% of matmul`` is the model FLOP/s over the float32 matmul rate measured in the same run
with the same thread count.

**Timing.** Each (mixer, mode) runs warm-up steps first (compiled: one per distinct batch shape, so
compilation is not timed). Then ``--rounds`` rounds go over every (mixer, mode) in turn -- interleaved,
so a slow spell of the machine hits all of them -- timing ``--steps`` steps each between two runs of a
small matmul probe. A row's ms/step is the best of its rounds' medians (the median of rounds beside it);
``lrnn.bench.timing.disturbance`` flags a round whose probe fell below half the run's best or whose
steps spread more than 3x. The headline is the ratio to the Transformer's step in the same run.
``--compile`` adds ``torch.compile``d models (``lrnn.training.trainer.compile_model``, what
``lrnn train --compile`` uses: padded lengths rounded up to a multiple of 8).

Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lrnn.device import resolve_device
from lrnn.bench.ops import machine_info
from lrnn.bench.report import run_and_emit
from lrnn.bench.timing import disturbance, measure_matmul, release_memory, time_calls
from lrnn.layers import MIXERS, mixer_spec
from lrnn.models import LanguageModel, ModelConfig
from lrnn.tasks import make_task
from lrnn.training import PRECISIONS, RunConfig, make_optimizer
from lrnn.training.trainer import COMPILE_LENGTH_MULTIPLE, compile_model, pad_length, training_step

__all__ = ["CONFIGS", "StepConfig", "core_flops_per_token", "matmul_parameters", "model_flops", "step_flops",
           "build_entry", "add_arguments", "run_from_args", "run"]

DESCRIPTION = ("Time one full training step (forward, backward, clipping, AdamW) of every mixer at the parity, "
               "word-problem and LM configs; model FLOP/s beside the measured matmul rate.")

BASELINE = "attention"
"""The mixer every ratio is taken against (the Transformer)."""

PROBE_SIZE = 512
PROBE_REPEATS = 3
CPU_LM_SCALE = 0.125
"""Default ``--scale`` of the LM config on a CPU: T 2048 -> 256 (a full-length step takes minutes there)."""

GRAD_CLIP = 1.0
LR = 1e-3


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """One benchmark configuration: the model size and the batches.

    ``task`` None means language modelling on random tokens of ``vocab_size`` at length ``max_length``;
    otherwise lengths are drawn uniformly in [min_length, max_length] by the task.
    """

    name: str
    label: str
    n_layers: int
    d_model: int
    heads: int
    batch_size: int
    min_length: int
    max_length: int
    task: str | None
    vocab_size: int = 256

    def scaled(self, scale: float) -> "StepConfig":
        """This config with its lengths times ``scale`` (at least 2 tokens)."""
        return dataclasses.replace(self, min_length=max(2, round(self.min_length * scale)),
                                   max_length=max(2, round(self.max_length * scale)))

    def describe(self) -> str:
        lengths = (f"T {self.max_length}" if self.min_length == self.max_length
                   else f"lengths {self.min_length}-{self.max_length}")
        data = f"task {self.task}" if self.task else f"random tokens, vocab {self.vocab_size}"
        return (f"{self.label}: {self.n_layers} block(s), d_model {self.d_model}, {self.heads} heads, "
                f"batch {self.batch_size}, {lengths}, {data}")


CONFIGS: dict[str, StepConfig] = {
    "parity": StepConfig("parity", "(a) parity", 2, 128, 4, 256, 3, 40, "parity"),
    "words": StepConfig("words", "(b) word problem", 1, 128, 8, 256, 128, 128, "s3"),
    "lm": StepConfig("lm", "(c) LM", 8, 512, 8, 4, 2048, 2048, None),
}


# ----------------------------------------------------------------------------------------------------
# Model FLOPs


def matmul_parameters(model: nn.Module) -> int:
    """Weights of every ``nn.Linear`` in ``model`` (a tied head counts; embeddings and biases do not)."""
    return sum(module.weight.numel() for module in model.modules() if isinstance(module, nn.Linear))


def core_flops_per_token(mixer_name: str, mixer: nn.Module, length: int) -> int:
    """Forward token-mixing FLOPs per position of the built mixer ``mixer`` (registered as ``mixer_name``)
    on length-``length`` sequences: its registry entry's ``core_flops`` rule."""
    rule = mixer_spec(mixer_name).core_flops
    if rule is None:
        raise ValueError(f"mixer {mixer_name!r} has no model-FLOP rule: give its MixerSpec a core_flops")
    return rule(mixer, length)


def model_flops(model: LanguageModel, batch_size: int, length: int) -> int:
    """Forward model FLOPs of ``model`` on ``batch_size`` sequences of ``length`` positions."""
    positions = batch_size * length
    core = sum(core_flops_per_token(name, block.mixer, length)
               for name, block in zip(model.config.layer_mixers(), model.layers))
    return 2 * matmul_parameters(model) * positions + core * positions


def step_flops(model: LanguageModel, batch_size: int, length: int) -> int:
    """Model FLOPs of one training step: forward + backward (counted as twice the forward)."""
    return 3 * model_flops(model, batch_size, length)


# ----------------------------------------------------------------------------------------------------
# Models and batches


def run_config(config: StepConfig, mixer: str, chunk_size: int | None = None) -> RunConfig:
    """The run config of ``mixer`` at ``config``'s size ([-1, 1] where the mixer has the switch);
    ``chunk_size`` is set for the mixers that take one (None: their default)."""
    spec = mixer_spec(mixer)
    return RunConfig(task=config.task or "parity", mixer=mixer, negative_eigenvalues=spec.eigenvalue_switch,
                     n_layers=config.n_layers, d_model=config.d_model, d_intermediate=0,
                     heads=config.heads if "heads" in spec.fields else None,
                     chunk_size=chunk_size if "chunk_size" in spec.fields else None, batch_size=config.batch_size,
                     lr=LR, grad_clip=GRAD_CLIP)


def build_model(config: StepConfig, mixer: str, device: torch.device, chunk_size: int | None = None) -> LanguageModel:
    """The model of ``mixer`` at ``config`` (seeded), as ``lrnn train`` builds it (an LM for task None)."""
    rc = run_config(config, mixer, chunk_size)
    torch.manual_seed(0)
    if config.task is None:
        model_config = ModelConfig(vocab_size=config.vocab_size, d_model=config.d_model, n_layers=config.n_layers,
                                   mixer=mixer, negative_eigenvalues=rc.negative_eigenvalues,
                                   mixer_kwargs={mixer: rc.mixer_arguments()}, d_intermediate=0)
    else:
        task = make_task(config.task)
        model_config = rc.model_config(task.vocab_size, task.num_classes)
    return LanguageModel(model_config).to(device)


Batch = tuple[torch.Tensor, torch.Tensor]
"""(inputs [B, T], targets [B, T]) of one step."""


def draw_batches(config: StepConfig, count: int, device: torch.device, seed: int = 0) -> list[Batch]:
    """``count`` batches of ``config``, drawn once from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        if config.task is None:
            shape = (config.batch_size, config.max_length + 1)
            tokens = torch.randint(0, config.vocab_size, shape, generator=generator)
            inputs, targets = tokens[:, :-1], tokens[:, 1:]
        else:
            batch = make_task(config.task).sample(config.batch_size, config.min_length, config.max_length, generator)
            inputs, targets = batch.inputs, batch.targets
        batches.append((inputs.contiguous().to(device), targets.contiguous().to(device)))
    return batches


def _pad_id(config: StepConfig) -> int:
    return 0 if config.task is None else make_task(config.task).pad_id


@dataclasses.dataclass
class Entry:
    """One (mixer, mode) under test: its model, optimiser, step function and the FLOPs of each batch."""

    mixer: str
    mode: str
    model: LanguageModel
    step: Callable[[int], None]
    flops: list[int]
    """Model FLOPs of a step on each batch."""
    positions: list[int]
    """B x T of each batch (T as the task pads it)."""

    @property
    def batches(self) -> int:
        return len(self.flops)

    @property
    def key(self) -> str:
        return f"{self.mixer}/{self.mode}"


def build_entry(config: StepConfig, mixer: str, compiled: bool, batches: list[Batch],
                device: torch.device, chunk_size: int | None = None, precision: str = "float32") -> Entry:
    """Model, optimiser and step of ``mixer`` at ``config``; ``step(i)`` trains on ``batches[i % n]``
    (``training_step`` at ``precision``).

    Compiled entries feed batches padded as ``lrnn train --compile`` pads them (a multiple of
    ``COMPILE_LENGTH_MULTIPLE``); FLOPs are counted on the task's own padded length either way.
    """
    model = build_model(config, mixer, device, chunk_size)
    rc = run_config(config, mixer, chunk_size)
    optimizer = make_optimizer(model, rc.lr, rc.weight_decay, rc.betas, rc.ssm_lr)
    forward: nn.Module = compile_model(model) if compiled else model
    if compiled:
        pad_id = _pad_id(config)
        feed = [pad_length(inputs, targets, COMPILE_LENGTH_MULTIPLE, pad_id) for inputs, targets in batches]
    else:
        feed = batches

    def step(i: int) -> None:
        inputs, targets = feed[i % len(feed)]
        training_step(forward, optimizer, inputs, targets, rc.grad_clip, precision)

    flops = [step_flops(model, inputs.shape[0], inputs.shape[1]) for inputs, _ in batches]
    positions = [inputs.numel() for inputs, _ in batches]
    return Entry(mixer, "compiled" if compiled else "eager", model, step, flops, positions)


# ----------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``train`` options on ``parser``."""
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                        help="which configs: parity (a), words (b), lm (c) (default: all)")
    parser.add_argument("--mixers", nargs="+", metavar="MIXER", default=None,
                        help=f"mixers to time (default: every registered one: {', '.join(MIXERS)}); the Transformer "
                             f"({BASELINE}) is always included, as the baseline of the ratios")
    parser.add_argument("--compile", dest="compile", action=argparse.BooleanOptionalAction, default=False,
                        help="also time torch.compile'd models (default: eager only; compiling takes minutes on "
                             "a CPU)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per (mixer, mode) per round (default 2)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds over the mixers; a row reports its best round (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the rounds (default 1; "
                        "compiled models also run each distinct batch shape once)")
    parser.add_argument("--batches", type=int, default=4,
                        help="distinct batches drawn up front per config; steps cycle through them (default 4)")
    parser.add_argument("--scale", type=float, default=None,
                        help=f"length scale of the lm config (c), in (0, 1] (default: 1 on a GPU, {CPU_LM_SCALE} "
                             "on the CPU, where a full T 2048 step of 8 blocks takes minutes)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="chunk size of every mixer that takes one (the DeltaNet family, Mamba-2, Mamba's "
                             "chunked GPU path; default: each mixer's own)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: 1 on the CPU, torch's setting on CUDA)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="float32 (default), or bfloat16: each forward pass under torch.autocast(bfloat16) with "
                             "float32 weights, gradients and AdamW (lrnn pretrain --precision bfloat16); the matmul "
                             "reference is then a bfloat16 matmul")
    parser.add_argument("--matmul-size", type=int, default=2048,
                        help="side of the square float32 reference matmul (default 2048)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--markdown", action="store_true", help="print the report as markdown")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The resolved command line."""

    configs: list[StepConfig]
    mixers: list[str]
    modes: list[str]
    steps: int
    rounds: int
    warmup: int
    batches: int
    lm_scale: float
    chunk_size: int | None
    threads: int
    matmul_size: int
    device: torch.device
    precision: str = "float32"


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Check the options (ValueError naming the flag) and apply the device-dependent defaults."""
    for flag, value in (("--steps", args.steps), ("--rounds", args.rounds), ("--batches", args.batches),
                        ("--matmul-size", args.matmul_size), ("--chunk-size", args.chunk_size)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.scale is not None and not 0 < args.scale <= 1:
        raise ValueError(f"--scale must lie in (0, 1], got {args.scale}")
    unknown = [m for m in args.mixers or () if m not in MIXERS]
    if unknown:
        raise ValueError(f"--mixers: unknown mixer(s) {unknown}; known: {', '.join(MIXERS)}")
    device = resolve_device(args.device)
    mixers = list(dict.fromkeys([BASELINE, *(args.mixers or MIXERS)]))
    scale = args.scale if args.scale is not None else (CPU_LM_SCALE if device.type == "cpu" else 1.0)
    configs = [CONFIGS[name].scaled(scale) if name == "lm" else CONFIGS[name] for name in args.configs]
    return Settings(configs=configs, mixers=mixers, modes=["eager", "compiled"] if args.compile else ["eager"],
                    steps=args.steps, rounds=args.rounds, warmup=args.warmup, batches=args.batches,
                    lm_scale=scale, chunk_size=args.chunk_size,
                    threads=args.threads or (1 if device.type == "cpu" else torch.get_num_threads()),
                    matmul_size=args.matmul_size, device=device, precision=args.precision)


def _load(machine: dict[str, Any]) -> str:
    load = machine["load_average_at_start"]
    return "unknown" if load is None else f"{load:.2f}"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------
# Measuring


class _Probe:
    """The small matmul timed beside every measurement (median GFLOP/s); remembers the best rate seen."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.best = device, 0.0

    def __call__(self) -> float:
        rate = measure_matmul(self.device, torch.float32, PROBE_SIZE, PROBE_REPEATS).median_gflops
        self.best = max(self.best, rate)
        return rate


def _warm_up(entry: Entry, s: Settings) -> None:
    """Untimed steps: ``s.warmup``, and for a compiled model every batch once (each shape compiles)."""
    count = max(s.warmup, entry.batches) if entry.mode == "compiled" else s.warmup
    for i in range(count):
        entry.step(i)


def bench_config(config: StepConfig, s: Settings, probe: _Probe, log=_log) -> list[dict[str, Any]]:
    """Every (mixer, mode) of ``config``: warm-up, then ``s.rounds`` interleaved rounds. One row each."""
    batches = draw_batches(config, s.batches, s.device)
    entries = []
    for mixer in s.mixers:
        for mode in s.modes:
            entry = build_entry(config, mixer, mode == "compiled", batches, s.device, s.chunk_size, s.precision)
            log(f"{config.name}: warming up {entry.key}")
            _warm_up(entry, s)
            entries.append(entry)
    rounds: dict[str, list[dict[str, Any]]] = {e.key: [] for e in entries}
    counter = {e.key: 0 for e in entries}
    for r in range(s.rounds):
        for entry in entries:
            before = probe()

            def one_step(entry=entry) -> None:
                entry.step(counter[entry.key])
                counter[entry.key] += 1

            first = counter[entry.key]
            timing = time_calls(one_step, s.device, warmup=0, repeats=s.steps)
            after = probe()
            used = [(first + i) % entry.batches for i in range(s.steps)]
            rounds[entry.key].append({"times_s": timing.times, "median_s": timing.median,
                                      "flops": [entry.flops[i] for i in used],
                                      "positions": [entry.positions[i] for i in used],
                                      "probe_gflops": [before, after]})
            log(f"{config.name} round {r + 1}/{s.rounds}: {entry.key} {1e3 * timing.median:.1f} ms/step")
    rows = []
    for entry in entries:
        rows.append(_row(config, entry, rounds[entry.key], probe.best))
    del entries
    release_memory(s.device, collect=True)
    return rows



def _row(config: StepConfig, entry: Entry, rounds: list[dict[str, Any]], best_probe: float) -> dict[str, Any]:
    """The report row of one (mixer, mode): the best and the median of its rounds' median step times.

    FLOPs and positions per step are averaged over the steps timed (parity batches almost always pad to
    T = 40, so they barely vary)."""
    for r in rounds:
        r["disturbed"] = disturbance(r["times_s"], *r["probe_gflops"], best_probe)
    best = min(rounds, key=lambda r: r["median_s"])
    spec = mixer_spec(entry.mixer)
    return {"config": config.name, "mixer": entry.mixer,
            "label": spec.display_label(run_config(config, entry.mixer).mixer_arguments()),
            "chunk_size": getattr(entry.model.layers[0].mixer, "chunk_size", None),
            "range": "[-1, 1]" if spec.eigenvalue_switch else "-", "mode": entry.mode,
            "parameters": sum(p.numel() for p in entry.model.parameters()),
            "matmul_parameters": matmul_parameters(entry.model),
            "best_s": best["median_s"], "median_of_rounds_s": statistics.median(r["median_s"] for r in rounds),
            "step_flops": statistics.mean(f for r in rounds for f in r["flops"]),
            "positions": statistics.mean(n for r in rounds for n in r["positions"]),
            "disturbed": best["disturbed"], "rounds": rounds}


def _finish_rows(rows: list[dict[str, Any]], matmul_gflops: float) -> None:
    """Rates, the fraction of the matmul rate and the ratio to the Transformer of the same config and mode."""
    baseline = {(r["config"], r["mode"]): r["best_s"] for r in rows if r["mixer"] == BASELINE}
    for row in rows:
        row["ms_per_step"] = 1e3 * row["best_s"]
        row["tokens_per_s"] = row["positions"] / row["best_s"]
        row["gflops"] = row["step_flops"] / row["best_s"] / 1e9
        row["fraction_of_matmul"] = row["gflops"] / matmul_gflops
        row["x_transformer"] = row["best_s"] / baseline[(row["config"], row["mode"])]


def run(s: Settings, command: str, log=_log) -> dict[str, Any]:
    """Every config of ``s`` with ``s.threads`` intra-op threads (restored afterwards); the JSON-ready report.

    The matmul reference (float32, or bfloat16 with ``s.precision`` bfloat16) is measured before and after;
    rates are set against the higher one.
    """
    matmul_dtype = torch.bfloat16 if s.precision == "bfloat16" else torch.float32
    previous = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        machine = machine_info(s.device)
        log(f"lrnn bench train: device {s.device}, {s.threads} intra-op thread(s), torch {machine['torch']}, "
            f"{machine['cpu_model']}, 1-minute load average {_load(machine)}")
        start = measure_matmul(s.device, matmul_dtype, s.matmul_size)
        log(f"matmul {s.matmul_size}^2 {s.precision}: {start.gflops:.1f} GFLOP/s")
        probe = _Probe(s.device)
        rows = [row for config in s.configs for row in bench_config(config, s, probe, log)]
        end = measure_matmul(s.device, matmul_dtype, s.matmul_size)
    finally:
        torch.set_num_threads(previous)
    reference = max(start.gflops, end.gflops)
    _finish_rows(rows, reference)
    return {"command": command, "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "machine": machine, "threads": s.threads, "device": str(s.device),
            "configs": [dataclasses.asdict(c) | {"description": c.describe()} for c in s.configs],
            "lm_scale": s.lm_scale, "chunk_size": s.chunk_size, "modes": s.modes, "steps": s.steps,
            "rounds": s.rounds, "warmup": s.warmup, "precision": s.precision,
            "matmul": {"size": s.matmul_size, "gflops": reference, "gflops_start": start.gflops,
                       "gflops_end": end.gflops, "probe_best_gflops": probe.best},
            "rows": rows}


# ----------------------------------------------------------------------------------------------------
# Report

COLUMNS = ("mixer", "range", "chunk", "mode", "ms / step", "median of rounds", "x Transformer", "tokens / s",
           "GFLOP / step", "GFLOP/s", "% of matmul")


def _cells(row: dict[str, Any]) -> list[str]:
    return [row["label"], row["range"], str(row["chunk_size"] or "-"), row["mode"], f"{row['ms_per_step']:,.1f}",
            f"{1e3 * row['median_of_rounds_s']:,.1f}", f"{row['x_transformer']:.2f}",
            f"{row['tokens_per_s']:,.0f}", f"{row['step_flops'] / 1e9:.2f}", f"{row['gflops']:.1f}",
            f"{100 * row['fraction_of_matmul']:.1f}%" + (" (disturbed)" if row["disturbed"] else "")]


def render(report: dict[str, Any], markdown: bool = False) -> str:
    """The report as text (aligned columns) or markdown, one table per config."""
    m = report["machine"]
    lines = [f"{'### ' if markdown else ''}lrnn bench train", "",
             f"Generated by `{report['command']}` on {report['date']}, lrnn at git revision {m['lrnn_revision']}.",
             f"Machine: {m['cpu_model'] if report['device'] == 'cpu' else m['device_name']}, {m['logical_cores']} "
             f"logical cores, 1-minute load average {_load(m)} at the start; torch {m['torch']}, "
             f"{report['threads']} intra-op thread(s), device {report['device']}, {_precision(report)}.",
             f"Matmul reference: {report.get('precision', 'float32')} {report['matmul']['size']}^2, best of 5 = {report['matmul']['gflops']:.1f} "
             f"GFLOP/s (start {report['matmul']['gflops_start']:.1f}, end {report['matmul']['gflops_end']:.1f}).",
             f"Each row: best of {report['rounds']} interleaved rounds of the median of {report['steps']} timed "
             f"steps, after {report['warmup']} warm-up step(s); full step = forward, backward, clipping, AdamW.", ""]
    for config in report["configs"]:
        rows = [r for r in report["rows"] if r["config"] == config["name"]]
        note = ""
        if config["name"] == "lm" and report["lm_scale"] != 1:
            note = (f" -- scaled to {report['lm_scale']:g} of the full T {CONFIGS['lm'].max_length} "
                    f"(--scale; the CPU default)")
        lines += [f"{'#### ' if markdown else ''}{config['description']}{note}", ""]
        table = [list(COLUMNS)] + [_cells(r) for r in rows]
        if markdown:
            lines += ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(COLUMNS)]
            lines += ["| " + " | ".join(cells) + " |" for cells in table[1:]]
        else:
            widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
            lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
        lines.append("")
    disturbed = [f"{r['config']} {r['label']} {r['mode']}: {r['disturbed']}" for r in report["rows"] if r["disturbed"]]
    if disturbed:
        lines += ["Disturbed (the best round still ran under load; its numbers understate the step):", ""]
        lines += [f"- {d}" for d in disturbed] + [""]
    lines += ["Model FLOPs per step = 3 x (2 x nn.Linear weights x B x T + sum over layers of B x T x the mixer "
              "core per position), see lrnn/bench/train.py.", ""]
    return "\n".join(lines)


def _precision(report: dict[str, Any]) -> str:
    if report.get("precision", "float32") == "bfloat16":  # reports before --precision were float32
        return "bfloat16 autocast (float32 weights, gradients and AdamW)"
    return "float32"


def run_from_args(args: argparse.Namespace, command: str, parser: argparse.ArgumentParser) -> int:
    """``lrnn bench train``: resolve the settings, run, print the report, write JSON if asked."""
    return run_and_emit(args, command, parser, settings_from_args, run, render)
