"""The training loop: AdamW, warm-up + cosine, clipping, periodic evaluation, JSONL logs, checkpoints.

A run directory holds::

    config.json        the RunConfig
    log.jsonl          one JSON object per line: {"kind": "train", "step", "loss", "accuracy", "lr",
                       "grad_norm", "seconds"} every ``log_every`` steps, {"kind": "eval", "step", ...} per eval
    checkpoint.pt      model, optimiser, step and RNG states (torch.save, loaded with weights_only=True)
    model/             the final model (``LanguageModel.save_pretrained``: config.json + model.safetensors)
    result.json        the final evaluation; its presence marks the run finished

Every file is written atomically. Resuming loads ``checkpoint.pt`` (model, optimiser, step, the data
generator's and the global RNG states, the training seconds so far), drops log lines past its step and
deletes the temporary files an interrupted write left, so an interrupted run that is resumed ends with
bit-identical weights to one that ran straight through (on the same device and thread count). The
learning rate is a pure function of the step, so there is no scheduler state.

``open_run`` does every check of the user's input (the config, the device, the run directory) and
restores a checkpoint; ``Run.train`` then does the work. ``train`` is the two in one call.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lrnn.models import LanguageModel
from lrnn.atomic import atomic_write, atomic_write_text, is_temporary, remove_temporaries
from lrnn.device import resolve_device
from lrnn.paths import check_writable_directory
from lrnn.tasks import IGNORE_INDEX, Task, make_task
from lrnn.training.config import PRECISIONS, RunConfig, config_differences
from lrnn.training.evaluation import Counts, count_correct, evaluate
from lrnn.training.optim import learning_rate, make_optimizer, set_learning_rate

CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_DIR = "model"
RESULT_FILE = "result.json"
RUN_FILES = (CONFIG_FILE, LOG_FILE, CHECKPOINT_FILE, MODEL_DIR, RESULT_FILE)
"""What ``train`` writes into a run directory (and removes when a run starts over)."""

@dataclass
class RunOutcome:
    """What ``train`` returns: the trained model and the JSON-ready result (also in result.json)."""

    model: LanguageModel
    result: dict


@dataclass
class SavedRun:
    """What ``load_run`` returns: a run directory's config and model, and which model that is."""

    config: RunConfig
    model: LanguageModel
    step: int
    """Optimiser steps the model has taken (``config.steps`` for a finished run)."""
    finished: bool
    """True: the final model (``model/``); False: the last checkpoint of an unfinished run."""


def build_model(config: RunConfig, task: Task) -> LanguageModel:
    """The run's model, initialised from ``config.seed`` (the global RNG is seeded here)."""
    torch.manual_seed(config.seed)
    return LanguageModel(config.model_config(task.vocab_size, task.num_classes))


def make_eval_task(config: RunConfig, task: Task | None = None) -> Task:
    """The task a run is evaluated on: ``config.eval_task`` if set, else ``task.test_split`` (the training
    task's held-out split, e.g. sequential_digits -> sequential_digits_test) if it has one, else the
    training task itself (generated tasks: the evaluation draws fresh sequences from a fixed seed). A
    ValueError names an ``eval_min`` below the shortest length the evaluation task can generate.

    ``task`` is the training task (built from ``config.task`` when None). The evaluation task must have
    the same vocabulary size, number of classes and answer positions as the training task (the model's
    embedding and head are sized by it); a ValueError naming ``eval_task`` says otherwise.
    """
    task = make_task(config.task) if task is None else task
    name = config.eval_task if config.eval_task is not None else task.test_split
    eval_task = task
    if name is not None and name != task.name:
        try:
            eval_task = make_task(name)
        except ValueError as err:
            raise ValueError(f"eval_task: {err}") from None
        for attr in ("vocab_size", "num_classes", "answer_positions"):
            if getattr(eval_task, attr) != getattr(task, attr):
                raise ValueError(f"eval_task {name!r} does not fit task {task.name!r}: its {attr} is "
                                 f"{getattr(eval_task, attr)!r}, the training task's is {getattr(task, attr)!r}")
    if config.eval_min < eval_task.min_supported_length:
        raise ValueError(f"task {eval_task.name!r} needs lengths >= {eval_task.min_supported_length}, got "
                         f"eval_min = {config.eval_min}")
    return eval_task


@dataclass
class Run:
    """A run ready to train, made by ``open_run``: the checked config and tasks, the model, optimiser and
    data generator (restored from the checkpoint when resuming), and where the run stands."""

    config: RunConfig
    run_dir: Path | None
    device: torch.device
    task: Task
    eval_task: Task
    model: LanguageModel
    optimizer: torch.optim.Optimizer | None
    generator: torch.Generator | None
    start_step: int
    """Steps done before this call: the checkpoint's step when resuming, ``config.steps`` when finished."""
    seconds_before: float
    """Training seconds of the earlier segments of a resumed run."""
    result: dict | None
    """The stored result of a run that was already finished (then there is nothing to train)."""

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def resumed(self) -> bool:
        return not self.finished and self.start_step > 0

    def train(self, *, quiet: bool = False, stop_at_step: int | None = None,
              description: str | None = None, compile_backend: str | Callable | None = None) -> RunOutcome:
        """Train from ``start_step`` to ``config.steps`` (or ``stop_at_step``) and evaluate; a finished run
        returns its stored result. See ``train`` for the arguments. A call that stops early moves
        ``start_step`` on, so the next call continues the run."""
        if self.result is not None:
            return RunOutcome(self.model, self.result)
        config, model, optimizer, device = self.config, self.model, self.optimizer, self.device
        log = RunLog(None if self.run_dir is None else self.run_dir / LOG_FILE)
        end = config.steps if stop_at_step is None else min(stop_at_step, config.steps)
        started = time.perf_counter()

        def seconds() -> float:  # training time over every segment of the run
            return self.seconds_before + time.perf_counter() - started

        label = description or f"{config.task} {config.model_label} {config.eigenvalue_range}"
        bar = progress_bar(config.steps, self.start_step, label, quiet)
        window_loss, window_counts, window_steps = 0.0, Counts(), 0
        model.train()
        forward = model if compile_backend is None else compile_model(model, compile_backend)
        try:
            for step in range(self.start_step, end):
                lr = learning_rate(step, config.steps, config.lr, config.min_lr, config.warmup_fraction)
                set_learning_rate(optimizer, lr)
                batch = self.task.sample(config.batch_size, config.train_min, config.train_max,
                                         self.generator).to(device)
                inputs, targets = batch.inputs, batch.targets
                if compile_backend is not None:  # a few padded lengths: a few compiled graphs
                    inputs, targets = pad_length(inputs, targets, COMPILE_LENGTH_MULTIPLE, self.task.pad_id)
                loss, logits, grad_norm = training_step(forward, optimizer, inputs, targets, config.grad_clip)

                done = step + 1
                window_loss += loss.item()
                window_counts.add(count_correct(logits.detach(), targets))
                window_steps += 1
                if done % config.log_every == 0 or done == end:
                    acc = window_counts.tokens_correct / max(window_counts.tokens_total, 1)
                    log.write({"kind": "train", "step": done, "loss": window_loss / window_steps, "accuracy": acc,
                               "lr": lr, "grad_norm": grad_norm, "seconds": seconds()})
                    if bar is not None:
                        bar.set_postfix(loss=f"{window_loss / window_steps:.4f}", acc=f"{acc:.3f}", refresh=False)
                    window_loss, window_counts, window_steps = 0.0, Counts(), 0
                if config.eval_every and done % config.eval_every == 0 and done < config.steps:
                    log.write({"kind": "eval", "step": done,
                               **evaluate_run(model, config, device, task=self.eval_task)["overall"]})
                if self.run_dir is not None and ((config.checkpoint_every and done % config.checkpoint_every == 0)
                                                 or done == end):
                    _save_checkpoint(self.run_dir, config, model, optimizer, self.generator, done, seconds())
                if bar is not None:
                    bar.update(1)
        finally:
            # No checkpoint on an interrupt: it may land inside optimizer.step(); resume from the last periodic one.
            if bar is not None:
                bar.close()
        train_seconds = seconds()
        self.start_step, self.seconds_before = end, train_seconds  # a later call continues from here
        if end < config.steps:
            return RunOutcome(model, {"finished": False, "step": end})

        evaluation = evaluate_run(model, config, device, task=self.eval_task, quiet=quiet,
                                  description=f"evaluating {label}")
        log.write({"kind": "eval", "step": config.steps, **evaluation["overall"]})
        result = {"finished": True, "config": config.to_dict(), "task": config.task, "eval_task": self.eval_task.name,
                  "model": config.model_label,
                  "mixer": config.mixer, "range": config.eigenvalue_range, "seed": config.seed, "lr": config.lr,
                  "parameters": sum(p.numel() for p in model.parameters()), "train_seconds": train_seconds,
                  "score": evaluation["overall"]["score"], "eval": evaluation}
        if self.run_dir is not None:
            model.save_pretrained(self.run_dir / MODEL_DIR)
            atomic_write_text(self.run_dir / RESULT_FILE, json.dumps(result, indent=2) + "\n")
        self.result = result
        return RunOutcome(model, result)


def open_run(config: RunConfig, out_dir: str | Path | None = None, *, resume: bool = True,
             force: bool = False) -> Run:
    """Check ``config`` and ``out_dir`` and make the run ready to train; every user error is raised here.

    ValueErrors: an unknown task or device, lengths the task cannot generate, an ``out_dir`` that is a
    file or holds another run's files, an unreadable checkpoint; constructing the model raises what the
    mixer rejects. ``out_dir`` (None: keep nothing on disk) is created if missing. If it holds this run
    (its config.json equals ``config`` in every field that changes the weights), a finished run (with
    result.json) is loaded, not retrained, and an interrupted one resumes from its checkpoint; with
    ``resume=False`` the run starts over, its files removed. If it holds anything else, a ValueError
    refuses it unless ``force``, which removes the files named in ``RUN_FILES`` and starts over.
    Leftover temporary files of interrupted writes are deleted and config.json is (re)written.
    """
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig, got {type(config).__name__}")
    device = resolve_device(config.device)
    task = make_task(config.task)
    eval_task = make_eval_task(config, task)
    if config.train_min < task.min_supported_length:
        raise ValueError(f"task {task.name!r} needs lengths >= {task.min_supported_length}, got train_min = "
                         f"{config.train_min}")
    run_dir = None if out_dir is None else Path(out_dir)
    holds_this_run = run_dir is not None and _holds_this_run(run_dir, config, force)
    if holds_this_run and resume and (run_dir / RESULT_FILE).is_file():
        return _open_finished(run_dir, config, device, task, eval_task)

    model = build_model(config, task).to(device)
    optimizer = make_optimizer(model, config.lr, config.weight_decay, config.betas, config.ssm_lr)
    generator = torch.Generator().manual_seed(config.seed)
    start, seconds_before = 0, 0.0
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)  # only now: a config the model rejects leaves no directory
        for directory in (run_dir, run_dir / MODEL_DIR):
            remove_temporaries(directory)
        if holds_this_run and resume and (run_dir / CHECKPOINT_FILE).is_file():
            start, seconds_before = _load_checkpoint(run_dir, config, model, optimizer, generator)
            truncate_log(run_dir / LOG_FILE, start, final=start == config.steps)
        else:
            remove_run_files(run_dir)
        config.save(run_dir / CONFIG_FILE)
    return Run(config, run_dir, device, task, eval_task, model, optimizer, generator, start, seconds_before, None)


def train(config: RunConfig, out_dir: str | Path | None = None, *, resume: bool = True, force: bool = False,
          quiet: bool = False, stop_at_step: int | None = None, description: str | None = None,
          compile_backend: str | Callable | None = None) -> RunOutcome:
    """Train one run and evaluate it; with ``out_dir`` write logs, checkpoints and the result there.

    Args:
        config: the run. out_dir: run directory (None: keep nothing on disk).
        resume: continue from ``out_dir/checkpoint.pt`` if there is one; a finished run (result.json
            present) is loaded, not retrained. False starts over, removing the run's files.
        force: replace the run files of a directory that holds another run (else a ValueError).
        quiet: no progress bars (they are also off when stderr is not a terminal).
        stop_at_step: stop after this many steps with a checkpoint and no final evaluation (simulates
            an interruption; the result then has ``"finished": False``).
        description: progress-bar label (default: the model and range).
        compile_backend: None trains the eager model; a ``torch.compile`` backend ("inductor", the
            default of ``lrnn train --compile``) trains ``compile_model(model)`` on batches padded to a
            multiple of ``COMPILE_LENGTH_MULTIPLE`` positions (the loss is unchanged: the models are
            causal and padded targets are ignored). Evaluation stays eager.

    ``open_run(config, out_dir, resume=..., force=...).train(...)`` in one call: see ``open_run`` for the
    checks and what happens to an existing directory.
    """
    run = open_run(config, out_dir, resume=resume, force=force)
    return run.train(quiet=quiet, stop_at_step=stop_at_step, description=description,
                     compile_backend=compile_backend)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> SavedRun:
    """The config and model of a run directory: the final model if finished, else the last checkpoint's."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    config = RunConfig.load(run_dir / CONFIG_FILE)
    if (run_dir / MODEL_DIR).is_dir():
        return SavedRun(config, LanguageModel.from_pretrained(run_dir / MODEL_DIR, map_location=device),
                        config.steps, finished=True)
    if not (run_dir / CHECKPOINT_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} has neither a {MODEL_DIR}/ directory nor a {CHECKPOINT_FILE}")
    model = build_model(config, make_task(config.task))
    state = _read_checkpoint(run_dir / CHECKPOINT_FILE)
    model.load_state_dict(state["model"])
    return SavedRun(config, model.to(device), int(state["step"]), finished=False)


def evaluate_run(model: LanguageModel, config: RunConfig, device: str | torch.device = "cpu", *,
                 task: Task | None = None, quiet: bool = True, description: str | None = None) -> dict:
    """``evaluate`` on the test set ``config`` describes (its eval task unless ``task`` is given, its
    lengths, bins, samples, seed and batch size), with a progress bar unless ``quiet``."""
    task = make_eval_task(config) if task is None else task
    bar = progress_bar(None, 0, description or f"evaluating on {task.name}", quiet, unit="seq")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        return evaluate(model, task, config.eval_min, config.eval_max, config.eval_bins, config.eval_samples,
                        seed=config.eval_seed, batch_size=config.eval_batch_size, device=device,
                        progress=None if bar is None else progress)
    finally:
        if bar is not None:
            bar.close()


COMPILE_LENGTH_MULTIPLE = 8
"""``compile_model``'s callers pad batch lengths up to a multiple of this (``pad_length``): a mixer whose
compiled graph specialises on the length (the LSTM's Python loop over time) then compiles at most 5
graphs for lengths 3-40, instead of one per length until torch's recompilation limit (8) falls back to
eager."""


def compile_model(model: torch.nn.Module, backend: str | Callable = "inductor") -> torch.nn.Module:
    """``torch.compile(model)`` for training: the first batch shape compiles a static graph, the next one a
    graph with a dynamic length where the mixer allows it (torch's automatic dynamic shapes); mixers that
    specialise on the length compile once per padded length, so pad with ``pad_length``. ``backend`` is
    torch.compile's (tests count compilations with a counting backend)."""
    return torch.compile(model, backend=backend)


def pad_length(inputs: torch.Tensor, targets: torch.Tensor, multiple: int,
               pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad inputs [B, T] with ``pad_id`` and targets [B, T] with ``IGNORE_INDEX`` to a multiple of
    ``multiple`` positions. The models are causal, so the logits and the loss at the real positions do not
    change (up to float rounding: the chunked ops sum over a longer chunk)."""
    extra = -inputs.shape[1] % multiple
    if not extra:
        return inputs, targets
    return F.pad(inputs, (0, extra), value=pad_id), F.pad(targets, (0, extra), value=IGNORE_INDEX)


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                  targets: torch.Tensor, grad_clip: float,
                  precision: str = "float32") -> tuple[torch.Tensor, torch.Tensor, float]:
    """One optimiser step of ``Run.train`` (and of ``lrnn bench train``, which times it).

    Cross-entropy of ``model(inputs)`` (logits [B, T, C]) against ``targets`` [B, T] (``IGNORE_INDEX`` where
    unsupervised), backward, the global gradient norm clipped to ``grad_clip`` (0: only measured), then
    ``optimizer.step()``. ``model`` may be a ``torch.compile``d module. ``precision`` "bfloat16" runs the
    forward pass under ``torch.autocast(bfloat16)`` (weights, gradients and the optimiser stay float32; the
    loss is taken in float32), as ``lrnn pretrain --precision bfloat16`` trains on one process. Returns
    ``(loss, logits, grad_norm)``: the loss and logits of this forward pass and the gradient norm before
    clipping.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
        logits = model(inputs)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = _clip(model, grad_clip)
    optimizer.step()
    return loss, logits, grad_norm


def _clip(model: torch.nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm to ``max_norm`` (0: only measure it); returns the norm before."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm)


def progress_bar(total: int | None, initial: int, label: str, quiet: bool, unit: str = "it"):
    """A tqdm bar on stderr, or None when quiet, when stderr is not a terminal, or without tqdm."""
    if quiet or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a convenience; training does not need it
        return None
    return tqdm(total=total, initial=initial, desc=label, unit=unit, dynamic_ncols=True, leave=False)


# ---- run directories -----------------------------------------------------------------------------
def _holds_this_run(run_dir: Path, config: RunConfig, force: bool) -> bool:
    """``check_run_directory`` for a training run: the same run is one whose config.json equals ``config``
    outside ``RESULT_NEUTRAL_FIELDS``."""
    return check_run_directory(run_dir, force, lambda contents: _config_difference(run_dir / CONFIG_FILE, config,
                                                                                   contents), RUN_FILES)


def check_run_directory(run_dir: Path, force: bool, difference: Callable[[list[str]], str | None],
                        run_files: tuple[str, ...]) -> bool:
    """True if ``run_dir`` holds the run being opened (``difference(contents)`` is None, contents being the
    names in it); False if it is missing or empty (temporary files aside), or holds something else and
    ``force`` is set; else a ValueError says what ``difference`` found. A ``run_dir`` that is, or lies
    under, a file is refused before any work. Shared by training and pretraining runs."""
    check_writable_directory(run_dir, "the run directory")
    if not run_dir.exists():
        return False
    contents = sorted(p.name for p in run_dir.iterdir() if not is_temporary(p))
    if not contents:
        return False
    found = difference(contents)
    if found is None:
        return True
    if not force:
        raise ValueError(f"{run_dir} holds another run's files ({found}); choose another directory, or "
                         f"replace its {', '.join(run_files)} with --force")
    return False


def _config_difference(path: Path, config: RunConfig, contents: list[str]) -> str | None:
    """None if ``path`` is the config.json of ``config``'s run, else what differs, in words."""
    if not path.is_file():
        shown = ", ".join(contents[:5]) + (", ..." if len(contents) > 5 else "")
        return f"no {CONFIG_FILE}, but {shown}"
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{CONFIG_FILE} is not a run config"
    if not isinstance(saved, dict):
        return f"{CONFIG_FILE} is not a run config"
    changed = _changed_fields(saved, config)
    return f"its {CONFIG_FILE} differs in {changed}" if changed else None


def _changed_fields(saved: dict, config: RunConfig) -> list[str]:
    """The fields in which a saved run config differs from ``config``, ``RESULT_NEUTRAL_FIELDS`` aside."""
    # A field missing from ``saved`` was added after the run was written: it counts as its default.
    return sorted(config_differences({**RunConfig().to_dict(), **saved}, config.to_dict()))


def remove_run_files(run_dir: Path, names: tuple[str, ...] = RUN_FILES) -> None:
    """Delete what ``train`` writes into ``run_dir`` (``names``: ``RUN_FILES``; lrnn pretrain's own); other files stay."""
    for name in names:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _open_finished(run_dir: Path, config: RunConfig, device: torch.device, task: Task, eval_task: Task) -> Run:
    result = json.loads((run_dir / RESULT_FILE).read_text())
    _check_same_run(result.get("config", {}), config, run_dir / RESULT_FILE)
    saved = load_run(run_dir, device)
    return Run(config, run_dir, device, task, eval_task, saved.model, None, None, config.steps,
               float(result.get("train_seconds", 0.0)), result)


# ---- checkpoints ---------------------------------------------------------------------------------
def _save_checkpoint(run_dir: Path, config: RunConfig, model: LanguageModel, optimizer: torch.optim.Optimizer,
                     generator: torch.Generator, step: int, train_seconds: float) -> None:
    state = {"step": step, "config": json.dumps(config.to_dict(), sort_keys=True), "train_seconds": train_seconds,
             "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "data_rng": generator.get_state(), "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    atomic_write(run_dir / CHECKPOINT_FILE, lambda tmp: torch.save(state, tmp))


def _read_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which one
        raise ValueError(f"cannot read checkpoint {path}: {err}") from None


def _load_checkpoint(run_dir: Path, config: RunConfig, model: LanguageModel, optimizer: torch.optim.Optimizer,
                     generator: torch.Generator) -> tuple[int, float]:
    """Restore model, optimiser and RNG states; returns the steps already done and the seconds they took."""
    state = _read_checkpoint(run_dir / CHECKPOINT_FILE)
    _check_same_run(json.loads(state["config"]), config, run_dir / CHECKPOINT_FILE)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["data_rng"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"]), float(state.get("train_seconds", 0.0))  # checkpoints before train_seconds: 0


def _check_same_run(saved: dict, config: RunConfig, source: Path) -> None:
    """Refuse to continue (or reuse) a run written by a config that differs in a field that matters."""
    changed = _changed_fields(saved, config)
    if changed:
        raise ValueError(f"{source} was written by a different run config (fields {changed} differ); "
                         f"pass a new output directory or start over without resuming")


# ---- logs ----------------------------------------------------------------------------------------
class RunLog:
    """Appends JSON lines to a file (flushed per line, so a crash loses at most the line being written)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def truncate_log(path: Path, step: int, final: bool = False) -> None:
    """Drop the log lines written after the checkpoint of ``step`` that a resumed run starts from: those of
    later steps and, when ``step`` is the run's last (``final``), its closing evaluation lines at ``step``
    (written after that checkpoint, and written again by the resumed run)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the interruption
            continue
        at = record.get("step", 0)
        if at < step or (at == step and not (final and record.get("kind") != "train")):
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def read_log(path: str | Path) -> list[dict]:
    """The records of a log.jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"log file not found: {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
