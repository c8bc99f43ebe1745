"""Cached continuation of whole models: hybrids, every mixer, the cache's size and reordering.

``model(ids)`` == ``model(prefix, cache)`` then ``model(rest, cache)`` == one token at a time with the
cache; the cache of a recurrent model has a fixed size while attention's grows with the context.
"""

from __future__ import annotations

import pytest
import torch

from lrnn.layers import LSTM, Attention, DeltaNet, GatedDeltaNet, Mamba2
from model_testkit import (ALL_MIXERS, F32, F64, TOL, assert_close, build_model, random_ids, single_threaded,
                           tiny_config)

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)

HYBRIDS = {
    "deltanet+attention_every_2": dict(mixer="deltanet", n_layers=2, attention_every=2),
    "mamba2,gated_deltanet,attention,lstm": dict(mixer=["mamba2", "gated_deltanet", "attention", "lstm"],
                                                 n_layers=4),
}


@torch.no_grad()
def assert_three_ways_agree(model, ids: torch.Tensor, split: int, tol: float, what: str) -> None:
    """Full forward == cached prefill + cached rest == token-by-token with a cache."""
    full = model(ids)
    cache = model.new_cache()
    split_logits = torch.cat([model(ids[:, :split], cache=cache), model(ids[:, split:], cache=cache)], dim=1)
    assert cache.length == ids.shape[1]
    cache = model.new_cache()
    steps = torch.cat([model(ids[:, i:i + 1], cache=cache) for i in range(ids.shape[1])], dim=1)
    assert full.shape == (*ids.shape, model.config.vocab_size)
    assert_close(split_logits, full, tol, f"{what}: prefill {split} + cached rest vs full")
    assert_close(steps, full, tol, f"{what}: token-by-token vs full")


def test_hybrid_layouts():
    """``attention_every`` replaces every k-th layer (1-based) by attention; a list sets each layer."""
    every = build_model(tiny_config(**HYBRIDS["deltanet+attention_every_2"]))
    assert [type(b.mixer) for b in every.layers] == [DeltaNet, Attention]
    listed = build_model(tiny_config(**HYBRIDS["mamba2,gated_deltanet,attention,lstm"]))
    assert [type(b.mixer) for b in listed.layers] == [Mamba2, GatedDeltaNet, Attention, LSTM]
    assert listed.layers[1].mixer.use_forget_gate
    assert listed.config.layer_mixers() == ["mamba2", "gated_deltanet", "attention", "lstm"]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("negative", [False, True], ids=["pos", "neg"])
@pytest.mark.parametrize("hybrid", list(HYBRIDS))
def test_hybrid_full_equals_cached_equals_token_by_token(hybrid, negative, dtype):
    """Hybrid models give the same logits whether run whole, prefilled then continued, or token by token."""
    model = build_model(tiny_config(negative_eigenvalues=negative, **HYBRIDS[hybrid]), dtype)
    assert_three_ways_agree(model, random_ids(2, 23), split=10, tol=TOL[dtype], what=hybrid)


@pytest.mark.parametrize("mixer", ALL_MIXERS)
def test_every_mixer_model_full_equals_cached_equals_token_by_token(mixer):
    """The same three-way agreement for a 2-layer model of each mixer type (float64)."""
    model = build_model(tiny_config(mixer))
    assert_three_ways_agree(model, random_ids(2, 19, seed=3), split=7, tol=TOL[F64], what=mixer)


@torch.no_grad()
def cache_bytes_after(model, lengths: list[int]) -> list[int]:
    """``Cache.nbytes()`` after consuming each cumulative length in ``lengths`` (one chunk per increment)."""
    cache = model.new_cache()
    ids = random_ids(1, lengths[-1], seed=4)
    sizes, done = [], 0
    for length in lengths:
        model(ids[:, done:length], cache=cache)
        done = length
        sizes.append(cache.nbytes())
    return sizes


@pytest.mark.parametrize("negative", [False, True], ids=["pos", "neg"])
def test_recurrent_cache_size_does_not_grow_with_context(negative):
    """A model made only of recurrent mixers (every one, plus the LSTM) holds a cache of the same size
    after 10, 11 and 200 tokens: the per-token cost of decoding does not depend on the context."""
    mixers = ["mamba", "mamba2", "deltanet", "gated_deltanet", "deltaproduct", "lstm"]
    model = build_model(tiny_config(mixers, n_layers=len(mixers), negative_eigenvalues=negative), F32)
    sizes = cache_bytes_after(model, [10, 11, 200])
    assert sizes[0] > 0
    assert sizes == [sizes[0]] * 3, f"recurrent cache bytes after 10 / 11 / 200 tokens: {sizes}"


def test_attention_cache_grows_with_context():
    """Attention's KV cache, in contrast, grows linearly with the number of tokens."""
    model = build_model(tiny_config("attention", n_layers=1), F32)
    sizes = cache_bytes_after(model, [10, 200])
    assert sizes[1] == 20 * sizes[0], f"attention cache bytes after 10 / 200 tokens: {sizes}"


@torch.no_grad()
def test_cache_reorder_permutes_batch_rows():
    """``Cache.reorder(index)`` keeps the selected rows: continuing a reordered cache equals continuing
    the rows separately (recurrent, attention and LSTM states alike)."""
    model = build_model(tiny_config(["mamba2", "attention", "lstm", "deltaproduct"], n_layers=4))
    prompt, nxt = random_ids(3, 9, seed=5), random_ids(3, 4, seed=6)
    cache = model.new_cache()
    model(prompt, cache=cache)
    index = torch.tensor([2, 0])
    cache.reorder(index)
    reordered = model(nxt[index], cache=cache)
    for position, row in enumerate(index.tolist()):
        alone = model.new_cache()
        model(prompt[row:row + 1], cache=alone)
        assert_close(reordered[position:position + 1], model(nxt[row:row + 1], cache=alone), TOL[F64],
                     f"row {row} after reorder")


def test_token_classification_head_shape():
    """With ``num_labels`` the head outputs [B, T, num_labels] (also through a cache), not vocab logits."""
    model = build_model(tiny_config("gated_deltanet", num_labels=5))
    ids = random_ids(3, 7)
    with torch.no_grad():
        logits = model(ids)
        cache = model.new_cache()
        cached = torch.cat([model(ids[:, :4], cache=cache), model(ids[:, 4:], cache=cache)], dim=1)
    assert logits.shape == (3, 7, 5)
    assert_close(cached, logits, TOL[F64], "classifier cached vs full")


@pytest.mark.parametrize("negative", [False, True], ids=["pos", "neg"])
def test_config_eigenvalue_switch_reaches_every_recurrent_layer(negative):
    """``ModelConfig.negative_eigenvalues`` is handed to every recurrent mixer of a mixed model."""
    mixers = ["mamba", "mamba2", "deltanet", "gated_deltanet", "deltaproduct", "attention", "lstm"]
    model = build_model(tiny_config(mixers, n_layers=len(mixers), negative_eigenvalues=negative))
    switches = {name: getattr(block.mixer, "negative_eigenvalues", None) for name, block in zip(mixers, model.layers)}
    assert switches == {"mamba": negative, "mamba2": negative, "deltanet": negative, "gated_deltanet": negative,
                        "deltaproduct": negative, "attention": None, "lstm": None}
