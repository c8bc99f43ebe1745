"""Group word problems: a sequence of group elements, the running product at every position.

Input token t is the group element g_t (token id = the element's index in its group); the target at
position t is the prefix product

    p_t = g_t ∘ p_{t-1},  p_0 = identity,  i.e.  p_t = g_t ∘ g_{t-1} ∘ ... ∘ g_1,

with permutations composed as functions, ``(a ∘ b)(i) = a(b(i))``: g_1 acts first. (For Z60 and
A4 x Z5 the order of the product does not matter in Z-components but does in A4.)

Element orderings (token ids):
* S_n and A_n: ``itertools.permutations(range(n))`` order (lexicographic in one-line notation
  ``(p(0), ..., p(n-1))``), A_n keeping the even ones in that order. Index 0 is the identity.
* Z60: k for the residue k.
* A4 x Z5: ``5 * a + z`` for (A4 element a, residue z).

S5 variants (targets are still all 120 elements of S5, tokens are S5 indices, only some appear):
``s5_swaps`` (the 10 transpositions), ``s5_at_most_3`` (the 31 permutations moving at most 3 points:
identity, transpositions, 3-cycles), ``s5_3cycles`` (the 20 3-cycles; their products stay in A5).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch

from lrnn.tasks.base import IGNORE_INDEX, Task, TaskBatch, id_list, padding_mask

Permutation = tuple[int, ...]


def compose(a: Permutation, b: Permutation) -> Permutation:
    """``a ∘ b`` in one-line notation: apply b, then a."""
    return tuple(a[i] for i in b)


def is_even(p: Permutation) -> bool:
    """Whether p has an even number of inversions."""
    return sum(p[i] > p[j] for i in range(len(p)) for j in range(i + 1, len(p))) % 2 == 0


def moved_points(p: Permutation) -> int:
    """Number of points i with p(i) != i."""
    return sum(i != pi for i, pi in enumerate(p))


@dataclass(frozen=True)
class FiniteGroup:
    """A finite group as a multiplication table.

    ``table`` [n, n] long: ``table[a, b]`` = index of ``a ∘ b``. ``labels[i]`` names element i;
    ``elements[i]`` is its Python value (a permutation tuple, a residue, or a pair) for checks.
    """

    name: str
    elements: tuple
    labels: tuple[str, ...]
    table: torch.Tensor
    identity: int

    @property
    def order(self) -> int:
        return len(self.elements)


def _table(elements: tuple, multiply) -> torch.Tensor:
    index = {e: i for i, e in enumerate(elements)}
    return torch.tensor([[index[multiply(a, b)] for b in elements] for a in elements], dtype=torch.long)


@functools.lru_cache(maxsize=None)
def permutation_group(n: int, even_only: bool = False) -> FiniteGroup:
    """S_n (or A_n with ``even_only``), elements in ``itertools.permutations`` order."""
    elements = tuple(p for p in itertools.permutations(range(n)) if not even_only or is_even(p))
    labels = tuple("".join(map(str, p)) for p in elements)
    return FiniteGroup(f"{'A' if even_only else 'S'}{n}", elements, labels, _table(elements, compose), 0)


@functools.lru_cache(maxsize=None)
def cyclic_group(n: int) -> FiniteGroup:
    """Z_n, residues 0..n-1 under addition."""
    elements = tuple(range(n))
    return FiniteGroup(f"Z{n}", elements, tuple(map(str, elements)),
                       _table(elements, lambda a, b: (a + b) % n), 0)


def direct_product(g: FiniteGroup, h: FiniteGroup) -> FiniteGroup:
    """G x H, element (i, j) at index ``i * |H| + j``, multiplied componentwise."""
    m = h.order
    ig = torch.arange(g.order).repeat_interleave(m)  # G index of each product element
    ih = torch.arange(m).repeat(g.order)             # H index of each product element
    table = g.table[ig[:, None], ig[None, :]] * m + h.table[ih[:, None], ih[None, :]]
    elements = tuple((a, b) for a in g.elements for b in h.elements)
    labels = tuple(f"({a},{b})" for a in g.labels for b in h.labels)
    return FiniteGroup(f"{g.name}x{h.name}", elements, labels, table, g.identity * m + h.identity)


def prefix_products(table: torch.Tensor, tokens: torch.Tensor, identity: int) -> torch.Tensor:
    """[B, T] prefix products ``p_t = table[g_t, p_{t-1}]`` (p_0 = identity) of element ids [B, T].

    One gather over the batch per time step: cheap next to any model that consumes the batch.
    """
    n = table.shape[0]
    flat = table.reshape(-1)
    rows = (tokens * n).t().contiguous()  # [T, B]: each step reads one contiguous row
    out = torch.empty_like(rows)
    p = torch.full_like(rows[0], identity)
    for t in range(rows.shape[0]):
        p = flat[rows[t] + p]
        out[t] = p
    return out.t().contiguous()


class GroupWordProblem(Task):
    """Words over (a generating subset of) a finite group; target at EVERY position: the prefix product.

    Vocabulary: element ids 0..n-1 (n = group order; see the module docstring for the ordering), n pads.
    Targets: ``p_t = g_t ∘ p_{t-1}`` at each real position (n classes), IGNORE_INDEX on padding.
    Tokens are drawn uniformly from ``generators`` (default: every element). Any length >= 1.
    """

    answer_positions = "every"

    def __init__(self, name: str, group: FiniteGroup, generators: list[int] | None = None,
                 description: str = "") -> None:
        if generators is not None:
            bad = [g for g in generators if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < group.order]
            if not generators or bad:
                raise ValueError(f"generators must be a non-empty list of element ids in [0, {group.order}) of "
                                 f"{group.name}, got {generators!r}")
        self.name = name
        self.group = group
        self.generators = torch.arange(group.order) if generators is None else torch.tensor(generators)
        self.vocab_size = group.order + 1
        self.num_classes = group.order
        self.pad_id = group.order
        subset = "" if generators is None else f" drawn from {len(self.generators)} of them"
        self.description = description or (
            f"words over {group.name} (tokens 0..{group.order - 1} = elements{subset}; {group.order} pads); "
            f"target at every position: the prefix product g_t ∘ ... ∘ g_1 ({group.order} classes)")

    def _generate(self, lengths: torch.Tensor, generator: torch.Generator | None) -> TaskBatch:
        t = int(lengths.max())
        draws = torch.randint(0, len(self.generators), (lengths.shape[0], t), generator=generator)
        tokens = self.generators[draws]
        targets = prefix_products(self.group.table, tokens, self.group.identity)
        real = padding_mask(lengths, t)
        inputs = torch.where(real, tokens, torch.full_like(tokens, self.pad_id))
        targets = torch.where(real, targets, torch.full_like(targets, IGNORE_INDEX))
        return TaskBatch(inputs, targets, lengths)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return " ".join(self.group.labels[i] for i in id_list(ids) if i != self.pad_id)


def _s5_subset(name: str, keep, what: str) -> GroupWordProblem:
    s5 = permutation_group(5)
    generators = [i for i, p in enumerate(s5.elements) if keep(p)]
    return GroupWordProblem(name, s5, generators, description=(
        f"words over S5 using only {what} (tokens = S5 element ids 0..119, {len(generators)} of them appear; "
        f"120 pads); target at every position: the prefix product in S5 (120 classes)"))


def s3() -> GroupWordProblem:
    return GroupWordProblem("s3", permutation_group(3))


def s4() -> GroupWordProblem:
    return GroupWordProblem("s4", permutation_group(4))


def a5() -> GroupWordProblem:
    return GroupWordProblem("a5", permutation_group(5, even_only=True))


def s5() -> GroupWordProblem:
    return GroupWordProblem("s5", permutation_group(5))


def z60() -> GroupWordProblem:
    return GroupWordProblem("z60", cyclic_group(60))


def a4xz5() -> GroupWordProblem:
    return GroupWordProblem("a4xz5", direct_product(permutation_group(4, even_only=True), cyclic_group(5)))


def s5_swaps() -> GroupWordProblem:
    return _s5_subset("s5_swaps", lambda p: moved_points(p) == 2, "transpositions")


def s5_at_most_3() -> GroupWordProblem:
    return _s5_subset("s5_at_most_3", lambda p: moved_points(p) <= 3,
                      "permutations moving at most 3 points (identity, transpositions, 3-cycles)")


def s5_3cycles() -> GroupWordProblem:
    return _s5_subset("s5_3cycles", lambda p: moved_points(p) == 3,
                      "3-cycles (prefix products stay in A5)")


GROUP_TASKS = {f.__name__: f for f in (s3, s4, a5, s5, z60, a4xz5, s5_swaps, s5_at_most_3, s5_3cycles)}
"""Registry name -> factory of the group word problems."""
