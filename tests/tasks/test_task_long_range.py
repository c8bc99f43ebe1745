"""Long-range tasks (ListOps, selective copy, associative recall, sequential digits): the answers are
re-derived here from the decoded inputs with independent code (a stack evaluator, plain loops)."""

from __future__ import annotations

import pytest
import torch

from lrnn.tasks import IGNORE_INDEX, TASKS, make_task
from lrnn.tasks.listops import ListOps
from lrnn.tasks.recall import AssociativeRecall, SelectiveCopy

LONG_RANGE = ["listops", "selective_copy", "associative_recall"]


def draw(name: str, lo: int, hi: int, batch: int = 40, seed: int = 0):
    task = make_task(name)
    return task, task.sample(batch, lo, hi, generator=torch.Generator().manual_seed(seed))


def rows(batch):
    """(real input ids, supervised {position: target}) per sequence, as Python lists."""
    for inputs, targets, length in zip(batch.inputs.tolist(), batch.targets.tolist(), batch.lengths.tolist()):
        yield inputs[:length], {i: y for i, y in enumerate(targets) if y != IGNORE_INDEX}, inputs[length:]


@pytest.mark.parametrize("name", LONG_RANGE)
def test_interface_shapes_padding_and_determinism(name):
    """Registered; [B, T] long tensors, T = max length, padding only past each length, targets in
    [0, num_classes), same seed -> same batch, another seed -> another batch."""
    assert name in TASKS
    task, batch = draw(name, 9, 61)
    b, t = batch.inputs.shape
    assert t == int(batch.lengths.max()) and batch.targets.shape == (b, t)
    real = torch.arange(t)[None] < batch.lengths[:, None]
    assert (batch.inputs[~real] == task.pad_id).all() and (batch.inputs[real] != task.pad_id).all()
    assert ((batch.inputs >= 0) & (batch.inputs < task.vocab_size)).all()
    supervised = batch.targets != IGNORE_INDEX
    assert (supervised <= real).all()
    assert ((batch.targets[supervised] >= 0) & (batch.targets[supervised] < task.num_classes)).all()
    assert len(set(batch.lengths.tolist())) > 3 and task.description
    _, again = draw(name, 9, 61)
    _, other = draw(name, 9, 61, seed=1)
    assert torch.equal(again.inputs, batch.inputs) and torch.equal(again.targets, batch.targets)
    assert not torch.equal(other.inputs, batch.inputs)


def evaluate_listops(text: str) -> int:
    """Stack evaluation of a decoded ListOps string (independent of the generator's recursion)."""
    stack: list = []
    for token in text.split():
        if token.startswith("["):
            stack.append([token[1:]])
        elif token == "]":
            op, *args = stack.pop()
            value = {"MIN": min, "MAX": max, "MED": lambda a: sorted(a)[len(a) // 2],
                     "SM": lambda a: sum(a) % 10}[op](args)
            if not stack:
                return value
            stack[-1].append(value)
        else:
            stack[-1].append(int(token))
    raise AssertionError(f"unbalanced expression: {text}")


def test_listops_answers_equal_a_stack_evaluation():
    """Every sequence is one balanced expression of exactly its length, ends with ']', the answer sits at
    its last token and equals a stack evaluation of the decoded text; nesting really happens."""
    task, batch = draw("listops", 3, 120, batch=64)
    depths = []
    for inputs, targets, _ in rows(batch):
        text = task.decode(inputs)
        assert len(text.split()) == len(inputs) and text.endswith("]")
        assert list(targets) == [len(inputs) - 1]
        assert targets[len(inputs) - 1] == evaluate_listops(text)
        depth = best = 0
        for token in text.split():
            depth += token.startswith("[") - (token == "]")
            best = max(best, depth)
            assert depth >= 0
        depths.append(best)
    assert max(depths) >= 3
    assert len(set(batch.targets[batch.targets != IGNORE_INDEX].tolist())) >= 6  # answers are varied


def test_selective_copy_targets_are_the_data_tokens_in_order():
    task, batch = draw("selective_copy", 8, 50)
    k = task.num_memorize
    for inputs, targets, _ in rows(batch):
        body, tail = inputs[:-k], inputs[-k:]
        data = [x for x in body if x < task.num_tokens]
        assert len(data) == k and all(x in (task.blank_id,) for x in body if x >= task.num_tokens)
        assert tail == [task.marker_id] * k
        assert targets == {len(inputs) - k + j: data[j] for j in range(k)}


def test_associative_recall_answer_is_the_latest_value_of_the_query_key():
    task, batch = draw("associative_recall", 3, 61)
    assert (batch.lengths % 2 == 1).all()
    for inputs, targets, _ in rows(batch):
        *pairs, query = inputs
        memory = {}
        for i in range(0, len(pairs), 2):
            key, value = pairs[i], pairs[i + 1]
            assert key < task.num_keys <= value < task.pad_id
            memory[key] = value - task.num_keys
        assert query in memory
        assert targets == {len(inputs) - 1: memory[query]}


def test_bad_task_arguments_raise_value_error():
    with pytest.raises(ValueError, match="max_args"):
        ListOps(max_args=1)
    with pytest.raises(ValueError, match="num_memorize"):
        SelectiveCopy(num_memorize=0)
    with pytest.raises(ValueError, match="num_keys"):
        AssociativeRecall(num_keys=1)
    with pytest.raises(ValueError, match="min_length"):
        make_task("selective_copy").sample(2, 7, 20)  # shorter than 2K = 8
    with pytest.raises(ValueError, match="odd"):
        make_task("associative_recall").sample(2, 4, 4)


def test_sequential_digits_are_the_sklearn_images_with_their_labels():
    """Each sampled sequence is one of scikit-learn's images (row-major pixels) with its label at the last
    pixel; the fixed train/test split is disjoint and covers all 1797 images; 4 levels bin 0..16."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    data = sklearn_datasets.load_digits()
    images = {tuple(int(v) for v in row): int(label) for row, label in zip(data.data, data.target)}
    task, batch = draw("sequential_digits", 64, 64, batch=32)
    assert batch.inputs.shape == (32, 64) and (batch.lengths == 64).all()
    for inputs, targets, _ in rows(batch):
        assert tuple(inputs) in images
        assert targets == {63: images[tuple(inputs)]}
    test = make_task("sequential_digits_test")
    assert len(task.labels) + len(test.labels) == 1797 and len(test.labels) == 359
    train_set = {tuple(r) for r in task.pixels.tolist()}
    overlap = [r for r in test.pixels.tolist() if tuple(r) in train_set]
    assert len(overlap) <= 5  # only duplicate images (sklearn's set has a few) may appear in both
    coarse = type(task)("train", levels=4)
    assert torch.equal(coarse.pixels, task.pixels * 4 // 17) and coarse.vocab_size == 5
    with pytest.raises(ValueError, match="64"):
        task.sample(2, 64, 80)


def test_sequential_digits_without_sklearn_says_how_to_install(monkeypatch):
    import builtins

    import lrnn.tasks.digits as digits

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    digits.load_digits_tensors.cache_clear()
    try:
        with pytest.raises(ImportError, match="scikit-learn"):
            make_task("sequential_digits")
    finally:
        monkeypatch.undo()
        digits.load_digits_tensors.cache_clear()


def test_sequential_digits_fixed_items_are_every_image_of_the_split_once():
    """``fixed_items()`` is the whole split in split order (each image once, its label at the last pixel);
    generated tasks have none. Sampling still draws with replacement, as before."""
    pytest.importorskip("sklearn")
    for name in ("sequential_digits_test", "sequential_digits"):
        task = make_task(name)
        items = task.fixed_items()
        count = len(task.labels)
        assert items.inputs.shape == (count, 64) and (items.lengths == 64).all()
        assert torch.equal(items.inputs, task.pixels)
        assert items.targets[:, 63].tolist() == task.labels.tolist()
        assert (items.targets[:, :63] == IGNORE_INDEX).all()
    assert len(make_task("sequential_digits_test").fixed_items().lengths) == 359
    for name in LONG_RANGE + ["parity", "s5"]:
        assert make_task(name).fixed_items() is None, name
