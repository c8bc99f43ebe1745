"""``torch.compile(fullgraph=True)`` smoke test: one graph, same numbers as eager.

Compiling is slow (tens of seconds on a small CPU), so this is one test covering both the full-sequence
forward and a cached single-token decode step.
"""

from __future__ import annotations

import pytest
import torch

from model_testkit import F32, build_model, random_ids, single_threaded, tiny_config

pytestmark = [pytest.mark.usefixtures(single_threaded.__name__),
              # raised inside torch's own compile stack, not by lrnn
              pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]


@torch.no_grad()
def test_compiled_forward_and_decode_step_match_eager():
    """A 2-layer DeltaNet model with negative eigenvalues compiles without graph breaks; the compiled
    forward on a short sequence and a compiled decode step from a prefilled cache equal eager within 1e-5,
    and the compiled step updates the cache like the eager step."""
    torch._dynamo.reset()
    model = build_model(tiny_config("deltanet", negative_eigenvalues=True, d_intermediate=0), F32, embedding_std=0.02)
    compiled = torch.compile(model, fullgraph=True)
    ids = random_ids(2, 8, seed=30)

    eager_logits = model(ids)
    compiled_logits = compiled(ids)
    assert (compiled_logits - eager_logits).abs().max().item() <= 1e-5

    eager_cache, compiled_cache = model.new_cache(), model.new_cache()
    model(ids, cache=eager_cache)
    model(ids, cache=compiled_cache)
    token = random_ids(2, 1, seed=31)
    eager_step = model(token, cache=eager_cache)
    compiled_step = compiled(token, cache=compiled_cache)
    assert compiled_step.shape == (2, 1, model.config.vocab_size)
    assert (compiled_step - eager_step).abs().max().item() <= 1e-5
    assert compiled_cache.length == eager_cache.length == 9
    for layer, (eager_state, compiled_state) in enumerate(zip(eager_cache.layers, compiled_cache.layers)):
        assert sorted(compiled_state) == sorted(eager_state)
        for name in eager_state:
            difference = (compiled_state[name] - eager_state[name]).abs().max().item()
            assert difference <= 1e-5, f"layer {layer} state {name!r} differs by {difference:.1e}"
