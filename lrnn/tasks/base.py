"""The task interface every state-tracking and long-range task implements.

A task draws seeded batches of token sequences with integer class targets:

    batch = task.sample(batch_size=64, min_length=3, max_length=40, generator=g)
    batch.inputs   [B, T] long   input token ids, right-padded with ``task.pad_id`` past each length
    batch.targets  [B, T] long   class ids in [0, task.num_classes), ``IGNORE_INDEX`` where unsupervised
    batch.lengths  [B]    long   number of real input tokens of each sequence

Models are causal, so right padding never changes the predictions at real positions. ``length`` counts
input tokens, and is what length-generalisation bins are made of. ``answer_positions`` says where the
targets sit: ``"final"`` (one answer at the last real token: parity, arithmetic) or ``"every"`` (a target
at every real token: group word problems' prefix products).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

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
        answer_positions: ``"final"`` or ``"every"``.
        min_supported_length: the shortest length the task can produce.
        description: vocabulary, answer positions and classes in a few lines (shown by the CLI).
    """

    name: str
    vocab_size: int
    num_classes: int
    pad_id: int
    answer_positions: str
    min_supported_length: int = 1
    description: str = ""

    def sample(self, batch_size: int, min_length: int, max_length: int | None = None,
               generator: torch.Generator | None = None) -> TaskBatch:
        """Draw ``batch_size`` sequences with lengths uniform in [min_length, max_length].

        ``max_length=None`` means every sequence has length ``min_length``. Validates the arguments,
        draws the lengths, then calls ``_generate``.
        """
        max_length = min_length if max_length is None else max_length
        for name, value in (("batch_size", batch_size), ("min_length", min_length), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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


def padding_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """[B, T] bool, True at real positions (index < length)."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def final_targets(answers: torch.Tensor, lengths: torch.Tensor, t: int) -> torch.Tensor:
    """[B, T] targets with ``answers[b]`` at position ``lengths[b] - 1`` and IGNORE_INDEX elsewhere."""
    targets = torch.full((lengths.shape[0], t), IGNORE_INDEX, dtype=torch.long, device=lengths.device)
    targets[torch.arange(lengths.shape[0], device=lengths.device), lengths - 1] = answers.long()
    return targets
