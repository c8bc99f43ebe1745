"""The commit by state selection through the whole model: ``forward_tree(..., keep_states=True)`` and
``commit_tree_path(..., states=...)``, and the generation loops that use it.

* The cache after the select commit equals the cache after the commit by recomputation (one cached forward
  over the path), float64 to 1e-10 and float32 to 1e-5, for every registered mixer and a hybrid (attention
  every 2nd layer), both eigenvalue ranges, random trees (chain, star, static, deep, wide, uniform) and
  nodes (-1, 0, every leaf, the deepest); decoding on from both gives the same logits.
* Greedy generation equals ``generate`` token for token over 72 new tokens for every mixer: trees with the
  reference commit (``commit="recompute"``; the select commit is the default, tested in
  ``test_tree_speculative.py``) and chains verified as trees (``rollback="select"``), and every logit
  computed for the emitted sequence equals the uncached forward's (a wrong cache shows there even when the
  tiny models would not flip a greedy token).
* A commit checks that its states belong to this cache, tree and model.
"""

from __future__ import annotations

import pytest
import torch

from lrnn.layers import LSTM, Attention
from lrnn.layers.common import commit_tree_by_paths, forward_tree_by_paths
from lrnn.models import SamplingConfig, SpeculativeStats, TreeStates, speculative_generate
from lrnn.models.tree_speculative import static_tree
from lrnn.ops import token_tree, tree_leaves
from model_testkit import F32, F64, random_ids, rel_err, single_threaded
from test_speculative import OracleDrafter
from test_tree_speculative import (MODELS, NEW_TOKENS, RANGES, OracleTreeDrafter, greedy_reference, model_for,
                                   prefilled, run_tree)
from test_tree_speculative_sampling import TreeLogitsRecorder

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)

TOL = {F64: 1e-10, F32: 1e-5}
TREES = {"chain": [-1, 0, 1, 2, 3], "star": [-1, -1, -1, -1], "static3221": None,
         "deep": [-1, 0, 1, 1, 3, 4, 5, 2, 7, 6], "wide": [-1, -1, 0, -1, 0, 2, -1, 1, 0, 3, -1],
         "uniform": [-1, 0, -1, 1, 1, 2, 0, 6, 7, 3, -1, 10, 4]}


def parents_of(name: str) -> torch.Tensor:
    if TREES[name] is None:  # the static tree 3,2,2,1 with the pending token as node 0
        return torch.cat([torch.tensor([-1]), static_tree((3, 2, 2, 1)) + 1])
    return torch.tensor(TREES[name])


def cache_error(actual, expected) -> float:
    """The largest relative error between two caches' entries (inf when lengths, names, shapes, dtypes or
    boolean entries differ)."""
    if actual.length != expected.length:
        return float("inf")
    worst = 0.0
    for a, b in zip(actual.layers, expected.layers):
        if a.keys() != b.keys():
            return float("inf")
        for key in b:
            if a[key].shape != b[key].shape or a[key].dtype != b[key].dtype:
                return float("inf")
            if b[key].dtype == torch.bool:
                worst = max(worst, 0.0 if torch.equal(a[key], b[key]) else float("inf"))
            else:
                worst = max(worst, rel_err(a[key], b[key]))
    return worst


@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
@pytest.mark.parametrize("name,negative", RANGES)
def test_select_commit_equals_recompute_commit(name, negative, dtype):
    model = model_for(name, negative).to(dtype)
    follow = random_ids(1, 3, seed=7)
    compared = 0
    with torch.no_grad():
        for tree_name in TREES:
            tree = token_tree(parents_of(tree_name))
            ids = random_ids(1, tree.num_nodes, seed=tree.num_nodes)
            nodes = {-1, 0, int(tree.depths.argmax())} | set(tree_leaves(tree).tolist())
            for node in sorted(nodes):
                selected, recomputed = prefilled(model), prefilled(model)
                _, states = model.forward_tree(ids, selected, tree, keep_states=True)
                model.commit_tree_path(ids, selected, tree, node, states=states)
                model.commit_tree_path(ids, recomputed, tree, node)
                where = f"{name} {tree_name} node {node}"
                assert cache_error(selected, recomputed) <= TOL[dtype], where
                for token in follow.split(1, dim=1):  # decoding on from both caches
                    logits = model(token, cache=selected), model(token, cache=recomputed)
                    assert rel_err(*logits) <= TOL[dtype], f"{where}: decoding on"
                compared += 1
    assert compared >= 25


def test_a_wrong_selection_fails_the_cache_comparison(monkeypatch):
    """Committing the parent's states for the accepted node (the path without its last node; for the
    per-path LSTM the parent's run) is caught by the comparison above, also with the cache length set
    right (the states alone differ)."""
    import lrnn.models.lm as lm
    from lrnn.layers import AcceptedPath

    real = lm.accepted_path

    def parent_state(tree, node):
        accepted = real(tree, node)
        parent = int(tree.parents[node])
        return AcceptedPath(tree, parent, accepted.path[:-1])

    tree = token_tree(torch.tensor(TREES["uniform"]))
    ids = random_ids(1, tree.num_nodes, seed=3)
    monkeypatch.setattr(lm, "accepted_path", parent_state)
    for name in ("mamba2", "lstm", "gated_deltanet"):
        model = model_for(name)
        with torch.no_grad():
            selected, recomputed = prefilled(model), prefilled(model)
            _, states = model.forward_tree(ids, selected, tree, keep_states=True)
            model.commit_tree_path(ids, selected, tree, 12, states=states)
            model.commit_tree_path(ids, recomputed, tree, 12)
            selected.length = recomputed.length
            assert cache_error(selected, recomputed) > 1e-3, name


@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_tree_generation_with_the_recompute_commit_equals_greedy(name):
    model, prompt = model_for(name), random_ids(1, 8, seed=2)
    expected = greedy_reference(model, prompt)
    recorder = TreeLogitsRecorder(model)
    out, stats = run_tree(model, prompt, OracleTreeDrafter(expected[0], p_right=0.7), (2, 2, 1), commit="recompute")
    assert torch.equal(out, expected)
    assert recorder.assert_match_on(out[0], name) >= NEW_TOKENS - 1  # the first token comes from the prefill
    assert stats.replays == stats.steps - 1  # one commit forward per step but the last


@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_chain_verified_as_a_tree_equals_greedy(name):
    """``rollback="select"``: the chain is verified by ``forward_tree`` and committed by selection; steps with
    every draft, some and none accepted; no replay, one target forward per step."""
    model, prompt = model_for(name), random_ids(1, 8, seed=2)
    expected = greedy_reference(model, prompt)
    recorder, stats = TreeLogitsRecorder(model), SpeculativeStats()
    out = speculative_generate(model, prompt, OracleDrafter(expected[0], p_right=0.6),
                               SamplingConfig(max_new_tokens=NEW_TOKENS), num_draft_tokens=4, stats=stats,
                               rollback="select")
    assert torch.equal(out, expected)
    assert recorder.assert_match_on(out[0], name) >= NEW_TOKENS - 1  # the first token comes from the prefill
    full = [a for a, n in zip(stats.accepted, stats.proposed) if n == 4]
    assert 4 in full and 0 in full and any(0 < a < 4 for a in full), f"{name}: acceptance {stats.accepted}"
    assert stats.replays == 0 and stats.target_forwards == 1 + stats.steps


@pytest.mark.parametrize("name", ["mamba2", "s4d", "lstm", "lstm-per-node", "deltanet+attention_every_2"])
def test_default_rollback_selects_unless_a_layer_has_no_tree_form(name, monkeypatch):
    """``rollback="auto"`` (the default) verifies chains as trees and commits by selection -- no replay, one
    target forward per step -- except for models with a layer whose tree pass runs a forward per node
    (``tree_pass_per_node``: a mixer without a tree form on the ``forward_tree_by_paths`` fallback, here the
    LSTM put back on it), which snapshot and replay; the output is greedy decoding's either way."""
    per_node = name == "lstm-per-node"
    if per_node:
        monkeypatch.setattr(LSTM, "forward_tree", forward_tree_by_paths)
        monkeypatch.setattr(LSTM, "commit_tree", lambda self, state, kept, accepted:
                            commit_tree_by_paths(state, kept, accepted))
        monkeypatch.setattr(LSTM, "tree_pass_per_node", True, raising=False)
        name = "lstm"
    model, prompt = model_for(name), random_ids(1, 8, seed=3)
    expected = greedy_reference(model, prompt)
    stats = SpeculativeStats()
    out = speculative_generate(model, prompt, OracleDrafter(expected[0], p_right=0.6),
                               SamplingConfig(max_new_tokens=NEW_TOKENS), num_draft_tokens=4, stats=stats)
    assert torch.equal(out, expected)
    assert model.tree_pass_per_node == per_node
    if per_node:
        assert stats.replays > 0 and stats.target_forwards == 1 + stats.steps + stats.replays
    else:
        assert stats.replays == 0 and stats.target_forwards == 1 + stats.steps


def test_commit_checks_its_states():
    model = model_for("mamba2")
    tree = token_tree(torch.tensor([-1, 0, 0]))
    ids = random_ids(1, 3, seed=4)
    cache = prefilled(model)
    with torch.no_grad():
        with pytest.raises(ValueError, match="keep_states=True needs a cache"):
            model.forward_tree(ids, None, tree, keep_states=True)
        logits, states = model.forward_tree(ids, cache, tree, keep_states=True)
        assert isinstance(states, TreeStates) and states.cache_length == cache.length
        assert torch.equal(logits, model.forward_tree(ids, cache, tree))
        with pytest.raises(TypeError, match="states must be the TreeStates"):
            model.commit_tree_path(ids, cache, tree, 1, states={})
        with pytest.raises(ValueError, match="another tree"):
            model.commit_tree_path(ids, cache, token_tree(torch.tensor([-1, 0, 1])), 1, states=states)
        with pytest.raises(ValueError, match="states and cache must come from this model"):
            model.commit_tree_path(ids, cache, tree, 1, states=TreeStates(tree, cache.length, states.layers[:1]))
        with pytest.raises(ValueError, match=r"node .* must be >= -1 and <= 2"):
            model.commit_tree_path(ids, cache, tree, 3, states=states)
        with pytest.raises(TypeError, match="node"):
            model.commit_tree_path(ids, cache, tree, 1.0, states=states)
        model.commit_tree_path(ids, cache, tree, 1, states=states)
        with pytest.raises(ValueError, match="the cache has moved"):  # a second commit of the same states
            model.commit_tree_path(ids, cache, tree, 2, states=states)
    with pytest.raises(ValueError, match="commit must be one of"):
        run_tree(model, random_ids(1, 4), OracleTreeDrafter(random_ids(1, 40)[0]), commit="replay")
    with pytest.raises(ValueError, match="rollback must be one of"):
        speculative_generate(model, random_ids(1, 4), OracleDrafter(random_ids(1, 40)[0], 0.5), rollback="select_")


def prefilled_rows(model, rows: int = 3, length: int = 9, seed: int = 1):
    cache = model.new_cache()
    with torch.no_grad():
        model(random_ids(rows, length, seed=seed), cache=cache)
    return cache


def row_of(cache, row: int):
    """The cache of one row of a batch (every entry's row ``row``), as a batch of one."""
    single = cache.clone()
    for entry in single.layers:
        for key in list(entry):
            entry[key] = entry[key][row:row + 1].clone()
    return single


def real_slots(cache):
    """A one-row cache without the KV slots its ``valid`` mask marks empty (attention's holes), so that a row
    of a batch whose rows committed paths of different lengths compares with the row alone."""
    real = cache.clone()
    for entry in real.layers:
        if "valid" in entry:
            keep = entry["valid"][0]
            for key in ("k", "v", "valid"):
                entry[key] = entry[key][:, keep]
    return real


@pytest.mark.parametrize("name,negative", RANGES)
def test_one_node_per_row_commits_each_rows_own_path(name, negative):
    """A batch of 3 rows committing nodes (deep node, nothing, a leaf) of a random tree, and on a chain (as
    the per-row speculative loop does): each row's cache equals that row alone committing its node (the
    select commit, itself checked against recomputation above), float64 to 1e-10 -- for attention the row's
    real KV slots (the batch grows every row by the longest path, a shorter path's slots marked empty) --
    and decoding on agrees, twice (a second decode step reads the holes the first left)."""
    model = model_for(name, negative)
    for tree_name, pick in (("uniform", lambda tree: [int(tree.depths.argmax()), -1, int(tree_leaves(tree)[0])]),
                            ("chain", lambda tree: [4, 0, 2])):
        tree = token_tree(torch.tensor(TREES[tree_name]))
        ids = random_ids(3, tree.num_nodes, seed=5)
        nodes = pick(tree)
        with torch.no_grad():
            batch = prefilled_rows(model)
            _, states = model.forward_tree(ids, batch, tree, keep_states=True)
            model.commit_tree_path(ids, batch, tree, torch.tensor(nodes), states=states)
            alones = []
            for row, node in enumerate(nodes):
                alone = row_of(prefilled_rows(model), row)
                _, kept = model.forward_tree(ids[row:row + 1], alone, tree, keep_states=True)
                model.commit_tree_path(ids[row:row + 1], alone, tree, node, states=kept)
                mine = real_slots(row_of(batch, row))
                mine.length = alone.length  # the batch's length is its longest row's
                assert cache_error(mine, real_slots(alone)) <= TOL[F64], f"{name} {tree_name} row {row} node {node}"
                alones.append(alone)
            assert batch.length == 9 + 1 + max(int(tree.depths[n]) for n in nodes if n >= 0)
            for seed in (9, 10):
                token = random_ids(3, 2, seed=seed)
                rows = torch.cat([model(token[row:row + 1], cache=alones[row]) for row in range(3)])
                assert rel_err(model(token, cache=batch), rows) <= TOL[F64], f"{name}: decoding on"


def test_one_node_per_row_is_refused_where_it_cannot_work(monkeypatch):
    """A model with a layer whose cache grows and that cannot commit per row (attention without its
    ``commit_tree_rows``, as a user's mixer might be), and a commit without the kept states, refuse different
    nodes per row; equal nodes are the plain commit."""
    tree = token_tree(torch.tensor(TREES["chain"]))
    ids = random_ids(2, tree.num_nodes, seed=5)
    hybrid = model_for("deltanet+attention_every_2")
    assert hybrid.per_row_commit
    with torch.no_grad():
        monkeypatch.delattr(Attention, "commit_tree_rows")
        assert not hybrid.per_row_commit
        cache = prefilled_rows(hybrid, rows=2)
        _, states = hybrid.forward_tree(ids, cache, tree, keep_states=True)
        with pytest.raises(ValueError, match="needs a commit_tree_rows method"):
            hybrid.commit_tree_path(ids, cache, tree, torch.tensor([1, 2]), states=states)
        hybrid.commit_tree_path(ids, cache, tree, torch.tensor([2, 2]), states=states)  # the same node: fine
        assert cache.length == 9 + 3
        model = model_for("mamba2")
        cache = prefilled_rows(model, rows=2)
        _, states = model.forward_tree(ids, cache, tree, keep_states=True)
        with pytest.raises(ValueError, match="needs the states kept by forward_tree"):
            model.commit_tree_path(ids, cache, tree, torch.tensor([1, 2]))
        with pytest.raises(ValueError, match=r"node must lie in \[-1, 4\]"):
            model.commit_tree_path(ids, cache, tree, torch.tensor([1, 5]), states=states)
        with pytest.raises(ValueError, match=r"one node per row\), got a torch.int64 tensor of shape \(3,\)"):
            model.commit_tree_path(ids, cache, tree, torch.tensor([1, 2, 3]), states=states)
    assert model.per_row_commit
