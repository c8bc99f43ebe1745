"""Cached generation: greedy decoding, left padding, EOS handling, sampling and its configuration.

Models are float64 so that greedy choices are not decided by rounding between the cached and the full
computation, and untied (a tied head with a wide embedding mostly repeats the last token).
"""

from __future__ import annotations

import pytest
import torch

from lrnn.models import SamplingConfig, generate, select_next
from model_testkit import ALL_MIXERS, VOCAB, build_model, random_ids, single_threaded, tiny_config

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)

NEW_TOKENS = 12


@torch.no_grad()
def greedy_by_recomputation(model, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Reference greedy decoding: rerun the full (uncached) forward on the whole sequence every step."""
    ids = prompt
    for _ in range(steps):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.fixture(scope="module", params=ALL_MIXERS)
def mixer_model(request):
    """A 2-layer model of each mixer type (negative eigenvalues where applicable)."""
    return request.param, build_model(tiny_config(request.param, tie_embeddings=False))


def test_greedy_generate_equals_full_recomputation(mixer_model):
    """``generate`` (prefill + cached single-token steps) == argmax of a full forward recomputed each step,
    for 12 new tokens and a batch of 2."""
    name, model = mixer_model
    prompt = random_ids(2, 6, seed=10)
    out = generate(model, prompt, sampling=SamplingConfig(max_new_tokens=NEW_TOKENS))
    expected = greedy_by_recomputation(model, prompt, NEW_TOKENS)
    assert out.shape == (2, 6 + NEW_TOKENS)
    assert torch.equal(out, expected), f"{name}: cached greedy\n{out}\n!= recomputed greedy\n{expected}"
    assert len(set(out[:, 6:].flatten().tolist())) > 2, f"{name}: degenerate continuation, test too weak"


def test_left_padded_batch_matches_each_prompt_alone(mixer_model):
    """Left-padded prompts of different lengths (padding filled with random token ids, mask 0) continue
    exactly as each prompt does alone without padding."""
    name, model = mixer_model
    prompts = [random_ids(1, 4, seed=11)[0], random_ids(1, 9, seed=12)[0], random_ids(1, 7, seed=13)[0]]
    width = max(len(p) for p in prompts)
    ids = random_ids(len(prompts), width, seed=14)  # junk under the padding
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = p
        mask[row, width - len(p):] = 1
    sampling = SamplingConfig(max_new_tokens=NEW_TOKENS)
    batched = generate(model, ids, attention_mask=mask, sampling=sampling)
    for row, p in enumerate(prompts):
        alone = generate(model, p[None], sampling=sampling)
        assert torch.equal(batched[row, width:], alone[0, len(p):]), (
            f"{name}: row {row} (prompt length {len(p)}) continues differently when left-padded")


def reference_with_eos(reference: torch.Tensor, eos: int, pad: int, prompt_len: int) -> torch.Tensor:
    """The expected output: each row's reference continuation, pad_token_id after its first EOS."""
    expected = reference.clone()
    for row in range(reference.shape[0]):
        hits = (reference[row, prompt_len:] == eos).nonzero()
        if len(hits):
            expected[row, prompt_len + int(hits[0]) + 1:] = pad
    return expected


@torch.no_grad()
def test_rows_that_emit_eos_are_padded_afterwards():
    """A row that emits ``eos_token_id`` gets ``pad_token_id`` after it while other rows keep decoding;
    eos is chosen as the token greedy emits in row 0 at step 3, so the EOS path is certainly taken."""
    model = build_model(tiny_config(["mamba2", "deltanet"], tie_embeddings=False))
    prompt = random_ids(2, 5, seed=15)
    reference = generate(model, prompt, sampling=SamplingConfig(max_new_tokens=NEW_TOKENS))
    eos, pad = int(reference[0, 5 + 3]), VOCAB - 1
    assert eos != pad, "pick another prompt: eos and pad must differ"
    row1_hits = (reference[1, 5:] == eos).nonzero()
    assert not len(row1_hits) or int(row1_hits[0]) > 3, "pick another prompt: row 1 must outlive row 0"
    streamed = []
    out = generate(model, prompt, sampling=SamplingConfig(max_new_tokens=NEW_TOKENS, eos_token_id=eos,
                                                          pad_token_id=pad),
                   eos_check_every=4, on_token=streamed.append)
    expected = reference_with_eos(reference, eos, pad, 5)
    assert out.shape == expected.shape, "row 1 had not finished: all 12 steps should run"
    assert torch.equal(out, expected), f"\n{out}\n!=\n{expected}"
    assert (out[0, 5 + 4:] == pad).all()
    assert torch.equal(torch.stack(streamed, dim=1), out[:, 5:]), "on_token must see every emitted token"


@torch.no_grad()
def test_generation_stops_early_once_every_row_has_finished():
    """When all rows have emitted EOS, generation stops at the next EOS check (every ``eos_check_every``
    steps) instead of running all ``max_new_tokens``."""
    model = build_model(tiny_config(["mamba2", "deltanet"], tie_embeddings=False))
    prompt = random_ids(1, 5, seed=15).repeat(2, 1)
    reference = generate(model, prompt, sampling=SamplingConfig(max_new_tokens=NEW_TOKENS))
    eos = int(reference[0, 5 + 1])
    first = int((reference[0, 5:] == eos).nonzero()[0])  # <= 1
    out = generate(model, prompt, sampling=SamplingConfig(max_new_tokens=NEW_TOKENS, eos_token_id=eos,
                                                          pad_token_id=0), eos_check_every=4)
    assert out.shape == (2, 5 + 4), f"expected to stop after 4 steps (EOS at step {first}), got {out.shape}"
    assert torch.equal(out, reference_with_eos(reference[:, :5 + 4], eos, 0, 5))


@pytest.fixture(scope="module")
def sampling_model():
    return build_model(tiny_config(["gated_deltanet", "attention"], tie_embeddings=False))


def test_top_k_1_sampling_equals_greedy(sampling_model):
    """Sampling restricted to the top 1 token (any temperature) is greedy decoding."""
    prompt = random_ids(2, 5, seed=16)
    greedy = generate(sampling_model, prompt, sampling=SamplingConfig(max_new_tokens=NEW_TOKENS))
    sampled = generate(sampling_model, prompt, generator=torch.Generator().manual_seed(0),
                       sampling=SamplingConfig(max_new_tokens=NEW_TOKENS, do_sample=True, top_k=1, temperature=3.0))
    assert torch.equal(sampled, greedy)


def test_tiny_top_p_sampling_equals_greedy(sampling_model):
    """Nucleus sampling with a tiny ``top_p`` keeps only the most likely token: greedy decoding."""
    prompt = random_ids(2, 5, seed=16)
    greedy = generate(sampling_model, prompt, sampling=SamplingConfig(max_new_tokens=NEW_TOKENS))
    sampled = generate(sampling_model, prompt, generator=torch.Generator().manual_seed(0),
                       sampling=SamplingConfig(max_new_tokens=NEW_TOKENS, do_sample=True, top_p=1e-6, temperature=3.0))
    assert torch.equal(sampled, greedy)


def test_sampling_is_reproducible_with_a_seeded_generator(sampling_model):
    """The same seed gives the same samples; another seed gives other samples (at temperature 2 over 40
    tokens, 24 equal draws by chance are practically impossible; the test is deterministic anyway)."""
    prompt = random_ids(2, 5, seed=16)
    sampling = SamplingConfig(max_new_tokens=NEW_TOKENS, do_sample=True, temperature=2.0)

    def run(seed):
        return generate(sampling_model, prompt, sampling=sampling, generator=torch.Generator().manual_seed(seed))

    first = run(1)
    assert torch.equal(first, run(1))
    assert not torch.equal(first, run(2))
    assert first.shape == (2, 5 + NEW_TOKENS)


def test_select_next_respects_top_k_and_top_p():
    """``select_next`` only ever samples from the top-k set and from the smallest set reaching top_p."""
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log().repeat(400, 1)
    gen = torch.Generator().manual_seed(0)
    top_k = select_next(logits, SamplingConfig(do_sample=True, top_k=2), gen)
    assert set(top_k.tolist()) == {1, 3}
    top_p = select_next(logits, SamplingConfig(do_sample=True, top_p=0.75), gen)  # 0.5 + 0.3 reaches 0.75
    assert set(top_p.tolist()) == {1, 3}
    everything = select_next(logits, SamplingConfig(do_sample=True), gen)
    assert set(everything.tolist()) == {0, 1, 2, 3}
    assert torch.equal(select_next(logits[:2], SamplingConfig()), torch.tensor([1, 1]))


@pytest.mark.parametrize("field,value,error", [
    ("temperature", 0.0, ValueError), ("temperature", -1.0, ValueError), ("temperature", float("nan"), ValueError),
    ("top_p", 0.0, ValueError), ("top_p", 1.5, ValueError), ("top_p", -0.2, ValueError),
    ("top_k", -1, ValueError), ("top_k", 2.5, TypeError), ("max_new_tokens", -1, ValueError),
    ("max_new_tokens", 3.0, TypeError), ("eos_token_id", -2, ValueError), ("pad_token_id", True, TypeError),
])
def test_sampling_config_rejects_bad_values(field, value, error):
    """Out-of-range sampling settings raise a ValueError, settings of the wrong kind (a float or a bool for
    an int) a TypeError; both name the field."""
    with pytest.raises(error, match=field):
        SamplingConfig(**{field: value})


def test_zero_new_tokens_returns_the_prompt(sampling_model):
    """``max_new_tokens=0`` is valid and returns the prompt unchanged."""
    prompt = random_ids(2, 5, seed=16)
    assert torch.equal(generate(sampling_model, prompt, sampling=SamplingConfig(max_new_tokens=0)), prompt)
