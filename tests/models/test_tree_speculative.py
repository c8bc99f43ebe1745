"""Tree verification through the model and tree speculative generation (``lrnn.models.tree_speculative``).

* ``LanguageModel.forward_tree``: node m's logits equal the last logits of the ordinary cached forward over
  m's root-to-node path (float64, 1e-10), for every registered mixer and a hybrid, both eigenvalue ranges,
  random trees; the cache is not changed.
* ``commit_tree_path``: the cache afterwards equals the cache of a plain forward over the path, and
  decoding on from it gives the same logits.
* Greedy tree speculative output == ``generate``'s greedy output token for token over 72 new tokens, for
  every mixer and the hybrid, with an oracle drafter whose trees hold the true token only sometimes and
  not always in the first branch (steps with none, some and all levels accepted, through later branches
  too), with a draft model and with prompt lookup.
"""

from __future__ import annotations

import pytest
import torch

from lrnn.layers import Attention
from lrnn.models import SamplingConfig, SpeculativeStats, generate
from lrnn.models.tree_speculative import (ModelTreeDrafter, PromptLookupTreeDrafter, TreeDraft, greedy_walk,
                                          static_tree, tree_speculative_generate)
from lrnn.ops import token_tree, tree_path
from model_testkit import (ALL_MIXERS, TOL, VOCAB, assert_close, build_model, is_recurrent, random_ids,
                           single_threaded, tiny_config)

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)

NEW_TOKENS = 72
HYBRID = dict(mixer="deltanet", n_layers=4, attention_every=2)
MODELS = {**{name: dict(mixer=name) for name in ALL_MIXERS}, "deltanet+attention_every_2": HYBRID}
# negative_eigenvalues: both ranges where the mixer has the switch; None: the config's default.
RANGES = [pytest.param(name, negative, id=name if negative is None else f"{name}-{'neg' if negative else 'pos'}")
          for name in MODELS for negative in ((True, False) if is_recurrent(MODELS[name]["mixer"]) else (None,))]
TREES = {"chain": [-1, 0, 1, 2, 3], "star": [-1, -1, -1, -1],
         "static221": static_tree((2, 2, 1)).tolist(), "uniform": [-1, 0, -1, 1, 1, 2, 0, 6, 7, 3, -1, 10, 4]}


def model_for(name: str, negative: bool | None = None, seed: int = 0):
    """A tiny float64 model; ``negative`` sets its eigenvalue range (None: [-1, 1] where there is a switch)."""
    overrides = {} if negative is None else {"negative_eigenvalues": negative}
    return build_model(tiny_config(**MODELS[name], tie_embeddings=False, **overrides), seed=seed)


def prefilled(model, length: int = 9, seed: int = 1):
    cache = model.new_cache()
    with torch.no_grad():
        model(random_ids(1, length, seed=seed), cache=cache)
    return cache


def assert_same_cache(actual, expected, what: str) -> None:
    assert actual.length == expected.length, what
    for i, (a, b) in enumerate(zip(actual.layers, expected.layers)):
        assert a.keys() == b.keys(), f"{what}: layer {i} entries"
        for key in a:
            if a[key].is_floating_point():
                assert_close(a[key], b[key], TOL[torch.float64], f"{what}: layer {i} {key!r}")
            else:
                assert torch.equal(a[key], b[key]), f"{what}: layer {i} {key!r}"


# ---- the tree pass and the commit ----------------------------------------------------------------
@pytest.mark.parametrize("name,negative", RANGES)
@pytest.mark.parametrize("tree_name", list(TREES))
def test_forward_tree_equals_each_path(name, negative, tree_name):
    model = model_for(name, negative)
    tree = token_tree(torch.tensor(TREES[tree_name]))
    ids = random_ids(1, tree.num_nodes, seed=5)
    cache = prefilled(model)
    before = cache.clone()
    with torch.no_grad():
        logits = model.forward_tree(ids, cache, tree)
        assert_same_cache(cache, before, "forward_tree changed the cache")
        for node in range(tree.num_nodes):
            expected = model(ids[:, tree_path(tree, node)], cache=before.clone())[:, -1]
            assert_close(logits[:, node], expected, TOL[torch.float64], f"{name} node {node}")


@pytest.mark.parametrize("name,negative", RANGES)
def test_commit_equals_plain_forward_and_decoding_continues(name, negative):
    model = model_for(name, negative)
    tree = token_tree(torch.tensor(TREES["uniform"]))
    ids = random_ids(1, tree.num_nodes, seed=6)
    follow = random_ids(1, 3, seed=7)
    with torch.no_grad():
        for node in (12, 8, 0, -1):
            committed, plain = prefilled(model), prefilled(model)
            model.commit_tree_path(ids, committed, tree, node)
            model(ids[:, tree_path(tree, node)], cache=plain)
            assert_same_cache(committed, plain, f"{name}: commit of node {node}")
            for token in follow.split(1, dim=1):  # decoding on: cached steps from both caches
                assert_close(model(token, cache=committed), model(token, cache=plain), TOL[torch.float64],
                             f"{name}: decoding after the commit of node {node}")


# ---- tree speculative generation -----------------------------------------------------------------
class OracleTreeDrafter:
    """Static trees whose nodes on the true greedy path hold the true next token among their children with
    probability ``p_right`` (in a random child slot), the other slots and every node off the path random
    tokens (distinct among siblings)."""

    def __init__(self, reference: torch.Tensor, p_right: float = 0.7, seed: int = 0) -> None:
        self.reference, self.p_right = reference, p_right
        self.rng = torch.Generator().manual_seed(seed)

    def propose_tree(self, sequence, branching):
        start = len(sequence)
        assert torch.equal(sequence, self.reference[:start]), "the committed sequence left the greedy path"
        parents = static_tree(branching)
        tokens = torch.zeros(len(parents), dtype=torch.long)
        on_path = torch.zeros(len(parents), dtype=torch.bool)
        for parent in [-1] + list(range(len(parents))):
            children = (parents == parent).nonzero().flatten()
            if not len(children):
                continue
            depth = 0 if parent == -1 else len(tree_path(parents, parent))
            parent_on_path = parent == -1 or bool(on_path[parent])
            true = self.reference[start + depth] if start + depth < len(self.reference) else None
            choice = torch.randperm(VOCAB, generator=self.rng)
            choice = (choice if true is None else choice[choice != true])[:len(children)]
            if parent_on_path and true is not None and torch.rand((), generator=self.rng) < self.p_right:
                slot = int(torch.randint(0, len(children), (), generator=self.rng))
                choice[slot] = true
                on_path[children[slot]] = True
            tokens[children] = choice
        return TreeDraft(tokens, parents)


def greedy_reference(model, prompt, new_tokens: int = NEW_TOKENS, eos: int | None = None):
    return generate(model, prompt, sampling=SamplingConfig(max_new_tokens=new_tokens, eos_token_id=eos),
                    eos_check_every=1)


def run_tree(model, prompt, drafter, branching=(2, 2, 1), new_tokens: int = NEW_TOKENS, eos: int | None = None,
             commit: str = "select"):
    stats = SpeculativeStats()
    out = tree_speculative_generate(model, prompt, drafter, branching,
                                    SamplingConfig(max_new_tokens=new_tokens, eos_token_id=eos), stats=stats,
                                    commit=commit)
    return out, stats


@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_tree_speculative_equals_greedy(name):
    model, prompt = model_for(name), random_ids(1, 8, seed=2)
    expected = greedy_reference(model, prompt)
    drafter = OracleTreeDrafter(expected[0], p_right=0.7)
    out, stats = run_tree(model, prompt, drafter, branching=(2, 2, 1))
    assert torch.equal(out, expected)
    accepted = set(stats.accepted)
    assert 0 in accepted and 3 in accepted and accepted & {1, 2}, f"acceptance not partial: {stats.accepted}"


class SometimesEmptyDrafter(OracleTreeDrafter):
    """The oracle's trees, but every third step nothing (as prompt lookup without a match)."""

    def __init__(self, reference: torch.Tensor) -> None:
        super().__init__(reference, p_right=0.7)
        self.calls = 0

    def propose_tree(self, sequence, branching):
        self.calls += 1
        if self.calls % 3 == 0:
            return TreeDraft(sequence[:0], sequence[:0])
        return super().propose_tree(sequence, branching)


@pytest.mark.parametrize("name", ["mamba2", "gated_deltanet", "attention", "lstm", "deltanet+attention_every_2"])
@pytest.mark.parametrize("commit", ["select", "recompute"])
def test_steps_without_a_draft_decode_one_token(name, commit):
    """A step that drafted nothing runs an ordinary decode step (no tree pass, no commit forward): the output
    is still greedy decoding token for token, and only the steps that drafted pay a recompute commit."""
    model, prompt = model_for(name), random_ids(1, 8, seed=2)
    expected = greedy_reference(model, prompt)
    tree_passes = []
    real = model.forward_tree
    model.forward_tree = lambda *args, **kwargs: tree_passes.append(1) or real(*args, **kwargs)
    out, stats = run_tree(model, prompt, SometimesEmptyDrafter(expected[0]), commit=commit)
    del model.forward_tree
    assert torch.equal(out, expected)
    drafted = [n > 0 for n in stats.proposed]
    assert any(drafted) and not all(drafted)
    assert len(tree_passes) == sum(drafted)
    continued = sum(drafted[:-1])  # the last step ends generation: nothing to commit
    assert stats.replays == (continued if commit == "recompute" else 0)
    assert stats.target_forwards == 1 + stats.steps + stats.replays


def test_later_branches_are_accepted(monkeypatch):
    """The oracle puts the true token in a random child slot: some accepted paths must run through a node
    that is not its parent's first child (a walk that only tries first children would miss them)."""
    model, prompt = model_for("mamba2"), random_ids(1, 8, seed=2)
    expected = greedy_reference(model, prompt)
    accepted_paths = []
    tree_pass = model.forward_tree

    def recording(ids, cache, tree, keep_states=False):
        result = tree_pass(ids, cache, tree, keep_states=keep_states)
        logits = result[0] if keep_states else result
        accepted_paths.append((greedy_walk(logits[0], ids[0], tree.parents)[2], tree.parents))
        return result

    monkeypatch.setattr(model, "forward_tree", recording)
    out, _ = run_tree(model, prompt, OracleTreeDrafter(expected[0], p_right=1.0, seed=3), branching=(3, 2))
    assert torch.equal(out, expected)
    assert any(later_branch(path, parents) for path, parents in accepted_paths)


def later_branch(path: torch.Tensor, parents: torch.Tensor) -> bool:
    """Whether a path of nodes runs through a node that is not the first child of its parent."""
    return any(int(node) != int((parents == parents[node]).nonzero()[0]) for node in path[1:])


@pytest.mark.parametrize("name", ["mamba2", "gated_deltanet", "deltanet+attention_every_2"])
def test_greedy_with_a_draft_model_and_with_prompt_lookup(name):
    model = model_for(name)
    draft = model_for(name, seed=4)  # another model: mostly rejected
    prompt = random_ids(1, 6, seed=2).repeat(1, 3)  # repeats: lookup finds matches
    expected = greedy_reference(model, prompt)
    for drafter, branching in ((ModelTreeDrafter(draft), (2, 2, 1)), (ModelTreeDrafter(model), (2, 1, 1, 1)),
                               (ModelTreeDrafter(draft, max_nodes=5), (3, 3, 3, 3)),
                               (PromptLookupTreeDrafter(max_ngram=2), (3, 2, 2)),
                               (PromptLookupTreeDrafter(max_ngram=2, max_nodes=4), (3, 2, 1, 1, 1))):
        out, stats = run_tree(model, prompt, drafter, branching)
        assert torch.equal(out, expected), type(drafter).__name__
    assert stats.steps < NEW_TOKENS - 1  # lookup drafts were accepted


def path_log_probs(model, sequence: torch.Tensor, tree: TreeDraft) -> list[float]:
    """Each draft node's path log-probability under ``model`` after ``sequence``, from plain forwards."""
    scores = []
    for node in range(len(tree.tokens)):
        path = tree_path(tree.parents, node)
        logits = model(torch.cat([sequence, tree.tokens[path]])[None])[0, len(sequence) - 1:-1]
        picked = torch.log_softmax(logits.double(), -1).gather(1, tree.tokens[path][:, None])
        scores.append(float(picked.sum()))
    return scores


def node_paths(tree: TreeDraft) -> set[tuple[int, ...]]:
    """The token paths of a tree's nodes (a tree as a set, whatever its node order)."""
    return {tuple(tree.tokens[tree_path(tree.parents, node)].tolist()) for node in range(len(tree.tokens))}


@torch.no_grad()
def test_dynamic_draft_tree_keeps_the_most_likely_paths():
    """``ModelTreeDrafter(max_nodes=N)`` without beam pruning (N at least every level's size): its tree is the
    N nodes of the static tree whose paths the draft model finds most likely (checked against plain
    forwards), within ``branching``; with pruning, the N best of the nodes a beam of N per level reaches;
    without ``max_nodes`` the static tree, unchanged."""
    draft, sequence = model_for("gated_deltanet", seed=4), random_ids(1, 9, seed=3)[0]
    full = ModelTreeDrafter(draft).propose_tree(sequence, (2, 2, 1))
    assert full.parents.tolist() == static_tree((2, 2, 1)).tolist()
    scores = path_log_probs(draft, sequence, full)
    best = sorted(range(len(scores)), key=lambda m: -scores[m])[:6]
    dynamic = ModelTreeDrafter(draft, max_nodes=6).propose_tree(sequence, (2, 2, 1))
    assert len(dynamic.tokens) == 6
    assert node_paths(dynamic) == {tuple(full.tokens[tree_path(full.parents, m)].tolist()) for m in best}
    # With pruning: a beam of 4 per level over the static (3, 3, 3) tree's nodes, scored by plain forwards.
    full = ModelTreeDrafter(draft).propose_tree(sequence, (3, 3, 3))
    scores, depths = path_log_probs(draft, sequence, full), token_tree(full.parents).depths.tolist()
    beam, kept = [-1], []
    for depth in range(3):
        level = [m for m in range(len(scores)) if depths[m] == depth and int(full.parents[m]) in beam]
        beam = sorted(level, key=lambda m: -scores[m])[:4]
        kept += beam
    best = sorted(kept, key=lambda m: -scores[m])[:4]
    pruned = ModelTreeDrafter(draft, max_nodes=4).propose_tree(sequence, (3, 3, 3))
    assert node_paths(pruned) == {tuple(full.tokens[tree_path(full.parents, m)].tolist()) for m in best}
    with pytest.raises(ValueError, match="max_nodes"):
        ModelTreeDrafter(draft, max_nodes=0)


def lookup_tree(sequence: list[int], branching: tuple[int, ...], max_nodes: int | None = None) -> TreeDraft:
    return PromptLookupTreeDrafter(max_ngram=2, max_nodes=max_nodes).propose_tree(torch.tensor(sequence), branching)


def test_prompt_lookup_tree_merges_every_continuation():
    """The continuations of every earlier occurrence of the last 2-gram (1, 2), latest first, merged into a
    trie within ``branching``; ``max_nodes`` keeps the nodes that most occurrences run through."""
    sequence = [1, 2, 3, 4, 9, 1, 2, 3, 5, 9, 1, 2, 7, 8, 9, 1, 2]  # continuations 7 8 9 1, 3 5 9 1, 3 4 9 1
    full = lookup_tree(sequence, (3, 2, 1, 1))
    assert full.tokens.tolist() == [7, 8, 9, 1, 3, 5, 9, 1, 4, 9, 1]
    assert full.parents.tolist() == [-1, 0, 1, 2, -1, 4, 5, 6, 4, 8, 9]
    chain = lookup_tree(sequence, (1, 1, 1, 1))  # one child per node: the latest continuation only
    assert (chain.tokens.tolist(), chain.parents.tolist()) == ([7, 8, 9, 1], [-1, 0, 1, 2])
    five = lookup_tree(sequence, (3, 2, 1, 1), max_nodes=5)  # "3" has support 2; then the latest path
    assert (five.tokens.tolist(), five.parents.tolist()) == ([7, 8, 9, 1, 3], [-1, 0, 1, 2, -1])
    two = lookup_tree(sequence, (3, 2, 1, 1), max_nodes=2)
    assert (two.tokens.tolist(), two.parents.tolist()) == ([7, 3], [-1, -1])
    # A continuation seen twice outranks the latest one seen once.
    frequent = lookup_tree([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 5, 6, 1, 2], (2, 1, 1, 1), max_nodes=4)
    assert (frequent.tokens.tolist(), frequent.parents.tolist()) == ([3, 4, 1, 2], [-1, 0, 1, 2])
    assert len(lookup_tree([1, 2, 3, 4], (2, 2), max_nodes=3).tokens) == 0  # no match: an empty tree
    with pytest.raises(ValueError, match="max_nodes"):
        PromptLookupTreeDrafter(max_nodes=0)


@pytest.mark.parametrize("seed", range(6))
def test_dynamic_lookup_tree_keeps_the_best_supported_nodes(seed):
    """On random token sequences: the dynamic tree's nodes are the ``max_nodes`` nodes of the full trie with
    the most earlier occurrences whose continuation starts with the node's path (counted here directly
    from the sequence), ties to the earlier node of the full trie."""
    generator = torch.Generator().manual_seed(seed)
    sequence = torch.randint(0, 3, (60,), generator=generator).tolist()
    branching = (2, 2, 2, 1)
    full = lookup_tree(sequence, branching)
    n = 2 if any(sequence[i:i + 2] == sequence[-2:] for i in range(len(sequence) - 2)) else 1
    starts = [i + n for i in range(len(sequence) - n) if sequence[i:i + n] == sequence[-n:]]
    paths = [tuple(full.tokens[tree_path(full.parents, m)].tolist()) for m in range(len(full.tokens))]
    support = [sum(tuple(sequence[s:s + len(p)]) == p for s in starts) for p in paths]
    for max_nodes in (1, 3, 5, 8):
        best = sorted(range(len(paths)), key=lambda m: (-support[m], m))[:max_nodes]
        dynamic = lookup_tree(sequence, branching, max_nodes)
        assert node_paths(dynamic) == {paths[m] for m in best}
        assert all(int(p) < i for i, p in enumerate(dynamic.parents))  # still topological


def test_draft_model_as_target_accepts_every_level():
    model, prompt = model_for("deltanet"), random_ids(1, 8, seed=2)
    out, stats = run_tree(model, prompt, ModelTreeDrafter(model), (2, 2, 1), new_tokens=30)
    assert torch.equal(out, greedy_reference(model, prompt, 30))
    assert stats.accepted[:-1] == [3] * (stats.steps - 1)


@pytest.mark.parametrize("new_tokens", [0, 1, 2, 3, 5])
def test_short_generations_and_eos(new_tokens):
    model, prompt = model_for("mamba2"), random_ids(1, 8, seed=2)
    expected = greedy_reference(model, prompt, new_tokens)
    drafter = OracleTreeDrafter(greedy_reference(model, prompt)[0], p_right=0.9)
    assert torch.equal(run_tree(model, prompt, drafter, new_tokens=new_tokens)[0], expected)
    full = greedy_reference(model, prompt)[0, 8:]
    eos = int(full[6])  # EOS inside an accepted run
    assert torch.equal(run_tree(model, prompt, OracleTreeDrafter(greedy_reference(model, prompt)[0], 1.0),
                                eos=eos)[0], greedy_reference(model, prompt, eos=eos))


def test_static_tree():
    assert static_tree((2, 2, 1)).tolist() == [-1, -1, 0, 0, 1, 1, 2, 3, 4, 5]
    assert static_tree((1, 1)).tolist() == [-1, 0]


def test_bad_arguments(monkeypatch):
    model, prompt = model_for("mamba2"), random_ids(1, 4)
    drafter = PromptLookupTreeDrafter()
    with pytest.raises(TypeError, match="sampling must be a SamplingConfig"):
        tree_speculative_generate(model, prompt, drafter, sampling=dict(do_sample=True))
    for branching in ((), (2, 0), "21", (2, 1.5)):
        with pytest.raises((ValueError, TypeError), match="branching"):
            tree_speculative_generate(model, prompt, drafter, branching)
    with pytest.raises(ValueError, match=r"input_ids must be integer token ids \[B, T\]"):
        tree_speculative_generate(model, random_ids(1, 0), drafter)
    monkeypatch.delattr(Attention, "commit_tree_rows")  # a growing cache without a per-row commit
    with pytest.raises(ValueError, match="a batch needs a model whose layers all commit per row"):
        tree_speculative_generate(model_for("deltanet+attention_every_2"), random_ids(2, 4), drafter)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="a batch commits each row's node by selection"):
        tree_speculative_generate(model, random_ids(2, 4), drafter, commit="recompute")
    with pytest.raises(ValueError, match="commit must be one of"):
        tree_speculative_generate(model, prompt, drafter, commit="replay")
    with pytest.raises(TypeError, match="propose_tree"):
        tree_speculative_generate(model, prompt, object())
    with pytest.raises(ValueError, match="vocab_size"):
        tree_speculative_generate(model, prompt, ModelTreeDrafter(build_model(tiny_config(vocab_size=VOCAB + 1))))

    class Bad:
        def __init__(self, draft):
            self.draft = draft

        def propose_tree(self, sequence, branching):
            return self.draft

    long = torch.long
    bad = {"more than branching": TreeDraft(torch.zeros(3, dtype=long), torch.tensor([-1, -1, -1])),
           "levels deep": TreeDraft(torch.zeros(4, dtype=long), torch.tensor([-1, 0, 1, 2])),
           "one entry per node": TreeDraft(torch.zeros(2, dtype=long), torch.tensor([-1])),
           r"must lie in \[0": TreeDraft(torch.tensor([VOCAB]), torch.tensor([-1])),
           "parents": TreeDraft(torch.zeros(2, dtype=long), torch.tensor([-1, 1]))}
    for message, draft in bad.items():
        with pytest.raises(ValueError, match=message):
            tree_speculative_generate(model, prompt, Bad(draft), (2, 2, 1))
    with pytest.raises(ValueError, match="tree_ids"):
        model.forward_tree(random_ids(1, 3), model.new_cache(), torch.tensor([-1, 0]))
