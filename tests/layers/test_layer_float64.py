"""float64 layers compute in float64.

The ops keep float64 as float64 ("float32 at least"), so a float64 layer should be accurate to ~1e-15 and
pass ``torch.autograd.gradcheck``. These tests compare the norms and the rotary embedding with plain
float64 formulas, and gradcheck the mixers that have neither.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from layer_testkit import F64, build_variant, random_hidden, rel_err, single_threaded
from lrnn.layers import Attention, GatedRMSNorm, RMSNorm

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)


def test_norms_keep_float64_precision():
    """RMSNorm and GatedRMSNorm (both gate orders, grouped) on float64 inputs match the float64 formula to
    1e-13. (A float32 round trip inside the norm costs ~1e-8 and also makes float64 equivalence checks of
    the layers that use it, e.g. left padding vs no padding, fail at the 1e-10 level.)"""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, generator=gen, dtype=F64)
    z = torch.randn(3, 5, 8, generator=gen, dtype=F64)
    weight = torch.rand(8, generator=gen, dtype=F64) + 0.5
    eps = 1e-5

    def rms(v):  # v / rms(v) over the last dim
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)

    def grouped(v, size):
        return rms(v.reshape(*v.shape[:-1], -1, size)).reshape(v.shape)

    cases = {
        "RMSNorm": (RMSNorm(8, eps), (x,), rms(x) * weight),
        "GatedRMSNorm(norm_before_gate=False, group 4)":
            (GatedRMSNorm(8, 4, eps, norm_before_gate=False), (x, z), grouped(x * F.silu(z), 4) * weight),
        "GatedRMSNorm(norm_before_gate=True)":
            (GatedRMSNorm(8, None, eps, norm_before_gate=True), (x, z), rms(x) * weight * F.silu(z)),
    }
    errors = {}
    for name, (norm, args, expected) in cases.items():
        norm = norm.to(F64)
        with torch.no_grad():
            norm.weight.copy_(weight)
            out = norm(*args)
        assert out.dtype == F64, f"{name}: output dtype {out.dtype}"
        errors[name] = rel_err(out, expected)
    bad = {name: f"{err:.1e}" for name, err in errors.items() if err > 1e-13}
    assert not bad, f"float64 norms lose precision (relative error vs the float64 formula): {bad}"


def test_attention_rotary_keeps_float64_precision():
    """Attention in float64 matches a float64 reference (rotary embedding + causal softmax attention) to
    1e-13."""
    layer = build_variant("attention", None, F64)
    x = random_hidden(2, 9, F64)
    b, t, d = x.shape
    h, hd = layer.num_heads, layer.head_dim
    with torch.no_grad():
        out = layer(x)
        q, k, v = layer.qkv(x).reshape(b, t, 3, h, hd).unbind(2)
        half = hd // 2
        freqs = layer.rope_base ** (-torch.arange(half, dtype=F64) / half)
        angle = torch.arange(t, dtype=F64)[:, None] * freqs  # [T, half]
        cos, sin = angle.cos()[None, :, None], angle.sin()[None, :, None]

        def rotate(u):
            u1, u2 = u[..., :half], u[..., half:]
            return torch.cat([u1 * cos - u2 * sin, u1 * sin + u2 * cos], dim=-1)

        q, k = rotate(q), rotate(k)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / hd ** 0.5
        scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        expected = layer.o_proj(torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(b, t, d))
    err = rel_err(out, expected)
    assert err <= 1e-13, f"float64 attention differs from the float64 reference by {err:.1e}"


@pytest.mark.parametrize("variant,negative", [("mamba", True), ("mamba", False), ("mamba2-no_rmsnorm", True),
                                              ("lstm", None)])
def test_gradcheck_in_float64(variant, negative):
    """Mixers without a norm pass ``torch.autograd.gradcheck`` w.r.t. their input in float64 (both scan
    paths: the chunked forward and a cached token-by-token continuation)."""
    layer = build_variant(variant, negative, F64)
    x = random_hidden(1, 6, F64, seed=11).requires_grad_()

    def chunked(inp):
        return layer(inp, mode="chunk")

    def prefill_then_steps(inp):
        state: dict = {}
        head = layer(inp[:, :3], state)
        return torch.cat([head] + [layer(inp[:, i:i + 1], state) for i in range(3, inp.shape[1])], dim=1)

    assert torch.autograd.gradcheck(chunked, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)
    assert torch.autograd.gradcheck(prefill_then_steps, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)
