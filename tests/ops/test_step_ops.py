"""The single-token step ops (``decay_step``, ``delta_step``) against the sequential references.

Each test runs the step op token by token over a random sequence, carrying the state, and compares the
outputs, the final state and the gradients of every input (the initial state included) with one call of
``decay_recurrence`` / ``delta_rule`` in ``mode="recurrent"``: float64 to 1e-10, float32 (against the
float64 reference) to 1e-4, at odd sizes, for both eigenvalue ranges, per-head and per-channel decays,
with and without a gate and for n_h in {1, 2, 3}.
"""

from __future__ import annotations

import pytest
import torch

from lrnn.ops import decay_recurrence, decay_step, delta_rule, delta_step

from ops_helpers import (F32, F64, TOL_F32, TOL_F64, assert_close, assert_runs_match, decay_recurrence_inputs,
                         delta_rule_inputs, run_with_grads)

SIZES = dict(B=3, T=9, H=3, K=5, V=7)  # odd everywhere, K != V
DTYPES = pytest.mark.parametrize("dtype, tol", [(F64, TOL_F64), (F32, TOL_F32)], ids=["f64", "f32"])


def decay_stepped(q, k, v, log_decay, decay_negative=None, *, initial_state=None, output_final_state=True,
                  scale=None):
    """``decay_recurrence`` as a loop of ``decay_step`` calls (the way a decoder runs it)."""
    state, outs = initial_state, []
    for t in range(q.shape[1]):
        token = slice(t, t + 1)
        o, state = decay_step(q[:, token], k[:, token], v[:, token], log_decay[:, token],
                              None if decay_negative is None else decay_negative[:, token],
                              scale=scale, initial_state=state)
        outs.append(o)
    return torch.cat(outs, dim=1), state


def delta_stepped(q, k, v, beta, log_decay=None, decay_negative=None, *, num_householder=1, initial_state=None,
                  output_final_state=True, scale=None):
    """``delta_rule`` as a loop of ``delta_step`` calls: token t takes sub-steps t*n_h .. t*n_h + n_h - 1."""
    n_h, state, outs = num_householder, initial_state, []
    for t in range(q.shape[1]):
        token, steps = slice(t, t + 1), slice(t * n_h, (t + 1) * n_h)
        o, state = delta_step(q[:, token], k[:, steps], v[:, steps], beta[:, steps],
                              None if log_decay is None else log_decay[:, token],
                              None if decay_negative is None else decay_negative[:, token],
                              num_householder=n_h, scale=scale, initial_state=state)
        outs.append(o)
    return torch.cat(outs, dim=1), state


def in_float64(args: dict) -> dict:
    return {n: (t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t) for n, t in args.items()}


def check_against_reference(stepped, reference, args: dict, dtype, tol: float, label: str, **options) -> None:
    """Outputs, final state and every gradient of the stepped run (in ``dtype``) vs the float64 reference."""
    expected = run_with_grads(reference, in_float64(args), mode="recurrent", **options)
    actual = run_with_grads(stepped, args, **options)
    assert actual["o"].dtype == dtype and actual["state"].dtype == dtype
    assert_runs_match({n: t.double() for n, t in actual.items()}, expected, tol, label)


@DTYPES
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_head", "per_channel"])
@pytest.mark.parametrize("decay_range", [(0.0, 1.0), (-1.0, 1.0)], ids=["pos", "neg"])
@pytest.mark.parametrize("initial_state", [True, False], ids=["state", "zero_state"])
def test_decay_step_matches_the_recurrence(per_channel, decay_range, initial_state, dtype, tol):
    args = decay_recurrence_inputs(**SIZES, per_channel=per_channel, decay_range=decay_range, dtype=dtype,
                                   initial_state=initial_state, seed=11)
    if decay_range[0] >= 0:
        args["decay_negative"] = None  # the all-positive call, as Mamba's [0, 1] range makes it
    else:
        assert args["decay_negative"].any() and not args["decay_negative"].all()
    check_against_reference(decay_stepped, decay_recurrence, args, dtype, tol,
                            f"decay_step per_channel={per_channel} range={decay_range}")


@DTYPES
@pytest.mark.parametrize("num_householder", [1, 2, 3])
@pytest.mark.parametrize("gate", [False, True], ids=["ungated", "gated"])
@pytest.mark.parametrize("beta_range, gate_range", [((0.0, 1.0), (0.0, 1.0)), ((0.0, 2.0), (-1.0, 1.0))],
                         ids=["pos", "neg"])
def test_delta_step_matches_the_rule(num_householder, gate, beta_range, gate_range, dtype, tol):
    args = delta_rule_inputs(**SIZES, num_householder=num_householder, gate=gate, beta_range=beta_range,
                             gate_range=gate_range, dtype=dtype, seed=12)
    if beta_range[1] > 1:
        assert (args["beta"] > 1).any()  # some eigenvalues 1 - beta are negative
    check_against_reference(delta_stepped, delta_rule, args, dtype, tol,
                            f"delta_step n_h={num_householder} gate={gate} beta={beta_range}",
                            num_householder=num_householder)


def test_delta_step_without_initial_state_and_with_scale():
    """A zero initial state (None) and an explicit scale, gated with signs, match the reference."""
    args = delta_rule_inputs(**SIZES, num_householder=2, initial_state=False, seed=13)
    check_against_reference(delta_stepped, delta_rule, args, F64, TOL_F64, "delta_step scale=0.7",
                            num_householder=2, scale=0.7)


@torch.no_grad()
def test_decay_step_takes_broadcast_views_and_leaves_its_inputs_alone():
    """Heads sharing one group's q and k as stride-0 ``expand`` views (Mamba-2's grouped B, C) give the
    result of contiguous copies, and the initial state is not modified in place."""
    b, h, k_dim, v_dim = 2, 6, 5, 3
    gen = torch.Generator().manual_seed(3)
    q1, k1 = (torch.randn(b, 1, 1, k_dim, generator=gen, dtype=F64) for _ in range(2))
    v = torch.randn(b, 1, h, v_dim, generator=gen, dtype=F64)
    log_decay = -torch.rand(b, 1, h, generator=gen, dtype=F64)
    negative = torch.rand(b, 1, h, generator=gen) < 0.5
    state = torch.randn(b, h, k_dim, v_dim, generator=gen, dtype=F64)
    before = state.clone()
    q, k = q1.expand(b, 1, h, k_dim), k1.expand(b, 1, h, k_dim)
    assert q.stride(2) == 0
    o, new = decay_step(q, k, v, log_decay, negative, scale=1.0, initial_state=state)
    o_ref, new_ref = decay_step(q.contiguous(), k.contiguous(), v, log_decay, negative, scale=1.0,
                                initial_state=state)
    assert torch.equal(state, before)
    assert_close(o, o_ref, TOL_F64, "o")
    assert_close(new, new_ref, TOL_F64, "state")


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("dtype", [F64, F32])
def test_decay_step_in_place_equals_the_fresh_state(per_channel, dtype):
    """``update_in_place`` writes the same new state into the given tensor (and returns that tensor)."""
    b, h, k_dim, v_dim = 2, 3, 5, 4
    gen = torch.Generator().manual_seed(4)
    q, k = (torch.randn(b, 1, h, k_dim, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(b, 1, h, v_dim, generator=gen, dtype=dtype)
    log_decay = -torch.rand(*((b, 1, h, k_dim) if per_channel else (b, 1, h)), generator=gen, dtype=dtype)
    negative = torch.rand(log_decay.shape, generator=gen) < 0.5
    state = torch.randn(b, h, k_dim, v_dim, generator=gen, dtype=dtype)
    o_ref, new_ref = decay_step(q, k, v, log_decay, negative, initial_state=state)
    o, new = decay_step(q, k, v, log_decay, negative, initial_state=state, update_in_place=True)
    assert new is state
    assert torch.equal(o, o_ref) and torch.equal(new, new_ref)


def test_decay_step_in_place_needs_a_state_in_the_compute_dtype():
    q = k = v = torch.randn(1, 1, 2, 3)
    log_decay = -torch.rand(1, 1, 2)
    with pytest.raises(ValueError, match="update_in_place needs an initial_state"):
        decay_step(q, k, v, log_decay, update_in_place=True)
    with pytest.raises(ValueError, match="compute dtype torch.float32"):
        decay_step(q, k, v, log_decay, initial_state=torch.zeros(1, 2, 3, 3, dtype=F64), update_in_place=True)
    with pytest.raises(TypeError, match="update_in_place"):
        decay_step(q, k, v, log_decay, initial_state=torch.zeros(1, 2, 3, 3), update_in_place=1)


@torch.no_grad()
@pytest.mark.parametrize("op", ["decay_step", "delta_step"])
def test_step_dtypes(op):
    """bfloat16 q, k, v with float32 decays (and betas): output in bfloat16, state in float32, matching the
    float32 computation on the same rounded inputs up to bfloat16 rounding of the output."""
    if op == "decay_step":
        args = decay_recurrence_inputs(B=2, T=1, H=3, K=4, V=5, dtype=F32, seed=4)
        run = decay_step
    else:
        args = delta_rule_inputs(B=2, T=1, H=3, K=4, V=5, num_householder=2, dtype=F32, seed=4) | {
            "num_householder": 2}
        run = delta_step
    low = args | {n: args[n].bfloat16() for n in ("q", "k", "v")}
    o, state = run(**low)
    o_f32, state_f32 = run(**(low | {n: low[n].float() for n in ("q", "k", "v")}))
    assert o.dtype == torch.bfloat16 and state.dtype == F32
    assert o.shape == (2, 1, 3, 5) and state.shape == (2, 3, 4, 5)
    assert_close(o, o_f32, 1e-2, f"{op} bf16 output")
    assert_close(state, state_f32, 1e-6, f"{op} bf16 state")
