"""Group word problems: the tables are groups, the orderings are as documented, and prefix products
match explicit composition of permutation tuples."""

from __future__ import annotations

import itertools

import pytest
import torch

from lrnn.tasks import IGNORE_INDEX, make_task
from lrnn.tasks.groups import (GROUP_TASKS, FiniteGroup, GroupWordProblem, compose, cyclic_group, direct_product,
                               is_even, permutation_group, prefix_products)

ORDERS = {"s3": 6, "s4": 24, "a5": 60, "s5": 120, "z60": 60, "a4xz5": 60,
          "s5_swaps": 120, "s5_at_most_3": 120, "s5_3cycles": 120}


def _check_group(g: FiniteGroup) -> None:
    n = g.order
    table = g.table
    assert table.shape == (n, n) and table.dtype == torch.long
    assert ((table >= 0) & (table < n)).all()  # closure
    e = g.identity
    assert torch.equal(table[e], torch.arange(n)) and torch.equal(table[:, e], torch.arange(n))
    # Latin square: every row and column is a permutation, so inverses exist and cancel.
    assert (table.sort(dim=1).values == torch.arange(n)).all()
    assert (table.sort(dim=0).values == torch.arange(n)[:, None]).all()
    inverse = (table == e).int().argmax(dim=1)
    assert torch.equal(table[inverse, torch.arange(n)], torch.full((n,), e))
    # associativity: (ab)c == a(bc) for all triples
    a, b, c = torch.meshgrid(torch.arange(n), torch.arange(n), torch.arange(n), indexing="ij")
    assert torch.equal(table[table[a, b], c], table[a, table[b, c]])


@pytest.mark.parametrize("name", sorted(GROUP_TASKS))
def test_task_groups_are_groups_of_the_documented_order(name):
    task = make_task(name)
    assert task.group.order == task.num_classes == ORDERS[name]
    assert task.vocab_size == task.num_classes + 1 and task.pad_id == task.num_classes
    _check_group(task.group)


def test_permutation_orderings_and_composition():
    s3 = permutation_group(3)
    assert s3.elements == tuple(itertools.permutations(range(3)))
    for i, p in enumerate(s3.elements):
        for j, q in enumerate(s3.elements):
            assert s3.elements[int(s3.table[i, j])] == tuple(p[q[k]] for k in range(3))  # (p ∘ q)(k) = p(q(k))
    assert not torch.equal(s3.table, s3.table.T)  # S3 is not abelian
    assert compose((1, 0, 2), (0, 2, 1)) == (1, 2, 0)


def test_alternating_group_is_the_even_permutations():
    a5, s5 = permutation_group(5, even_only=True), permutation_group(5)
    assert a5.elements == tuple(p for p in s5.elements if is_even(p))
    assert len(a5.elements) == 60 and not torch.equal(a5.table, a5.table.T)
    # A5 is simple, hence perfect: the commutators generate it; here: they are all of A5 already.
    commutators = {a5.elements[int(a5.table[a5.table[x, y], a5.table[inv(a5, x), inv(a5, y)]])]
                   for x in range(60) for y in range(60)}
    assert commutators == set(a5.elements)


def inv(g: FiniteGroup, x: int) -> int:
    return int((g.table[x] == g.identity).int().argmax())


def test_z60_and_a4xz5():
    z60 = cyclic_group(60)
    assert torch.equal(z60.table, (torch.arange(60)[:, None] + torch.arange(60)[None, :]) % 60)
    a4, z5 = permutation_group(4, even_only=True), cyclic_group(5)
    prod = direct_product(a4, z5)
    assert prod.elements[5 * 7 + 3] == (a4.elements[7], 3)
    for x, y in [(0, 59), (13, 42), (37, 21)]:
        (p, i), (q, j) = prod.elements[x], prod.elements[y]
        assert prod.elements[int(prod.table[x, y])] == (compose(p, q), (i + j) % 5)
    # Same order as Z60 but not abelian.
    assert not torch.equal(prod.table, prod.table.T)


def test_s5_variants_draw_only_their_generators():
    s5 = permutation_group(5)
    moved = lambda p: sum(i != x for i, x in enumerate(p))  # noqa: E731
    expected = {"s5_swaps": {2}, "s5_at_most_3": {0, 2, 3}, "s5_3cycles": {3}}
    sizes = {"s5_swaps": 10, "s5_at_most_3": 31, "s5_3cycles": 20}
    for name, allowed in expected.items():
        task = make_task(name)
        assert len(task.generators) == sizes[name]
        batch = task.sample(64, 30, generator=torch.Generator().manual_seed(0))
        used = set(batch.inputs.flatten().tolist())
        assert {moved(s5.elements[i]) for i in used} == allowed
        assert len(used) == sizes[name]
    products = make_task("s5_3cycles").sample(64, 30, generator=torch.Generator().manual_seed(0)).targets
    assert all(is_even(s5.elements[i]) for i in products.flatten().tolist())  # 3-cycles stay in A5


@pytest.mark.parametrize("name", sorted(GROUP_TASKS))
def test_prefix_products_match_explicit_composition(name):
    task = make_task(name)
    group = task.group
    batch = task.sample(12, 1, 25, generator=torch.Generator().manual_seed(1))
    for row in range(12):
        length = int(batch.lengths[row])
        running = group.elements[group.identity]
        for t in range(length):
            g = group.elements[int(batch.inputs[row, t])]
            running = _multiply(g, running)  # p_t = g_t ∘ p_{t-1}
            assert group.elements[int(batch.targets[row, t])] == running, (name, row, t)
        assert (batch.targets[row, length:] == IGNORE_INDEX).all()


def _multiply(a, b):
    """Independent composition on the Python values: tuples compose, ints add mod 60, pairs by parts."""
    if isinstance(a, int):
        return (a + b) % 60
    if isinstance(a[0], tuple):
        return (tuple(a[0][k] for k in b[0]), (a[1] + b[1]) % 5)
    return tuple(a[k] for k in b)


def test_prefix_products_order_is_g_t_after_the_prefix():
    s3 = permutation_group(3)
    swap01, swap12 = s3.elements.index((1, 0, 2)), s3.elements.index((0, 2, 1))
    out = prefix_products(s3.table, torch.tensor([[swap01, swap12]]), s3.identity)
    # p_2 = swap12 ∘ swap01: 0 -> 1 -> 2, 1 -> 0 -> 0, 2 -> 2 -> 1
    assert s3.elements[int(out[0, 1])] == (2, 0, 1)


def test_decode_uses_element_labels():
    task = make_task("s3")
    assert task.decode(torch.tensor([0, 5, task.pad_id])) == "012 210"


@pytest.mark.parametrize("generators", [[], [0, 6], [-1], [True], [1.0]])
def test_bad_generators(generators):
    with pytest.raises(ValueError, match=r"generators must be .* \[0, 6\) of S3"):
        GroupWordProblem("bad", permutation_group(3), generators)
