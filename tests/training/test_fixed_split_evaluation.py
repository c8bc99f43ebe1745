"""Evaluation of a task with a fixed split (``Task.fixed_items``): every item is scored exactly once.

Before, the 359 held-out digit images were evaluated by drawing ``eval_samples`` (1024) of them with
replacement; now the count and the score are those of the split itself.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from lrnn.tasks import Task, TaskBatch, make_task
from lrnn.tasks.base import final_targets
from lrnn.training import evaluate
from lrnn.training.evaluation import split_into_bins


class _PixelSumGuess(torch.nn.Module):
    """Predicts class ``sum(input ids) mod 10`` at every position, and records every row it is run on."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[int, ...]] = []

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.seen += [tuple(row) for row in ids.tolist()]
        guess = ids.sum(dim=1, keepdim=True).expand_as(ids) % 10
        return torch.nn.functional.one_hot(guess, 10).float()


def test_every_test_image_is_scored_exactly_once_and_the_score_is_the_hand_computed_accuracy():
    pytest.importorskip("sklearn")
    task = make_task("sequential_digits_test")
    model = _PixelSumGuess()
    # eval_samples = 1024 as in docs/results/s4d/sweep.toml: a fixed split ignores it (and the seed).
    result = evaluate(model, task, 64, 64, 1, samples_per_bin=1024, batch_size=100)

    assert len(model.seen) == 359 and result["items_scored"] == 359 and result["evaluation_set"] == "fixed"
    assert Counter(model.seen) == Counter(tuple(row) for row in task.pixels.tolist())
    assert result["overall"]["sequences"] == 359 and result["bins"][0]["sequences"] == 359

    right = sum(sum(pixels) % 10 == label for pixels, label in zip(task.pixels.tolist(), task.labels.tolist()))
    assert result["overall"]["accuracy"] == pytest.approx(right / 359)
    assert result["overall"]["scaled_accuracy"] == pytest.approx((right / 359 - 0.1) / 0.9)
    # The seed and the batch size change nothing: the set is the split.
    assert evaluate(_PixelSumGuess(), task, 64, 64, 1, samples_per_bin=7, seed=99, batch_size=359) == result


def test_generated_tasks_still_draw_samples_per_bin():
    result = evaluate(_Parity(), make_task("parity"), 4, 9, 2, samples_per_bin=6, batch_size=4)
    assert result["evaluation_set"] == "drawn" and result["items_scored"] == 12
    assert [b["sequences"] for b in result["bins"]] == [6, 6]


class _Parity(torch.nn.Module):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot((ids == 1).long().cumsum(1) % 2, 2).float()


class _FiveItems(Task):
    """A fixed split of five sequences of lengths 2, 3, 3, 5, 6; answer = the first token (classes 0-3)."""

    name = "five_items_test"
    vocab_size, num_classes, pad_id, answer_positions = 5, 4, 4, "final"
    LENGTHS = [2, 3, 3, 5, 6]

    def fixed_items(self) -> TaskBatch:
        lengths = torch.tensor(self.LENGTHS)
        inputs = torch.full((5, 6), self.pad_id)
        for row, length in enumerate(self.LENGTHS):
            inputs[row, :length] = torch.arange(row, row + length) % 4
        return TaskBatch(inputs, final_targets(inputs[:, 0], lengths, 6), lengths)

    def _generate(self, lengths, generator):
        raise AssertionError("a fixed split is never sampled by the evaluation")


class _AnswerFirstToken(torch.nn.Module):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(ids[:, :1].expand_as(ids) % 4, 4).float()


def test_a_fixed_split_is_binned_by_length_and_scored_once():
    result = evaluate(_AnswerFirstToken(), _FiveItems(), 2, 6, 2, samples_per_bin=100, batch_size=2)
    assert [(b["min_length"], b["max_length"], b["sequences"]) for b in result["bins"]] == [(2, 3, 3), (4, 6, 2)]
    assert result["items_scored"] == 5 and result["overall"]["accuracy"] == 1.0
    groups = split_into_bins(_FiveItems().fixed_items(), [(2, 3), (4, 6)], "five")
    assert [g.lengths.tolist() for g in groups] == [[2, 3, 3], [5, 6]]


@pytest.mark.parametrize("lo,hi,bins,named", [(3, 6, 1, "min_length/max_length"), (2, 5, 1, "min_length/max_length"),
                                              (2, 6, 5, "num_bins = 5")])
def test_a_fixed_split_refuses_ranges_that_drop_items_or_leave_a_bin_empty(lo, hi, bins, named):
    with pytest.raises(ValueError, match=named):
        evaluate(_AnswerFirstToken(), _FiveItems(), lo, hi, bins, samples_per_bin=1)
