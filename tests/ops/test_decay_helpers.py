"""Tests of the signed log-space decay helpers ``decay_from_values`` and ``negative_range``."""

from __future__ import annotations

import math

import pytest
import torch

from lrnn.ops import decay_from_values, decay_recurrence, negative_range

from ops_helpers import F32, F64, assert_close, decay_recurrence_inputs, generator, uniform


def decode(log_abs: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Back from (log|a|, a < 0) to a."""
    return torch.exp(log_abs) * (1 - 2 * negative.to(log_abs.dtype))


def log_decays_for_test(dtype=F64) -> torch.Tensor:
    """x = log a for a in (0, 1] at random, plus the ends a = 0 (x = -inf), a = 1 and a = 1/2 (2a - 1 = 0)."""
    a = uniform((1000,), 0.0, 1.0, generator(0))
    a = torch.cat([a, torch.tensor([0.0, 1.0, 0.5, 1e-12, 1 - 1e-12], dtype=F64)])
    return torch.log(a).to(dtype)


def test_negative_range_matches_float64_formula():
    """negative_range(x) decodes to 2 e^x - 1 (float64), with the sign exactly where 2 e^x - 1 < 0."""
    x = log_decays_for_test()
    log_abs, negative = negative_range(x)
    expected = 2 * torch.exp(x) - 1
    assert log_abs.dtype == F64 and negative.dtype == torch.bool
    assert bool((log_abs <= 0).all()), "log|2a - 1| must be <= 0 (a valid decay)"
    torch.testing.assert_close(decode(log_abs, negative), expected, rtol=1e-13, atol=1e-15)
    assert torch.equal(negative[expected != 0], expected[expected != 0] < 0)


def test_negative_range_ends():
    """a = 1 -> 1 (log 0, positive); a = 0 (x = -inf) -> -1 (log 0, negative); a = 1/2 -> 0 (log -inf)."""
    log_abs, negative = negative_range(torch.tensor([0.0, -math.inf, math.log(0.5)], dtype=F64))
    assert log_abs[:2].tolist() == [0.0, 0.0] and negative[:2].tolist() == [False, True]
    assert log_abs[2].item() == -math.inf


@pytest.mark.parametrize("eps", [1e-7, 1e-6, 1e-5])
def test_negative_range_keeps_precision_near_one_in_float32(eps):
    """a = 1 - eps in float32 maps to log|2a - 1| = log(1 - 2 eps) to ~1e-7 relative, where the naive
    float32 log(2 e^x - 1) is off by up to 20% (at eps = 1e-7)."""
    x = torch.tensor([math.log1p(-eps)], dtype=F32)
    log_abs, negative = negative_range(x)
    expected = math.log1p(-2 * eps)
    assert not bool(negative.any())
    assert abs(log_abs.item() - expected) / abs(expected) < 1e-5
    if eps == 1e-7:  # the naive formula really fails here, so the check above is meaningful
        naive = torch.log(2 * torch.exp(x) - 1).item()
        assert abs(naive - expected) / abs(expected) > 0.1


@pytest.mark.parametrize("eps", [1e-7, 1e-6, 1e-5])
def test_negative_range_keeps_precision_near_minus_one_in_float32(eps):
    """The mirror case: a = eps (x = log eps, very negative) maps to 2a - 1 = -(1 - 2 eps), a negative
    eigenvalue within 2 eps of -1. log|2a - 1| = log1p(-2 eps) must keep its relative precision just like
    the positive side (decays near -1 carry long memory exactly as decays near +1 do)."""
    x = torch.tensor([math.log(eps)], dtype=F32)
    log_abs, negative = negative_range(x)
    expected = math.log1p(-2 * math.exp(x.item()))
    assert bool(negative.all())
    assert abs(log_abs.item() - expected) / abs(expected) < 1e-5


def test_negative_range_gradient():
    """Gradients match float64 finite differences away from a = 1/2, and are 0 (finite) at a = 0."""
    x = torch.tensor([-3.0, -1.0, -0.5, -0.1, -1e-3, math.log(0.3), math.log(0.9)], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: negative_range(t)[0], (x,))
    at_zero = torch.tensor([-math.inf], dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(negative_range(at_zero)[0].sum(), at_zero)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("dtype", [F64, F32])
def test_negative_range_is_finite_around_one_half(dtype):
    """Every float next to x = log(1/2) (where exp and expm1 may round to opposite sides of 1/2) gives a
    valid decay and a finite gradient; 2a - 1 == 0 decodes to the decay 0 with gradient 0. A NaN here
    killed Mamba [-1, 1] training (log1p(-1) has an infinite derivative)."""
    x = torch.tensor([math.log(0.5)], dtype=dtype)
    around = [x]
    for direction in (-1.0, 1.0):
        y = x
        for _ in range(64):
            y = torch.nextafter(y, torch.tensor([direction], dtype=dtype))
            around.append(y)
    x = torch.cat(around).requires_grad_(True)
    log_abs, negative = negative_range(x)
    assert bool((log_abs <= 0).all()) and not bool(torch.isnan(log_abs).any())
    assert bool(negative[log_abs == -math.inf].logical_not().all()), "the decay 0 is not negative"
    (grad,) = torch.autograd.grad(log_abs.sum(), x)
    assert bool(torch.isfinite(grad).all())
    assert bool((grad[log_abs == -math.inf] == 0).all())


def test_negative_range_exact_zero_gradients_through_the_ops():
    """Decays hitting 2a - 1 = 0 exactly inside a chunked scan: gradients of every input are finite and
    equal the sequential reference's."""
    args = decay_recurrence_inputs(T=37, seed=8)
    x = torch.log(uniform(args["log_decay"].shape, 0.0, 1.0, generator(9)))
    x[0, 3:9] = math.log(0.5)
    grads = {}
    for mode in ("chunk", "recurrent"):
        leaves = {n: t.clone().requires_grad_(True) for n, t in args.items() if n in ("q", "k", "v")}
        x_leaf = x.clone().requires_grad_(True)
        log_abs, negative = negative_range(x_leaf)
        o, _ = decay_recurrence(**(args | leaves | {"log_decay": log_abs, "decay_negative": negative}),
                                mode=mode, chunk_size=16)
        (o * torch.cos(o)).sum().backward()
        grads[mode] = [x_leaf.grad] + [leaves[n].grad for n in ("q", "k", "v")]
        assert all(bool(torch.isfinite(g).all()) for g in grads[mode]), mode
    for g_chunk, g_seq in zip(grads["chunk"], grads["recurrent"]):
        assert_close(g_chunk, g_seq, 1e-10, "gradient")


def test_negative_range_feeds_the_ops():
    """The helper's output is a valid decay pair: decay_recurrence with negative_range(x) equals the run with
    decays 2 e^x - 1 given directly."""
    args = decay_recurrence_inputs(T=33, seed=5)
    x = torch.log(uniform(args["log_decay"].shape, 0.0, 1.0, generator(6)))
    x[0, :3] = torch.tensor([0.0, -math.inf, math.log(0.5)], dtype=F64).unsqueeze(-1)
    via_helper = dict(zip(("log_decay", "decay_negative"), negative_range(x)))
    direct = dict(zip(("log_decay", "decay_negative"), decay_from_values(2 * torch.exp(x) - 1)))
    for mode in ("chunk", "recurrent"):
        o, _ = decay_recurrence(**(args | via_helper), mode=mode, chunk_size=16)
        o_direct, _ = decay_recurrence(**(args | direct), mode=mode, chunk_size=16)
        assert_close(o, o_direct, 1e-12, mode)


@pytest.mark.parametrize("dtype", [F64, F32])
def test_decay_from_values_round_trip(dtype):
    """(log|a|, a < 0) decodes back to a, including a = -1, 0, 1; a = 0 gives (-inf, False)."""
    a = torch.cat([uniform((500,), -1.0, 1.0, generator(1)), torch.tensor([-1.0, 0.0, 1.0, -0.5, 1e-6])]).to(dtype)
    log_abs, negative = decay_from_values(a)
    assert log_abs.dtype == dtype and negative.dtype == torch.bool
    assert torch.equal(negative, a < 0)
    assert bool((log_abs <= 0).all())
    assert log_abs[a == 0].tolist() == [-math.inf]
    torch.testing.assert_close(decode(log_abs, negative), a, rtol=32 * torch.finfo(dtype).eps, atol=0.0)
