"""Tree speculative *sampling* (``lrnn.models.tree_speculative.sampling_walk``): the target's distribution.

* ``sampling_walk`` on fixed logits, with fresh random trees (3 root children, 2 grandchildren each): the
  first emitted token follows p after the pending token, the second (where a root child was accepted)
  p after that child, the third p after the accepted grandchild (chi-square, 10000 walks, plain /
  temperature + top_k / top_p). Accepting every child, or not removing a rejected child from the
  residual, fails the same test (p < 1e-6).
* End to end on an 8-token vocabulary: the 2nd and 3rd new tokens of 1000 generations follow the target's
  exact marginals, with the draft model's top-k trees and with random trees.
* top_k = 1 sampling gives greedy decoding token for token; over 72 sampled tokens every logit that the
  target computed on the emitted path equals the uncached forward's (the cache stays right), for every
  mixer and a hybrid; seeds, EOS and ``max_new_tokens`` behave as in ``generate``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import lrnn.models.tree_speculative as tree_speculative
from lrnn.models import SamplingConfig, SpeculativeStats
from lrnn.models.generation import sampling_probs
from lrnn.models.tree_speculative import (ModelTreeDrafter, TreeDraft, sampling_walk, static_tree,
                                          tree_speculative_generate)
from lrnn.ops import TokenTree, token_tree, tree_path
from model_testkit import TOL, VOCAB, assert_close, random_ids, single_threaded
from test_speculative import (E2E_SAMPLING, P_VALUE, SMALL_VOCAB, VERIFY_CASES, chi_square_p, exact_marginals,
                              small_pair)  # noqa: F401 (small_pair: a fixture)
from test_tree_speculative import MODELS, NEW_TOKENS, OracleTreeDrafter, greedy_reference, model_for

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)


class RandomTreeDrafter:
    """Static trees of random tokens, distinct among siblings, from a seeded generator of its own (the
    tree never depends on the verifier's random numbers, which exactness requires)."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        self.vocab, self.rng = vocab, torch.Generator().manual_seed(seed)

    def propose_tree(self, sequence: torch.Tensor, branching: tuple[int, ...]) -> TreeDraft:
        parents = static_tree(branching)
        tokens = torch.zeros_like(parents)
        for parent in [-1, *range(len(parents))]:
            children = (parents == parent).nonzero().flatten()
            tokens[children] = torch.randperm(self.vocab, generator=self.rng)[:len(children)]
        return TreeDraft(tokens, parents)


# ---- sampling_walk on fixed logits -----------------------------------------------------------------
WALK_VOCAB = 6
WALK_BRANCHING = (3, 2)
WALK_NODES = 1 + 3 + 6  # the pending token, its 3 children, their 2 children each


def walk_logits() -> torch.Tensor:
    """Seeded next-token logits [10, V] after each node of the verification tree."""
    return 1.5 * torch.randn(WALK_NODES, WALK_VOCAB, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def emitted_by_node(sampling: SamplingConfig, samples: int, fresh_trees: bool, seed: int = 0) -> dict[int, list[int]]:
    """``samples`` walks over random trees (a fresh one per walk, or one tree for all: a deterministic
    drafter): {node: the tokens emitted right after it}, for every node that a walk reached (node 0, the
    pending token, in every walk). The token after a node is an accepted child's or the final draw."""
    logits, drafter = walk_logits(), RandomTreeDrafter(WALK_VOCAB, seed)
    generator = torch.Generator().manual_seed(seed)
    after: dict[int, list[int]] = {}
    draft = drafter.propose_tree(torch.zeros(1, dtype=torch.long), WALK_BRANCHING)
    for _ in range(samples):
        if fresh_trees:
            draft = drafter.propose_tree(torch.zeros(1, dtype=torch.long), WALK_BRANCHING)
        tokens = torch.cat([torch.zeros(1, dtype=torch.long), draft.tokens])
        parents = torch.cat([torch.tensor([-1]), draft.parents + 1])
        _, token, path = sampling_walk(logits, tokens, parents, sampling, generator)
        emitted = tokens[path[1:]].tolist() + [int(token)]
        for node, value in zip(path.tolist(), emitted):
            after.setdefault(node, []).append(value)
    return after


def depth_of(node: int) -> int:
    return 0 if node == 0 else 1 if node <= 3 else 2


WALK_CASES = [(case, False) for case in VERIFY_CASES] + [("plain", True)]


@pytest.mark.parametrize("case,fresh_trees", WALK_CASES,
                         ids=[f"{case}-{'fresh' if fresh else 'fixed'} tree" for case, fresh in WALK_CASES])
def test_sampling_walk_emits_the_targets_distribution_after_every_node(case, fresh_trees):
    """After node 0 (every walk), after each accepted root child and each accepted grandchild, the next
    token follows the target's p there: accepted drafts and final draws together. One fixed tree (what a
    deterministic drafter gives: exactness must hold for each tree), and a fresh tree per walk."""
    sampling = VERIFY_CASES[case]
    p = sampling_probs(walk_logits(), sampling)
    after = emitted_by_node(sampling, samples=10000, fresh_trees=fresh_trees)
    assert len(after[0]) == 10000
    tested = {depth_of(node) for node, tokens in after.items() if len(tokens) >= 200}
    assert tested == {0, 1, 2}, f"too few walks reach depth 1 and 2: {[(n, len(t)) for n, t in after.items()]}"
    for node, tokens in after.items():
        if len(tokens) >= 200:
            assert_follows(torch.tensor(tokens), p[node], f"token after node {node}")


def assert_follows(samples: torch.Tensor, probs: torch.Tensor, what: str) -> None:
    """``samples`` pass the chi-square test against ``probs`` [V]; a point mass (top_p can leave one token,
    where a one-cell test has no p-value) must be hit every time."""
    if int((probs > 0).sum()) == 1:
        assert bool((samples == probs.argmax()).all()), f"{what}: a token of probability 0"
    else:
        assert chi_square_p(samples, probs) > P_VALUE, what


@pytest.mark.parametrize("broken", ["accept every child", "keep rejected tokens in the residual"])
def test_the_chi_square_test_rejects_a_wrong_walk(monkeypatch, broken):
    """The test above fails for two wrong rules: accepting every child (the first child's token is always
    emitted), and not zeroing a rejected token (the later children and the final draw over-weight it)."""
    if broken == "accept every child":
        monkeypatch.setattr(tree_speculative, "_accept_child", lambda u, residual, token: True)
    else:
        monkeypatch.setattr(tree_speculative, "_reject", lambda residual, token: None)
    sampling = SamplingConfig(do_sample=True)
    first = torch.tensor(emitted_by_node(sampling, samples=6000, fresh_trees=False)[0])
    assert chi_square_p(first, sampling_probs(walk_logits(), sampling)[0]) < 1e-6


# ---- end to end ------------------------------------------------------------------------------------
TREE_SAMPLING = dataclasses.replace(E2E_SAMPLING, max_new_tokens=4)  # a step can then reach depth 1


def sample_second_and_third(model, prompt, drafter_factory, branching, runs: int):
    """The 2nd and 3rd new tokens of ``runs`` tree speculative generations of 4 tokens (one generator
    across runs): the first step verifies a 2-level tree after the sampled first token, so the 2nd token
    comes from the root's children and the 3rd, where one was accepted, from its children."""
    generator = torch.Generator().manual_seed(0)
    outs = [tree_speculative_generate(model, prompt, drafter_factory(seed), branching, TREE_SAMPLING,
                                      generator=generator)[0, prompt.shape[1] + 1:prompt.shape[1] + 3]
            for seed in range(runs)]
    return torch.stack(outs).unbind(1)


@pytest.mark.parametrize("drafter", ["model top-k (2, 2)", "model dynamic (3, 3), 4 nodes", "random (3, 2)"])
@torch.no_grad()
def test_tree_speculative_sampling_keeps_the_targets_distribution(small_pair, drafter):
    """Temperature, top_k and top_p: the 2nd and 3rd new tokens of 1000 runs follow the target's exact
    marginals, with a draft model's top-k trees and with random trees (3 root children of 8 tokens)."""
    target, draft = small_pair
    prompt = random_ids(1, 5, seed=21, vocab=SMALL_VOCAB)
    if drafter.startswith("model top-k"):
        branching, factory, nodes = (2, 2), lambda seed: ModelTreeDrafter(draft), 6  # a full 2-level tree
    elif drafter.startswith("model dynamic"):
        branching, factory, nodes = (3, 3), lambda seed: ModelTreeDrafter(draft, max_nodes=4), 4
    else:
        branching, factory, nodes = (3, 2), lambda seed: RandomTreeDrafter(SMALL_VOCAB, seed), 9
    stats = SpeculativeStats()
    tree_speculative_generate(target, prompt, factory(0), branching, TREE_SAMPLING, stats=stats,
                              generator=torch.Generator().manual_seed(1))
    assert stats.proposed[0] == nodes
    emitted = sample_second_and_third(target, prompt, factory, branching, runs=1000)
    for position, tokens, marginal in zip(("2nd", "3rd"), emitted, exact_marginals(target, prompt, E2E_SAMPLING)):
        assert_follows(tokens, marginal, f"{drafter}: the {position} new token")


@torch.no_grad()
def test_end_to_end_chi_square_rejects_accepting_every_child(small_pair, monkeypatch):
    """With random trees whose first child is always accepted, the 2nd token is uniform: the test fails."""
    monkeypatch.setattr(tree_speculative, "_accept_child", lambda u, residual, token: True)
    target, _ = small_pair
    prompt = random_ids(1, 5, seed=21, vocab=SMALL_VOCAB)
    second, _ = sample_second_and_third(target, prompt, lambda seed: RandomTreeDrafter(SMALL_VOCAB, seed), (3, 2),
                                        runs=300)
    assert chi_square_p(second, exact_marginals(target, prompt, E2E_SAMPLING)[0]) < 1e-6


# ---- greedy limit, cache consistency, seeds, EOS, length -------------------------------------------
def sampled(new_tokens: int = NEW_TOKENS, **options) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=new_tokens, do_sample=True, **options)


@pytest.mark.parametrize("name", ["mamba2", "gated_deltanet", "deltanet+attention_every_2"])
def test_top_k_1_tree_sampling_equals_greedy(name):
    """top_k = 1 leaves one token of probability 1 after every node: the greedy output, through steps with
    no, partial and full acceptance (the oracle's trees hold the greedy token only sometimes)."""
    model, prompt = model_for(name), random_ids(1, 8, seed=2)
    expected = greedy_reference(model, prompt)
    stats = SpeculativeStats()
    out = tree_speculative_generate(model, prompt, OracleTreeDrafter(expected[0], p_right=0.7), (2, 2, 1),
                                    sampled(top_k=1), generator=torch.Generator().manual_seed(0), stats=stats)
    assert torch.equal(out, expected)
    assert {0, 3} <= set(stats.accepted) and set(stats.accepted) & {1, 2}, stats.accepted


class TreeLogitsRecorder:
    """Wraps ``model.forward_tree`` to record each verification: (committed length, ids [N], parents, logits
    [N, V]); and ``model.forward`` for the cached forwards that return every position's logits (the decode
    step of a step that drafted nothing), recorded as chains."""

    def __init__(self, model) -> None:
        self.model, self.real, self.real_forward, self.calls = model, model.forward_tree, model.forward, []
        model.forward_tree = self
        model.forward = self.forward

    def __call__(self, tree_ids, cache, parents, keep_states=False):
        result = self.real(tree_ids, cache, parents, keep_states=keep_states)
        logits = result[0] if keep_states else result
        tree = parents if isinstance(parents, TokenTree) else token_tree(parents)
        self.calls.append((cache.length, tree_ids[0], tree.parents, logits[0]))
        return result

    def forward(self, input_ids, cache=None, attention_mask=None, logits_to_keep=0, seq_starts=None):
        start = None if cache is None else cache.length
        logits = self.real_forward(input_ids, cache, attention_mask, logits_to_keep, seq_starts)
        if cache is not None and logits_to_keep == 0 and attention_mask is None and len(input_ids) == 1:
            n = input_ids.shape[1]
            self.calls.append((start, input_ids[0], torch.arange(n) - 1, logits[0]))
        return logits

    def assert_match_on(self, sequence: torch.Tensor, what: str) -> int:
        """Every node whose root-to-node path lies on ``sequence`` has the uncached full forward's logits at
        that position (float64: 1e-10); returns how many nodes were compared."""
        del self.model.forward_tree, self.model.forward  # the real methods again
        full = self.model(sequence[None])[0]
        compared = 0
        for start, ids, parents, logits in self.calls:
            for node in range(len(ids)):
                path = ids[tree_path(parents, node)]
                end = start + len(path)  # the node's token is at position end - 1
                if end <= len(sequence) and torch.equal(path, sequence[start:end]):
                    assert_close(logits[node], full[end - 1], TOL[torch.float64], f"{what}: after position {end - 1}")
                    compared += 1
        return compared


@pytest.mark.parametrize("name", list(MODELS))
def test_sampled_generation_keeps_the_cache_consistent(name):
    """72 sampled tokens (temperature 0.4) drafted by the target itself (its own top-k: paths of 2 and 3
    drafts accepted) and by random trees (mostly rejected): every logit the target computed for a node on the emitted
    sequence equals the uncached forward's, so each commit left the cache at the emitted sequence."""
    model, prompt = model_for(name), random_ids(1, 8, seed=2)
    for drafter in (ModelTreeDrafter(model), RandomTreeDrafter(VOCAB, seed=1)):
        recorder, stats = TreeLogitsRecorder(model), SpeculativeStats()
        out = tree_speculative_generate(model, prompt, drafter, (2, 2, 1), sampled(temperature=0.4),
                                        generator=torch.Generator().manual_seed(4), stats=stats)
        assert out.shape[1] == 8 + NEW_TOKENS
        assert recorder.assert_match_on(out[0], f"{name}, {type(drafter).__name__}") >= NEW_TOKENS - 1
        assert stats.new_tokens == NEW_TOKENS and stats.target_forwards == 1 + stats.steps + stats.replays
        # Commits of the pending token alone and of longer accepted paths both happen.
        assert 0 in stats.accepted, f"{name}: every step accepted a draft: {stats.accepted}"
        if isinstance(drafter, ModelTreeDrafter):
            assert max(stats.accepted) >= 2, f"{name}: self-drafted paths all short: {stats.accepted}"


def test_seeds_eos_and_lengths():
    """One seed, one output; another seed, another output. EOS ends generation where it is sampled (also
    inside an accepted path); 0, 1, 2, 3 and 5 new tokens come out as asked."""
    model, prompt = model_for("mamba2"), random_ids(1, 8, seed=2)

    def run(seed: int, config: SamplingConfig) -> torch.Tensor:
        return tree_speculative_generate(model, prompt, ModelTreeDrafter(model), (2, 2, 1), config,
                                         generator=torch.Generator().manual_seed(seed))

    first, again, other = run(0, sampled(24)), run(0, sampled(24)), run(1, sampled(24))
    assert torch.equal(first, again) and not torch.equal(first, other)
    eos = int(first[0, 8 + 6])
    at = first[0, 8:].tolist().index(eos)  # the first time it is sampled (<= 6)
    # The same draws up to EOS (a step draws the same numbers whether or not EOS ends it), then the end.
    assert torch.equal(run(0, sampled(24, eos_token_id=eos)), first[:, :8 + at + 1])
    for new_tokens in (0, 1, 2, 3, 5):
        assert run(2, sampled(new_tokens)).shape == (1, 8 + new_tokens)
