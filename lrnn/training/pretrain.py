"""Language-model pretraining on packed documents, on one process or many (``torchrun``), on PyTorch's own
engines: FSDP2 (``fully_shard`` per block, then the root) or DDP, torch.distributed.checkpoint.

A run directory holds::

    config.json        the PretrainConfig
    log.jsonl          {"kind": "train", "step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s",
                       "flops_fraction", "seconds"} every ``log_every`` steps; {"kind": "val", "step", "tokens",
                       "val_loss", "val_bpb"} every ``eval_every`` steps and at the end
    checkpoints/       step-<N>/ (a DCP checkpoint: sharded model and optimiser + meta.json) and ``latest``
    tokenizer.json     the tokenizer (with tokenizer_config.json naming the end-of-document token)
    model/             the final model (``save_pretrained`` + the tokenizer files): ``lrnn generate`` loads it
    curves.png         training and validation loss, validation bits per byte
    result.json        the final numbers; its presence marks the run finished

**Batches.** Step ``s`` trains on the global batch of ``batch_size`` packed rows that
``lrnn.data.RowOrder`` assigns to it; rank ``r`` of ``W`` takes rows ``[r B/W, (r+1) B/W)`` of it (its own
slice of the data) in micro-batches of ``micro_batch`` rows (gradient accumulation). The loss is the
mean next-token cross-entropy over every token of the global batch, so one process and ``W`` processes
compute the same loss and, up to float rounding of the reduction, the same update.

**Checkpoints** are written with torch.distributed.checkpoint into ``checkpoints/.step-<N>.tmp``, which
is renamed to ``step-<N>`` and only then named in ``checkpoints/latest``; a crash mid-save leaves the
previous checkpoint current. The data order is a pure function of (seed, step) and the learning rate of
the step, so the checkpoint stores the step, the corpus + tokenizer digest, the torch RNG state and the
training seconds beside the weights and AdamW state. A resumed run on the same number of processes ends
bit-identical to a straight run; on another number it sees the same batches (DCP reshards the state),
with the float rounding of the gradient reduction changed.

``open_pretrain`` does every check of the user's input and restores a checkpoint; ``Pretraining.train``
then does the work. The engine pieces (process group, FSDP2 / DDP, DCP) are in ``lrnn.training.distributed``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from lrnn.atomic import atomic_write_text, remove_temporaries, save_figure
from lrnn.data import (DEFAULT_CORPUS, EOS_TOKEN, PackedBatch, PackedRows, RowOrder, TextTokenizer, TokenShards,
                       build_shards, check_has_text, corpus_files, default_corpus_files, iter_corpus, train_tokenizer)
from lrnn.data.shards import corpus_fingerprint
from lrnn.jsonconfig import JsonConfig
from lrnn.models import LanguageModel, ModelConfig, SpecialTokens
from lrnn.models.tokenizer import TOKENIZER_NAME
from lrnn.paths import default_cache_dir
from lrnn.training.config import PRECISIONS
from lrnn.training.distributed import (PARALLEL_MODES, Processes, build_optimizer, clip_gradients, full_state_dict,
                                      gradient_sync, groups_by_name, load_sharded, parallelize, save_sharded,
                                      start_processes, stop_processes)
from lrnn.training.optim import learning_rate, set_learning_rate
from lrnn.training.trainer import (RunLog, progress_bar, remove_run_files, truncate_log, check_run_directory,
                                   read_log)
from lrnn.validation import check_flag, check_int, check_number

CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest"
META_FILE = "meta.json"
MODEL_DIR = "model"
PLOT_FILE = "curves.png"
RESULT_FILE = "result.json"
RUN_FILES = (CONFIG_FILE, LOG_FILE, CHECKPOINT_DIR, TOKENIZER_NAME, "tokenizer_config.json", MODEL_DIR, PLOT_FILE,
             RESULT_FILE)
"""What a pretraining run writes into its directory (and removes when it starts over)."""
BETAS = (0.9, 0.95)
RESUMABLE_CHANGES = ("micro_batch", "eval_every", "eval_tokens", "log_every", "checkpoint_every", "parallel",
                      "activation_checkpointing", "compile", "device")
"""Fields that may change between an interrupted run and its resumption: they do not change which tokens
each step trains on, only how the work is split (float rounding) or what is logged."""


@dataclass
class PretrainConfig(JsonConfig):
    """A pretraining run. The defaults train a 4-layer Gated DeltaNet with [-1, 1] eigenvalues (d_model 128,
    1.0M parameters with a 2048-token vocabulary) on the default corpus (the Python standard library) for
    150 steps of 8 x 256 tokens (307k tokens): a few minutes on 2 CPU cores, a smoke test of the pipeline
    rather than a useful model (the comparison in docs/pretraining.md trains ~100x longer).

    Attributes:
        data: corpus files / directories ([]: the default corpus, ``lrnn.data.corpus``).
        tokenizer: a tokenizer.json (or its directory); None trains a byte-level BPE of ``vocab_size``
            tokens on the corpus (cached, so a second run reuses it).
        vocab_size: the model's vocabulary; a given tokenizer must not have more tokens.
        val_fraction: every round(1 / val_fraction)-th document is held out for validation.
        mixer ... mixer_kwargs: the model, as in ``ModelConfig``.
        seq_len: tokens per packed row. batch_size: rows per optimiser step (all processes together).
        micro_batch: rows per forward pass of one process (0: batch_size / processes, no accumulation).
        steps, lr, min_lr, warmup_fraction, weight_decay, grad_clip: AdamW with warm-up + cosine, as
            ``lrnn train`` (betas 0.9, 0.95).
        seed: model init and data order.
        eval_every: validation every N steps (0: at the end only), over the first ``eval_tokens`` tokens
            of the validation split. log_every: steps per log line. checkpoint_every: steps per checkpoint
            (0: at the end only).
        parallel: with several processes, ``fsdp`` (FSDP2 fully_shard) or ``ddp``.
        precision: ``float32`` or ``bfloat16`` (FSDP: MixedPrecisionPolicy with float32 gradient reduction;
            otherwise torch.autocast).
        activation_checkpointing: recompute each block's activations in the backward pass.
        compile: torch.compile each block.
        device: ``auto`` (cuda:LOCAL_RANK if CUDA is available, else cpu), ``cpu`` or ``cuda``.
    """

    config_kind = "pretrain config"

    data: list[str] = field(default_factory=list)
    tokenizer: str | None = None
    vocab_size: int = 2048
    val_fraction: float = 0.02
    mixer: str | list[str] = "gated_deltanet"
    negative_eigenvalues: bool = True
    d_model: int = 128
    n_layers: int = 4
    d_intermediate: int = 256
    attention_every: int = 0
    mixer_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    seq_len: int = 256
    batch_size: int = 8
    micro_batch: int = 0
    steps: int = 150
    lr: float = 1e-2
    min_lr: float = 1e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 50
    eval_tokens: int = 16384
    log_every: int = 5
    checkpoint_every: int = 50
    parallel: str = "fsdp"
    precision: str = "float32"
    activation_checkpointing: bool = False
    compile: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.data, list) or not all(isinstance(p, str) for p in self.data):
            raise TypeError(f"data must be a list of paths (strings), got {self.data!r}")
        if self.tokenizer is not None and not isinstance(self.tokenizer, str):
            raise TypeError(f"tokenizer must be a path (string) or None, got {self.tokenizer!r}")
        for name in ("vocab_size", "seq_len", "batch_size", "steps", "log_every", "eval_tokens"):
            check_int(name, getattr(self, name), 1)
        for name in ("micro_batch", "eval_every", "checkpoint_every"):
            check_int(name, getattr(self, name), 0)
        check_number("val_fraction", self.val_fraction, 0.0, strict=True)
        if self.val_fraction > 0.5:
            raise ValueError(f"val_fraction must lie in (0, 0.5], got {self.val_fraction}")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "warmup_fraction"):
            check_number(name, getattr(self, name), 0.0)
        if self.warmup_fraction >= 1:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {self.warmup_fraction}")
        for name in ("activation_checkpointing", "compile"):
            check_flag(name, getattr(self, name))
        for name, choices in (("parallel", PARALLEL_MODES), ("precision", PRECISIONS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        if not isinstance(self.device, str):
            raise TypeError(f"device must be 'auto' or a torch device name such as 'cpu', got {self.device!r}")
        self.model_config()  # the model fields are checked by ModelConfig

    def model_config(self) -> ModelConfig:
        return ModelConfig(vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
                           mixer=self.mixer, attention_every=self.attention_every,
                           negative_eigenvalues=self.negative_eigenvalues, mixer_kwargs=self.mixer_kwargs,
                           d_intermediate=self.d_intermediate)

    def micro_batches(self, world: int) -> tuple[int, int]:
        """``(rows per micro-batch, micro-batches per step)`` of each of ``world`` processes."""
        if self.batch_size % world:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of the number of processes {world}")
        local = self.batch_size // world
        micro = self.micro_batch or local
        if local % micro:
            raise ValueError(f"micro_batch {micro} must divide the rows per process, batch_size / processes = "
                             f"{local}")
        return micro, local // micro


# ---- the model on its engine ---------------------------------------------------------------------
def model_flops_per_token(model: LanguageModel) -> int:
    """``6 N``: forward + backward FLOPs per token of the matmuls, N = the non-embedding parameters plus the
    LM head (Kaplan et al.'s estimate; the recurrences' and attention's own FLOPs are not counted)."""
    embedding = model.embedding.weight
    others = sum(p.numel() for p in model.parameters() if p is not embedding)
    return 6 * (others + model.head.weight.numel() * (model.head.weight is embedding))


# ---- opening a run -------------------------------------------------------------------------------
@dataclass
class Pretraining:
    """A pretraining run ready to train (made by ``open_pretrain``)."""

    config: PretrainConfig
    run_dir: Path
    processes: Processes
    tokenizer: TextTokenizer
    shards: TokenShards
    corpus: str
    model: torch.nn.Module
    plain_model: LanguageModel
    optimizer: torch.optim.AdamW
    start_step: int
    seconds_before: float
    resumed_from_world: int | None

    def train(self, *, stop_after: int | None = None, quiet: bool = False) -> dict:
        """Train from ``start_step`` to ``config.steps`` (or to ``stop_after``, with a checkpoint and no
        export: an interruption), validate, export the model; returns the result (also result.json)."""
        return _train(self, stop_after, quiet)


def open_pretrain(config: PretrainConfig, out_dir: str | Path, processes: Processes, *, resume: bool = True,
                  force: bool = False, cache_dir: str | Path | None = None,
                  print_fn: Callable[[str], None] = print) -> Pretraining:
    """Check the user's input and make the run ready; every user error is raised here, before anything
    is written into ``out_dir``: a run directory that holds another run (unless ``force``), missing
    corpus paths, an empty corpus, a tokenizer that does not fit ``vocab_size`` or lacks the
    end-of-document token, a batch that does not split over the processes, a ``seq_len`` longer than the
    validation split, a checkpoint of another config or corpus.

    The tokenizer (when trained) and the token shards are cached under ``cache_dir`` (default
    ``$LRNN_CACHE_DIR`` or ``~/.cache/lrnn``); the main process builds them while the others wait.
    """
    if not isinstance(config, PretrainConfig):
        raise TypeError(f"config must be a PretrainConfig, got {type(config).__name__}")
    run_dir = Path(out_dir)
    config.micro_batches(processes.world)  # the batch must split over the processes
    holds_this_run = _holds_this_run(run_dir, config, force)
    if holds_this_run and resume and (run_dir / RESULT_FILE).is_file():
        raise ValueError(f"{run_dir} holds this run, finished (result.json); its model is {run_dir / MODEL_DIR}. "
                         "Pass --no-resume to train it again or another --out")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    files = corpus_files(config.data) if config.data else default_corpus_files()
    corpus = ", ".join(config.data) if config.data else f"{DEFAULT_CORPUS} ({len(files)} files)"
    check_has_text(files)
    tokenizer = corpus_tokenizer(config, files, cache, processes, print_fn)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"the tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens, more than the model's "
                         f"vocab_size {config.vocab_size}: give --vocab-size >= {tokenizer.vocab_size}")
    shards = _shared(processes, lambda: build_shards(files, tokenizer, cache, config.val_fraction,
                                                     on_start=lambda: print_fn(f"tokenising {corpus} ...")))
    PackedRows(shards.streams["train"], shards.starts["train"], config.seq_len)
    _eval_rows(config, shards, processes.world)

    torch.manual_seed(config.seed)
    plain = LanguageModel(config.model_config()).to(processes.device)
    plain.special_tokens = SpecialTokens(eos_token_id=tokenizer.eos_id)
    groups = groups_by_name(plain, config.weight_decay, config.lr)
    model = parallelize(plain, plain.layers, processes, mode=config.parallel, bfloat16=config.precision == "bfloat16",
                        activation_checkpointing=config.activation_checkpointing, compile=config.compile)
    optimizer = build_optimizer(model, groups, config.lr, BETAS)
    start, seconds, from_world = 0, 0.0, None
    checkpoint = _latest_checkpoint(run_dir) if holds_this_run and resume else None
    if checkpoint is not None:
        start, seconds, from_world = _load_checkpoint(checkpoint, config, shards, model, optimizer, processes)
    processes.barrier()  # every process has read the run directory before the main one changes it
    if processes.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_temporaries(run_dir)
        if checkpoint is None:
            remove_run_files(run_dir, RUN_FILES)
        else:
            truncate_log(run_dir / LOG_FILE, start, final=start == config.steps)
        config.save(run_dir / CONFIG_FILE)
        tokenizer.save(run_dir)
    processes.barrier()
    return Pretraining(config, run_dir, processes, tokenizer, shards, corpus, model, plain, optimizer, start,
                       seconds, from_world)



def _shared(processes: Processes, make: Callable[[], Any]) -> Any:
    """``make()`` on the main process first (it writes a cache), then on the others (they read it). An
    error on the main process is raised there; the others then fail at their own call or the barrier."""
    if processes.is_main:
        value = make()
        processes.barrier()
        return value
    processes.barrier()
    return make()


def corpus_tokenizer(config: PretrainConfig, files: list[Path], cache: Path, processes: Processes,
               print_fn: Callable[[str], None]) -> TextTokenizer:
    """The given tokenizer, or a byte-level BPE of ``vocab_size`` trained on the corpus (cached by the
    corpus fingerprint and the vocabulary size)."""
    if config.tokenizer is not None:
        return TextTokenizer(config.tokenizer)
    key = json.dumps({"files": corpus_fingerprint(files), "vocab_size": config.vocab_size, "eos": EOS_TOKEN})
    directory = cache / "tokenizers" / hashlib.sha256(key.encode()).hexdigest()[:24]

    def make() -> TextTokenizer:
        if not (directory / TOKENIZER_NAME).is_file():
            print_fn(f"training a {config.vocab_size}-token byte-level BPE on the corpus ...")
            train_tokenizer(iter_corpus(files), config.vocab_size, directory)
        return TextTokenizer(directory)
    return _shared(processes, make)


def _eval_rows(config: PretrainConfig, shards: TokenShards, world: int) -> int:
    """Validation rows: the first ``eval_tokens // seq_len`` of the split (at least one per process), a
    multiple of the number of processes (each evaluates the same number)."""
    try:
        rows = PackedRows(shards.streams["val"], shards.starts["val"], config.seq_len)
    except ValueError as err:
        raise ValueError(f"the validation split: {err}; give a larger val_fraction or corpus") from None
    wanted = max(config.eval_tokens // config.seq_len, world)
    count = min(wanted, rows.num_rows) // world * world
    if count == 0:
        raise ValueError(f"the validation split ({rows.num_rows} rows of seq_len {config.seq_len}) has fewer rows "
                         f"than the {world} processes; give a larger val_fraction or corpus, or a shorter seq_len")
    return count


# ---- run directories -----------------------------------------------------------------------------
def _holds_this_run(run_dir: Path, config: PretrainConfig, force: bool) -> bool:
    """``check_run_directory`` for a pretraining run: the same run is one whose config.json equals
    ``config`` outside ``RESUMABLE_CHANGES``."""
    def difference(contents: list[str]) -> str | None:
        path = run_dir / CONFIG_FILE
        if not path.is_file():
            return f"no config.json, but {', '.join(contents[:5])}" + (", ..." if len(contents) > 5 else "")
        try:
            changed = _changed_fields(json.loads(path.read_text()), config)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            changed = ["config.json is not a pretrain config"]
        return f"its config.json differs in {changed}" if changed else None

    return check_run_directory(run_dir, force, difference, RUN_FILES)


def _changed_fields(saved: dict, config: PretrainConfig) -> list[str]:
    current, defaults = config.to_dict(), PretrainConfig().to_dict()
    return sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != current[k])


# ---- checkpoints ---------------------------------------------------------------------------------
def _latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / CHECKPOINT_DIR / LATEST_FILE
    if not pointer.is_file():
        return None
    path = run_dir / CHECKPOINT_DIR / pointer.read_text().strip()
    if not (path / META_FILE).is_file():
        raise ValueError(f"{pointer} names {path}, which is not a complete checkpoint")
    return path


def save_checkpoint(run: Pretraining, step: int, seconds: float) -> Path:
    """A DCP checkpoint of the model and optimiser at ``step``, written into a temporary directory that the
    main process renames to ``step-<N>`` and then names in ``latest``; older checkpoints are removed after."""
    root = run.run_dir / CHECKPOINT_DIR
    name = f"step-{step:08d}"
    tmp, final = root / f".{name}.tmp", root / name
    if run.processes.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save that crashed
        tmp.mkdir(parents=True)
    run.processes.barrier()
    save_sharded(run.model, run.optimizer, tmp, run.processes)
    if run.processes.is_main:
        meta = {"step": step, "train_seconds": seconds, "world_size": run.processes.world,
                "config": run.config.to_dict(), "data_digest": run.shards.digest,
                "torch_rng": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
        atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        atomic_write_text(root / LATEST_FILE, name + "\n")
        for old in root.iterdir():
            if old.is_dir() and old.name != name:
                shutil.rmtree(old)
    run.processes.barrier()
    return final


def _load_checkpoint(path: Path, config: PretrainConfig, shards: TokenShards, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, processes: Processes) -> tuple[int, float, int]:
    """Restore a checkpoint (any world size); returns its step, training seconds and world size."""
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read checkpoint {path / META_FILE}: {err}") from None
    changed = _changed_fields(meta.get("config", {}), config)
    if changed:
        raise ValueError(f"checkpoint {path} was written by another config (fields {changed} differ); pass "
                         "another --out or --no-resume")
    if meta.get("data_digest") != shards.digest:
        raise ValueError(f"checkpoint {path} was trained on another corpus or tokenizer (the corpus files or the "
                         "tokenizer changed since); pass another --out or --no-resume")
    load_sharded(model, optimizer, path, processes)
    rng = np.frombuffer(base64.b64decode(meta["torch_rng"]), dtype=np.uint8).copy()
    torch.set_rng_state(torch.from_numpy(rng))
    return int(meta["step"]), float(meta["train_seconds"]), int(meta["world_size"])


# ---- training --------------------------------------------------------------------------------------
def _forward_loss(model: torch.nn.Module, batch: PackedBatch, autocast) -> torch.Tensor:
    """Summed next-token cross-entropy (nats) of ``batch``; its document starts reset every mixer."""
    with autocast():
        logits = model(batch.inputs, seq_starts=batch.seq_starts)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), reduction="sum")


def _autocast(config: PretrainConfig, processes: Processes):
    """bfloat16 autocast where FSDP's MixedPrecisionPolicy does not do it (one process, DDP)."""
    if config.precision == "bfloat16" and not (processes.distributed and config.parallel == "fsdp"):
        return functools.partial(torch.autocast, processes.device.type, dtype=torch.bfloat16)
    return nullcontext


def train_step(run: Pretraining, rows: PackedRows, order: RowOrder, step: int) -> tuple[float, float]:
    """One optimiser step on the global batch of ``step``; returns (mean loss over the batch, grad norm)."""
    config, processes, model = run.config, run.processes, run.model
    micro, count = config.micro_batches(processes.world)
    local = config.batch_size // processes.world
    mine = order.rows(step, config.batch_size)[processes.rank * local:(processes.rank + 1) * local]
    set_learning_rate(run.optimizer, learning_rate(step, config.steps, config.lr, config.min_lr,
                                                   config.warmup_fraction))
    run.optimizer.zero_grad(set_to_none=True)
    autocast, tokens_local = _autocast(config, processes), local * config.seq_len
    loss_sum = 0.0
    for m in range(count):
        batch = rows.batch(mine[m * micro:(m + 1) * micro]).to(processes.device)
        with gradient_sync(model, m == count - 1):
            loss = _forward_loss(model, batch, autocast)
            (loss / tokens_local).backward()  # the ranks' mean of per-rank means = the global mean
        loss_sum += loss.item()
    grad_norm = clip_gradients(model, config.grad_clip)
    run.optimizer.step()
    total = processes.sum([loss_sum])[0]
    return total / (config.batch_size * config.seq_len), grad_norm


@torch.no_grad()
def validate(run: Pretraining) -> dict[str, float]:
    """Validation loss (nats per token) and bits per byte over the first validation rows (split over the
    processes): ``bpb = sum of nats / ln 2 / UTF-8 bytes of the target tokens' text`` (eos tokens count as
    tokens with no bytes)."""
    config, processes = run.config, run.processes
    rows = PackedRows(run.shards.streams["val"], run.shards.starts["val"], config.seq_len)
    count = _eval_rows(config, run.shards, processes.world)
    micro, _ = config.micro_batches(processes.world)
    mine = list(range(processes.rank, count, processes.world))
    run.model.eval()
    nats = 0.0
    try:
        for i in range(0, len(mine), micro):
            nats += _forward_loss(run.model, rows.batch(mine[i:i + micro]).to(processes.device),
                                  _autocast(config, processes)).item()
    finally:
        run.model.train()
    nats = processes.sum([nats])[0]
    text_bytes = len(run.tokenizer.decode(rows.stream[1:count * config.seq_len + 1]).encode("utf-8"))
    return {"val_loss": nats / (count * config.seq_len), "val_bpb": nats / math.log(2) / max(text_bytes, 1)}


def _train(run: Pretraining, stop_after: int | None, quiet: bool) -> dict:
    config, processes = run.config, run.processes
    main = processes.is_main
    log = RunLog(run.run_dir / LOG_FILE if main else None)
    rows = PackedRows(run.shards.streams["train"], run.shards.starts["train"], config.seq_len)
    order = RowOrder(rows.num_rows, config.seed)
    end = config.steps if stop_after is None else min(stop_after, config.steps)
    flops_per_token = model_flops_per_token(run.plain_model)
    peak = _matmul_rate(config, processes) * processes.world
    tokens_per_step = config.batch_size * config.seq_len
    bar = progress_bar(config.steps, run.start_step, "pretrain", quiet or not main, unit="step")
    started = time.perf_counter()
    window_start, window_loss, window_steps = time.perf_counter(), 0.0, 0
    run.model.train()
    try:
        for step in range(run.start_step, end):
            loss, grad_norm = train_step(run, rows, order, step)
            done = step + 1
            window_loss, window_steps = window_loss + loss, window_steps + 1
            if done % config.log_every == 0 or done == end:
                elapsed = time.perf_counter() - window_start
                rate = window_steps * tokens_per_step / elapsed
                record = {"kind": "train", "step": done, "tokens": done * tokens_per_step,
                          "loss": window_loss / window_steps,
                          "lr": learning_rate(step, config.steps, config.lr, config.min_lr, config.warmup_fraction),
                          "grad_norm": grad_norm, "tokens_per_s": rate,
                          "flops_fraction": flops_per_token * rate / peak,
                          "seconds": run.seconds_before + time.perf_counter() - started}
                log.write(record)
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{rate:.0f}", refresh=False)
                window_loss, window_steps = 0.0, 0
            if config.eval_every and done % config.eval_every == 0 and done < config.steps:
                log.write({"kind": "val", "step": done, "tokens": done * tokens_per_step, **validate(run)})
            if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == end:
                save_checkpoint(run, done, run.seconds_before + time.perf_counter() - started)
            if window_steps == 0:  # a log line was written: the next window times training steps only
                window_start = time.perf_counter()
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    seconds = run.seconds_before + time.perf_counter() - started
    run.start_step, run.seconds_before = end, seconds
    if end < config.steps:
        return {"finished": False, "step": end}
    final = validate(run)
    result = {"finished": True, "corpus": run.corpus, "steps": config.steps, "tokens": config.steps * tokens_per_step,
              "parameters": sum(p.numel() for p in run.plain_model.parameters()),
              "train_seconds": seconds, "processes": processes.world, **final,
              "config": config.to_dict()}
    export_model(run)
    if main:
        log.write({"kind": "val", "step": config.steps, "tokens": config.steps * tokens_per_step, **final})
        plot_curves(run.run_dir / LOG_FILE, run.run_dir / PLOT_FILE)
        atomic_write_text(run.run_dir / RESULT_FILE, json.dumps(result, indent=2) + "\n")
    processes.barrier()
    return result


def _matmul_rate(config: PretrainConfig, processes: Processes) -> float:
    """FLOP/s of a square matmul on this process's device in the training dtype (1024 on the CPU, where a
    4096 one takes seconds; 4096 on a GPU)."""
    from lrnn.timing import measure_matmul

    dtype = torch.bfloat16 if config.precision == "bfloat16" else torch.float32
    size = 4096 if processes.device.type == "cuda" else 1024
    return measure_matmul(processes.device, dtype, size=size, repeats=3).gflops * 1e9


def export_model(run: Pretraining) -> Path:
    """Gather the full weights and write ``model/`` (``save_pretrained`` + the tokenizer files) on the main
    process: ``lrnn generate --model RUN/model`` loads it."""
    state = full_state_dict(run.model)
    directory = run.run_dir / MODEL_DIR
    if run.processes.is_main:
        model = LanguageModel(run.config.model_config())
        model.load_state_dict(state)
        model.special_tokens = run.plain_model.special_tokens
        model.save_pretrained(directory)
        run.tokenizer.save(directory)
    return directory


def plot_curves(log_path: Path, png_path: Path) -> Path:
    """``curves.png``: training and validation loss per step (left), validation bits per byte (right)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    left.plot([r["step"] for r in val], [r["val_loss"] for r in val], marker="o", label="validation")
    left.set(xlabel="step", ylabel="loss (nats / token)", title="loss")
    left.legend()
    right.plot([r["step"] for r in val], [r["val_bpb"] for r in val], marker="o", color="C1")
    right.set(xlabel="step", ylabel="bits per byte", title="validation bits per byte")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return save_figure(fig, png_path)


def pretrain(config: PretrainConfig, out_dir: str | Path, *, resume: bool = True, force: bool = False,
             stop_after: int | None = None, cache_dir: str | Path | None = None, quiet: bool = False,
             print_fn: Callable[[str], None] = print) -> dict:
    """Open (``open_pretrain``) and train (``Pretraining.train``) one run, in this process and those
    ``torchrun`` started beside it; returns the result."""
    processes = start_processes(config.device)
    try:
        run = open_pretrain(config, out_dir, processes, resume=resume, force=force, cache_dir=cache_dir,
                            print_fn=print_fn)
        return run.train(stop_after=stop_after, quiet=quiet)
    finally:
        stop_processes(processes)


__all__ = ["PretrainConfig", "Pretraining", "Processes", "open_pretrain", "pretrain", "start_processes",
           "stop_processes", "save_checkpoint", "export_model", "validate", "train_step", "plot_curves",
           "model_flops_per_token", "PARALLEL_MODES", "PRECISIONS", "RUN_FILES"]
