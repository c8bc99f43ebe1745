"""``unit_lower_inverse``: (I + A)^{-1} for strictly lower A, against torch.linalg.inv, with gradients."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lrnn.ops.triangular import unit_lower_inverse

from ops_helpers import F64, TOL_F64, assert_close, generator


def _lower(shape, seed):
    return torch.randn(*shape, generator=generator(seed), dtype=F64) * 0.5


@pytest.mark.parametrize("shape", [(1, 1), (3, 5, 5), (2, 8, 8), (4, 16, 16), (2, 3, 33, 33), (1, 64, 64), (0, 9, 9)])
def test_inverse_matches_linalg_inv(shape):
    a = _lower(shape, seed=shape[-1])  # the diagonal and upper part are ignored
    eye = torch.eye(shape[-1], dtype=F64)
    assert_close(unit_lower_inverse(a), torch.linalg.inv(eye + a.tril(-1)), TOL_F64, "inverse")


@pytest.mark.parametrize("c", [5, 16, 20])
def test_gradient(c):
    a = _lower((2, c, c), seed=c).tril(-1).requires_grad_()
    assert torch.autograd.gradcheck(unit_lower_inverse, (a,))


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def test_cpu_inverse_is_a_few_kernels_not_a_loop_over_rows():
    """At the small chunks of short sequences the per-kernel overhead dominates: on a CPU the inverse of
    a 16x16 block runs a handful of kernels (a batched triangular solve), not one per row and merge."""
    with _CountOps() as ops:
        unit_lower_inverse(_lower((64, 16, 16), seed=1))
    assert ops.count <= 8
