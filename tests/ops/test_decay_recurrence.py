"""Tests of ``decay_recurrence``: the chunked form against the sequential reference (``mode="recurrent"``).

Decays are drawn from [-1, 1] (negative ones included) unless a test says otherwise; both decay layouts
(one scalar per head, one value per key channel) run through every check.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrnn.ops import decay_recurrence

from ops_helpers import (F32, F64, TOL_F32, TOL_F64, TOL_NEAR_ONE, assert_close, assert_runs_match,
                         decay_recurrence_inputs, generator, normal, run_with_grads, uniform)

LAYOUTS = pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per_channel"])


def chunk_vs_recurrent(args: dict, chunk_size: int, tol: float, **options) -> None:
    """Assert chunk == recurrent for outputs, final state and all input gradients."""
    chunk = run_with_grads(decay_recurrence, args, mode="chunk", chunk_size=chunk_size, **options)
    reference = run_with_grads(decay_recurrence, args, mode="recurrent", **options)
    assert_runs_match(chunk, reference, tol)


def test_recurrent_matches_definition():
    """The reference loop is ``H_t = diag(a_t) H_{t-1} + k_t v_t^T``, ``o_t = H_t^T (scale q_t)``."""
    args = decay_recurrence_inputs(B=1, T=5, H=1, K=3, V=2, per_channel=True, seed=11)
    a = torch.exp(args["log_decay"]) * (1 - 2 * args["decay_negative"].double())
    state = args["initial_state"][0, 0].clone()
    expected = []
    for t in range(5):
        state = torch.diag(a[0, t, 0]) @ state + torch.outer(args["k"][0, t, 0], args["v"][0, t, 0])
        expected.append(state.T @ (0.7 * args["q"][0, t, 0]))
    o, final = decay_recurrence(**args, scale=0.7, output_final_state=True, mode="recurrent")
    assert_close(o[0, :, 0], torch.stack(expected), TOL_F64, "o")
    assert_close(final[0, 0], state, TOL_F64, "final state")


def test_default_scale_and_no_state():
    """``scale=None`` means ``K ** -0.5``; no final state unless asked for; a missing initial state is zero."""
    args = decay_recurrence_inputs(T=9, K=9, initial_state=False, seed=12)
    for mode in ("chunk", "recurrent"):
        o_default, none = decay_recurrence(**args, mode=mode)
        assert none is None
        o_third, _ = decay_recurrence(**args, scale=1 / 3, mode=mode)
        zeros = torch.zeros(2, 2, 9, 6, dtype=F64)
        o_zero_state, _ = decay_recurrence(**{**args, "initial_state": zeros}, scale=1 / 3, mode=mode)
        assert_close(o_default, o_third, TOL_F64, f"{mode} default scale")
        assert_close(o_zero_state, o_third, TOL_F64, f"{mode} zero initial state")


@LAYOUTS
@pytest.mark.parametrize("chunk_size", [16, 32, 64])
@pytest.mark.parametrize("T", [1, 7, 63, 65, 500])
def test_chunk_matches_recurrent_outputs(T, chunk_size, per_channel):
    """Float64 outputs and final states agree for every length (odd, not a multiple of the chunk)."""
    args = decay_recurrence_inputs(T=T, per_channel=per_channel, seed=T * 100 + chunk_size)
    o, state = decay_recurrence(**args, output_final_state=True, mode="chunk", chunk_size=chunk_size)
    o_ref, state_ref = decay_recurrence(**args, output_final_state=True, mode="recurrent")
    assert_close(o, o_ref, TOL_F64, "o")
    assert_close(state, state_ref, TOL_F64, "final state")


@LAYOUTS
@pytest.mark.parametrize("chunk_size", [16, 32, 64])
@pytest.mark.parametrize("T", [1, 7, 63, 65])
def test_chunk_matches_recurrent_gradients(T, chunk_size, per_channel):
    """Float64 gradients w.r.t. q, k, v, log_decay and initial_state agree (random upstream gradient)."""
    args = decay_recurrence_inputs(T=T, per_channel=per_channel, seed=T + chunk_size)
    chunk_vs_recurrent(args, chunk_size, TOL_F64)


@LAYOUTS
def test_chunk_matches_recurrent_gradients_long(per_channel):
    """Gradients at T = 500 (many chunks, a partial last chunk)."""
    args = decay_recurrence_inputs(T=500, per_channel=per_channel, seed=500)
    chunk_vs_recurrent(args, 32, TOL_F64)


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_per_channel_with_equal_channels_is_scalar(mode):
    """A per-channel decay that repeats one value over the K channels gives the scalar-decay result."""
    args = decay_recurrence_inputs(T=40, seed=22)
    o_scalar, s_scalar = decay_recurrence(**args, output_final_state=True, mode=mode, chunk_size=16)
    spread = {n: args[n][..., None].expand(*args[n].shape, 4) for n in ("log_decay", "decay_negative")}
    o_channel, s_channel = decay_recurrence(**(args | spread), output_final_state=True, mode=mode, chunk_size=16)
    assert_close(o_channel, o_scalar, TOL_F64, "o")
    assert_close(s_channel, s_scalar, TOL_F64, "final state")


@LAYOUTS
def test_chunk_matches_recurrent_without_negative_decays(per_channel):
    """``decay_negative=None`` (all decays >= 0) and no initial state: outputs and gradients agree."""
    args = decay_recurrence_inputs(T=65, per_channel=per_channel, decay_range=(0.0, 1.0), initial_state=False,
                                   seed=21)
    args["decay_negative"] = None
    chunk_vs_recurrent(args, 16, TOL_F64, scale=1.0)


@LAYOUTS
def test_float32_long_sequence(per_channel):
    """Float32 at T = 1024: outputs, state and gradients within relative RMSE 1e-4 of the recurrent run."""
    args = decay_recurrence_inputs(T=1024, K=8, V=8, per_channel=per_channel, seed=31, dtype=F32)
    chunk_vs_recurrent(args, 64, TOL_F32)


@LAYOUTS
@pytest.mark.parametrize("split", [1, 17, 32])
def test_continuation_chunk_then_chunk(split, per_channel):
    """Running [0, T) at once == running [0, split), passing the final state, then [split, T)."""
    args = decay_recurrence_inputs(T=50, per_channel=per_channel, seed=40 + split)
    o_all, state_all = decay_recurrence(**args, output_final_state=True, chunk_size=16)
    first, rest = split_time(args, split)
    o1, state1 = decay_recurrence(**first, output_final_state=True, chunk_size=16)
    o2, state2 = decay_recurrence(**rest, initial_state=state1, output_final_state=True, chunk_size=16)
    assert_close(torch.cat([o1, o2], dim=1), o_all, TOL_F64, "o")
    assert_close(state2, state_all, TOL_F64, "final state")


@LAYOUTS
@pytest.mark.parametrize("step_mode", ["recurrent", "chunk"])
def test_continuation_chunk_then_token_by_token(step_mode, per_channel):
    """A chunked prefill followed by T = 1 decode steps reproduces the single full run."""
    args = decay_recurrence_inputs(T=40, per_channel=per_channel, seed=50)
    o_all, state_all = decay_recurrence(**args, output_final_state=True, chunk_size=16)
    first, rest = split_time(args, 21)
    outs, state = [], None
    o, state = decay_recurrence(**first, output_final_state=True, chunk_size=16)
    outs.append(o)
    for t in range(rest["q"].shape[1]):
        step = {n: x[:, t:t + 1] for n, x in rest.items()}
        o, state = decay_recurrence(**step, initial_state=state, output_final_state=True, mode=step_mode)
        outs.append(o)
    assert_close(torch.cat(outs, dim=1), o_all, TOL_F64, "o")
    assert_close(state, state_all, TOL_F64, "final state")


def split_time(args: dict, split: int) -> tuple[dict, dict]:
    """Split the per-token inputs at ``split``; the first part keeps the initial state, the rest gets none."""
    timed = ("q", "k", "v", "log_decay", "decay_negative")
    first = {n: args[n][:, :split] for n in timed} | {"initial_state": args["initial_state"]}
    rest = {n: args[n][:, split:] for n in timed}
    return first, rest


@LAYOUTS
@pytest.mark.parametrize("T, chunk_size", [(65, 16), (200, 64)])
def test_negative_decays_only(T, chunk_size, per_channel):
    """Every decay in [-1, 0): chunk == recurrent for outputs, state and gradients."""
    args = decay_recurrence_inputs(T=T, per_channel=per_channel, decay_range=(-1.0, 0.0), seed=60 + T)
    assert bool(args["decay_negative"].all())
    chunk_vs_recurrent(args, chunk_size, TOL_F64)


@LAYOUTS
@pytest.mark.parametrize("start", ["initial_state", "first_token"])
def test_parity_sign_is_exact(start, per_channel):
    """Decay -1 on bit 1 and +1 on bit 0 over 10,000 random bits: the float32 output is exactly
    (-1)^(number of ones so far) at every position, in both modes.

    ``initial_state``: state 1 before the sequence, k = v = 0, so o_t = prod_{m<=t} a_m.
    ``first_token``: zero state, k_0 = v_0 = 1, so o_t = prod_{1<=m<=t} a_m (a_0 multiplies zero).
    """
    T = 10_000
    bits = torch.randint(0, 2, (1, T, 1), generator=generator(70))
    decay_shape = (1, T, 1, 1) if per_channel else (1, T, 1)
    negative = bits.bool().reshape(decay_shape)
    log_decay = torch.zeros(decay_shape, dtype=F32)
    q = torch.ones(1, T, 1, 1, dtype=F32)
    k = torch.zeros(1, T, 1, 1, dtype=F32)
    if start == "initial_state":
        initial_state = torch.ones(1, 1, 1, 1, dtype=F32)
        ones_so_far = torch.cumsum(bits, dim=1)
    else:
        initial_state = None
        k[:, 0] = 1.0
        ones_so_far = torch.cumsum(bits, dim=1) - bits[:, :1]
    expected = (1 - 2 * (ones_so_far % 2)).to(F32).reshape(1, T, 1, 1)
    for mode in ("recurrent", "chunk"):
        o, state = decay_recurrence(q, k, k.clone(), log_decay, negative, scale=1.0, initial_state=initial_state,
                                    output_final_state=True, mode=mode)
        assert torch.equal(o, expected), f"{mode}: first wrong sign at t={first_mismatch(o, expected)}"
        assert torch.equal(state.reshape(()), expected[0, -1].reshape(())), mode


def first_mismatch(a: torch.Tensor, b: torch.Tensor) -> int:
    diff = (a != b).flatten(1).any(0).nonzero()
    return int(diff[0]) if len(diff) else -1


@LAYOUTS
@pytest.mark.parametrize("kind", ["constant_1e-6", "constant_1e-7", "uniform", "uniform_signed"])
def test_decays_near_one_long_sequence(kind, per_channel):
    """Decays within 1e-6 of 1 over T = 20,000: float32 chunk mode stays within 2e-5 of a float64 reference.

    ``constant_*``: a = 1 - 1e-6 or 1 - 1e-7 everywhere, where rounding a itself to float32 would already
    cost a relative error of 1e-4 to 1.5e-4, so the op must keep the log-space precision (see TOL_NEAR_ONE).
    ``uniform``: a = 1 - U(0, 1e-6); ``uniform_signed``: the same magnitudes with random signs.
    """
    B, T, H, K, V = 1, 20_000, 2, 4, 4
    gen = generator(80)
    shape = (B, T, H, K) if per_channel else (B, T, H)
    if kind.startswith("constant"):
        gap = torch.full(shape, float(kind.split("_")[1]), dtype=F64)
    else:
        gap = uniform(shape, 0.0, 1e-6, gen)
    log_decay = torch.log1p(-gap)
    negative = torch.rand(shape, generator=gen) < 0.5 if kind == "uniform_signed" else None
    q, k, v = normal((B, T, H, K), gen), normal((B, T, H, K), gen), normal((B, T, H, V), gen)
    o, state = decay_recurrence(q.float(), k.float(), v.float(), log_decay.float(), negative,
                                output_final_state=True, mode="chunk")
    o_ref, state_ref = decay_recurrence(q, k, v, log_decay, negative, output_final_state=True, mode="recurrent")
    assert_close(o, o_ref, TOL_NEAR_ONE, "o")
    assert_close(state, state_ref, TOL_NEAR_ONE, "final state")


@LAYOUTS
@pytest.mark.parametrize("T, chunk_size", [(7, 16), (65, 16), (100, 32)])
def test_exactly_zero_decays(T, chunk_size, per_channel):
    """log_decay = -inf (a = 0) at random positions, mixed with signed decays: outputs and gradients are
    finite and chunk == recurrent."""
    args = decay_recurrence_inputs(T=T, per_channel=per_channel, zero_fraction=0.3, seed=90 + T)
    assert bool(torch.isneginf(args["log_decay"]).any())
    chunk_vs_recurrent(args, chunk_size, TOL_F64)


@LAYOUTS
def test_all_decays_zero_forgets_everything(per_channel):
    """With every a_t = 0 the state is just k_t v_t^T: o_t = (k_t . scale q_t) v_t in both modes."""
    args = decay_recurrence_inputs(T=20, per_channel=per_channel, seed=95)
    args["log_decay"] = torch.full_like(args["log_decay"], -math.inf)
    expected = (args["q"] * args["k"]).sum(-1, keepdim=True) * args["v"]
    for mode in ("chunk", "recurrent"):
        o, _ = decay_recurrence(**args, scale=1.0, mode=mode, chunk_size=8)
        assert_close(o, expected, TOL_F64, mode)


def test_empty_sequence():
    """T = 0 returns an empty output and leaves the state unchanged."""
    args = decay_recurrence_inputs(T=0, seed=96)
    for mode in ("chunk", "recurrent"):
        o, state = decay_recurrence(**args, output_final_state=True, mode=mode)
        assert o.shape == (2, 0, 2, 6)
        assert torch.equal(state, args["initial_state"])


def test_empty_batch():
    """B = 0 runs in both modes and gives empty outputs."""
    args = decay_recurrence_inputs(B=0, T=5, seed=97)
    for mode in ("chunk", "recurrent"):
        o, state = decay_recurrence(**args, output_final_state=True, mode=mode)
        assert o.shape == (0, 5, 2, 6) and state.shape == (0, 2, 4, 6)


def test_dtypes_of_results():
    """Output in the dtype of v; final state float32 for float32 inputs."""
    args = decay_recurrence_inputs(T=5, seed=98, dtype=F32)
    for mode in ("chunk", "recurrent"):
        o, state = decay_recurrence(**args, output_final_state=True, mode=mode)
        assert o.dtype == F32 and state.dtype == F32


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(1, 2), T=st.integers(1, 70), H=st.integers(1, 2), K=st.integers(1, 5), V=st.integers(1, 5),
       chunk_size=st.integers(1, 40), per_channel=st.booleans(), with_state=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_property_chunk_matches_recurrent(B, T, H, K, V, chunk_size, per_channel, with_state, seed):
    """Random shapes, lengths and chunk sizes: float64 chunk == recurrent, outputs, state and gradients."""
    args = decay_recurrence_inputs(B=B, T=T, H=H, K=K, V=V, per_channel=per_channel, initial_state=with_state,
                                   seed=seed)
    chunk_vs_recurrent(args, chunk_size, TOL_F64)
