"""Parity: the number of 1s in a random bit string, mod 2 (and Deletang et al.'s ``parity_check``)."""

from __future__ import annotations

import torch

from lrnn.tasks.base import TaskBatch, Task, final_targets, id_list, random_symbols


class Parity(Task):
    """Vocabulary: 0, 1 (bits), 2 (padding). One answer, the parity of the whole string, at the last bit.

    Classes: 2 (even, odd). Any length >= 1.
    """

    name = "parity"
    vocab_size = 3
    num_classes = 2
    pad_id = 2
    answer_positions = "final"
    description = ("random bits (tokens 0, 1; 2 pads); answer at the last bit: number of 1s mod 2 "
                   "(2 classes)")

    def _generate(self, lengths: torch.Tensor, generator: torch.Generator | None) -> TaskBatch:
        bits, inputs = random_symbols(lengths, 2, self.pad_id, generator)
        answers = bits.sum(dim=1) % 2
        return TaskBatch(inputs, final_targets(answers, lengths, inputs.shape[1]), lengths)


class ParityCheck(Parity):
    """Deletang et al.'s regular task ``parity_check``: a string over {a, b}; is the number of b's even?

    Vocabulary: 0 = a, 1 = b, 2 = padding. One answer at the last symbol: number of b's mod 2
    (class 0 = even, 1 = odd); 2 classes; any length >= 1. The same distribution as ``parity``, under the
    Chomsky-hierarchy suite's name and symbols.
    """

    name = "parity_check"
    description = ("random string over {a, b} (tokens 0 = a, 1 = b; 2 pads); answer at the last symbol: "
                   "number of b's mod 2 (2 classes)")

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return "".join("ab"[i] for i in id_list(ids) if i != self.pad_id)
