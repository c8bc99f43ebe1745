"""Deletang et al.'s regular tasks: answers re-derived from the decoded strings."""

from __future__ import annotations

import pytest
import torch

from lrnn.tasks import make_task


def _examples(name: str, batch: int = 128, lo: int = 1, hi: int = 50, seed: int = 0):
    task = make_task(name)
    sample = task.sample(batch, lo, hi, generator=torch.Generator().manual_seed(seed))
    for row in range(batch):
        length = int(sample.lengths[row])
        yield task.decode(sample.inputs[row]), int(sample.targets[row, length - 1]), length


def test_even_pairs_counts_ab_and_ba():
    for text, answer, length in _examples("even_pairs"):
        assert len(text) == length and set(text) <= {"a", "b"}
        pairs = sum(text[i:i + 2] in ("ab", "ba") for i in range(length - 1))
        assert answer == pairs % 2, text
        assert answer == int(text[0] != text[-1])


def test_parity_check_counts_bs():
    for text, answer, length in _examples("parity_check"):
        assert len(text) == length and answer == text.count("b") % 2, text


def test_parity_check_is_parity_with_letters():
    a, b = (make_task(name).sample(16, 1, 30, generator=torch.Generator().manual_seed(7))
            for name in ("parity", "parity_check"))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)


def test_cycle_navigation_walks_the_cycle():
    for text, answer, length in _examples("cycle_navigation"):
        position = 0
        moves = text.split()
        assert len(moves) == length
        for move in moves:
            position = (position + int(move)) % 5  # "0", "+1", "-1"
        assert answer == position, text


@pytest.mark.parametrize("name, classes", [("even_pairs", 2), ("parity_check", 2), ("cycle_navigation", 5)])
def test_every_class_occurs(name, classes):
    answers = [answer for _, answer, _ in _examples(name, batch=300, lo=5, hi=30)]
    counts = torch.bincount(torch.tensor(answers), minlength=classes)
    assert counts.shape == (classes,) and (counts > 20).all(), counts
