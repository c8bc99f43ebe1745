"""Modular arithmetic (mod 5): flat expressions ``n op n op ... n`` and bracketed expression trees.

All arithmetic tasks share one vocabulary (``SYMBOLS``; ids 0-4 are the digits, so a digit's id is its
value) and answer once, at the last real token, with the expression's value mod 5 (5 classes):

* ``arithmetic``: ``n op n ... n =`` with op in {+, -, *} and the usual precedence (* before + and -), the
  task of arXiv 2411.12537. Length counts the ``=``, so only even lengths exist.
* ``modular_arithmetic_simple``: Deletang et al.'s regular "modular arithmetic (simple)": the same
  expressions without the ``=``, so only odd lengths. Their reference code evaluates ``*`` before ``+``
  and ``-`` (their docstring example ``1 + 2 * 3 -> 2``), and so does this task.
* ``modular_arithmetic_left_to_right``: the same strings folded left to right without precedence,
  ``((n0 op1 n1) op2 n2) ...``: every (op, n) pair is one map on Z_5, a 5-state automaton.
* ``arithmetic_brackets``: random expression trees with ( ), unary minus, + and -, then ``=``; exact
  lengths (Deletang et al.'s generator, as used by arXiv 2411.12537).
"""

from __future__ import annotations

import torch

from lrnn.tasks.base import Task, TaskBatch, final_targets, id_list, lengths_of_parity

MODULUS = 5
SYMBOLS = ("0", "1", "2", "3", "4", "+", "-", "*", "(", ")", "=")
"""Token id -> symbol for every arithmetic task; the padding id is ``len(SYMBOLS)`` = 11."""
PLUS, MINUS, TIMES, LEFT, RIGHT, EQUALS = range(MODULUS, MODULUS + 6)
PAD = len(SYMBOLS)


class _ArithmeticTask(Task):
    """Shared vocabulary, padding and decoding of the arithmetic tasks."""

    vocab_size = len(SYMBOLS) + 1
    num_classes = MODULUS
    pad_id = PAD
    answer_positions = "final"

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """The expression as text with spaces, e.g. ``"1 + 2 * 3 ="``; Python's ``eval`` reads it."""
        return " ".join(SYMBOLS[i] for i in id_list(ids) if i != self.pad_id)


def _flat_value(numbers: torch.Tensor, ops: torch.Tensor, num_operands: torch.Tensor,
                precedence: bool) -> torch.Tensor:
    """Value mod 5 [B] of ``numbers[:, 0] ops[:, 0] numbers[:, 1] ...`` up to ``num_operands`` operands.

    numbers [B, K] in 0..4, ops [B, K-1] in {PLUS, MINUS, TIMES}, num_operands [B] in 1..K. With
    precedence the state is (s, m): s the sum of the finished terms, m the signed current product
    (``+ n``: s += m, m = n; ``- n``: s += m, m = -n; ``* n``: m *= n); the prefix value is s + m.
    Without precedence the state is the value v, and ``op n`` maps v to ``v op n``. One step per operand,
    vectorised over the batch; each row's value is read at its own last operand.
    """
    s = torch.zeros_like(numbers[:, 0])
    m = numbers[:, 0]
    values = [m]
    for k in range(1, numbers.shape[1]):
        n, op = numbers[:, k], ops[:, k - 1]
        if precedence:
            additive = op != TIMES
            s = torch.where(additive, (s + m) % MODULUS, s)
            m = torch.where(op == TIMES, m * n, torch.where(op == PLUS, n, -n)) % MODULUS
            values.append((s + m) % MODULUS)
        else:
            v = values[-1]
            values.append(torch.where(op == TIMES, v * n, torch.where(op == PLUS, v + n, v - n)) % MODULUS)
    return torch.stack(values, dim=1).gather(1, (num_operands - 1)[:, None])[:, 0]


class FlatArithmetic(_ArithmeticTask):
    """``n op n op ... n`` (optionally followed by ``=``) with n in 0..4 and op in {+, -, *}; value mod 5.

    Vocabulary: ``SYMBOLS`` (0-4 digits, 5 +, 6 -, 7 *, 10 =; 8, 9 are brackets, unused here), 11 pads.
    One answer at the last token (the ``=`` when present). 5 classes.

    Lengths: k operands and k - 1 operators make 2k - 1 tokens, plus 1 for ``=``. So ``arithmetic``
    (with ``=``) has only even lengths >= 2 and the others only odd lengths >= 1; ``sample`` draws
    uniformly over the realisable lengths in [min_length, max_length] (a range with none is a
    ValueError), so ``lengths`` is always the true length.
    """

    def __init__(self, name: str, precedence: bool, equals: bool, description: str) -> None:
        self.name = name
        self.precedence = precedence
        self.equals = equals
        self.description = description
        self.min_supported_length = 2 if equals else 1

    def _draw_lengths(self, batch_size: int, min_length: int, max_length: int,
                      generator: torch.Generator | None) -> torch.Tensor:
        return lengths_of_parity(batch_size, min_length, max_length, 0 if self.equals else 1, generator,
                                 self.name)

    def _generate(self, lengths: torch.Tensor, generator: torch.Generator | None) -> TaskBatch:
        expression_lengths = lengths - int(self.equals)
        num_operands = (expression_lengths + 1) // 2
        b, k = lengths.shape[0], int(num_operands.max())
        numbers = torch.randint(0, MODULUS, (b, k), generator=generator)
        ops = PLUS + torch.randint(0, 3, (b, k - 1), generator=generator)
        t = int(lengths.max())  # = 2k - 1 + [equals]
        inputs = torch.full((b, t), PAD, dtype=torch.long)
        inputs[:, 0:2 * k - 1:2] = numbers
        inputs[:, 1:2 * k - 1:2] = ops
        position = torch.arange(inputs.shape[1])[None, :]
        inputs = inputs.masked_fill(position >= expression_lengths[:, None], PAD)
        if self.equals:
            inputs = inputs.masked_fill(position == expression_lengths[:, None], EQUALS)
        answers = _flat_value(numbers, ops, num_operands, self.precedence)
        return TaskBatch(inputs, final_targets(answers, lengths, t), lengths)


def arithmetic() -> FlatArithmetic:
    """arXiv 2411.12537's modular arithmetic without brackets (precedence, final ``=``)."""
    return FlatArithmetic(
        "arithmetic", precedence=True, equals=True,
        description="n op n ... n = with n in 0..4, op in {+,-,*}, * before + and - (tokens 0-4 digits, "
                    "5 + 6 - 7 * 10 =; 11 pads); answer at the '=': value mod 5 (5 classes); even lengths only")


def modular_arithmetic_simple() -> FlatArithmetic:
    """Deletang et al.'s modular arithmetic (simple): precedence, no ``=``, odd lengths."""
    return FlatArithmetic(
        "modular_arithmetic_simple", precedence=True, equals=False,
        description="n op n ... n with n in 0..4, op in {+,-,*}, * before + and - as in Deletang et al.'s "
                    "code (tokens 0-4 digits, 5 + 6 - 7 *; 11 pads); answer at the last digit: value mod 5 "
                    "(5 classes); odd lengths only")


def modular_arithmetic_left_to_right() -> FlatArithmetic:
    """The simple task's strings evaluated left to right without precedence."""
    return FlatArithmetic(
        "modular_arithmetic_left_to_right", precedence=False, equals=False,
        description="n op n ... n with n in 0..4, op in {+,-,*}, evaluated left to right without "
                    "precedence (tokens 0-4 digits, 5 + 6 - 7 *; 11 pads); answer at the last digit: "
                    "value mod 5 (5 classes); odd lengths only")


class ArithmeticBrackets(_ArithmeticTask):
    """Random bracketed expressions over 0..4 with unary minus, + and -, then ``=``; value mod 5.

    Vocabulary: ``SYMBOLS`` (0-4 digits, 5 +, 6 -, 8 (, 9 ), 10 =; 7 * unused), 11 pads. One answer at
    the ``=`` (the last token). 5 classes. Any length >= 2: the expression has exactly length - 1 tokens.

    Generator (Deletang et al.'s, recursive in the length E of a sub-expression): E = 1..4 give ``d``,
    ``- d``, ``( d )``, ``( - d )`` with d uniform in 0..4; E >= 5 gives ``( left op right )`` with
    len(left) uniform in [1, E - 4], len(right) = E - 3 - len(left) and op uniform in {+, -}.
    Vectorised: each loop step expands every pending sub-expression of the whole batch (one step per
    tree level). Without ``*`` the value is a signed sum of the digits, the sign of a digit being the
    product of the unary minuses and right-hand sides of ``-`` above it, so signs are carried down the
    tree and no bottom-up pass is needed.
    """

    name = "arithmetic_brackets"
    min_supported_length = 2
    description = ("bracketed expression trees over 0..4 with unary minus, + and -, then '=' (tokens 0-4 "
                   "digits, 5 + 6 - 8 ( 9 ) 10 =; 11 pads); answer at the '=': value mod 5 (5 classes); "
                   "any length >= 2")

    def _generate(self, lengths: torch.Tensor, generator: torch.Generator | None) -> TaskBatch:
        b, t = lengths.shape[0], int(lengths.max())
        flat = torch.full((b * t,), PAD, dtype=torch.long)
        rows = torch.arange(b)
        answers = torch.zeros(b, dtype=torch.long)
        # Pending sub-expressions: flat start index, length, sign (+1 / -1), batch row.
        start, size, sign, row = rows * t, lengths - 1, torch.ones(b, dtype=torch.long), rows
        flat[start + size] = EQUALS
        while start.numel() > 0:
            leaf = size <= 4
            answers += self._write_leaves(flat, start[leaf], size[leaf], sign[leaf], row[leaf], b, generator)
            start, size, sign, row = start[~leaf], size[~leaf], sign[~leaf], row[~leaf]
            left = 1 + (torch.rand(size.shape, generator=generator, dtype=torch.float64) * (size - 4)).long()
            minus = torch.randint(0, 2, size.shape, generator=generator).bool()
            flat[start] = LEFT
            flat[start + 1 + left] = torch.where(minus, MINUS, PLUS)
            flat[start + size - 1] = RIGHT
            right_sign = torch.where(minus, -sign, sign)
            start = torch.cat([start + 1, start + 2 + left])
            size = torch.cat([left, size - 3 - left])
            sign = torch.cat([sign, right_sign])
            row = torch.cat([row, row])
        return TaskBatch(flat.view(b, t), final_targets(answers % MODULUS, lengths, t), lengths)

    @staticmethod
    def _write_leaves(flat: torch.Tensor, start: torch.Tensor, size: torch.Tensor, sign: torch.Tensor,
                      row: torch.Tensor, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """Write leaves of length 1..4 (``d``, ``- d``, ``( d )``, ``( - d )``); their signed digits summed
        per batch row [B]."""
        digit = torch.randint(0, MODULUS, size.shape, generator=generator)
        bracketed = size >= 3
        negated = (size == 2) | (size == 4)
        flat[start[bracketed]] = LEFT
        flat[(start + size - 1)[bracketed]] = RIGHT
        flat[(start + bracketed.long())[negated]] = MINUS
        flat[start + bracketed.long() + negated.long()] = digit
        signed = torch.where(negated, -sign, sign) * digit
        return torch.zeros(batch_size, dtype=torch.long).index_add_(0, row, signed)
