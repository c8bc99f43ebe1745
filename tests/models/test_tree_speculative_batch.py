"""Tree speculative decoding of a batch (``tree_speculative_generate`` with B > 1): each row its own tree.

* ``union_tree`` lays trees of different shapes over one another (each node at its child positions).
* Greedy: every row of a left-padded batch equals ``generate``'s greedy output, token for token (48 new
  tokens), for every mixer and a hybrid with attention (its KV cache grows per row with masked holes), with
  per-row oracle trees that are sometimes right, of one
  shape and of a different shape per row (the union then has nodes some rows lack), with prompt lookup
  (tries of different shapes) and with EOS ending rows at different steps.
* Sampling: the 2nd and 3rd new tokens of every row follow the target's exact marginals (chi-square).
* The recomputing commit is refused at batch > 1.
"""

from __future__ import annotations

import pytest
import torch

from lrnn.models import (ModelTreeDrafter, PromptLookupTreeDrafter, SamplingConfig, SpeculativeStats, generate,
                         tree_speculative_generate)
from lrnn.models.tree_speculative import union_tree
from model_testkit import random_ids, single_threaded
from test_speculative import SMALL_VOCAB, exact_marginals
from test_speculative import small_pair  # noqa: F401 (a fixture, requested by name)
from test_speculative_batch import NEW_TOKENS, batch_prompts, greedy_batch, left_padded
from test_tree_speculative import MODELS, OracleTreeDrafter, model_for
from test_tree_speculative_sampling import TREE_SAMPLING, RandomTreeDrafter, assert_follows

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)

BRANCHING = (3, 2, 1)


class ShapedOracle(OracleTreeDrafter):
    """An oracle tree drafter that always drafts its own smaller shape (within the generation's branching)."""

    def __init__(self, reference, shape, p_right: float = 0.7, seed: int = 0) -> None:
        super().__init__(reference, p_right, seed)
        self.shape = shape

    def propose_tree(self, sequence, branching):
        return super().propose_tree(sequence, tuple(min(a, b) for a, b in zip(self.shape, branching)))


def oracles(prompts, expected, shapes, p_right: float = 0.7) -> list[ShapedOracle]:
    width = expected.shape[1] - NEW_TOKENS
    return [ShapedOracle(torch.cat([prompt, expected[row, width:]]), shape, p_right, seed=row)
            for row, (prompt, shape) in enumerate(zip(prompts, shapes))]


def test_union_tree_lays_trees_over_one_another():
    """A chain of 2, a star of 3 and a tree (2 root children, the 2nd with a child): the union has 3 root
    children and 2 grandchildren; each tree's nodes land at their child positions."""
    union, places = union_tree({0: torch.tensor([-1, 0]), 1: torch.tensor([-1, -1, -1]),
                                2: torch.tensor([-1, -1, 1])})
    assert union.tolist() == [-1, -1, -1, 0, 1]  # level by level: 3 root children, then the children of 0, 1
    assert places[0].tolist() == [0, 3] and places[1].tolist() == [0, 1, 2] and places[2].tolist() == [0, 1, 4]
    union, places = union_tree({5: torch.tensor([], dtype=torch.long)})
    assert union.tolist() == [] and places[5].tolist() == []


@pytest.mark.parametrize("shapes", [[BRANCHING] * 3, [(1, 1, 1), (3, 1), (2, 2, 1)]], ids=["same", "different"])
@pytest.mark.parametrize("name", list(MODELS))
@torch.no_grad()
def test_batch_tree_greedy_equals_greedy_autoregressive(name, shapes):
    """A left-padded batch of 3 prompts (lengths 8, 5, 7), oracle trees per row: the output equals
    batched ``generate``'s token for token, with steps where rows accept different depths."""
    model = model_for(name)
    prompts = batch_prompts()
    ids, mask = left_padded(prompts)
    expected = greedy_batch(model, ids, mask)
    stats = SpeculativeStats()
    out = tree_speculative_generate(model, ids, oracles(prompts, expected, shapes), BRANCHING,
                                    SamplingConfig(max_new_tokens=NEW_TOKENS), stats=stats, attention_mask=mask)
    assert torch.equal(out, expected), f"{name}: tree speculative\n{out}\n!= autoregressive\n{expected}"
    verifications = stats.target_forwards - 1
    assert stats.new_tokens == NEW_TOKENS and verifications < NEW_TOKENS - 1
    assert len(set(stats.accepted)) >= 3, f"{name}: acceptance {stats.accepted}"


@pytest.mark.parametrize("name", ["mamba2", "gated_deltanet", "s4d"])
@torch.no_grad()
def test_batch_tree_prompt_lookup_equals_greedy(name):
    """Prompt lookup tries per row (their shapes differ) on self-repeating prompts: output unchanged."""
    model = model_for(name)
    base = random_ids(1, 6, seed=51)[0].repeat(3)
    prompts = [base, base[1:], base[3:]]
    ids, mask = left_padded(prompts)
    expected = greedy_batch(model, ids, mask)
    stats = SpeculativeStats()
    out = tree_speculative_generate(model, ids, PromptLookupTreeDrafter(), BRANCHING,
                                    SamplingConfig(max_new_tokens=NEW_TOKENS), stats=stats, attention_mask=mask)
    assert torch.equal(out, expected), name
    assert sum(stats.accepted) > 0, f"{name}: lookup never hit"


@torch.no_grad()
def test_batch_tree_eos_ends_rows_like_generate():
    """An EOS that rows emit at different steps: padding, the stop and the streamed [B] positions as
    ``generate`` checking every step."""
    model = model_for("deltanet")
    prompts = batch_prompts(seed=61)
    ids, mask = left_padded(prompts)
    free = greedy_batch(model, ids, mask)
    width = ids.shape[1]
    eos = int(free[0, width + 6])
    sampling = SamplingConfig(max_new_tokens=NEW_TOKENS, eos_token_id=eos, pad_token_id=3)
    expected = generate(model, ids, mask, sampling, eos_check_every=1)
    streamed = []
    out = tree_speculative_generate(model, ids, oracles(prompts, free, [BRANCHING] * 3), BRANCHING, sampling,
                                    attention_mask=mask, on_token=streamed.append)
    assert torch.equal(out, expected), f"{out}\n!=\n{expected}"
    assert torch.equal(torch.stack(streamed, dim=1), expected[:, width:])


@torch.no_grad()
def test_batch_tree_sampling_keeps_the_targets_distribution(small_pair):
    """4 rows of one prompt, trees from a draft model's top-k (rows 0, 2) and random trees (rows 1, 3), 250
    batches: the 2nd and 3rd new tokens of all 1000 rows follow the target's exact marginals."""
    target, draft = small_pair
    prompt = random_ids(1, 5, seed=21, vocab=SMALL_VOCAB)
    generator = torch.Generator().manual_seed(2)
    outs = []
    for run in range(250):
        drafters = [ModelTreeDrafter(draft), RandomTreeDrafter(SMALL_VOCAB, 2 * run), ModelTreeDrafter(draft),
                    RandomTreeDrafter(SMALL_VOCAB, 2 * run + 1)]
        out = tree_speculative_generate(target, prompt.repeat(4, 1), drafters, (2, 2), TREE_SAMPLING,
                                        generator=generator)
        outs.append(out[:, prompt.shape[1] + 1:prompt.shape[1] + 3])
    second, third = torch.cat(outs).unbind(1)
    p_second, p_third = exact_marginals(target, prompt, TREE_SAMPLING)
    assert_follows(second, p_second, "the 2nd new token")
    assert_follows(third, p_third, "the 3rd new token")


@torch.no_grad()
def test_one_left_padded_prompt_drafts_from_its_tokens():
    """A batch of one left-padded prompt (attention_mask given): the drafter sees the prompt without its
    padding (the oracle asserts the sequence it is shown), and the output equals ``generate``'s."""
    model = model_for("mamba2")
    prompt = batch_prompts()[1]  # 5 tokens
    ids, mask = left_padded([prompt, batch_prompts()[0]])
    ids, mask = ids[:1], mask[:1]  # 3 padding positions, then the prompt
    expected = greedy_batch(model, ids, mask)
    out = tree_speculative_generate(model, ids, oracles([prompt], expected, [BRANCHING])[0], BRANCHING,
                                    SamplingConfig(max_new_tokens=NEW_TOKENS), attention_mask=mask)
    assert torch.equal(out, expected)
