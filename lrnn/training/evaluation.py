"""Length-generalisation evaluation: accuracy and scaled accuracy per length bin.

Scaled accuracy maps chance to 0 and perfect to 1: ``(acc - 1/|Y|) / (1 - 1/|Y|)`` with |Y| the number
of answer classes. For tasks with one answer per sequence (``answer_positions == "final"``) accuracy is
per sequence. For tasks with a target at every token (``"every"``) there are two: per-token accuracy
(over all supervised positions) and sequence accuracy (the fraction of sequences with every position
right). The evaluation set is deterministic, whatever the evaluation batch size:

* a task with a fixed split (``Task.fixed_items()``, e.g. the 359 images of ``sequential_digits_test``)
  is scored on every item exactly once, each in the bin of its length;
* a generated task draws bin ``i``'s sequences from a generator seeded with ``seed + i`` (all of the
  bin at once), so every evaluation of every run sees the same sequences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lrnn.tasks import IGNORE_INDEX, Task, TaskBatch
from lrnn.validation import check_int, check_positive


def length_bins(min_length: int, max_length: int, num_bins: int) -> list[tuple[int, int]]:
    """Split [min_length, max_length] (inclusive) into ``num_bins`` contiguous ranges of near-equal size.

    Example: ``length_bins(40, 256, 3) == [(40, 111), (112, 183), (184, 256)]`` (72, 72 and 73 lengths:
    bin sizes differ by at most one).
    """
    for name, value in (("min_length", min_length), ("max_length", max_length), ("num_bins", num_bins)):
        check_int(name, value)
    count = max_length - min_length + 1
    if count < 1:
        raise ValueError(f"max_length must be >= min_length = {min_length}, got {max_length}")
    if not 1 <= num_bins <= count:
        raise ValueError(f"num_bins must lie in [1, {count}] (the number of lengths), got {num_bins}")
    # Bin i covers lengths [min + floor(i * count / n), min + floor((i + 1) * count / n) - 1].
    edges = [min_length + (i * count) // num_bins for i in range(num_bins + 1)]
    return [(edges[i], edges[i + 1] - 1) for i in range(num_bins)]


def scaled_accuracy(accuracy: float, num_classes: int) -> float:
    """``(accuracy - 1/num_classes) / (1 - 1/num_classes)``: 0 at chance, 1 when perfect."""
    check_int("num_classes", num_classes, 2)
    chance = 1.0 / num_classes
    return (accuracy - chance) / (1.0 - chance)


@dataclass
class Counts:
    """Correct / total counts of one bin: positions (tokens) and sequences."""

    tokens_correct: int = 0
    tokens_total: int = 0
    sequences_correct: int = 0
    sequences_total: int = 0

    def add(self, other: "Counts") -> None:
        self.tokens_correct += other.tokens_correct
        self.tokens_total += other.tokens_total
        self.sequences_correct += other.sequences_correct
        self.sequences_total += other.sequences_total


def count_correct(logits: torch.Tensor, targets: torch.Tensor) -> Counts:
    """Counts of correct argmax predictions. logits [B, T, C], targets [B, T] (IGNORE_INDEX = unsupervised).

    A sequence is correct when all its supervised positions are; sequences without any are not counted.
    """
    supervised = targets != IGNORE_INDEX
    right = (logits.argmax(dim=-1) == targets) & supervised
    has_target = supervised.any(dim=1)
    all_right = (right == supervised).all(dim=1) & has_target
    return Counts(int(right.sum()), int(supervised.sum()), int(all_right.sum()), int(has_target.sum()))


def summarise(counts: Counts, num_classes: int, answer_positions: str) -> dict[str, float | int]:
    """The metrics of one bin (or of all bins pooled) as a JSON-ready dict.

    ``accuracy`` is per sequence for "final" tasks (one answer each: the same as per token) and per token
    for "every" tasks; ``scaled_accuracy`` rescales it; ``sequence_accuracy`` is all-positions-right.
    ``score`` is the headline number: scaled accuracy for "final" tasks, sequence accuracy for "every".
    """
    token_acc = counts.tokens_correct / max(counts.tokens_total, 1)
    seq_acc = counts.sequences_correct / max(counts.sequences_total, 1)
    scaled = scaled_accuracy(token_acc, num_classes)
    return {"accuracy": token_acc, "scaled_accuracy": scaled, "sequence_accuracy": seq_acc,
            "score": scaled if answer_positions == "final" else seq_acc,
            "sequences": counts.sequences_total, "tokens": counts.tokens_total}


def split_into_bins(items: TaskBatch, bins: list[tuple[int, int]], task_name: str) -> list[TaskBatch]:
    """The items of a fixed split [N, T] grouped by the length bin they fall in, order kept within a bin.

    Every item must fall in some bin and every bin must hold an item: a ValueError naming
    ``min_length``/``max_length`` or ``num_bins`` says otherwise (dropping items, or scoring an empty bin
    as accuracy 0, would be silent).
    """
    lo, hi = bins[0][0], bins[-1][1]
    shortest, longest = int(items.lengths.min()), int(items.lengths.max())
    if shortest < lo or longest > hi:
        raise ValueError(f"min_length/max_length [{lo}, {hi}] must cover the lengths of task {task_name!r}'s fixed "
                         f"split, which are {shortest}..{longest}")
    groups = []
    for a, b in bins:
        inside = (items.lengths >= a) & (items.lengths <= b)
        if not inside.any():
            raise ValueError(f"num_bins = {len(bins)}: the length bin [{a}, {b}] holds no item of task "
                             f"{task_name!r}'s fixed split (lengths {shortest}..{longest}); use fewer bins")
        groups.append(TaskBatch(items.inputs[inside], items.targets[inside], items.lengths[inside]))
    return groups


def _evaluation_sets(task: Task, bins: list[tuple[int, int]], samples_per_bin: int,
                     seed: int) -> tuple[list[TaskBatch], str]:
    """One TaskBatch per bin, and how it was made: ``"fixed"`` (the task's fixed split, every item once)
    or ``"drawn"`` (``samples_per_bin`` sequences, bin ``i`` from a generator seeded ``seed + i``)."""
    items = task.fixed_items()
    if items is not None:
        return split_into_bins(items, bins, task.name), "fixed"
    # The whole bin is drawn at once, so the set does not depend on the evaluation batch size.
    return [task.sample(samples_per_bin, lo, hi, generator=torch.Generator().manual_seed(seed + i))
            for i, (lo, hi) in enumerate(bins)], "drawn"


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, min_length: int, max_length: int, num_bins: int,
             samples_per_bin: int, seed: int = 1234, batch_size: int = 256,
             device: torch.device | str = "cpu", progress: Callable[[int, int], None] | None = None) -> dict:
    """Evaluate ``model`` per length bin of [min_length, max_length] (``num_bins`` bins).

    The evaluation set: for a task with a fixed split (``task.fixed_items()`` is not None) every item of
    the split, exactly once, in the bin of its length (``samples_per_bin`` and ``seed`` then play no part;
    the result says so); otherwise ``samples_per_bin`` fresh sequences per bin drawn with ``seed``.

    Returns ``{"bins": [{"min_length", "max_length", <summarise metrics>}, ...], "overall": {...},
    "num_classes", "answer_positions", "evaluation_set", "items_scored"}``; ``overall`` pools every bin's
    counts, ``evaluation_set`` is ``"fixed"`` or ``"drawn"`` and ``items_scored`` counts the sequences the
    model was run on. The model is put in eval mode and restored to its previous mode afterwards.
    ``progress(done, total)`` (e.g. a progress bar) is called after every forward with the sequences
    evaluated so far and in all.
    """
    check_positive(samples_per_bin=samples_per_bin, batch_size=batch_size)
    bins = length_bins(min_length, max_length, num_bins)
    sets, kind = _evaluation_sets(task, bins, samples_per_bin, seed)
    items = sum(int(data.lengths.shape[0]) for data in sets)
    was_training = model.training
    model.eval()
    results, total, done = [], Counts(), 0
    try:
        for (lo, hi), data in zip(bins, sets):
            counts = Counts()
            for start in range(0, int(data.lengths.shape[0]), batch_size):
                part = slice(start, start + batch_size)
                t = int(data.lengths[part].max())  # trim padding beyond this slice's longest sequence
                inputs, targets = data.inputs[part, :t].to(device), data.targets[part, :t].to(device)
                counts.add(count_correct(model(inputs), targets))
                done += inputs.shape[0]
                if progress is not None:
                    progress(done, items)
            total.add(counts)
            results.append({"min_length": lo, "max_length": hi,
                            **summarise(counts, task.num_classes, task.answer_positions)})
    finally:
        model.train(was_training)
    return {"bins": results, "overall": summarise(total, task.num_classes, task.answer_positions),
            "num_classes": task.num_classes, "answer_positions": task.answer_positions,
            "evaluation_set": kind, "items_scored": done}


def format_bins(result: dict) -> str:
    """A plain-text table of an ``evaluate`` result: one row per bin plus the pooled row."""
    every = result["answer_positions"] == "every"
    head = f"  {'lengths':>11} {'accuracy':>9} {'scaled':>8}" + (f" {'seq. acc':>9}" if every else "")
    rows = [head]
    for b in result["bins"] + [dict(result["overall"], min_length=None)]:
        span = "all" if b.get("min_length") is None else f"{b['min_length']}-{b['max_length']}"
        row = f"  {span:>11} {b['accuracy']:>9.4f} {b['scaled_accuracy']:>8.4f}"
        rows.append(row + (f" {b['sequence_accuracy']:>9.4f}" if every else ""))
    return "\n".join(rows)


__all__ = ["Counts", "count_correct", "evaluate", "format_bins", "length_bins", "scaled_accuracy", "split_into_bins",
           "summarise"]
