"""``GatedRMSNorm`` (its hand-written forward and backward over cache-sized blocks of rows) against the
formula run through autograd: outputs and the gradients of x, z and the weight, float64 to 1e-12 and
float32 loosely, for both gate orders, no gate, groups, odd shapes, one block and several."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lrnn.ops._chunking as chunking
from lrnn.layers import GatedRMSNorm
from lrnn.testing import assert_relative_close

F64, F32 = torch.float64, torch.float32
EPS = 1e-5


def formula(x, z, weight, group_size, norm_before_gate):
    """The definition: norm(x * silu(z)) * w, or norm(x) * w * silu(z), per group of channels."""
    u = x if z is None or norm_before_gate else x * F.silu(z)
    groups = u.reshape(*u.shape[:-1], -1, group_size)
    y = (groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + EPS)).reshape(u.shape) * weight
    return y * F.silu(z) if z is not None and norm_before_gate else y


def outputs_and_grads(fn, x, z, weight, upstream):
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight) + (() if z is None else (z,))]
    y = fn(leaves[0], None if z is None else leaves[2], leaves[1])
    grads = torch.autograd.grad((y * upstream).sum(), leaves)
    return [y.detach(), *grads]


@pytest.mark.parametrize("gate", ["gate_first", "norm_first", "no_gate"])
@pytest.mark.parametrize("group_size", [None, 3])
@pytest.mark.parametrize("per_block", [0, 1, 4], ids=["one_block", "row_blocks", "blocks_of_4_rows"])
def test_matches_formula(monkeypatch, gate, group_size, per_block):
    """Float64 [5, 7, 9] inputs: outputs and gradients within 1e-12 of the formula."""
    dim = 9
    if per_block:  # force several blocks (the default puts these few rows in one)
        monkeypatch.setattr(chunking, "CACHE_BLOCK_ELEMENTS", per_block * dim)
    gen = torch.Generator().manual_seed(3)
    x, z, upstream = (torch.randn(5, 7, dim, generator=gen, dtype=F64) for _ in range(3))
    weight = torch.rand(dim, generator=gen, dtype=F64) + 0.5
    z = None if gate == "no_gate" else z
    norm_first = gate == "norm_first"
    norm = GatedRMSNorm(dim, group_size, EPS, norm_before_gate=norm_first).to(F64)

    def functional(x_, z_, w_):  # the module with w_ as its weight, so autograd reaches it
        return torch.func.functional_call(norm, {"weight": w_}, (x_, z_))

    got = outputs_and_grads(functional, x, z, weight, upstream)
    expected = outputs_and_grads(lambda x_, z_, w_: formula(x_, z_, w_, group_size or dim, norm_first),
                                 x, z, weight, upstream)
    for name, a, b in zip(["y", "grad x", "grad weight", "grad z"], got, expected):
        assert_relative_close(a, b, 1e-12, name)
    assert norm(x, z).dtype == F64


def test_float32_and_empty():
    """Float32 at a Mamba-2 norm's shape within 1e-5; an empty sequence gives an empty output."""
    gen = torch.Generator().manual_seed(4)
    x, z, upstream = (torch.randn(6, 40, 256, generator=gen) for _ in range(3))
    weight = torch.rand(256, generator=gen) + 0.5
    norm = GatedRMSNorm(256, 128, EPS)
    got = outputs_and_grads(lambda x_, z_, w_: torch.func.functional_call(norm, {"weight": w_}, (x_, z_)),
                            x, z, weight, upstream)
    expected = outputs_and_grads(lambda x_, z_, w_: formula(x_, z_, w_, 128, False), x.double(), z.double(),
                                 weight.double(), upstream.double())
    for name, a, b in zip(["y", "grad x", "grad weight", "grad z"], got, expected):
        assert a.dtype == F32
        assert_relative_close(a.double(), b, 1e-5, name)
    assert norm(torch.zeros(2, 0, 256), torch.zeros(2, 0, 256)).shape == (2, 0, 256)
