"""ListOps (Nangia & Bowman 2018; the LRA version): nested list operations over digits, generated.

Grammar: ``expr := digit | [OP expr ... expr ]`` with OP in MIN, MAX, MED (the upper median,
``sorted(args)[len(args) // 2]``) and SM (sum mod 10). Tokens: 0-9 digits, 10 ``[MIN``, 11 ``[MAX``,
12 ``[MED``, 13 ``[SM``, 14 ``]``, 15 padding. The answer (the value of the whole expression, 10
classes) is at the last token (the closing bracket).

Lengths are exact: a sequence of length L is one bracketed expression of L tokens (L >= 3). Its
arguments are split at random (each a digit, or a nested expression of 3..remaining tokens; at most
``max_args`` per operator), so nesting depth grows like log L.
"""

from __future__ import annotations

import random

import torch

from lrnn.tasks.base import Task, TaskBatch, final_targets, id_list
from lrnn.validation import check_int

OPERATORS = ("MIN", "MAX", "MED", "SM")
OPEN = {name: 10 + i for i, name in enumerate(OPERATORS)}
CLOSE = 14
PAD = 15


def apply_operator(name: str, args: list[int]) -> int:
    """The value of ``[name args... ]`` over digit values."""
    if name == "MIN":
        return min(args)
    if name == "MAX":
        return max(args)
    if name == "MED":
        return sorted(args)[len(args) // 2]
    return sum(args) % 10


class ListOps(Task):
    """Generated ListOps. ``max_args``: most arguments per operator; ``digit_probability``: chance that an
    argument with room for a nested expression is a digit anyway."""

    name = "listops"
    vocab_size = 16
    num_classes = 10
    pad_id = PAD
    answer_positions = "final"
    min_supported_length = 3
    description = ("nested [MIN|MAX|MED|SM ... ] over digits (tokens 0-9 digits, 10-13 operators, 14 ']', "
                   "15 pads); answer at the last token: the value of the expression (10 classes)")

    def __init__(self, max_args: int = 5, digit_probability: float = 0.5) -> None:
        check_int("max_args", max_args, 2)
        if not 0 <= digit_probability < 1:
            raise ValueError(f"digit_probability must be in [0, 1), got {digit_probability!r}")
        self.max_args, self.digit_probability = max_args, digit_probability

    def _generate(self, lengths: torch.Tensor, generator: torch.Generator | None) -> TaskBatch:
        t = int(lengths.max())
        inputs = torch.full((lengths.shape[0], t), self.pad_id, dtype=torch.long)
        answers = torch.empty(lengths.shape[0], dtype=torch.long)
        # One Python RNG per batch, seeded from the torch generator: the batch stays reproducible.
        rng = random.Random(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))
        for row, length in enumerate(lengths.tolist()):
            tokens, value = self._expression(length, rng)
            inputs[row, :length] = torch.tensor(tokens)
            answers[row] = value
        return TaskBatch(inputs, final_targets(answers, lengths, t), lengths)

    def _expression(self, length: int, rng: random.Random) -> tuple[list[int], int]:
        """(tokens, value) of a random expression of exactly ``length`` tokens (length 1 or >= 3)."""
        if length == 1:
            digit = rng.randrange(10)
            return [digit], digit
        op = rng.choice(OPERATORS)
        tokens, values = [OPEN[op]], []
        for part in self._split(length - 2, rng):
            sub_tokens, sub_value = self._expression(part, rng)
            tokens += sub_tokens
            values.append(sub_value)
        return tokens + [CLOSE], apply_operator(op, values)

    def _split(self, total: int, rng: random.Random) -> list[int]:
        """Argument lengths (each 1 or >= 3) summing to ``total`` >= 1, at most ``max_args`` of them
        unless ``total`` leaves no other choice."""
        parts: list[int] = []
        while total > 0:
            last = len(parts) >= self.max_args - 1
            if last and total != 2:
                size = total  # the last argument takes the rest (a digit or a nested expression)
            elif total < 3 or rng.random() < self.digit_probability:
                size = 1
            else:
                size = rng.randint(3, total)
            parts.append(size)
            total -= size
        rng.shuffle(parts)
        return parts

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        names = {v: f"[{k}" for k, v in OPEN.items()} | {CLOSE: "]"}
        return " ".join(names.get(i, str(i)) for i in id_list(ids) if i != self.pad_id)
