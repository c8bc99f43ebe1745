"""Parity: the number of 1s in a random bit string, mod 2."""

from __future__ import annotations

import torch

from lrnn.tasks.base import TaskBatch, Task, final_targets, padding_mask


class Parity(Task):
    """Vocabulary: 0, 1 (bits), 2 (padding). One answer, the parity of the whole string, at the last bit.

    Classes: 2 (even, odd).
    """

    name = "parity"
    vocab_size = 3
    num_classes = 2
    pad_id = 2
    answer_positions = "final"
    description = ("random bits (tokens 0, 1; 2 pads); answer at the last bit: number of 1s mod 2 "
                   "(2 classes)")

    def _generate(self, lengths: torch.Tensor, generator: torch.Generator | None) -> TaskBatch:
        t = int(lengths.max())
        bits = torch.randint(0, 2, (lengths.shape[0], t), generator=generator)
        real = padding_mask(lengths, t)
        bits = bits * real
        answers = bits.sum(dim=1) % 2
        inputs = torch.where(real, bits, torch.full_like(bits, self.pad_id))
        return TaskBatch(inputs, final_targets(answers, lengths, t), lengths)
