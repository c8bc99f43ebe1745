"""Training signal reaches every parameter of every mixer type."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model_testkit import F32, VOCAB, build_model, is_recurrent, random_ids, single_threaded, tiny_config
from lrnn.layers import MIXERS

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)

CASES = [pytest.param(name, negative, id=f"{name}-{'neg' if negative else 'pos'}" if is_recurrent(name) else name)
         for name in sorted(MIXERS) for negative in ([False, True] if is_recurrent(name) else [False])]


@pytest.mark.parametrize("mixer,negative", CASES)
def test_every_parameter_gets_a_finite_nonzero_gradient(mixer, negative):
    """In a 2-layer LanguageModel with an MLP, a next-token loss on the logits gives every parameter a
    gradient that exists, is finite and is not all zeros (the failing parameter is named)."""
    model = build_model(tiny_config(mixer, negative_eigenvalues=negative, d_intermediate=32), F32).train()
    ids = random_ids(2, 19, seed=20)
    logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    loss.backward()
    assert torch.isfinite(loss)
    problems = []
    for name, param in model.named_parameters():
        if param.grad is None:
            problems.append(f"{name}: no gradient")
        elif not torch.isfinite(param.grad).all():
            problems.append(f"{name}: non-finite gradient")
        elif not param.grad.abs().sum() > 0:
            problems.append(f"{name}: gradient is all zeros")
    assert not problems, f"{mixer}: " + "; ".join(problems)
    assert any(n.startswith("layers.1.mlp") for n, _ in model.named_parameters()), "the model has no MLP"
