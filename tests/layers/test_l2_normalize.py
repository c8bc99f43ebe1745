"""``lrnn.layers.common.l2_normalize`` (the DeltaNet family's q / k normalisation with a hand-written backward)
against ``F.normalize``: values and gradients, float64 tight and float32 loose, odd shapes, exact zero rows
and rows below the clamp, and gradcheck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lrnn.layers.common import l2_normalize


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shape", [(3, 7, 2, 5), (1, 1, 1, 1), (4, 13, 33)])
def test_values_and_gradients_equal_f_normalize(dtype, tol, shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g, dtype=dtype) * torch.rand(*shape[:-1], 1, generator=g, dtype=dtype) * 5
    x[0, ...] = 0.0  # zero rows: the clamp's branch
    if x.ndim > 2 and x.shape[1] > 1:
        x[:, 1] = 1e-14 * torch.randn(x[:, 1].shape, generator=g, dtype=dtype)  # rows below eps = 1e-12
    grad = torch.randn(*shape, generator=g, dtype=dtype)
    leaf = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    ours, reference = l2_normalize(leaf[0]), F.normalize(leaf[1], dim=-1)
    torch.testing.assert_close(ours, reference, rtol=tol, atol=tol)
    (ours * grad).sum().backward()
    (reference * grad).sum().backward()
    scale = leaf[1].grad.abs().max().clamp_min(1.0)
    torch.testing.assert_close(leaf[0].grad / scale, leaf[1].grad / scale, rtol=tol, atol=tol)


def test_gradcheck():
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(l2_normalize, (x,))
