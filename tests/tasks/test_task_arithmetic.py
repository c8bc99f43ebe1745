"""Arithmetic tasks: answers re-derived from the decoded text (Python eval / a left-to-right fold)."""

from __future__ import annotations

import re

import pytest
import torch

from lrnn.tasks import make_task
from lrnn.tasks.arithmetic import SYMBOLS, _flat_value


def _examples(name: str, batch: int = 64, lo: int = 2, hi: int = 40, seed: int = 0):
    """(decoded text, answer, length) of each sequence of one sampled batch."""
    task = make_task(name)
    sample = task.sample(batch, max(lo, task.min_supported_length), hi, generator=torch.Generator().manual_seed(seed))
    for row in range(batch):
        length = int(sample.lengths[row])
        text = task.decode(sample.inputs[row])
        assert len(text.split()) == length  # one symbol per real token, padding dropped
        yield text, int(sample.targets[row, length - 1]), length


def _fold_left_to_right(text: str) -> int:
    tokens = text.split()
    value = int(tokens[0])
    for op, n in zip(tokens[1::2], tokens[2::2]):
        value = {"+": value + int(n), "-": value - int(n), "*": value * int(n)}[op]
    return value % 5


@pytest.mark.parametrize("name", ["arithmetic", "modular_arithmetic_simple"])
def test_precedence_answers_match_python_eval(name):
    ops_seen = set()
    for text, answer, length in _examples(name):
        expression = text.removesuffix(" =") if name == "arithmetic" else text
        assert text.endswith(" =") == (name == "arithmetic")
        tokens = expression.split()
        assert all(tok in "01234" for tok in tokens[::2]) and all(tok in "+-*" for tok in tokens[1::2])
        ops_seen.update(tokens[1::2])
        assert answer == eval(expression) % 5, text  # noqa: S307 - our own digits and operators only
    assert ops_seen == {"+", "-", "*"}


def test_left_to_right_answers_match_fold():
    differs = 0
    for text, answer, _ in _examples("modular_arithmetic_left_to_right", batch=128):
        assert answer == _fold_left_to_right(text), text
        differs += answer != eval(text) % 5  # noqa: S307
    assert differs > 10  # really a different task from the precedence one


def test_documented_examples():
    # Deletang et al.'s docstring examples (mod 5) under precedence: 1 + 2 * 3 = 2, 1 - 1 - 1 = 4.
    task = make_task("modular_arithmetic_simple")
    ids = {s: i for i, s in enumerate(SYMBOLS)}
    for text, expected, precedence in [("1 + 2 * 3", 2, True), ("1 - 1 - 1", 4, True), ("1 + 2 * 3", 4, False),
                                       ("0 * 1 + 4 * 3 - 2", 0, True)]:
        tokens = [ids[s] for s in text.split()]
        numbers, ops = torch.tensor([tokens[::2]]), torch.tensor([tokens[1::2]])
        value = _flat_value(numbers, ops, torch.tensor([numbers.shape[1]]), precedence)
        assert int(value) == expected, text
    assert task.decode(torch.tensor([1, 5, 2, 7, 3, task.pad_id])) == "1 + 2 * 3"


def test_brackets_answers_match_python_eval_and_lengths_are_exact():
    symbols_seen = set()
    for text, answer, length in _examples("arithmetic_brackets", batch=128, hi=60):
        assert text.endswith(" =") and text.count("=") == 1
        expression = text.removesuffix(" =")
        assert len(expression.split()) == length - 1
        assert "*" not in expression
        depth = 0
        for symbol in expression.split():  # brackets balance and never close early
            depth += {"(": 1, ")": -1}.get(symbol, 0)
            assert depth >= 0
        assert depth == 0
        symbols_seen.update(expression.split())
        assert answer == eval(expression) % 5, text  # noqa: S307
    assert symbols_seen == set("01234+-()")


def test_brackets_short_expressions_follow_the_grammar():
    # Lengths 1..4 of the expression are d, - d, ( d ), ( - d ); length 5 is ( d op d ).
    shapes = {2: r"^\d =$", 3: r"^- \d =$", 4: r"^\( \d \) =$", 5: r"^\( - \d \) =$", 6: r"^\( \d [+-] \d \) =$"}
    for length, pattern in shapes.items():
        for text, _, _ in _examples("arithmetic_brackets", batch=16, lo=length, hi=length):
            assert re.match(pattern, text), (length, text)


@pytest.mark.parametrize("name", ["arithmetic", "arithmetic_brackets", "modular_arithmetic_simple",
                                  "modular_arithmetic_left_to_right"])
def test_every_class_occurs(name):
    task = make_task(name)
    batch = task.sample(400, 10, 30, generator=torch.Generator().manual_seed(2))
    answers = batch.targets[torch.arange(400), batch.lengths - 1]
    counts = torch.bincount(answers, minlength=5)
    assert (counts > 20).all(), counts
