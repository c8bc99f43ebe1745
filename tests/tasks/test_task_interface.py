"""Every state-tracking task: shapes, lengths, padding, IGNORE_INDEX placement, determinism, bad input."""

from __future__ import annotations

import pytest
import torch

from lrnn.tasks import IGNORE_INDEX, TASKS, Task, make_task
from lrnn.tasks.groups import GROUP_TASKS

STATE_TRACKING = ["parity", "parity_check", "even_pairs", "cycle_navigation", "arithmetic", "arithmetic_brackets",
                  "modular_arithmetic_simple", "modular_arithmetic_left_to_right",
                  "s3", "s4", "a5", "s5", "z60", "a4xz5", "s5_swaps", "s5_at_most_3", "s5_3cycles"]
EVEN_ONLY = {"arithmetic"}
ODD_ONLY = {"modular_arithmetic_simple", "modular_arithmetic_left_to_right"}


def _sample(name: str, seed: int = 0, batch: int = 48, lo: int = 3, hi: int = 41):
    task = make_task(name)
    return task, task.sample(batch, lo, hi, generator=torch.Generator().manual_seed(seed))


def test_all_registered():
    assert set(STATE_TRACKING) <= set(TASKS)


@pytest.mark.parametrize("name", STATE_TRACKING)
def test_task_attributes(name):
    task = make_task(name)
    assert isinstance(task, Task) and task.name == name
    assert task.answer_positions in ("final", "every")
    assert 0 <= task.pad_id < task.vocab_size
    assert task.num_classes >= 2 and task.description
    assert task.answer_positions == ("every" if name in GROUP_TASKS else "final")


@pytest.mark.parametrize("name", STATE_TRACKING)
def test_shapes_lengths_padding_targets(name):
    task, batch = _sample(name)
    b, t = batch.inputs.shape
    assert batch.targets.shape == (b, t) and batch.lengths.shape == (b,)
    assert batch.inputs.dtype == batch.targets.dtype == batch.lengths.dtype == torch.long
    assert t == int(batch.lengths.max())
    assert int(batch.lengths.min()) >= 3 and t <= 41
    assert len(set(batch.lengths.tolist())) > 3  # lengths really vary
    if name in EVEN_ONLY:
        assert (batch.lengths % 2 == 0).all()
    if name in ODD_ONLY:
        assert (batch.lengths % 2 == 1).all()
    real = torch.arange(t)[None, :] < batch.lengths[:, None]
    # inputs: real tokens exactly before each length, padding after
    assert (batch.inputs[~real] == task.pad_id).all()
    assert (batch.inputs[real] != task.pad_id).all()
    assert ((batch.inputs >= 0) & (batch.inputs < task.vocab_size)).all()
    supervised = batch.targets != IGNORE_INDEX
    if task.answer_positions == "final":
        expected = torch.zeros_like(supervised)
        expected[torch.arange(b), batch.lengths - 1] = True
        assert torch.equal(supervised, expected)
    else:
        assert torch.equal(supervised, real)
    values = batch.targets[supervised]
    assert ((values >= 0) & (values < task.num_classes)).all()


@pytest.mark.parametrize("name", STATE_TRACKING)
def test_determinism_given_seed(name):
    _, first = _sample(name, seed=3)
    _, again = _sample(name, seed=3)
    for field in ("inputs", "targets", "lengths"):
        assert torch.equal(getattr(first, field), getattr(again, field))
    task = make_task(name)
    one, two = (task.sample(8, 10, 11, generator=torch.Generator().manual_seed(s)) for s in (5, 6))
    assert not torch.equal(one.inputs, two.inputs)  # the seed matters


@pytest.mark.parametrize("name", STATE_TRACKING)
def test_fixed_length(name):
    task = make_task(name)
    length = 8 if name in EVEN_ONLY else 9
    batch = task.sample(5, length, generator=torch.Generator().manual_seed(1))
    assert batch.inputs.shape == (5, length) and (batch.lengths == length).all()


@pytest.mark.parametrize("name", ["parity", "cycle_navigation", "arithmetic_brackets", "s3", "s5_swaps"])
def test_shortest_length(name):
    task = make_task(name)
    batch = task.sample(4, task.min_supported_length, generator=torch.Generator().manual_seed(0))
    assert (batch.lengths == task.min_supported_length).all()


@pytest.mark.parametrize("name", ["arithmetic", "modular_arithmetic_simple"])
def test_length_parity_is_honoured_not_rounded(name):
    task = make_task(name)
    wrong = 7 if name in EVEN_ONLY else 8
    with pytest.raises(ValueError, match="only has (even|odd) lengths"):
        task.sample(4, wrong, wrong)
    counts = torch.bincount(task.sample(4000, wrong, wrong + 4, generator=torch.Generator().manual_seed(0)).lengths)
    realisable = [n for n in range(wrong, wrong + 5) if (n % 2 == 0) == (name in EVEN_ONLY)]
    assert torch.nonzero(counts).flatten().tolist() == realisable
    assert min(counts[realisable]) > 1000  # uniform over the two realisable lengths


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(batch_size=0, min_length=4), ValueError, "batch_size"),
    (dict(batch_size=2.0, min_length=4), TypeError, "batch_size"),
    (dict(batch_size=2, min_length=True), TypeError, "min_length"),
    (dict(batch_size=2, min_length=0), ValueError, "min_length"),
    (dict(batch_size=2, min_length=6, max_length=4), ValueError, "max_length"),
])
@pytest.mark.parametrize("name", ["arithmetic", "arithmetic_brackets", "even_pairs", "s5", "a4xz5"])
def test_bad_arguments(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        make_task(name).sample(**kwargs)


def test_arithmetic_minimum_lengths():
    with pytest.raises(ValueError, match="min_length must be >= 2"):
        make_task("arithmetic").sample(2, 1)
    with pytest.raises(ValueError, match="min_length must be >= 2"):
        make_task("arithmetic_brackets").sample(2, 1)


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task 's7'"):
        make_task("s7")


@pytest.mark.parametrize("name", ["arithmetic", "arithmetic_brackets", "cycle_navigation", "s4"])
def test_batches_are_contiguous(name):
    _, batch = _sample(name)
    assert batch.inputs.is_contiguous() and batch.targets.is_contiguous()
