"""Shared helpers for the tests of ``lrnn.ops``: error metrics, seeded random inputs, gradient runs.

Imported by the test modules as ``from ops_helpers import ...`` (a module name of its own: ``from conftest
import ...`` breaks as soon as another test directory gets a conftest.py of its own).

Every builder takes an explicit ``seed`` and draws from its own ``torch.Generator``, so a test's inputs
do not depend on which other tests ran before it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lrnn.ops import decay_from_values
from lrnn.testing import assert_relative_close as assert_close, relative_error as rel_err

F64 = torch.float64
F32 = torch.float32

# Acceptance tolerances (relative error ||a - b||_F / ||b||_F).
TOL_F64 = 1e-10
TOL_F32 = 1e-4
# Decays within 1e-6 of 1 over 20,000 float32 steps. The acceptance bound is 1e-4, but merely rounding such
# decays to float32 already costs 1e-4 to 1.5e-4 there, so 1e-4 could not tell a log-space implementation
# from one that rounds; the log-space ops measure 2e-6 to 4e-6.
TOL_NEAR_ONE = 2e-5


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uniform(shape, low: float, high: float, gen: torch.Generator, dtype=F64) -> torch.Tensor:
    """Uniform samples in [low, high), drawn in float64 then cast (same values for every dtype)."""
    return (torch.rand(shape, generator=gen, dtype=F64) * (high - low) + low).to(dtype)


def normal(shape, gen: torch.Generator, dtype=F64) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=F64).to(dtype)


def unit(shape, gen: torch.Generator, dtype=F64) -> torch.Tensor:
    """Random vectors L2-normalised along the last dim (what the layers pass as keys)."""
    return F.normalize(normal(shape, gen), dim=-1).to(dtype)


def signed_decays(shape, gen: torch.Generator, low: float = -1.0, high: float = 1.0,
                  zero_fraction: float = 0.0, dtype=F64) -> tuple[torch.Tensor, torch.Tensor]:
    """Random decays ``a`` in [low, high] as ``(log|a|, a < 0)``; a ``zero_fraction`` of them exactly 0.

    Drawn in float64 and split before the cast, so log|a| is as precise as the dtype allows.
    """
    a = uniform(shape, low, high, gen)
    if zero_fraction > 0:
        a = torch.where(torch.rand(shape, generator=gen, dtype=F64) < zero_fraction, torch.zeros_like(a), a)
    log_a, negative = decay_from_values(a)
    return log_a.to(dtype), negative


def decay_recurrence_inputs(*, B=2, T=7, H=2, K=4, V=6, per_channel=False, seed=0, dtype=F64,
                            decay_range=(-1.0, 1.0), zero_fraction=0.0, initial_state=True) -> dict:
    """Random keyword arguments for ``decay_recurrence`` (K != V by default, batch > 1)."""
    gen = generator(seed)
    decay_shape = (B, T, H, K) if per_channel else (B, T, H)
    log_decay, negative = signed_decays(decay_shape, gen, *decay_range, zero_fraction=zero_fraction, dtype=dtype)
    return dict(
        q=normal((B, T, H, K), gen, dtype),
        k=normal((B, T, H, K), gen, dtype),
        v=normal((B, T, H, V), gen, dtype),
        log_decay=log_decay,
        decay_negative=negative,
        initial_state=normal((B, H, K, V), gen, dtype) if initial_state else None,
    )


def delta_rule_inputs(*, B=2, T=7, H=2, K=4, V=6, num_householder=1, gate=True, seed=0, dtype=F64,
                      beta_range=(0.0, 2.0), gate_range=(-1.0, 1.0), zero_fraction=0.0,
                      initial_state=True) -> dict:
    """Random keyword arguments for ``delta_rule``: unit q and k, betas in ``beta_range``, optional gate."""
    gen = generator(seed)
    steps = T * num_householder
    args = dict(
        q=unit((B, T, H, K), gen, dtype),
        k=unit((B, steps, H, K), gen, dtype),
        v=normal((B, steps, H, V), gen, dtype),
        beta=uniform((B, steps, H), *beta_range, gen, dtype),
        log_decay=None,
        decay_negative=None,
        initial_state=normal((B, H, K, V), gen, dtype) if initial_state else None,
    )
    if gate:
        args["log_decay"], args["decay_negative"] = signed_decays(
            (B, T, H), gen, *gate_range, zero_fraction=zero_fraction, dtype=dtype)
    return args


def short_conv_inputs(*, B=2, T=7, D=5, W=4, bias=True, seed=0, dtype=F64, initial_state=True) -> dict:
    """Random keyword arguments for ``short_conv``."""
    gen = generator(seed)
    return dict(
        x=normal((B, T, D), gen, dtype),
        weight=normal((D, W), gen, dtype) * 0.5,
        bias=normal((D,), gen, dtype) if bias else None,
        initial_state=normal((B, W - 1, D), gen, dtype) if initial_state else None,
    )


def differentiable(args: dict) -> list[str]:
    """Names of the floating-point tensors in ``args`` (the inputs that take gradients)."""
    return [n for n, t in args.items() if isinstance(t, torch.Tensor) and t.is_floating_point()]


def run_with_grads(op: Callable, args: dict, seed: int = 1234, **options) -> dict[str, torch.Tensor]:
    """Run ``op(**args, **options, output_final_state=True)`` and backprop a random upstream gradient.

    The loss is ``(o * do).sum() + (S * dS).sum()`` with ``do``, ``dS`` drawn from ``seed`` (so two calls
    with the same ``seed`` see the same upstream gradient). Returns ``{"o", "state", "grad_<name>"...}``
    with a gradient for every floating-point input. Tensors with a -inf (a = 0 decays) are fine as leaves.
    """
    leaves = {n: (t.detach().clone().requires_grad_(True) if n in differentiable(args) else t)
              for n, t in args.items()}
    o, state = op(**leaves, output_final_state=True, **options)
    gen = generator(seed)
    loss = (o * normal(o.shape, gen, o.dtype)).sum() + (state * normal(state.shape, gen, state.dtype)).sum()
    names = differentiable(args)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    out = {"o": o.detach(), "state": state.detach()}
    for name, grad in zip(names, grads):
        assert grad is not None, f"no gradient reaches {name}"
        out[f"grad_{name}"] = grad
    return out


def assert_runs_match(actual: dict, expected: dict, tol: float, label: str = "") -> None:
    """Compare two ``run_with_grads`` results entry by entry (outputs, final state, every gradient)."""
    assert actual.keys() == expected.keys()
    for name in expected:
        assert_close(actual[name], expected[name], tol, f"{label} {name}".strip())

