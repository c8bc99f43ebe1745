"""Chain speculative decoding (``lrnn.models.speculative``): exactness and distribution.

* Greedy: the speculative output equals ``generate``'s greedy output token for token (72 new tokens) for
  every registered mixer and a hybrid, with drafts that are sometimes right (an oracle that proposes the
  true greedy token with probability 0.6, else a wrong one: steps with all, some and none accepted), with
  prompt lookup and with a draft model (itself: every draft accepted; another model: mostly rejected).
* Sampling: a chi-square test that the emitted tokens have the target's distribution (after temperature,
  top_k, top_p), for ``verify_draft`` on fixed distributions and end to end on a tiny model; the same test
  rejects a broken acceptance rule (accept always), so it can fail.

Models are float64 so that greedy choices are not decided by rounding between the chunked verification
and the single-token steps of ``generate``.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

import lrnn.models.speculative as speculative
from lrnn.models import (Draft, ModelDrafter, PromptLookupDrafter, SamplingConfig, SpeculativeStats, generate,
                         speculative_generate, verify_draft)
from lrnn.models.generation import sampling_probs
from lrnn.models.speculative import continuation_start
from model_testkit import (ALL_MIXERS, F64, TOL, VOCAB, assert_close, build_model, random_ids, single_threaded,
                           tiny_config)

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)

NEW_TOKENS = 72
PROMPT = 8
HYBRID = dict(mixer="deltanet", n_layers=4, attention_every=2)  # deltanet, attention, deltanet, attention
MODELS = {**{name: dict(mixer=name) for name in ALL_MIXERS}, "deltanet+attention_every_2": HYBRID}
P_VALUE = 1e-3  # seeds are fixed: the tests are deterministic; a correct rule passes with a wide margin


class OracleDrafter:
    """Proposes the token of a known continuation ``reference`` [L] with probability ``p_right``, else a
    uniformly drawn *other* token, so that acceptance is partial and every outcome occurs."""

    def __init__(self, reference: torch.Tensor, p_right: float, seed: int = 0) -> None:
        self.reference, self.p_right = reference, p_right
        self.rng = torch.Generator().manual_seed(seed)

    def propose(self, sequence, num_tokens, sampling, generator) -> Draft:
        start = len(sequence)
        assert torch.equal(sequence, self.reference[:start]), "the committed sequence left the greedy path"
        true = self.reference[start:start + num_tokens]
        wrong = (true + torch.randint(1, VOCAB, true.shape, generator=self.rng)) % VOCAB
        right = torch.rand(true.shape, generator=self.rng) < self.p_right
        return Draft(torch.where(right, true, wrong))


class UniformDrafter:
    """Proposes uniformly random tokens and reports no distribution (one-hot verification)."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        self.vocab, self.rng = vocab, torch.Generator().manual_seed(seed)

    def propose(self, sequence, num_tokens, sampling, generator) -> Draft:
        return Draft(torch.randint(0, self.vocab, (num_tokens,), generator=self.rng))


@pytest.fixture(scope="module", params=list(MODELS))
def target(request):
    return request.param, build_model(tiny_config(**MODELS[request.param], tie_embeddings=False))


def greedy_reference(model, prompt: torch.Tensor, new_tokens: int = NEW_TOKENS, eos: int | None = None):
    return generate(model, prompt, sampling=SamplingConfig(max_new_tokens=new_tokens, eos_token_id=eos),
                    eos_check_every=1)


def run_speculative(model, prompt, drafter, k: int = 4, new_tokens: int = NEW_TOKENS, **sampling):
    """Chains with snapshot and replay (this file's subject; ``rollback="select"``, the default for every
    mixer with a tree form, is tested in test_model_tree_commit.py)."""
    stats = SpeculativeStats()
    out = speculative_generate(model, prompt, drafter, SamplingConfig(max_new_tokens=new_tokens, **sampling),
                               num_draft_tokens=k, stats=stats, rollback="replay")
    return out, stats


class LogitsRecorder:
    """Wraps ``model.forward`` to record, for every call with a cache, the logits it returns with the
    tokens they follow: (absolute position of the first kept logit, the input ids, logits [kept, V])."""

    def __init__(self, model) -> None:
        self.model, self.real, self.calls = model, model.forward, []
        model.forward = self

    def __call__(self, input_ids, cache=None, attention_mask=None, logits_to_keep=0):
        start = cache.length
        logits = self.real(input_ids, cache=cache, attention_mask=attention_mask, logits_to_keep=logits_to_keep)
        kept = logits.shape[1]
        self.calls.append((start + input_ids.shape[1] - kept, start, input_ids[0], logits[0]))
        return logits

    def assert_match_on(self, sequence: torch.Tensor, what: str) -> int:
        """Every recorded logit row that follows a prefix of ``sequence`` equals the uncached full forward's
        row there (float64: 1e-10); returns how many rows were compared. A wrong cache shows here even
        when it does not flip an argmax."""
        del self.model.forward  # the real method again
        full = self.model(sequence[None])[0]
        compared = 0
        for first, start, ids, logits in self.calls:
            for j, row in enumerate(logits):
                position = first + j  # the logits after the token at this position
                if position < len(sequence) and torch.equal(ids[:position - start + 1], sequence[start:position + 1]):
                    assert_close(row, full[position], TOL[F64], f"{what}: logits after position {position}")
                    compared += 1
        return compared


# ---- greedy: token for token ---------------------------------------------------------------------
@torch.no_grad()
def test_greedy_speculative_equals_greedy_autoregressive_with_partly_right_drafts(target):
    """Every mixer and a hybrid: 72 greedy tokens equal ``generate``'s, through steps where all 4 drafts,
    some of them and none of them are accepted (each a rollback case: none, replay of a prefix, replay of
    the pending token alone); and every logit the target computed on the accepted path equals the
    uncached forward's (this also catches a wrong cache in mixers whose tiny models remember so little
    that it would not change a greedy token)."""
    name, model = target
    prompt = random_ids(1, PROMPT, seed=11)
    expected = greedy_reference(model, prompt)
    assert len(set(expected[0, PROMPT:].tolist())) > 2, f"{name}: degenerate continuation, test too weak"
    recorder = LogitsRecorder(model)
    out, stats = run_speculative(model, prompt, OracleDrafter(expected[0], p_right=0.6))
    assert recorder.assert_match_on(out[0], name) >= NEW_TOKENS
    assert torch.equal(out, expected), f"{name}: speculative\n{out}\n!= autoregressive\n{expected}"
    full = [a for a, n in zip(stats.accepted, stats.proposed) if n == 4]
    assert 4 in full and 0 in full and any(0 < a < 4 for a in full), f"{name}: acceptance {stats.accepted}"
    assert stats.new_tokens == NEW_TOKENS and stats.steps < NEW_TOKENS - 1
    assert stats.target_forwards == 1 + stats.steps + stats.replays


@pytest.mark.parametrize("name", ["mamba2", "gated_deltanet", "attention", "deltanet+attention_every_2"])
def test_greedy_speculative_with_prompt_lookup_equals_greedy(name):
    """Prompt lookup on a prompt that repeats itself: drafts are often right, output unchanged."""
    model = build_model(tiny_config(**MODELS[name], tie_embeddings=False))
    prompt = random_ids(1, 6, seed=5).repeat(1, 3)
    expected = greedy_reference(model, prompt)
    out, stats = run_speculative(model, prompt, PromptLookupDrafter(max_ngram=3), k=5)
    assert torch.equal(out, expected), name
    assert sum(stats.proposed) > 0 and sum(stats.accepted) > 0, f"{name}: lookup never drafted or never hit"


@pytest.mark.parametrize("name", ["mamba", "deltaproduct", "deltanet+attention_every_2"])
def test_greedy_speculative_with_a_draft_model_equals_greedy(name):
    """A draft model that is the target itself has every draft accepted (no replay); another model has
    most rejected (the draft cache rolls back every step). Both give ``generate``'s output."""
    model = build_model(tiny_config(**MODELS[name], tie_embeddings=False))
    prompt = random_ids(1, PROMPT, seed=12)
    expected = greedy_reference(model, prompt)
    out, stats = run_speculative(model, prompt, ModelDrafter(model), k=3)
    assert torch.equal(out, expected), f"{name}: self-drafted"
    assert stats.acceptance_rate == 1.0 and stats.replays == 0
    other = build_model(tiny_config(mixer="mamba2", n_layers=1, tie_embeddings=False), seed=7)
    drafter = ModelDrafter(other)
    out, stats = run_speculative(model, prompt, drafter, k=3)
    assert torch.equal(out, expected), f"{name}: drafted by another model"
    assert stats.replays > 0
    # Catch-up forwards + drafting steps: far fewer than re-reading the whole sequence each step.
    assert drafter.forwards <= sum(stats.proposed) + stats.steps


def test_greedy_stops_at_eos_like_generate():
    """With an EOS that the greedy continuation emits, the output ends there, as ``generate`` (checking
    every step) ends; EOS inside an accepted run of drafts cuts the run."""
    model = build_model(tiny_config("gated_deltanet", tie_embeddings=False))
    prompt = random_ids(1, PROMPT, seed=13)
    free = greedy_reference(model, prompt)
    eos = int(free[0, PROMPT + 20])
    expected = greedy_reference(model, prompt, eos=eos)
    assert expected.shape[1] < free.shape[1] and int(expected[0, -1]) == eos
    for drafter in (OracleDrafter(free[0], p_right=1.0), OracleDrafter(free[0], p_right=0.5)):
        out, stats = run_speculative(model, prompt, drafter, eos_token_id=eos)
        assert torch.equal(out, expected)
        assert stats.new_tokens == expected.shape[1] - PROMPT


@pytest.mark.parametrize("new_tokens", [0, 1, 2, 5])
def test_short_generations_have_the_asked_length(new_tokens):
    """``max_new_tokens`` caps the drafts (a step never emits past it)."""
    model = build_model(tiny_config("mamba2", tie_embeddings=False))
    prompt = random_ids(1, PROMPT, seed=14)
    expected = greedy_reference(model, prompt, new_tokens)
    out, stats = run_speculative(model, prompt, OracleDrafter(greedy_reference(model, prompt)[0], 1.0), k=4,
                                 new_tokens=new_tokens)
    assert torch.equal(out, expected) and out.shape[1] == PROMPT + new_tokens
    assert all(n <= new_tokens - 2 for n in stats.proposed)


# ---- prompt lookup ---------------------------------------------------------------------------------
def ids(*values: int) -> torch.Tensor:
    return torch.tensor(values)


def test_prompt_lookup_prefers_the_longest_ngram_and_a_recent_full_continuation():
    lookup, greedy = PromptLookupDrafter(max_ngram=2), SamplingConfig()
    # The last 2-gram (3, 4) occurred at 1 and at 6: the latest is taken while num_tokens tokens follow it.
    sequence = ids(9, 3, 4, 5, 6, 1, 3, 4, 7, 3, 4)
    assert lookup.propose(sequence, 3, greedy, None).tokens.tolist() == [7, 3, 4]
    assert lookup.propose(sequence, 4, greedy, None).tokens.tolist() == [5, 6, 1, 3]
    # Asking for more than any occurrence is followed by: the earliest occurrence (the longest tail).
    assert continuation_start(ids(1, 2, 1, 2), 2, 5) == 2
    # No 2-gram match: fall back to the last token alone; no match at all: an empty draft.
    assert lookup.propose(ids(5, 8, 6, 8), 2, greedy, None).tokens.tolist() == [6, 8]
    assert lookup.propose(ids(1, 2, 3), 2, greedy, None).tokens.numel() == 0
    assert lookup.propose(ids(7), 2, greedy, None).tokens.numel() == 0


@torch.no_grad()
def test_copy_cache_is_independent():
    """The verification snapshot survives in-place changes of the live cache's tensors."""
    model = build_model(tiny_config(["mamba2", "attention"], n_layers=2))
    cache = model.new_cache()
    model(random_ids(1, 5), cache=cache)
    copy = cache.clone()
    for layer in cache.layers:
        for value in layer.values():
            value.zero_() if value.dtype != torch.bool else value.fill_(False)
    assert copy.length == cache.length == 5
    assert all(bool(v.any()) for layer in copy.layers for v in layer.values())


# ---- sampling: the target's distribution -----------------------------------------------------------
def chi_square_p(samples: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of "``samples`` (token ids) are drawn from ``probs`` [V]" (cells of zero probability must
    stay empty: one sample there fails outright)."""
    counts = torch.bincount(samples, minlength=len(probs)).double()
    support = probs > 0
    if counts[~support].sum() > 0:
        return 0.0
    expected = probs[support].double() * len(samples)
    return float(chisquare(counts[support], expected / expected.sum() * counts.sum()).pvalue)


def first_tokens_of_verification(p_logits, q, one_hot: bool, sampling, samples: int, seed: int = 0):
    """The emitted tokens of ``samples`` verifications of 2-token drafts drawn from ``q`` [2, V] (a fresh
    draft each time: the guarantee is over the drafter's randomness too): position i's tokens wherever
    the i - 1 drafts before it were accepted (the third is then the bonus token). ``one_hot``: the drafter
    reports no q."""
    generator = torch.Generator().manual_seed(seed)
    emitted_at: list[list[torch.Tensor]] = [[], [], []]
    for _ in range(samples):
        tokens = torch.multinomial(q, 1, generator=generator)[:, 0]
        accepted, token = verify_draft(p_logits, Draft(tokens, None if one_hot else q), sampling, generator)
        for i, value in enumerate(torch.cat([tokens[:accepted], token[None]])):
            emitted_at[i].append(value)
    return [torch.stack(tokens) for tokens in emitted_at]


def verification_case(sampling: SamplingConfig, vocab: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Target logits [3, V] and draft distributions q [2, V] near the target's (a draft model that is
    often but not always right), both seeded."""
    gen = torch.Generator().manual_seed(3)
    p_logits = 1.5 * torch.randn(3, vocab, generator=gen, dtype=torch.float64)
    return p_logits, sampling_probs(p_logits[:2] + torch.randn(2, vocab, generator=gen, dtype=torch.float64), sampling)


VERIFY_CASES = {
    "plain": SamplingConfig(do_sample=True),
    "temperature 0.7, top_k 5": SamplingConfig(do_sample=True, temperature=0.7, top_k=5),
    "top_p 0.8": SamplingConfig(do_sample=True, top_p=0.8),
}


@pytest.mark.parametrize("case", list(VERIFY_CASES))
@pytest.mark.parametrize("one_hot", [False, True], ids=["draft-probs", "one-hot"])
def test_verify_draft_emits_the_target_distribution(case, one_hot):
    """Fixed target logits for 3 positions and 2-token drafts: the first emitted token follows p_1, the
    second (where d_1 was accepted) p_2 whether d_2 was accepted or resampled, the bonus token p_3."""
    sampling = VERIFY_CASES[case]
    p_logits, q = verification_case(sampling)
    emitted = first_tokens_of_verification(p_logits, q, one_hot, sampling, samples=6000)
    p = sampling_probs(p_logits, sampling)
    for i, tokens in enumerate(emitted):
        assert len(tokens) > 200 and chi_square_p(tokens, p[i]) > P_VALUE, f"emitted token {i + 1}"


def test_the_chi_square_test_rejects_a_wrong_acceptance_rule(monkeypatch):
    """The test above fails when drafts are always accepted (the emitted token is then the draft's)."""
    monkeypatch.setattr(speculative, "_accept", lambda u, p_draft, q_draft: torch.ones_like(u, dtype=torch.bool))
    sampling = SamplingConfig(do_sample=True)
    p_logits, q = verification_case(sampling)
    first = first_tokens_of_verification(p_logits, q, False, sampling, samples=2000)[0]
    assert chi_square_p(first, sampling_probs(p_logits, sampling)[0]) < 1e-6


SMALL_VOCAB = 8


def exact_marginals(model, prompt: torch.Tensor, sampling: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's marginal distributions [V] of the 2nd and 3rd new tokens, summing over the tokens
    before them (the first new token is sampled from the prefill, not speculatively)."""
    v = SMALL_VOCAB
    p0 = sampling_probs(model(prompt)[0, -1], sampling).double()  # [V]
    one = torch.cat([prompt.repeat(v, 1), torch.arange(v)[:, None]], dim=1)  # [V, T + 1]
    p1 = sampling_probs(model(one)[:, -1], sampling).double()  # [V, V]: p(y1 | y0)
    pairs = torch.cartesian_prod(torch.arange(v), torch.arange(v))  # (y0, y1) rows
    two = torch.cat([prompt.repeat(v * v, 1), pairs], dim=1)
    p2 = sampling_probs(model(two)[:, -1], sampling).double().reshape(v, v, v)  # p(y2 | y0, y1)
    joint01 = p0[:, None] * p1
    return joint01.sum(0), (joint01[..., None] * p2).sum((0, 1))


def sample_second_and_third(model, prompt, drafter_factory, sampling: SamplingConfig, runs: int):
    generator = torch.Generator().manual_seed(0)
    outs = [speculative_generate(model, prompt, drafter_factory(seed), sampling, num_draft_tokens=2,
                                 generator=generator)[0, -2:] for seed in range(runs)]
    return torch.stack(outs).unbind(1)


E2E_SAMPLING = SamplingConfig(max_new_tokens=3, do_sample=True, temperature=0.8, top_k=6, top_p=0.95)


@pytest.fixture(scope="module")
def small_pair():
    """A target and a (different) draft model on an 8-token vocabulary."""
    config = tiny_config("gated_deltanet", n_layers=1, vocab_size=SMALL_VOCAB, tie_embeddings=False)
    target = build_model(config, seed=0, embedding_std=0.5)
    draft = build_model(tiny_config("mamba2", n_layers=1, vocab_size=SMALL_VOCAB, tie_embeddings=False), seed=4,
                        embedding_std=0.5)
    return target, draft


@pytest.mark.parametrize("drafter", ["model", "uniform"])
@torch.no_grad()
def test_speculative_sampling_keeps_the_targets_distribution(small_pair, drafter):
    """End to end (temperature, top_k and top_p on both models): the 2nd and 3rd new tokens of 1000 runs
    follow the target's exact marginals, with a draft model (its q) and with uniform one-hot drafts."""
    target, draft = small_pair
    prompt = random_ids(1, 5, seed=21, vocab=SMALL_VOCAB)
    def factory(seed: int):
        return ModelDrafter(draft) if drafter == "model" else UniformDrafter(SMALL_VOCAB, seed)

    second, third = sample_second_and_third(target, prompt, factory, E2E_SAMPLING, runs=1000)
    p_second, p_third = exact_marginals(target, prompt, E2E_SAMPLING)
    assert chi_square_p(second, p_second) > P_VALUE
    assert chi_square_p(third, p_third) > P_VALUE


@torch.no_grad()
def test_end_to_end_chi_square_rejects_accepting_every_draft(small_pair, monkeypatch):
    """With uniform drafts always accepted, the 2nd token is uniform, not the target's: the test fails."""
    monkeypatch.setattr(speculative, "_accept", lambda u, p_draft, q_draft: torch.ones_like(u, dtype=torch.bool))
    target, _ = small_pair
    prompt = random_ids(1, 5, seed=21, vocab=SMALL_VOCAB)
    second, _ = sample_second_and_third(target, prompt, lambda seed: UniformDrafter(SMALL_VOCAB, seed),
                                        E2E_SAMPLING, runs=300)
    assert chi_square_p(second, exact_marginals(target, prompt, E2E_SAMPLING)[0]) < 1e-6


def test_top_k_1_speculative_sampling_equals_greedy():
    """Sampling with top_k=1 leaves one token of probability 1: the greedy output, whatever the drafts."""
    model = build_model(tiny_config("mamba2", tie_embeddings=False))
    prompt = random_ids(1, PROMPT, seed=15)
    out, _ = run_speculative(model, prompt, UniformDrafter(VOCAB), new_tokens=24, do_sample=True, top_k=1)
    assert torch.equal(out, greedy_reference(model, prompt, 24))


# ---- bad input -------------------------------------------------------------------------------------
class BadDrafter:
    def __init__(self, draft: Draft) -> None:
        self.draft = draft

    def propose(self, sequence, num_tokens, sampling, generator) -> Draft:
        return self.draft


def test_bad_arguments_are_named():
    model = build_model(tiny_config("mamba2"))
    prompt = random_ids(1, 4)
    lookup = PromptLookupDrafter()
    with pytest.raises(ValueError, match=r"input_ids must be integer token ids \[B, T\].*\(1, 0\)"):
        speculative_generate(model, random_ids(1, 0), lookup)
    with pytest.raises(ValueError, match="num_draft_tokens must be >= 1, got 0"):
        speculative_generate(model, prompt, lookup, num_draft_tokens=0)
    with pytest.raises(TypeError, match="drafter must have a propose"):
        speculative_generate(model, prompt, object())
    with pytest.raises(ValueError, match=f"vocab_size 8 differs from the target's {VOCAB}"):
        speculative_generate(model, prompt, ModelDrafter(build_model(tiny_config("mamba2", vocab_size=8))))
    with pytest.raises(ValueError, match=r"eos_token_id must be a token id in \[0, 40\), got 40"):
        speculative_generate(model, prompt, lookup, SamplingConfig(eos_token_id=VOCAB))
    with pytest.raises(ValueError, match="max_ngram must be >= 1, got 0"):
        PromptLookupDrafter(0)
    with pytest.raises(TypeError, match="model must be a LanguageModel"):
        ModelDrafter(object())
    with pytest.raises(ValueError, match="at most 4 int64 tokens"):
        speculative_generate(model, prompt, BadDrafter(Draft(torch.zeros(5, dtype=torch.long))), num_draft_tokens=4)
    with pytest.raises(ValueError, match=r"Draft.probs must be \[n, vocab_size\] = \[2, 40\], got \(2, 8\)"):
        speculative_generate(model, prompt, BadDrafter(Draft(torch.zeros(2, dtype=torch.long), torch.ones(2, 8))),
                             SamplingConfig(do_sample=True))
