"""The training loop: AdamW, warm-up + cosine, clipping, periodic evaluation, JSONL logs, checkpoints.

A run directory holds::

    config.json        the RunConfig
    log.jsonl          one JSON object per line: {"kind": "train", "step", "loss", "accuracy", "lr",
                       "grad_norm", "seconds"} every ``log_every`` steps, {"kind": "eval", "step", ...} per eval
    checkpoint.pt      model, optimiser, step and RNG states (torch.save, loaded with weights_only=True)
    model/             the final model (``LanguageModel.save_pretrained``: config.json + model.safetensors)
    result.json        the final evaluation; its presence marks the run finished

Every file is written atomically. Resuming loads ``checkpoint.pt`` (model, optimiser, step, the data
generator's and the global RNG states) and drops log lines past its step, so an interrupted run that
is resumed ends with bit-identical weights to one that ran straight through (on the same device and
thread count). The learning rate is a pure function of the step, so there is no scheduler state.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lrnn.models import LanguageModel
from lrnn.atomic import atomic_write, atomic_write_text
from lrnn.tasks import IGNORE_INDEX, Task, make_task
from lrnn.training.config import RunConfig
from lrnn.training.evaluation import Counts, count_correct, evaluate
from lrnn.training.optim import learning_rate, make_optimizer, set_learning_rate

CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_DIR = "model"
RESULT_FILE = "result.json"

# Fields that may differ between an interrupted run and its resumption (they do not change the weights).
_RESUMABLE_CHANGES = ("device", "eval_every", "log_every", "checkpoint_every", "eval_batch_size")


@dataclass
class RunOutcome:
    """What ``train`` returns: the trained model and the JSON-ready result (also in result.json)."""

    model: LanguageModel
    result: dict


def build_model(config: RunConfig, task: Task) -> LanguageModel:
    """The run's model, initialised from ``config.seed`` (the global RNG is seeded here)."""
    torch.manual_seed(config.seed)
    return LanguageModel(config.model_config(task.vocab_size, task.num_classes))


def make_eval_task(config: RunConfig, task: Task | None = None) -> Task:
    """The task a run is evaluated on: ``config.eval_task`` if set, else ``task.test_split`` (the training
    task's held-out split, e.g. sequential_digits -> sequential_digits_test) if it has one, else the
    training task itself (generated tasks: the evaluation draws fresh sequences from a fixed seed).

    ``task`` is the training task (built from ``config.task`` when None). The evaluation task must have
    the same vocabulary size, number of classes and answer positions as the training task (the model's
    embedding and head are sized by it); a ValueError naming ``eval_task`` says otherwise.
    """
    task = make_task(config.task) if task is None else task
    name = config.eval_task if config.eval_task is not None else task.test_split
    if name is None or name == task.name:
        return task
    try:
        eval_task = make_task(name)
    except ValueError as err:
        raise ValueError(f"eval_task: {err}") from None
    for attr in ("vocab_size", "num_classes", "answer_positions"):
        if getattr(eval_task, attr) != getattr(task, attr):
            raise ValueError(f"eval_task {name!r} does not fit task {task.name!r}: its {attr} is "
                             f"{getattr(eval_task, attr)!r}, the training task's is {getattr(task, attr)!r}")
    return eval_task


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``; a clear ValueError for unknown or unavailable devices."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device must be e.g. 'cpu' or 'cuda', got {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def train(config: RunConfig, out_dir: str | Path | None = None, *, resume: bool = True, quiet: bool = False,
          stop_at_step: int | None = None, description: str | None = None) -> RunOutcome:
    """Train one run and evaluate it; with ``out_dir`` write logs, checkpoints and the result there.

    Args:
        config: the run. out_dir: run directory (None: keep nothing on disk).
        resume: continue from ``out_dir/checkpoint.pt`` if there is one; a finished run (result.json
            present) is loaded, not retrained. False starts over, overwriting the directory's files.
        quiet: no progress bar (it is also off when stderr is not a terminal).
        stop_at_step: stop after this many steps with a checkpoint and no final evaluation (simulates
            an interruption; the result then has ``"finished": False``).
        description: progress-bar label (default: the model and range).
    """
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig, got {type(config).__name__}")
    device = resolve_device(config.device)
    task = make_task(config.task)
    eval_task = make_eval_task(config, task)
    if config.train_min < task.min_supported_length:
        raise ValueError(f"task {task.name!r} needs lengths >= {task.min_supported_length}, got train_min = "
                         f"{config.train_min}")
    if config.eval_min < eval_task.min_supported_length:
        raise ValueError(f"task {eval_task.name!r} needs lengths >= {eval_task.min_supported_length}, got "
                         f"eval_min = {config.eval_min}")
    run_dir = None if out_dir is None else Path(out_dir)
    if run_dir is not None and resume and (run_dir / RESULT_FILE).is_file():
        return _load_finished(run_dir, config, device)

    model = build_model(config, task).to(device)
    optimizer = make_optimizer(model, config.lr, config.weight_decay, config.betas, config.ssm_lr)
    generator = torch.Generator().manual_seed(config.seed)
    start = 0
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume and (run_dir / CHECKPOINT_FILE).is_file():
            start = _load_checkpoint(run_dir, config, model, optimizer, generator)
            _truncate_log(run_dir / LOG_FILE, start)
        else:
            for stale in (LOG_FILE, CHECKPOINT_FILE, RESULT_FILE):
                (run_dir / stale).unlink(missing_ok=True)
        config.save(run_dir / CONFIG_FILE)

    log = _Log(None if run_dir is None else run_dir / LOG_FILE)
    end = config.steps if stop_at_step is None else min(stop_at_step, config.steps)
    started = time.perf_counter()
    bar = _progress(config, start, quiet, description)
    window_loss, window_counts, window_steps = 0.0, Counts(), 0
    model.train()
    try:
        for step in range(start, end):
            lr = learning_rate(step, config.steps, config.lr, config.min_lr, config.warmup_fraction)
            set_learning_rate(optimizer, lr)
            batch = task.sample(config.batch_size, config.train_min, config.train_max, generator).to(device)
            logits = model(batch.inputs)
            loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = _clip(model, config.grad_clip)
            optimizer.step()

            done = step + 1
            window_loss += loss.item()
            window_counts.add(count_correct(logits.detach(), batch.targets))
            window_steps += 1
            if done % config.log_every == 0 or done == end:
                acc = window_counts.tokens_correct / max(window_counts.tokens_total, 1)
                log.write({"kind": "train", "step": done, "loss": window_loss / window_steps, "accuracy": acc,
                           "lr": lr, "grad_norm": grad_norm, "seconds": time.perf_counter() - started})
                if bar is not None:
                    bar.set_postfix(loss=f"{window_loss / window_steps:.4f}", acc=f"{acc:.3f}", refresh=False)
                window_loss, window_counts, window_steps = 0.0, Counts(), 0
            if config.eval_every and done % config.eval_every == 0 and done < config.steps:
                log.write({"kind": "eval", "step": done, **_evaluate(model, eval_task, config, device)["overall"]})
            if run_dir is not None and ((config.checkpoint_every and done % config.checkpoint_every == 0)
                                        or done == end):
                _save_checkpoint(run_dir, config, model, optimizer, generator, done)
            if bar is not None:
                bar.update(1)
    finally:
        # No checkpoint on an interrupt: it may land inside optimizer.step(); resume from the last periodic one.
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started
    if end < config.steps:
        return RunOutcome(model, {"finished": False, "step": end})

    evaluation = _evaluate(model, eval_task, config, device)
    log.write({"kind": "eval", "step": config.steps, **evaluation["overall"]})
    result = {"finished": True, "config": config.to_dict(), "task": config.task, "eval_task": eval_task.name,
              "model": config.model_label,
              "mixer": config.mixer, "range": config.eigenvalue_range, "seed": config.seed, "lr": config.lr,
              "parameters": sum(p.numel() for p in model.parameters()), "train_seconds": seconds,
              "score": evaluation["overall"]["score"], "eval": evaluation}
    if run_dir is not None:
        model.save_pretrained(run_dir / MODEL_DIR)
        atomic_write_text(run_dir / RESULT_FILE, json.dumps(result, indent=2) + "\n")
    return RunOutcome(model, result)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[RunConfig, LanguageModel]:
    """The config and model of a run directory: the final model if finished, else the last checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    config = RunConfig.load(run_dir / CONFIG_FILE)
    if (run_dir / MODEL_DIR).is_dir():
        return config, LanguageModel.from_pretrained(run_dir / MODEL_DIR, map_location=device)
    if not (run_dir / CHECKPOINT_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} has neither a {MODEL_DIR}/ directory nor a {CHECKPOINT_FILE}")
    model = build_model(config, make_task(config.task))
    model.load_state_dict(_read_checkpoint(run_dir / CHECKPOINT_FILE)["model"])
    return config, model.to(device)


def _evaluate(model: LanguageModel, task: Task, config: RunConfig, device: torch.device) -> dict:
    return evaluate(model, task, config.eval_min, config.eval_max, config.eval_bins, config.eval_samples,
                    seed=config.eval_seed, batch_size=config.eval_batch_size, device=device)


def _clip(model: LanguageModel, max_norm: float) -> float:
    """Clip the global gradient norm to ``max_norm`` (0: only measure it); returns the norm before."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm)


def _progress(config: RunConfig, start: int, quiet: bool, description: str | None):
    """A tqdm bar on stderr, or None when quiet, when stderr is not a terminal, or without tqdm."""
    if quiet or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a convenience; training does not need it
        return None
    label = description or f"{config.task} {config.model_label} {config.eigenvalue_range}"
    return tqdm(total=config.steps, initial=start, desc=label, dynamic_ncols=True, leave=False)


# ---- checkpoints ---------------------------------------------------------------------------------
def _save_checkpoint(run_dir: Path, config: RunConfig, model: LanguageModel, optimizer: torch.optim.Optimizer,
                     generator: torch.Generator, step: int) -> None:
    state = {"step": step, "config": json.dumps(config.to_dict(), sort_keys=True),
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
                     generator: torch.Generator) -> int:
    """Restore model, optimiser and RNG states; returns the number of steps already done."""
    state = _read_checkpoint(run_dir / CHECKPOINT_FILE)
    _check_same_run(json.loads(state["config"]), config, run_dir / CHECKPOINT_FILE)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["data_rng"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"])


def _check_same_run(saved: dict, config: RunConfig, source: Path) -> None:
    """Refuse to continue (or reuse) a run written by a config that differs in a field that matters."""
    current = config.to_dict()
    # A field missing from ``saved`` was added after the run was written: it counts as its default.
    defaults = RunConfig().to_dict()
    changed = sorted(k for k in current if k not in _RESUMABLE_CHANGES and saved.get(k, defaults[k]) != current[k])
    if changed:
        raise ValueError(f"{source} was written by a different run config (fields {changed} differ); "
                         f"pass a new output directory or start over without resuming")


def _load_finished(run_dir: Path, config: RunConfig, device: torch.device) -> RunOutcome:
    result = json.loads((run_dir / RESULT_FILE).read_text())
    _check_same_run(result.get("config", {}), config, run_dir / RESULT_FILE)
    _, model = load_run(run_dir, device)
    return RunOutcome(model, result)


# ---- logs ----------------------------------------------------------------------------------------
class _Log:
    """Appends JSON lines to a file (flushed per line, so a crash loses at most the line being written)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines of steps after ``step`` (written after the checkpoint a resumed run starts from)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut by the interruption
            continue
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def read_log(path: str | Path) -> list[dict]:
    """The records of a log.jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"log file not found: {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
