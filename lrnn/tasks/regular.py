"""Regular tasks of Deletang et al.'s Chomsky-hierarchy suite (ICLR 2023): even_pairs, cycle_navigation.

``parity_check`` lives beside ``parity`` (lrnn/tasks/parity.py) and the simple modular arithmetic beside
the other arithmetic tasks (lrnn/tasks/arithmetic.py). All answer once, at the last real token.
"""

from __future__ import annotations

import torch

from lrnn.tasks.base import Task, TaskBatch, final_targets, id_list, random_symbols


class EvenPairs(Task):
    """A string over {a, b}; is the number of 'ab' and 'ba' substrings even?

    Vocabulary: 0 = a, 1 = b, 2 = padding. One answer at the last symbol:
    ``sum_t [x_t != x_{t+1}] mod 2`` (class 0 = even, 1 = odd; Deletang's labels), which equals
    ``[first symbol != last symbol]`` because every change of symbol flips "same as the first".
    2 classes; any length >= 1.
    """

    name = "even_pairs"
    vocab_size = 3
    num_classes = 2
    pad_id = 2
    answer_positions = "final"
    description = ("random string over {a, b} (tokens 0 = a, 1 = b; 2 pads); answer at the last symbol: "
                   "number of 'ab' + 'ba' pairs mod 2, i.e. first != last (2 classes)")

    def _generate(self, lengths: torch.Tensor, generator: torch.Generator | None) -> TaskBatch:
        symbols, inputs = random_symbols(lengths, 2, self.pad_id, generator)
        last = symbols.gather(1, (lengths - 1)[:, None])[:, 0]
        answers = (symbols[:, 0] != last).long()
        return TaskBatch(inputs, final_targets(answers, lengths, inputs.shape[1]), lengths)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return "".join("ab"[i] for i in id_list(ids) if i != self.pad_id)


CYCLE_LENGTH = 5
CYCLE_MOVES = (0, 1, -1)
"""Move of each cycle_navigation token: 0 = stay, 1 = +1, 2 = -1. (Deletang's code uses token = move + 1;
the two differ only by a relabelling of the input tokens.)"""


class CycleNavigation(Task):
    """A walk on a 5-cycle starting at position 0; where does it end?

    Vocabulary: 0 = stay, 1 = step +1, 2 = step -1, 3 = padding. One answer at the last move:
    ``sum_t move(x_t) mod 5`` (classes 0..4 = the final position). 5 classes; any length >= 1.
    """

    name = "cycle_navigation"
    vocab_size = 4
    num_classes = CYCLE_LENGTH
    pad_id = 3
    answer_positions = "final"
    description = ("moves on a 5-cycle from 0 (tokens 0 = stay, 1 = +1, 2 = -1; 3 pads); answer at the "
                   "last move: the final position (5 classes)")

    def _generate(self, lengths: torch.Tensor, generator: torch.Generator | None) -> TaskBatch:
        symbols, inputs = random_symbols(lengths, 3, self.pad_id, generator)
        moves = torch.tensor(CYCLE_MOVES)[symbols]  # padded positions hold symbol 0 = stay: no effect
        answers = moves.sum(dim=1) % CYCLE_LENGTH
        return TaskBatch(inputs, final_targets(answers, lengths, inputs.shape[1]), lengths)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return " ".join(("0", "+1", "-1")[i] for i in id_list(ids) if i != self.pad_id)
