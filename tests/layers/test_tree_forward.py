"""Every mixer's tree path (``forward_tree``): node m's output equals the last output of the ordinary
cached forward over m's root-to-node path, from the same cached state, and the cache is left unchanged.

Every mixer variant of the layer testkit, both eigenvalue ranges, float64 (1e-10) and float32 (1e-4 against
float64), batch 2, trees: a chain, a star, a forest, deep and wide random trees, and the empty tree.
"""

from __future__ import annotations

import pytest
import torch

from lrnn.layers import MIXERS
from lrnn.layers.common import forward_tree_by_paths
from lrnn.ops import token_tree, tree_path
from layer_testkit import F32, F64, MIXER_VARIANTS, TOL, assert_close, build_mixer, variant_params

BATCH, PREFIX = 2, 6


def random_parents(n: int, kind: str, seed: int) -> torch.Tensor:
    """Parent indices of a tree of ``n`` nodes: "chain", "star" (all root children), "forest" (two chains),
    "deep" (mostly the previous node), "wide" (mostly the root or node 0) or "uniform" (any earlier node)."""
    rng = torch.Generator().manual_seed(seed)
    parents = []
    for i in range(n):
        if kind == "chain":
            parent = i - 1
        elif kind == "star":
            parent = -1
        elif kind == "forest":
            parent = -1 if i in (0, n // 2) else i - 1
        elif kind == "deep":
            parent = i - 1 if torch.rand((), generator=rng) < 0.8 else int(torch.randint(-1, i, (), generator=rng))
        elif kind == "wide":
            parent = int(torch.randint(-1, min(i, 1), (), generator=rng))
        else:
            parent = int(torch.randint(-1, i, (), generator=rng))
        parents.append(parent)
    return torch.tensor(parents, dtype=torch.long)


TREES = [("chain", 6), ("star", 5), ("forest", 8), ("deep", 11), ("wide", 9), ("uniform", 13), ("uniform", 1)]


def cached_state(layer: torch.nn.Module, dtype, seed: int = 3) -> dict[str, torch.Tensor]:
    """The cache entry after a random prefix of PREFIX tokens."""
    prefix = torch.randn(BATCH, PREFIX, 16, generator=torch.Generator().manual_seed(seed)).to(dtype)
    state: dict[str, torch.Tensor] = {}
    layer(prefix, state)
    return state



def path_reference(layer, hidden, state, tree) -> torch.Tensor:
    """Node m's output: the ordinary cached forward over m's path from a copy of ``state``, last position."""
    rows = []
    for node in range(tree.num_nodes):
        copy = {name: value.clone() for name, value in state.items()}
        rows.append(layer(hidden[:, tree_path(tree, node)], copy)[:, -1])
    return torch.stack(rows, dim=1)


def test_every_registered_mixer_is_covered():
    assert {name for name, _ in MIXER_VARIANTS.values()} == set(MIXERS)
    for name, spec in MIXERS.items():
        assert callable(getattr(spec.build, "forward_tree", None)), f"{name} has no forward_tree"


@pytest.mark.parametrize("variant,negative", variant_params())
@pytest.mark.parametrize("kind,n", TREES, ids=[f"{kind}{n}" for kind, n in TREES])
def test_tree_path_equals_each_path_float64(variant, negative, kind, n):
    name, kwargs = MIXER_VARIANTS[variant]
    layer = build_mixer(name, kwargs, negative)
    tree = token_tree(random_parents(n, kind, seed=n))
    hidden = torch.randn(BATCH, n, 16, generator=torch.Generator().manual_seed(n), dtype=F64)
    state = cached_state(layer, F64)
    before = {key: value.clone() for key, value in state.items()}
    with torch.no_grad():
        out = layer.forward_tree(hidden, state, tree)
        assert_close(out, path_reference(layer, hidden, state, tree), TOL[F64], f"{variant} on a {kind} tree")
    assert state.keys() == before.keys()
    for key in state:
        assert torch.equal(state[key], before[key]), f"forward_tree changed the cached {key!r}"


@pytest.mark.parametrize("variant,negative", variant_params())
def test_tree_path_float32_and_fresh_state(variant, negative):
    """float32 against the float64 reference (1e-4), and no cache entry yet (the tree starts from zeros)."""
    name, kwargs = MIXER_VARIANTS[variant]
    tree = token_tree(random_parents(10, "uniform", seed=5))
    hidden = torch.randn(BATCH, 10, 16, generator=torch.Generator().manual_seed(7), dtype=F64)
    layer64 = build_mixer(name, kwargs, negative)
    with torch.no_grad():
        reference = path_reference(layer64, hidden, cached_state(layer64, F64), tree)
        layer32 = build_mixer(name, kwargs, negative, dtype=F32)
        out = layer32.forward_tree(hidden.to(F32), cached_state(layer32, F32), tree)
        assert_close(out.to(F64), reference, TOL[F32], f"{variant} float32")
        assert_close(layer64.forward_tree(hidden, {}, tree), path_reference(layer64, hidden, {}, tree), TOL[F64],
                     f"{variant} without a cached state")


@pytest.mark.parametrize("variant,negative", variant_params())
def test_empty_tree(variant, negative):
    name, kwargs = MIXER_VARIANTS[variant]
    layer = build_mixer(name, kwargs, negative)
    with torch.no_grad():
        out = layer.forward_tree(torch.zeros(BATCH, 0, 16, dtype=F64), cached_state(layer, F64),
                                 token_tree(torch.zeros(0, dtype=torch.long)))
    assert out.shape == (BATCH, 0, 16)


@pytest.mark.parametrize("kind,n", [("deep", 11), ("wide", 9), ("uniform", 13)])
def test_lstm_level_pass_gradients_equal_the_paths(kind, n):
    """The LSTM's level-by-level tree pass against ``forward_tree_by_paths`` (each node's path run on its
    own): gradients of a random projection of the outputs with respect to the inputs, the cached (h, c) and
    every weight agree in float64 (1e-10); so do the kept per-node states."""
    layer = build_mixer("lstm", {}, None)
    tree = token_tree(random_parents(n, kind, seed=n))
    generator = torch.Generator().manual_seed(n)
    hidden = torch.randn(BATCH, n, 16, generator=generator, dtype=F64)
    weights = torch.randn(BATCH, n, 16, generator=generator, dtype=F64)
    state = cached_state(layer, F64)
    grads, kept = [], []
    for forward in (layer.forward_tree, lambda *args: forward_tree_by_paths(layer, *args)):
        x = hidden.clone().requires_grad_()
        entry = {key: value.detach().clone().requires_grad_() for key, value in state.items()}
        keep: dict = {}
        out = forward(x, entry, tree, keep)
        inputs = [x, entry["h"], entry["c"], *layer.parameters()]
        grads.append(torch.autograd.grad((out * weights).sum(), inputs))
        kept.append(keep)
    for level, path in zip(*grads):
        assert_close(level, path, TOL[F64], f"LSTM gradient on a {kind} tree")
    for node in range(n):
        by_paths = kept[1]["node_states"][node]
        assert_close(kept[0]["h"][:, node], by_paths["h"], TOL[F64], f"kept h of node {node}")
        assert_close(kept[0]["c"][:, node], by_paths["c"], TOL[F64], f"kept c of node {node}")
