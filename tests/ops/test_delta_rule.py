"""Tests of ``delta_rule`` (DeltaNet, gated DeltaNet, DeltaProduct): the chunked UT form against the
sequential reference.

Keys are unit vectors (as the layers pass them), betas come from [0, 2] (eigenvalues 1 - beta of the
Householder steps in [-1, 1]) and the optional gate from [-1, 1] unless a test says otherwise.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from lrnn.ops import delta as delta_module
from lrnn.ops import delta_rule

from ops_helpers import (F32, F64, TOL_F32, TOL_F64, TOL_NEAR_ONE, assert_close, assert_runs_match,
                         delta_rule_inputs, generator, run_with_grads, uniform)

GATES = pytest.mark.parametrize("gate", [False, True], ids=["no_gate", "gate"])
HOUSEHOLDER = pytest.mark.parametrize("num_householder", [1, 2, 3], ids=["nh1", "nh2", "nh3"])
TIMED = ("q", "k", "v", "beta", "log_decay", "decay_negative")


def chunk_vs_recurrent(args: dict, chunk_size: int, tol: float, **options) -> None:
    """Assert chunk == recurrent for outputs, final state and all input gradients."""
    chunk = run_with_grads(delta_rule, args, mode="chunk", chunk_size=chunk_size, **options)
    reference = run_with_grads(delta_rule, args, mode="recurrent", **options)
    assert_runs_match(chunk, reference, tol)


def test_recurrent_matches_definition():
    """The reference applies ``H <- a_t H`` once per token, then n_h steps
    ``H <- (I - b k k^T) H + b k v^T``, and reads ``o_t = H^T (scale q_t)``."""
    T, n_h, K = 4, 2, 3
    args = delta_rule_inputs(B=1, T=T, H=1, K=K, V=2, num_householder=n_h, seed=11)
    a = torch.exp(args["log_decay"]) * (1 - 2 * args["decay_negative"].double())
    state = args["initial_state"][0, 0].clone()
    expected = []
    for t in range(T):
        state = a[0, t, 0] * state
        for j in range(t * n_h, (t + 1) * n_h):
            k, b = args["k"][0, j, 0], args["beta"][0, j, 0]
            state = (torch.eye(K, dtype=F64) - b * torch.outer(k, k)) @ state + b * torch.outer(k, args["v"][0, j, 0])
        expected.append(state.T @ (0.7 * args["q"][0, t, 0]))
    o, final = delta_rule(**args, num_householder=n_h, scale=0.7, output_final_state=True, mode="recurrent")
    assert_close(o[0, :, 0], torch.stack(expected), TOL_F64, "o")
    assert_close(final[0, 0], state, TOL_F64, "final state")


def test_default_scale_and_no_state():
    """``scale=None`` means ``K ** -0.5``; no final state unless asked for; a missing initial state is zero."""
    args = delta_rule_inputs(T=9, K=9, initial_state=False, seed=12)
    for mode in ("chunk", "recurrent"):
        o_default, none = delta_rule(**args, mode=mode)
        assert none is None
        o_third, _ = delta_rule(**args, scale=1 / 3, mode=mode)
        zeros = torch.zeros(2, 2, 9, 6, dtype=F64)
        o_zero_state, _ = delta_rule(**{**args, "initial_state": zeros}, scale=1 / 3, mode=mode)
        assert_close(o_default, o_third, TOL_F64, f"{mode} default scale")
        assert_close(o_zero_state, o_third, TOL_F64, f"{mode} zero initial state")


@HOUSEHOLDER
@GATES
@pytest.mark.parametrize("chunk_size", [16, 32, 64])
@pytest.mark.parametrize("T", [1, 7, 63, 65, 500])
def test_chunk_matches_recurrent_outputs(T, chunk_size, gate, num_householder):
    """Float64 outputs and final states agree for every length, chunk size, gate setting and n_h."""
    args = delta_rule_inputs(T=T, num_householder=num_householder, gate=gate, seed=T * 100 + chunk_size)
    opts = dict(num_householder=num_householder, output_final_state=True)
    o, state = delta_rule(**args, **opts, mode="chunk", chunk_size=chunk_size)
    o_ref, state_ref = delta_rule(**args, **opts, mode="recurrent")
    assert_close(o, o_ref, TOL_F64, "o")
    assert_close(state, state_ref, TOL_F64, "final state")


@HOUSEHOLDER
@GATES
@pytest.mark.parametrize("chunk_size", [16, 32, 64])
@pytest.mark.parametrize("T", [1, 7, 63, 65])
def test_chunk_matches_recurrent_gradients(T, chunk_size, gate, num_householder):
    """Float64 gradients w.r.t. q, k, v, beta, log_decay and initial_state agree."""
    args = delta_rule_inputs(T=T, num_householder=num_householder, gate=gate, seed=T + chunk_size)
    chunk_vs_recurrent(args, chunk_size, TOL_F64, num_householder=num_householder)


@pytest.mark.parametrize("gate, num_householder", [(True, 1), (False, 2)], ids=["gate-nh1", "no_gate-nh2"])
def test_chunk_matches_recurrent_gradients_long(gate, num_householder):
    """Gradients at T = 500 (many chunks, a partial last chunk)."""
    args = delta_rule_inputs(T=500, num_householder=num_householder, gate=gate, seed=7)
    chunk_vs_recurrent(args, 32, TOL_F64, num_householder=num_householder)


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_householder_steps_with_zero_beta_are_identity(mode):
    """DeltaProduct with beta = 0 on every step but the first of each token equals DeltaNet (n_h = 1)."""
    args = delta_rule_inputs(T=30, num_householder=3, seed=14)
    args["beta"] = args["beta"] * (torch.arange(90) % 3 == 0)[None, :, None]
    o3, s3 = delta_rule(**args, num_householder=3, output_final_state=True, mode=mode, chunk_size=16)
    first = args | {n: args[n][:, ::3] for n in ("k", "v", "beta")}
    o1, s1 = delta_rule(**first, output_final_state=True, mode=mode, chunk_size=16)
    assert_close(o3, o1, TOL_F64, "o")
    assert_close(s3, s1, TOL_F64, "final state")


def test_gate_without_negative_values():
    """A gate with ``decay_negative=None`` (all gates >= 0) and no initial state: chunk == recurrent."""
    args = delta_rule_inputs(T=65, gate_range=(0.0, 1.0), initial_state=False, seed=13)
    args["decay_negative"] = None
    chunk_vs_recurrent(args, 16, TOL_F64)


@pytest.mark.parametrize("gate, num_householder, K, beta_range, tol", [
    (True, 1, 8, (0.0, 2.0), TOL_F32),
    (False, 1, 8, (0.0, 2.0), TOL_F32),
    (False, 1, 8, (1.9, 2.0), TOL_F32),
    (True, 2, 8, (1.9, 2.0), TOL_F32),
    (False, 2, 2, (2.0, 2.0), 4 * TOL_F32),
], ids=["gate-nh1-beta0to2", "no_gate-nh1-beta0to2", "no_gate-nh1-beta_near_2", "gate-nh2-beta_near_2",
        "no_gate-nh2-K2-reflections"])
def test_float32_long_sequence(gate, num_householder, K, beta_range, tol):
    """Float32 chunks of 64 at T = 1024: outputs, state and gradients within relative RMSE ``tol`` of the
    exact (float64) recurrence, including betas near 2 (near-reflections, the worst conditioned triangular
    solves): the first four cases measure 2e-7 to 7e-6. The last, exact reflections (beta = 2) with K = 2, no
    gate and n_h = 2 (128-step triangular solves that nothing damps), is the hardest: 4e-5 on an Intel Xeon,
    1.1e-4 (outputs) to 1.8e-4 (state) on an AMD EPYC -- the CPUs' float32 kernels round differently -- while
    float32 recurrent steps measure 3e-6 and the chunk size this K gets by default (16) 2e-5 (tests/ops)."""
    args = delta_rule_inputs(T=1024, K=K, V=8, num_householder=num_householder, gate=gate, beta_range=beta_range,
                             seed=31, dtype=F32)
    exact = {name: (x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x)
             for name, x in args.items()}
    chunk = run_with_grads(delta_rule, args, mode="chunk", chunk_size=64, num_householder=num_householder)
    reference = run_with_grads(delta_rule, exact, mode="recurrent", num_householder=num_householder)
    assert_runs_match(chunk, reference, tol)


def split_time(args: dict, split: int, num_householder: int) -> tuple[dict, dict]:
    """Split at token ``split`` (sub-step ``split * n_h`` for k, v, beta); the rest gets no initial state."""
    def cut(name, part):
        x = args[name]
        if x is None:
            return None
        at = split * num_householder if name in ("k", "v", "beta") else split
        return x[:, :at] if part == 0 else x[:, at:]

    first = {n: cut(n, 0) for n in TIMED} | {"initial_state": args["initial_state"]}
    rest = {n: cut(n, 1) for n in TIMED}
    return first, rest


def token(args: dict, t: int, num_householder: int) -> dict:
    """The inputs of token ``t`` alone (its n_h sub-steps for k, v, beta)."""
    n = num_householder
    def pick(name, x):
        if x is None:
            return None
        return x[:, t * n:(t + 1) * n] if name in ("k", "v", "beta") else x[:, t:t + 1]

    return {name: pick(name, x) for name, x in args.items()}


@HOUSEHOLDER
@pytest.mark.parametrize("split", [1, 17])
def test_continuation_chunk_then_chunk(split, num_householder):
    """Running all tokens at once == a first part, then the rest from its final state (gated)."""
    args = delta_rule_inputs(T=40, num_householder=num_householder, seed=40 + split)
    opts = dict(num_householder=num_householder, output_final_state=True, chunk_size=16)
    o_all, state_all = delta_rule(**args, **opts)
    first, rest = split_time(args, split, num_householder)
    o1, state1 = delta_rule(**first, **opts)
    o2, state2 = delta_rule(**rest, initial_state=state1, **opts)
    assert_close(torch.cat([o1, o2], dim=1), o_all, TOL_F64, "o")
    assert_close(state2, state_all, TOL_F64, "final state")


@HOUSEHOLDER
@pytest.mark.parametrize("step_mode", ["recurrent", "chunk"])
def test_continuation_chunk_then_token_by_token(step_mode, num_householder):
    """A chunked prefill followed by single-token steps reproduces the single full run."""
    args = delta_rule_inputs(T=30, num_householder=num_householder, seed=50)
    opts = dict(num_householder=num_householder, output_final_state=True)
    o_all, state_all = delta_rule(**args, **opts, chunk_size=16)
    first, rest = split_time(args, 19, num_householder)
    o, state = delta_rule(**first, **opts, chunk_size=16)
    outs = [o]
    for t in range(rest["q"].shape[1]):
        o, state = delta_rule(**token(rest, t, num_householder), initial_state=state, **opts, mode=step_mode)
        outs.append(o)
    assert_close(torch.cat(outs, dim=1), o_all, TOL_F64, "o")
    assert_close(state, state_all, TOL_F64, "final state")


@HOUSEHOLDER
@pytest.mark.parametrize("T, chunk_size", [(65, 16), (130, 64)])
def test_negative_eigenvalues_only(T, chunk_size, num_householder):
    """Betas in (1, 2] only (every Householder eigenvalue 1 - beta < 0) and gates in [-1, 0) only:
    chunk == recurrent for outputs, state and gradients."""
    args = delta_rule_inputs(T=T, num_householder=num_householder, gate_range=(-1.0, 0.0), seed=60 + T)
    args["beta"] = 2.0 - uniform(args["beta"].shape, 0.0, 1.0, generator(61))  # (1, 2]
    assert bool((args["beta"] > 1).all()) and bool(args["decay_negative"].all())
    chunk_vs_recurrent(args, chunk_size, TOL_F64, num_householder=num_householder)


@pytest.mark.parametrize("flip_by", ["reflection", "gate"])
def test_parity_sign_is_exact(flip_by):
    """Over 10,000 random bits, a "1" flips the sign of the state, a "0" leaves it alone; the float32
    output is exactly (-1)^(number of ones so far) at every position, in both modes.

    ``reflection``: k = e_1, v = 0, beta = 2 on ones (I - 2 e_1 e_1^T) and 0 on zeros, no gate.
    ``gate``: beta = 0 everywhere and a gate of -1 on ones, +1 on zeros.
    The state starts at e_1 (x) (1, 1) and q = e_1, scale 1, so o_t is the first row of H_t.
    """
    T, K, V = 10_000, 2, 2
    bits = torch.randint(0, 2, (1, T, 1), generator=generator(70))
    q = torch.zeros(1, T, 1, K, dtype=F32)
    q[..., 0] = 1.0
    k = q.clone()
    v = torch.zeros(1, T, 1, V, dtype=F32)
    initial_state = torch.zeros(1, 1, K, V, dtype=F32)
    initial_state[0, 0, 0] = 1.0
    if flip_by == "reflection":
        beta, log_decay, negative = 2.0 * bits.to(F32), None, None
    else:
        beta, log_decay, negative = torch.zeros(1, T, 1, dtype=F32), torch.zeros(1, T, 1, dtype=F32), bits.bool()
    sign = (1 - 2 * (torch.cumsum(bits, dim=1) % 2)).to(F32)  # [1, T, 1]
    expected = sign[..., None].expand(1, T, 1, V)
    expected_state = initial_state * sign[0, -1, 0]
    for mode in ("recurrent", "chunk"):
        o, state = delta_rule(q, k, v, beta, log_decay, negative, scale=1.0, initial_state=initial_state,
                              output_final_state=True, mode=mode)
        wrong = (o != expected).flatten(2).any(-1).nonzero()
        assert torch.equal(o, expected), f"{mode}: {len(wrong)} wrong outputs, first at t={wrong[0, 1].item()}"
        assert torch.equal(state, expected_state), mode


@HOUSEHOLDER
@pytest.mark.parametrize("T, chunk_size", [(7, 16), (65, 16), (100, 32)])
def test_exactly_zero_gates(T, chunk_size, num_householder):
    """Gate log_decay = -inf (a = 0) at random positions, mixed with signed gates: outputs and gradients
    finite and chunk == recurrent."""
    args = delta_rule_inputs(T=T, num_householder=num_householder, zero_fraction=0.3, seed=90 + T)
    assert bool(torch.isneginf(args["log_decay"]).any())
    chunk_vs_recurrent(args, chunk_size, TOL_F64, num_householder=num_householder)


@pytest.mark.parametrize("gap", [1e-6, 1e-7])
def test_gate_near_one_long_sequence(gap):
    """Gates a = 1 - gap over T = 20,000: float32 chunk mode within 2e-5 of float64 recurrent. Betas are tiny
    (< 2e-5) so the Householder steps forget slowly and the gate's precision decides the result."""
    B, T, H = 1, 20_000, 1
    args = delta_rule_inputs(B=B, T=T, H=H, K=4, V=4, beta_range=(0.0, 2e-5), initial_state=False, seed=81)
    args["log_decay"] = torch.full((B, T, H), math.log1p(-gap), dtype=F64)
    args["decay_negative"] = None
    as_f32 = {n: (x.float() if x is not None and x.is_floating_point() else x) for n, x in args.items()}
    o, state = delta_rule(**as_f32, output_final_state=True, mode="chunk")
    o_ref, state_ref = delta_rule(**args, output_final_state=True, mode="recurrent")
    assert_close(o, o_ref, TOL_NEAR_ONE, "o")
    assert_close(state, state_ref, TOL_NEAR_ONE, "final state")


def test_empty_sequence():
    """T = 0 returns an empty output and leaves the state unchanged."""
    args = delta_rule_inputs(T=0, seed=96)
    for mode in ("chunk", "recurrent"):
        o, state = delta_rule(**args, output_final_state=True, mode=mode)
        assert o.shape == (2, 0, 2, 6)
        assert torch.equal(state, args["initial_state"])


def test_empty_batch():
    """B = 0 runs in both modes and gives empty outputs."""
    args = delta_rule_inputs(B=0, T=5, seed=97)
    for mode in ("chunk", "recurrent"):
        o, state = delta_rule(**args, output_final_state=True, mode=mode)
        assert o.shape == (0, 5, 2, 6) and state.shape == (0, 2, 4, 6)


def test_dtypes_of_results():
    """Output in the dtype of v; final state float32 for float32 inputs."""
    args = delta_rule_inputs(T=5, seed=98, dtype=F32)
    for mode in ("chunk", "recurrent"):
        o, state = delta_rule(**args, output_final_state=True, mode=mode)
        assert o.dtype == F32 and state.dtype == F32


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(1, 2), T=st.integers(1, 40), H=st.integers(1, 2), K=st.integers(1, 5), V=st.integers(1, 5),
       num_householder=st.integers(1, 3), chunk_size=st.integers(1, 40), gate=st.booleans(),
       with_state=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_property_chunk_matches_recurrent(B, T, H, K, V, num_householder, chunk_size, gate, with_state, seed):
    """Random shapes, lengths, n_h and chunk sizes: float64 chunk == recurrent, outputs, state and gradients."""
    args = delta_rule_inputs(B=B, T=T, H=H, K=K, V=V, num_householder=num_householder, gate=gate,
                             initial_state=with_state, seed=seed)
    chunk_vs_recurrent(args, chunk_size, TOL_F64, num_householder=num_householder)


def _matmul_flops(fn, **kwargs) -> int:
    """FLOPs of the matmuls that ``fn(**kwargs)`` runs (torch's flop counter)."""
    with FlopCounterMode(display=False) as counter:
        fn(**kwargs)
    return counter.get_total_flops()


@pytest.mark.parametrize("chunk_size", [8, 64])
def test_deltaproduct_reads_outputs_only_after_each_token(chunk_size):
    """DeltaProduct (n_h = 2) does less matmul work than the delta rule on its flattened 2T steps with a
    query at every step: the chunked form builds only the rows of ``Q K^T`` and ``Q S_0`` it returns."""
    args = delta_rule_inputs(B=1, T=16, H=1, K=8, V=8, num_householder=2, gate=False, seed=3)
    product = _matmul_flops(delta_rule, **args, num_householder=2, chunk_size=chunk_size)
    flattened_q = args["q"].repeat_interleave(2, dim=1)  # a query after every sub-step
    flattened = _matmul_flops(delta_rule, **{**args, "q": flattened_q}, num_householder=1, chunk_size=chunk_size)
    assert product < flattened


@pytest.mark.parametrize("chunk_size", [1, 2, 5])
def test_chunk_smaller_than_householder_group(chunk_size):
    """A chunk is rounded down to whole tokens (at least one): chunk sizes below or off n_h = 3 stay exact."""
    args = delta_rule_inputs(T=5, num_householder=3, seed=70 + chunk_size)
    chunk_vs_recurrent(args, chunk_size, TOL_F64, num_householder=3)


def test_chunk_at_a_time_schedule_does_not_pad_the_last_chunk(monkeypatch):
    """One chunk at a time, a partial last chunk is computed at its own length, not padded to a full one:
    T = 40 in chunks of 16 costs less than T = 48 (the old padded work), and stays exact."""
    monkeypatch.setattr(delta_module, "default_batch_chunks", lambda x: False)
    args40, args48 = (delta_rule_inputs(B=1, T=t, H=1, K=8, V=8, seed=9) for t in (40, 48))
    assert _matmul_flops(delta_rule, **args40, chunk_size=16) < _matmul_flops(delta_rule, **args48, chunk_size=16)
    chunk_vs_recurrent(args40, 16, TOL_F64)
