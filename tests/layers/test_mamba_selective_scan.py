"""Mamba's CPU path (``mode="recurrent"``, the ``selective_scan`` function) against its chunked path.

The chunked path runs ``decay_recurrence`` on the [B, T, d_inner, d_state] decays through autograd and
is itself tested against the sequential reference (tests/ops); here the whole layer must agree in
float64: outputs, the carried state, and the gradients of the input and every parameter, in both
eigenvalue ranges, at an odd length, with left padding.
"""

import pytest
import torch

from lrnn.layers import Mamba


@pytest.mark.parametrize("negative", [False, True])
def test_recurrent_scan_matches_the_chunked_layer_with_gradients(negative):
    torch.manual_seed(0)
    layer = Mamba(16, d_state=4, chunk_size=4, negative_eigenvalues=negative).double()
    with torch.no_grad():  # dt up to ~1: decays spread over (0, 1), so 2a - 1 takes both signs
        layer.dt_proj.bias.uniform_(-2.0, 1.0)
    x = torch.randn(3, 11, 16, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, :4] = False  # left padding: identity steps
    g = torch.randn(3, 11, 16, dtype=torch.float64)
    results = {}
    for mode in ("recurrent", "chunk"):
        state = {}
        y = layer(x, state, mask=mask, mode=mode)
        grads = torch.autograd.grad((y * g).sum(), [x, *layer.parameters()])
        results[mode] = (y, state["ssm"], *grads)
    names = ["y", "state", "grad x", *(name for name, _ in layer.named_parameters())]
    for name, fast, reference in zip(names, results["recurrent"], results["chunk"]):
        torch.testing.assert_close(fast, reference, rtol=1e-9, atol=1e-11, msg=name)


def test_a_continued_sequence_equals_the_whole_one():
    torch.manual_seed(1)
    layer = Mamba(16, d_state=4, negative_eigenvalues=True).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    whole = layer(x, mode="recurrent")
    state = {}
    first = layer(x[:, :5], state, mode="recurrent")
    second = layer(x[:, 5:], state, mode="recurrent")
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-12, atol=1e-12)
