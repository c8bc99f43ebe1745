"""Chain speculative decoding of a batch (``speculative_generate`` with B > 1): per-row and lockstep steps.

* Greedy: every row of a left-padded batch equals ``generate``'s greedy output for the batch, and for the
  row run alone, token for token (48 new tokens), for every registered mixer and a hybrid, with per-row
  drafts that are sometimes right (rows accept different numbers of drafts), in lockstep (every row
  advances by the fewest drafts an unfinished row accepted, plus one; both rollbacks) and per row (each
  row by its own; attention too, its KV cache growing per row with masked holes), with prompt lookup (drafts of different lengths
  per row) and with EOS ending rows at different steps.
* Sampling: the 2nd and 3rd new tokens of every row follow the target's exact marginals (chi-square), with
  rows drafted by different drafters (a draft model, uniform one-hot drafts).
* Bad input: the mask, the per-row drafters.
"""

from __future__ import annotations

import pytest
import torch

from lrnn.layers import Attention
from lrnn.models import (ModelDrafter, PromptLookupDrafter, SamplingConfig, SpeculativeStats, generate,
                         speculative_generate)
from model_testkit import ALL_MIXERS, build_model, random_ids, single_threaded, tiny_config
from test_speculative import (E2E_SAMPLING, HYBRID, P_VALUE, SMALL_VOCAB, OracleDrafter, UniformDrafter,
                              chi_square_p, exact_marginals)
from test_speculative import small_pair  # noqa: F401 (a fixture, requested by name)

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)

NEW_TOKENS = 48
LENGTHS = (8, 5, 7)  # prompt lengths of the batch's rows (left-padded to 8)
MODELS = {**{name: dict(mixer=name) for name in ALL_MIXERS}, "deltanet+attention_every_2": HYBRID}


def left_padded(prompts: list[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, T], attention_mask [B, T]) of the prompts [T_b], left-padded with ``pad``."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask


def batch_prompts(seed: int = 31) -> list[torch.Tensor]:
    return [random_ids(1, length, seed=seed + row)[0] for row, length in enumerate(LENGTHS)]


def greedy_batch(model, ids, mask, new_tokens: int = NEW_TOKENS, eos: int | None = None) -> torch.Tensor:
    return generate(model, ids, mask, SamplingConfig(max_new_tokens=new_tokens, eos_token_id=eos),
                    eos_check_every=1)


def oracles(prompts, expected, p_right: float) -> list[OracleDrafter]:
    """One oracle per row, following the row's unpadded prompt and its expected continuation."""
    width = expected.shape[1] - NEW_TOKENS
    return [OracleDrafter(torch.cat([prompt, expected[row, width:]]), p_right, seed=row)
            for row, prompt in enumerate(prompts)]


@pytest.fixture(scope="module", params=list(MODELS))
def target(request):
    return request.param, build_model(tiny_config(**MODELS[request.param], tie_embeddings=False))


MODES = [("lockstep", "replay"), ("lockstep", "select"), ("per_row", "select")]


def verifications(stats: SpeculativeStats) -> int:
    return stats.target_forwards - 1 - stats.replays


@pytest.mark.parametrize("batching,rollback", MODES, ids=[f"{b}-{r}" for b, r in MODES])
@torch.no_grad()
def test_batch_greedy_equals_greedy_autoregressive(target, batching, rollback):
    """A left-padded batch of 3 prompts (lengths 8, 5, 7) with per-row oracle drafts (right with
    probability 0.6): the output equals batched ``generate``'s and each row alone's; the steps include
    full, partial and no acceptance."""
    name, model = target
    prompts = batch_prompts()
    ids, mask = left_padded(prompts)
    expected = greedy_batch(model, ids, mask)
    for row, prompt in enumerate(prompts):
        alone = greedy_batch(model, prompt[None], None)[0, len(prompt):]
        assert torch.equal(expected[row, ids.shape[1]:], alone), f"{name}: row {row} of generate"
    stats = SpeculativeStats()
    out = speculative_generate(model, ids, oracles(prompts, expected, 0.6), SamplingConfig(max_new_tokens=NEW_TOKENS),
                               num_draft_tokens=4, stats=stats, rollback=rollback, attention_mask=mask,
                               batching=batching)
    what = f"{name} ({batching}, {rollback})"
    assert torch.equal(out, expected), f"{what}: speculative\n{out}\n!= autoregressive\n{expected}"
    assert stats.new_tokens == NEW_TOKENS and stats.rows == 3 and verifications(stats) < NEW_TOKENS - 1
    full = [a for a, n in zip(stats.accepted, stats.proposed) if n == 4]
    assert 0 in full and any(a > 0 for a in full), f"{what}: acceptance {stats.accepted}"


@pytest.mark.parametrize("batching", ["lockstep", "per_row"])
@torch.no_grad()
def test_rows_advance_by_the_fewest_or_their_own_accepted_drafts(batching):
    """Row 0's drafts are always right, row 1's right with probability 0.5. In lockstep every step advances
    by row 1's acceptance (the steps are those of row 1 alone); per row, row 0 runs ahead with 5 tokens a
    step and the batch takes as many verifications as its slower row alone. Both give the greedy output."""
    model = build_model(tiny_config("gated_deltanet", tie_embeddings=False))
    prompts = batch_prompts(seed=41)[:2]
    ids, mask = left_padded(prompts)
    expected = greedy_batch(model, ids, mask)
    drafters = [oracles(prompts, expected, 1.0)[0], oracles(prompts, expected, 0.5)[1]]
    stats = SpeculativeStats()
    out = speculative_generate(model, ids, drafters, SamplingConfig(max_new_tokens=NEW_TOKENS), num_draft_tokens=4,
                               stats=stats, attention_mask=mask, batching=batching)
    assert torch.equal(out, expected)
    alone = []
    for row in range(2):
        alone.append(SpeculativeStats())
        speculative_generate(model, prompts[row][None], oracles(prompts, expected, (1.0, 0.5)[row])[row],
                             SamplingConfig(max_new_tokens=NEW_TOKENS), num_draft_tokens=4, stats=alone[row])
    if batching == "lockstep":  # an entry per row and step, both rows with the batch's numbers
        assert stats.accepted[1::2] == stats.accepted[::2] == alone[1].accepted
    else:
        assert verifications(stats) == max(verifications(a) for a in alone) == verifications(alone[1])
        assert sorted(stats.accepted) == sorted(alone[0].accepted + alone[1].accepted)
    assert verifications(alone[0]) < verifications(alone[1])


@pytest.mark.parametrize("name,batching", [("mamba2", "per_row"), ("mamba2", "lockstep"), ("attention", "auto"),
                                          ("deltanet+attention_every_2", "auto")])
@torch.no_grad()
def test_batch_prompt_lookup_equals_greedy(name, batching):
    """Prompt lookup per row on self-repeating prompts of different lengths (so that all rows accept
    drafts at some steps): drafts of different lengths (the batch verifies the shortest), output unchanged."""
    model = build_model(tiny_config(**MODELS[name], tie_embeddings=False))
    base = random_ids(1, 6, seed=51)[0].repeat(3)  # rows: the same repeating text, cut at different starts
    prompts = [base, base[1:], base[3:]]
    ids, mask = left_padded(prompts)
    expected = greedy_batch(model, ids, mask)
    stats = SpeculativeStats()
    out = speculative_generate(model, ids, PromptLookupDrafter(max_ngram=3), SamplingConfig(max_new_tokens=NEW_TOKENS),
                               num_draft_tokens=5, stats=stats, attention_mask=mask, batching=batching)
    assert torch.equal(out, expected), name
    assert sum(stats.proposed) > 0 and sum(stats.accepted) > 0, f"{name}: lookup never drafted or never hit"


@pytest.mark.parametrize("batching", ["lockstep", "per_row"])
@torch.no_grad()
def test_batch_eos_ends_rows_like_generate(batching):
    """An EOS that one row emits early and another later: the finished row is padded from there on, the
    output ends where the last row finishes (or at max_new_tokens), as ``generate`` checking every step."""
    model = build_model(tiny_config("deltanet", tie_embeddings=False))
    prompts = batch_prompts(seed=61)
    ids, mask = left_padded(prompts)
    free = greedy_batch(model, ids, mask)
    width = ids.shape[1]
    eos = int(free[0, width + 6])
    hits = [(free[row, width:] == eos).nonzero().flatten() for row in range(3)]
    assert len(set(int(h[0]) if len(h) else -1 for h in hits)) > 1, "rows should finish at different steps"
    sampling = SamplingConfig(max_new_tokens=NEW_TOKENS, eos_token_id=eos, pad_token_id=3)
    expected = generate(model, ids, mask, sampling, eos_check_every=1)
    for p_right in (1.0, 0.5):
        stats = SpeculativeStats()
        streamed = []
        out = speculative_generate(model, ids, oracles(prompts, free, p_right), sampling, stats=stats,
                                   attention_mask=mask, batching=batching, on_token=streamed.append)
        assert torch.equal(out, expected), f"p_right {p_right}:\n{out}\n!=\n{expected}"
        assert stats.new_tokens == expected.shape[1] - width
        assert torch.equal(torch.stack(streamed, dim=1), expected[:, width:]), "on_token: one [B] per position"


@torch.no_grad()
def test_batch_of_one_row_per_drafter_sequence():
    """A sequence of one drafter per row works at B = 1 too, and equals the single drafter."""
    model = build_model(tiny_config("mamba2", tie_embeddings=False))
    prompt = random_ids(1, 8, seed=71)
    expected = greedy_batch(model, prompt, None)
    out = speculative_generate(model, prompt, [ModelDrafter(model)], SamplingConfig(max_new_tokens=NEW_TOKENS))
    assert torch.equal(out, expected)


@pytest.mark.parametrize("batching", ["lockstep", "per_row"])
@torch.no_grad()
def test_batch_sampling_keeps_the_targets_distribution(small_pair, batching):
    """4 rows of one prompt, drafted by a draft model (rows 0, 2) and by uniform one-hot drafts (rows 1, 3),
    250 runs: the 2nd and 3rd new tokens of all 1000 rows follow the target's exact marginals."""
    target, draft = small_pair
    prompt = random_ids(1, 5, seed=21, vocab=SMALL_VOCAB)
    generator = torch.Generator().manual_seed(1)
    outs = []
    for run in range(250):
        drafters = [ModelDrafter(draft), UniformDrafter(SMALL_VOCAB, 2 * run), ModelDrafter(draft),
                    UniformDrafter(SMALL_VOCAB, 2 * run + 1)]
        outs.append(speculative_generate(target, prompt.repeat(4, 1), drafters, E2E_SAMPLING, num_draft_tokens=2,
                                         generator=generator, batching=batching)[:, -2:])
    second, third = torch.cat(outs).unbind(1)
    p_second, p_third = exact_marginals(target, prompt, E2E_SAMPLING)
    assert chi_square_p(second, p_second) > P_VALUE
    assert chi_square_p(third, p_third) > P_VALUE


def test_batch_bad_arguments_are_named(monkeypatch):
    model = build_model(tiny_config("mamba2"))
    ids = random_ids(2, 4)
    lookup = PromptLookupDrafter()
    with pytest.raises(ValueError, match=r"input_ids must be integer token ids \[B, T\].*\(2, 0\)"):
        speculative_generate(model, ids[:, :0], lookup)
    with pytest.raises(ValueError, match=r"input_ids must be integer token ids .*torch.float32 tensor of shape \(2, 4\)"):
        speculative_generate(model, ids.float(), lookup)
    with pytest.raises(ValueError, match=r"attention_mask must be a tensor of the shape of input_ids \(2, 4\), "
                                         r"got \(2, 3\)"):
        speculative_generate(model, ids, lookup, attention_mask=torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask must be left padding"):
        speculative_generate(model, ids, lookup, attention_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="attention_mask must hold integers or booleans 0 / 1"):
        speculative_generate(model, ids, lookup, attention_mask=torch.full((2, 4), 2))
    with pytest.raises(ValueError, match="attention_mask has a row with no token"):
        speculative_generate(model, ids, lookup, attention_mask=torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="drafter must be one drafter or one per row: 2 for input_ids of shape "
                                         r"\(2, 4\), got a sequence of 3"):
        speculative_generate(model, ids, [lookup] * 3)
    with pytest.raises(TypeError, match="drafter must have a propose"):
        speculative_generate(model, ids, [lookup, object()])
    with pytest.raises(ValueError, match="batching must be one of"):
        speculative_generate(model, ids, lookup, batching="rows")
    with pytest.raises(ValueError, match="batching='per_row' commits each row's node by state selection"):
        speculative_generate(model, ids, lookup, batching="per_row", rollback="replay")
    monkeypatch.delattr(Attention, "commit_tree_rows")  # a growing cache without a per-row commit
    with pytest.raises(ValueError, match="batching='per_row' needs a model whose layers all commit per row"):
        speculative_generate(build_model(tiny_config(**HYBRID)), ids, lookup, batching="per_row")
