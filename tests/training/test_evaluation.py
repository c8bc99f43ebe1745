"""Length bins, scaled accuracy and the per-bin evaluation, checked against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from lrnn.tasks import IGNORE_INDEX, make_task
from lrnn.training import count_correct, evaluate, length_bins, scaled_accuracy
from lrnn.training.evaluation import Counts, summarise


def test_length_bins_by_hand():
    assert length_bins(40, 256, 3) == [(40, 111), (112, 183), (184, 256)]
    assert length_bins(1, 4, 4) == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert length_bins(5, 5, 1) == [(5, 5)]
    bins = length_bins(41, 500, 9)
    assert bins[0][0] == 41 and bins[-1][1] == 500
    assert all(b[0] == a[1] + 1 for a, b in zip(bins, bins[1:]))  # contiguous, no gaps or overlaps


@pytest.mark.parametrize("args", [(10, 9, 1), (1, 4, 5), (1, 4, 0)])
def test_length_bins_reject_bad_ranges(args):
    with pytest.raises(ValueError):
        length_bins(*args)


def test_scaled_accuracy_by_hand():
    assert scaled_accuracy(0.5, 2) == 0.0
    assert scaled_accuracy(1.0, 2) == 1.0
    assert scaled_accuracy(0.75, 2) == pytest.approx(0.5)
    assert scaled_accuracy(0.6, 5) == pytest.approx((0.6 - 0.2) / 0.8)  # = 0.5
    assert scaled_accuracy(0.0, 2) == -1.0
    with pytest.raises(ValueError, match="num_classes"):
        scaled_accuracy(0.5, 1)


def test_count_correct_by_hand():
    # 3 sequences, T = 3, 2 classes. Predictions (argmax): [[0, 1, 1], [1, 1, 0], [0, 0, 0]].
    logits = torch.tensor([[[1., 0], [0, 1], [0, 1]],
                           [[0, 1], [0, 1], [1, 0]],
                           [[1, 0], [1, 0], [1, 0]]])
    ignore = IGNORE_INDEX
    targets = torch.tensor([[0, 1, 0],              # 2 of 3 right -> sequence wrong
                            [1, 1, ignore],         # 2 of 2 right -> sequence right
                            [ignore, ignore, ignore]])  # nothing supervised: not counted
    c = count_correct(logits, targets)
    assert (c.tokens_correct, c.tokens_total, c.sequences_correct, c.sequences_total) == (4, 5, 1, 2)
    m = summarise(c, num_classes=2, answer_positions="every")
    assert m["accuracy"] == pytest.approx(0.8) and m["sequence_accuracy"] == pytest.approx(0.5)
    assert m["scaled_accuracy"] == pytest.approx(0.6) and m["score"] == pytest.approx(0.5)
    assert summarise(c, 2, "final")["score"] == pytest.approx(0.6)
    assert summarise(Counts(), 2, "final")["accuracy"] == 0.0  # empty bins do not divide by zero


class _Oracle(torch.nn.Module):
    """Answers parity exactly (or always class 0): logits from the true running parity."""

    def __init__(self, wrong: bool = False):
        super().__init__()
        self.wrong = wrong

    def forward(self, ids):
        parity = (ids == 1).long().cumsum(1) % 2
        if self.wrong:
            parity = torch.zeros_like(parity)
        return torch.nn.functional.one_hot(parity, 2).float()


def test_evaluate_perfect_and_constant_models():
    task = make_task("parity")
    perfect = evaluate(_Oracle(), task, 40, 100, 3, samples_per_bin=20, batch_size=7)
    assert [(b["min_length"], b["max_length"]) for b in perfect["bins"]] == length_bins(40, 100, 3)
    assert all(b["scaled_accuracy"] == 1.0 and b["sequences"] == 20 for b in perfect["bins"])
    assert perfect["overall"]["sequences"] == 60 and perfect["overall"]["score"] == 1.0
    constant = evaluate(_Oracle(wrong=True), task, 40, 100, 3, samples_per_bin=200)
    # Always answering "even" is right on about half the sequences: scaled accuracy near 0.
    assert abs(constant["overall"]["scaled_accuracy"]) < 0.2


def test_evaluation_set_is_deterministic(fake_tasks):
    task = make_task("prefix_parity_test")
    model = _Oracle(wrong=True)
    a = evaluate(model, task, 5, 30, 2, samples_per_bin=16, seed=3)
    b = evaluate(model, task, 5, 30, 2, samples_per_bin=16, seed=3, batch_size=5)
    c = evaluate(model, task, 5, 30, 2, samples_per_bin=16, seed=4)
    assert a == b
    assert a != c
    assert a["answer_positions"] == "every" and a["overall"]["score"] == a["overall"]["sequence_accuracy"]
