"""Length-generalisation evaluation: accuracy and scaled accuracy per length bin.

Scaled accuracy maps chance to 0 and perfect to 1: ``(acc - 1/|Y|) / (1 - 1/|Y|)`` with |Y| the number
of answer classes. For tasks with one answer per sequence (``answer_positions == "final"``) accuracy is
per sequence. For tasks with a target at every token (``"every"``) there are two: per-token accuracy
(over all supervised positions) and sequence accuracy (the fraction of sequences with every position
right). The evaluation set is deterministic: bin ``i`` draws its sequences from a generator seeded with
``seed + i`` (all of the bin at once), so every evaluation of every run sees the same sequences,
whatever the evaluation batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrnn.tasks import IGNORE_INDEX, Task


def length_bins(min_length: int, max_length: int, num_bins: int) -> list[tuple[int, int]]:
    """Split [min_length, max_length] (inclusive) into ``num_bins`` contiguous ranges of near-equal size.

    Example: ``length_bins(40, 256, 3) == [(40, 111), (112, 183), (184, 256)]`` (72, 72 and 73 lengths:
    bin sizes differ by at most one).
    """
    for name, value in (("min_length", min_length), ("max_length", max_length), ("num_bins", num_bins)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
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
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
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


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, min_length: int, max_length: int, num_bins: int,
             samples_per_bin: int, seed: int = 1234, batch_size: int = 256,
             device: torch.device | str = "cpu") -> dict:
    """Evaluate ``model`` on ``samples_per_bin`` fresh sequences per length bin of [min_length, max_length].

    Returns ``{"bins": [{"min_length", "max_length", <summarise metrics>}, ...], "overall": {...},
    "num_classes", "answer_positions"}``; ``overall`` pools every bin's counts. The model is put in eval
    mode and restored to its previous mode afterwards.
    """
    for name, value in (("samples_per_bin", samples_per_bin), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    was_training = model.training
    model.eval()
    bins, total = [], Counts()
    try:
        for i, (lo, hi) in enumerate(length_bins(min_length, max_length, num_bins)):
            # The whole bin is drawn at once, so the set does not depend on batch_size.
            data = task.sample(samples_per_bin, lo, hi, generator=torch.Generator().manual_seed(seed + i))
            counts = Counts()
            for start in range(0, samples_per_bin, batch_size):
                part = slice(start, start + batch_size)
                t = int(data.lengths[part].max())  # trim padding beyond this slice's longest sequence
                inputs, targets = data.inputs[part, :t].to(device), data.targets[part, :t].to(device)
                counts.add(count_correct(model(inputs), targets))
            total.add(counts)
            bins.append({"min_length": lo, "max_length": hi,
                         **summarise(counts, task.num_classes, task.answer_positions)})
    finally:
        model.train(was_training)
    return {"bins": bins, "overall": summarise(total, task.num_classes, task.answer_positions),
            "num_classes": task.num_classes, "answer_positions": task.answer_positions}


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


__all__ = ["Counts", "count_correct", "evaluate", "format_bins", "length_bins", "scaled_accuracy", "summarise"]
