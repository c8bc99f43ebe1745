"""The task interface every state-tracking and long-range task implements.

A task draws seeded batches of token sequences with integer class targets:

    batch = task.sample(batch_size=64, min_length=3, max_length=40, generator=g)
    batch.inputs   [B, T] long   input token ids, right-padded with ``task.pad_id`` past each length
    batch.targets  [B, T] long   class ids in [0, task.num_classes), ``IGNORE_INDEX`` where unsupervised
    batch.lengths  [B]    long   number of real input tokens of each sequence

Models are causal, so right padding never changes the predictions at real positions. ``length`` counts
input tokens, and is what length-generalisation bins are made of. ``answer_positions`` says where the
targets sit: ``"final"`` (one answer at the last real token: parity, arithmetic), ``"suffix"`` (answers on
the last few real tokens: selective copying; scored per sequence, all answers right) or ``"every"`` (a target
at every real token: group word problems' prefix products).

Most tasks are generated: any number of fresh sequences can be drawn. A task that is a finite, fixed set
of items (a held-out split such as ``sequential_digits_test``) also returns all of them from
``fixed_items()``, so an evaluation can score each item exactly once instead of drawing with replacement.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from lrnn.validation import check_int

IGNORE_INDEX = -100
"""Target value of unsupervised positions (``torch.nn.functional.cross_entropy``'s default ignore_index)."""


@dataclass
class TaskBatch:
    """One batch of a task. Shapes: inputs and targets [B, T], lengths [B]."""

    inputs: torch.Tensor
    targets: torch.Tensor
    lengths: torch.Tensor

    def to(self, device: torch.device | str) -> "TaskBatch":
        return TaskBatch(self.inputs.to(device), self.targets.to(device), self.lengths.to(device))


class Task(ABC):
    """A seeded, vectorised sequence task.

    Attributes (set by subclasses):
        name: registry name, e.g. ``"parity"``.
        vocab_size: number of input token ids (``pad_id`` included).
        num_classes: number of answer classes |Y| (scaled accuracy uses it).
        pad_id: input id used past each sequence's length.
        answer_positions: ``"final"``, ``"suffix"`` or ``"every"``.
        min_supported_length: the shortest length the task can produce.
        description: vocabulary, answer positions and classes in a few lines (shown by the CLI).
        test_split: registry name of the task's held-out split, which training evaluates on (e.g.
            ``"sequential_digits_test"`` for ``"sequential_digits"``); None: fresh draws of the task
            itself are held out (generated tasks).
    """

    name: str
    vocab_size: int
    num_classes: int
    pad_id: int
    answer_positions: str
    min_supported_length: int = 1
    description: str = ""
    test_split: str | None = None

    def sample(self, batch_size: int, min_length: int, max_length: int | None = None,
               generator: torch.Generator | None = None) -> TaskBatch:
        """Draw ``batch_size`` sequences with lengths uniform in [min_length, max_length].

        ``max_length=None`` means every sequence has length ``min_length``. Validates the arguments,
        draws the lengths, then calls ``_generate``.
        """
        max_length = min_length if max_length is None else max_length
        check_int("batch_size", batch_size, 1)
        check_int("min_length", min_length)
        check_int("max_length", max_length)
        if min_length < self.min_supported_length:
            raise ValueError(f"min_length must be >= {self.min_supported_length} for task {self.name!r}, "
                             f"got {min_length}")
        if max_length < min_length:
            raise ValueError(f"max_length must be >= min_length = {min_length}, got {max_length}")
        lengths = self._draw_lengths(batch_size, min_length, max_length, generator)
        return self._generate(lengths, generator)

    def _draw_lengths(self, batch_size: int, min_length: int, max_length: int,
                      generator: torch.Generator | None) -> torch.Tensor:
        """Lengths [B], uniform over the lengths the task supports in [min_length, max_length]."""
        return torch.randint(min_length, max_length + 1, (batch_size,), generator=generator)

    @abstractmethod
    def _generate(self, lengths: torch.Tensor, generator: torch.Generator | None) -> TaskBatch:
        """Build a batch whose sequence b has ``lengths[b]`` input tokens (T = lengths.max())."""

    def fixed_items(self) -> TaskBatch | None:
        """Every item of a finite, fixed split, in a fixed order (inputs and targets [N, T], lengths [N]).

        None (the default) for generated tasks, which have no finite set to enumerate. Evaluation scores
        each returned item exactly once (``lrnn.training.evaluation.evaluate``).
        """
        return None

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Human-readable form of one input sequence [T] (padding dropped); tasks with symbols override it."""
        return " ".join(str(i) for i in id_list(ids) if i != self.pad_id)


def padding_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """[B, T] bool, True at real positions (index < length)."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def final_targets(answers: torch.Tensor, lengths: torch.Tensor, t: int) -> torch.Tensor:
    """[B, T] targets with ``answers[b]`` at position ``lengths[b] - 1`` and IGNORE_INDEX elsewhere."""
    targets = torch.full((lengths.shape[0], t), IGNORE_INDEX, dtype=torch.long, device=lengths.device)
    targets[torch.arange(lengths.shape[0], device=lengths.device), lengths - 1] = answers.long()
    return targets


def lengths_of_parity(batch_size: int, min_length: int, max_length: int, parity: int,
                      generator: torch.Generator | None, task_name: str) -> torch.Tensor:
    """Lengths [B] uniform over the integers L in [min_length, max_length] with ``L % 2 == parity``.

    For tasks whose sequences only exist at odd or even lengths; a range holding no such length is a
    ValueError rather than a silent change of the requested length.
    """
    first = min_length + (min_length - parity) % 2
    if first > max_length:
        kind = "odd" if parity else "even"
        raise ValueError(f"task {task_name!r} only has {kind} lengths; [min_length, max_length] = "
                         f"[{min_length}, {max_length}] contains none")
    count = (max_length - first) // 2 + 1
    return first + 2 * torch.randint(0, count, (batch_size,), generator=generator)


def random_symbols(lengths: torch.Tensor, num_symbols: int, pad_id: int,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform i.i.d. symbols in [0, num_symbols) for sequences of the given lengths [B].

    Returns ``(symbols, inputs)``, both [B, T] with T = lengths.max(): ``symbols`` is 0 past each length
    (so sums and counts over a row need no mask), ``inputs`` holds ``pad_id`` there.
    """
    t = int(lengths.max())
    symbols = torch.randint(0, num_symbols, (lengths.shape[0], t), generator=generator)
    real = padding_mask(lengths, t)
    symbols = symbols * real
    return symbols, torch.where(real, symbols, torch.full_like(symbols, pad_id))


def id_list(ids: torch.Tensor | list[int]) -> list[int]:
    """One sequence of token ids [T] as a Python list (for ``Task.decode``)."""
    return ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
