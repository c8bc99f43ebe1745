"""``compile_for_decoding``: a model whose forward and ``forward_tree`` are compiled decodes as the eager one
-- greedy autoregressive, speculative chains (replay and selection) and trees give the same tokens, and
the verification logits agree with eager to float32 rounding. Compiling takes a minute or more on a CPU:
the end-to-end test runs with LRNN_SLOW_TESTS=1."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from lrnn.models import (LanguageModel, PromptLookupDrafter, SamplingConfig, compile_for_decoding, generate,
                         speculative_generate, tree_speculative_generate)
from lrnn.models.tree_speculative import PromptLookupTreeDrafter
from lrnn.ops import token_tree
from model_testkit import F32, build_model, random_ids, single_threaded, tiny_config
from test_speculative import OracleDrafter
from test_tree_speculative import OracleTreeDrafter

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)


def test_compile_for_decoding_needs_a_language_model():
    with pytest.raises(TypeError, match="model must be a LanguageModel"):
        compile_for_decoding(torch.nn.Linear(2, 2))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.skipif(not os.environ.get("LRNN_SLOW_TESTS"), reason="compiling takes minutes; set LRNN_SLOW_TESTS=1")
@pytest.mark.parametrize("mixer", ["gated_deltanet", "mamba2"])
@torch.no_grad()
def test_compiled_model_decodes_as_the_eager_one(mixer):
    torch._dynamo.reset()
    eager = build_model(tiny_config(mixer, negative_eigenvalues=True), F32)
    compiled = compile_for_decoding(copy.deepcopy(eager))
    assert isinstance(compiled, LanguageModel)
    prompt = random_ids(1, 9, seed=2).repeat(1, 2)  # repeats: prompt lookup finds matches
    config = SamplingConfig(max_new_tokens=40)
    expected = generate(eager, prompt, sampling=config)
    assert torch.equal(generate(compiled, prompt, sampling=config), expected)
    reference = expected[0]
    for rollback in ("replay", "select"):
        out = speculative_generate(compiled, prompt, OracleDrafter(reference, 0.6), config, num_draft_tokens=4,
                                   rollback=rollback)
        assert torch.equal(out, expected), rollback
    assert torch.equal(speculative_generate(compiled, prompt, PromptLookupDrafter(), config), expected)
    out = tree_speculative_generate(compiled, prompt, OracleTreeDrafter(reference, 0.7), (2, 2, 1), config)
    assert torch.equal(out, expected)
    assert torch.equal(tree_speculative_generate(compiled, prompt, PromptLookupTreeDrafter(), (3, 2, 1), config),
                       expected)
    cache_e, cache_c = eager.new_cache(), compiled.new_cache()
    eager(prompt, cache=cache_e)
    compiled(prompt, cache=cache_c)
    ids, tree = random_ids(1, 7, seed=4), token_tree(torch.tensor([-1, 0, 0, 1, 2, -1, 5]))
    torch.testing.assert_close(compiled.forward_tree(ids, cache_c, tree), eager.forward_tree(ids, cache_e, tree),
                               rtol=1e-4, atol=1e-4)
