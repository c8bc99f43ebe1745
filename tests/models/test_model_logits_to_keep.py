"""``LanguageModel.forward(..., logits_to_keep=n)``: the head runs on the last ``n`` positions only, and
``generate`` uses it so that a prompt's prefill computes one row of logits, not ``T``."""

from __future__ import annotations

import pytest
import torch

from lrnn.models import SamplingConfig, generate
from model_testkit import ALL_MIXERS, F64, build_model, random_ids, rel_err, single_threaded, tiny_config

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)

# The kept rows are the same numbers; only the head's matmul may block a shorter input differently.
TOL = 1e-13


def same_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and rel_err(a, b) <= TOL


@torch.no_grad()
@pytest.mark.parametrize("mixer", ALL_MIXERS)
def test_kept_logits_equal_the_last_rows_of_the_full_forward(mixer):
    """logits_to_keep = 1, 3 and T (and 0 = all) give the last rows of the full forward's logits (float64,
    relative error <= 1e-13), without and with a cache (the cache advances the same either way)."""
    model = build_model(tiny_config(mixer, tie_embeddings=False), F64)
    ids = random_ids(2, 11, seed=40)
    full = model(ids)
    for keep in (1, 3, 11):
        kept = model(ids, logits_to_keep=keep)
        assert kept.shape == (2, keep, model.config.vocab_size)
        assert same_rows(kept, full[:, -keep:]), f"{mixer}: logits_to_keep={keep}"
    assert torch.equal(model(ids, logits_to_keep=0), full)
    cache_all, cache_last = model.new_cache(), model.new_cache()
    model(ids[:, :7], cache=cache_all)
    model(ids[:, :7], cache=cache_last, logits_to_keep=1)
    step = ids[:, 7:8]
    assert same_rows(model(step, cache=cache_last, logits_to_keep=1), model(step, cache=cache_all))
    assert cache_all.length == cache_last.length == 8


@torch.no_grad()
def test_padded_vocab_and_classifier_heads_keep_their_width():
    """A padded vocabulary still returns ``vocab_size`` columns; a token classifier keeps its labels."""
    lm = build_model(tiny_config("mamba2", vocab_size=37, pad_vocab_size_multiple=16), F64)
    ids = random_ids(1, 9, seed=41, vocab=37)
    assert same_rows(lm(ids, logits_to_keep=2), lm(ids)[:, -2:])
    assert lm(ids, logits_to_keep=2).shape == (1, 2, 37)
    classifier = build_model(tiny_config("mamba2", num_labels=5), F64)
    assert same_rows(classifier(ids, logits_to_keep=1), classifier(ids)[:, -1:])


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.0, TypeError), (True, TypeError), ("1", TypeError),
                                        (None, TypeError)])
def test_bad_logits_to_keep_is_refused(bad, error):
    """A negative count is a ValueError, anything but an int a TypeError (as for input_ids)."""
    model = build_model(tiny_config("mamba2"), F64)
    with pytest.raises(error, match="logits_to_keep"):
        model(random_ids(1, 4), logits_to_keep=bad)


@torch.no_grad()
def test_generate_runs_the_head_on_one_position_per_call():
    """The prefill of a 9-token prompt feeds the head one position, not nine; the tokens are unchanged
    (greedy continuation equals recomputing the full forward each step)."""
    model = build_model(tiny_config("mamba2", tie_embeddings=False), F64)
    widths = []
    handle = model.head.register_forward_hook(lambda module, args, out: widths.append(args[0].shape[1]))
    try:
        out = generate(model, random_ids(2, 9, seed=42), sampling=SamplingConfig(max_new_tokens=5))
    finally:
        handle.remove()
    assert widths == [1] * 5
    ids = random_ids(2, 9, seed=42)
    for _ in range(5):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)
