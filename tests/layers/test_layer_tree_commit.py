"""Every mixer's commit by state selection (``commit_tree``): after ``forward_tree(..., keep=kept)`` over a tree,
``commit_tree(state, kept, accepted_path(tree, node))`` leaves the cache entry that the ordinary cached
forward over the node's root-to-node path leaves (the commit by recomputation), and decoding goes on from it
with the same outputs.

Every mixer variant of the layer testkit, both eigenvalue ranges, float64 (1e-10) and float32 (1e-5, select
against recompute, both in float32), batch 2, trees: a chain, a star, a forest, deep, wide and uniform random
trees and a single node; for each, every leaf, the deepest node, node 0 and a random inner node, from a
cached state and from none. A selection of the wrong node (another node at the same depth, so the cache
has the same shapes) must fail the same comparison.
"""

from __future__ import annotations

import pytest
import torch

from lrnn.layers import AcceptedPath, accepted_path
from lrnn.ops import TokenTree, token_tree, tree_leaves, tree_path
from layer_testkit import F32, F64, MIXER_VARIANTS, build_mixer, rel_err, variant_params
from test_tree_forward import BATCH, TREES, cached_state, random_parents

TOL = {F64: 1e-10, F32: 1e-5}
FOLLOW = 3  # decode steps after the commit


def nodes_to_commit(tree: TokenTree, seed: int) -> list[int]:
    """Every leaf, the deepest node, node 0 and a random node (each once, ascending)."""
    rng = torch.Generator().manual_seed(seed)
    chosen = set(tree_leaves(tree).tolist()) | {int(tree.depths.argmax()), 0,
                                                int(torch.randint(0, tree.num_nodes, (), generator=rng))}
    return sorted(chosen)


def copy_of(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in state.items()}


def state_error(selected: dict[str, torch.Tensor], recomputed: dict[str, torch.Tensor]) -> float:
    """The largest relative error over the entries of two cache entries (inf when their names, shapes, dtypes
    or boolean entries differ)."""
    if selected.keys() != recomputed.keys():
        return float("inf")
    worst = 0.0
    for name, expected in recomputed.items():
        actual = selected[name]
        if actual.shape != expected.shape or actual.dtype != expected.dtype:
            return float("inf")
        if expected.dtype == torch.bool:
            worst = max(worst, 0.0 if torch.equal(actual, expected) else float("inf"))
        else:
            worst = max(worst, rel_err(actual, expected))
    return worst


def commit_both_ways(layer, hidden, state, tree, node, accepted: AcceptedPath | None = None):
    """(the entry after the select commit of ``node`` -- or of ``accepted``, a deliberately wrong selection
    --, the entry after the ordinary forward over node's path), both from copies of ``state``."""
    selected, recomputed = copy_of(state), copy_of(state)
    kept: dict = {}
    layer.forward_tree(hidden, selected, tree, kept)
    layer.commit_tree(selected, kept, accepted or accepted_path(tree, node))
    layer(hidden[:, tree_path(tree, node)], recomputed)
    return selected, recomputed


@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("variant,negative", variant_params())
def test_select_commit_equals_recompute_and_decoding_continues(variant, negative, dtype):
    name, kwargs = MIXER_VARIANTS[variant]
    layer = build_mixer(name, kwargs, negative, dtype=dtype)
    follow = torch.randn(BATCH, FOLLOW, 16, generator=torch.Generator().manual_seed(9), dtype=dtype)
    compared = 0
    with torch.no_grad():
        for kind, n in TREES:
            tree = token_tree(random_parents(n, kind, seed=n))
            hidden = torch.randn(BATCH, n, 16, generator=torch.Generator().manual_seed(n), dtype=dtype)
            for state in (cached_state(layer, dtype), {}):
                for node in nodes_to_commit(tree, seed=n):
                    where = f"{variant} {kind}{n} node {node}{'' if state else ' without a cached state'}"
                    selected, recomputed = commit_both_ways(layer, hidden, state, tree, node)
                    assert state_error(selected, recomputed) <= TOL[dtype], where
                    for step in follow.split(1, dim=1):  # decoding on from both entries
                        assert rel_err(layer(step, selected), layer(step, recomputed)) <= TOL[dtype], where
                    assert state_error(selected, recomputed) <= TOL[dtype], f"{where}, after decoding on"
                    compared += 1
    assert compared >= 30


@pytest.mark.parametrize("variant,negative", variant_params())
def test_selecting_another_node_fails_the_comparison(variant, negative):
    """The comparison above can fail: committing another node of the same depth (the same cache shapes: a
    sibling or cousin that differs in its last token or earlier) is far from the recomputed commit."""
    name, kwargs = MIXER_VARIANTS[variant]
    layer = build_mixer(name, kwargs, negative)
    tree = token_tree(torch.tensor([-1, 0, 0, 1, 2]))  # nodes 1 and 2 (depth 1), 3 and 4 (depth 2)
    hidden = torch.randn(BATCH, 5, 16, generator=torch.Generator().manual_seed(3), dtype=F64)
    with torch.no_grad():
        for node, other in ((3, 4), (2, 1)):
            selected, recomputed = commit_both_ways(layer, hidden, cached_state(layer, F64), tree, node,
                                                    accepted=accepted_path(tree, other))
            assert state_error(selected, recomputed) > 1e-3, f"{variant}: node {other} passed for node {node}"


def test_accepted_path():
    tree = token_tree(torch.tensor([-1, 0, -1, 1, 1]))
    accepted = accepted_path(tree, 4)
    assert accepted.node == 4 and accepted.path.tolist() == [0, 1, 4] and accepted.tree is tree
    for node in (-1, 5):
        with pytest.raises(ValueError, match=r"node must lie in \[0, 4\]"):
            accepted_path(tree, node)
