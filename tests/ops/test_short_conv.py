"""Tests of ``short_conv``: the parallel convolution (``mode="chunk"``) against the step-by-step reference,
state passing for prefill + decode, and the documented formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lrnn.ops import short_conv

from ops_helpers import F32, F64, TOL_F32, TOL_F64, assert_close, assert_runs_match, run_with_grads, short_conv_inputs

WIDTHS = pytest.mark.parametrize("W", [1, 2, 3, 4])
BIAS = pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
ACTIVATION = pytest.mark.parametrize("activation", [None, "silu"], ids=["linear", "silu"])


def test_matches_definition():
    """``y_t[d] = act(bias[d] + sum_w weight[d, w] x_{t-W+1+w}[d])`` with the initial state as the
    W-1 inputs before the sequence; the final state is the last W-1 inputs."""
    args = short_conv_inputs(B=1, T=5, D=3, W=3, seed=1)
    history = torch.cat([args["initial_state"], args["x"]], dim=1)  # [1, 2 + T, D]
    expected = torch.stack([
        F.silu(args["bias"] + sum(args["weight"][:, w] * history[:, t + w] for w in range(3)))
        for t in range(5)], dim=1)
    for mode in ("chunk", "recurrent"):
        y, state = short_conv(**args, activation="silu", output_final_state=True, mode=mode)
        assert_close(y, expected, TOL_F64, mode)
        assert torch.equal(state, args["x"][:, -2:])


@WIDTHS
@BIAS
@ACTIVATION
@pytest.mark.parametrize("T", [1, 7, 65])
def test_chunk_matches_recurrent(T, activation, bias, W):
    """Float64 outputs, final state and gradients w.r.t. x, weight, bias and initial_state agree."""
    args = short_conv_inputs(T=T, W=W, bias=bias, seed=T * 10 + W)
    chunk = run_with_grads(short_conv, args, activation=activation, mode="chunk")
    reference = run_with_grads(short_conv, args, activation=activation, mode="recurrent")
    assert_runs_match(chunk, reference, TOL_F64)


@WIDTHS
def test_chunk_matches_recurrent_without_initial_state(W):
    """No initial state means zero history, in both modes."""
    args = short_conv_inputs(T=7, W=W, initial_state=False, seed=W)
    chunk = run_with_grads(short_conv, args, mode="chunk")
    reference = run_with_grads(short_conv, args, mode="recurrent")
    assert_runs_match(chunk, reference, TOL_F64)
    zeros = torch.zeros(2, W - 1, 5, dtype=F64)
    y_zero_state, _ = short_conv(**{**args, "initial_state": zeros})
    assert_close(chunk["o"], y_zero_state, TOL_F64, "zero initial state")


@WIDTHS
@BIAS
@ACTIVATION
@pytest.mark.parametrize("T", [1, 2, 3, 40])
def test_zero_history_chunk_matches_recurrent(T, activation, bias, W):
    """The training path (no initial state, no documents: its own backward): float64 outputs, final state
    and gradients w.r.t. x, weight and bias agree with the reference, also for T shorter than the taps."""
    args = short_conv_inputs(T=T, W=W, bias=bias, initial_state=False, seed=T * 10 + W + 5)
    chunk = run_with_grads(short_conv, args, activation=activation, mode="chunk")
    reference = run_with_grads(short_conv, args, activation=activation, mode="recurrent")
    assert_runs_match(chunk, reference, TOL_F64)


@pytest.mark.parametrize("per_block", [1, 2])
def test_zero_history_in_blocks_of_sequences(monkeypatch, per_block):
    """The training path runs over blocks of sequences (cache-sized on a CPU): with blocks of 1 or 2 of 5
    sequences (a short last block) outputs and gradients still match the reference."""
    import lrnn.ops._chunking as chunking
    args = short_conv_inputs(B=5, T=9, D=3, W=4, initial_state=False, seed=7)
    monkeypatch.setattr(chunking, "CACHE_BLOCK_ELEMENTS", per_block * 9 * 3)
    assert len(chunking.cache_blocks(args["x"])) == (5 if per_block == 1 else 3)
    chunk = run_with_grads(short_conv, args, activation="silu", mode="chunk")
    reference = run_with_grads(short_conv, args, activation="silu", mode="recurrent")
    assert_runs_match(chunk, reference, TOL_F64)


def test_zero_history_float32():
    """Float32 at a Mamba-2 conv's shape (many channels, T 40), no history: within the float32 tolerance."""
    args = short_conv_inputs(B=4, T=40, D=96, W=4, seed=6, dtype=F32, initial_state=False)
    chunk = run_with_grads(short_conv, args, activation="silu", mode="chunk")
    reference = run_with_grads(short_conv, args, activation="silu", mode="recurrent")
    assert_runs_match(chunk, reference, TOL_F32)


def test_float32_long_sequence():
    """Float32 at T = 1024: outputs and gradients within relative RMSE 1e-4 of the recurrent run."""
    args = short_conv_inputs(T=1024, D=16, W=4, seed=3, dtype=F32)
    chunk = run_with_grads(short_conv, args, activation="silu", mode="chunk")
    reference = run_with_grads(short_conv, args, activation="silu", mode="recurrent")
    assert_runs_match(chunk, reference, TOL_F32)


def test_no_final_state_unless_asked():
    args = short_conv_inputs(T=4, seed=4)
    for mode in ("chunk", "recurrent"):
        assert short_conv(**args, mode=mode)[1] is None


@WIDTHS
@pytest.mark.parametrize("split", [1, 2, 9])
def test_continuation_chunk_then_chunk(split, W):
    """Running [0, T) at once == [0, split), then [split, T) from its final state -- also when the first
    part is shorter than the W-1 inputs the state holds (the state then mixes old history and new x)."""
    args = short_conv_inputs(T=20, W=W, seed=20 + split)
    opts = dict(bias=args["bias"], weight=args["weight"], activation="silu", output_final_state=True)
    y_all, state_all = short_conv(args["x"], initial_state=args["initial_state"], **opts)
    y1, state1 = short_conv(args["x"][:, :split], initial_state=args["initial_state"], **opts)
    y2, state2 = short_conv(args["x"][:, split:], initial_state=state1, **opts)
    assert_close(torch.cat([y1, y2], dim=1), y_all, TOL_F64, "y")
    assert torch.equal(state2, state_all)


@WIDTHS
@pytest.mark.parametrize("step_mode", ["recurrent", "chunk"])
def test_continuation_chunk_then_token_by_token(step_mode, W):
    """A chunked prefill followed by T = 1 decode steps reproduces the single full run."""
    args = short_conv_inputs(T=16, W=W, seed=30)
    opts = dict(bias=args["bias"], weight=args["weight"], activation="silu", output_final_state=True)
    y_all, state_all = short_conv(args["x"], initial_state=args["initial_state"], **opts)
    y, state = short_conv(args["x"][:, :5], initial_state=args["initial_state"], **opts)
    outs = [y]
    for t in range(5, 16):
        y, state = short_conv(args["x"][:, t:t + 1], initial_state=state, mode=step_mode, **opts)
        outs.append(y)
    assert_close(torch.cat(outs, dim=1), y_all, TOL_F64, "y")
    assert torch.equal(state, state_all)


def test_width_one_has_empty_state():
    """W = 1 is a per-channel scale: the state has W - 1 = 0 entries and y = weight * x."""
    args = short_conv_inputs(T=6, W=1, bias=False, seed=5)
    for mode in ("chunk", "recurrent"):
        y, state = short_conv(**args, output_final_state=True, mode=mode)
        assert state.shape == (2, 0, 5)
        assert_close(y, args["x"] * args["weight"][:, 0], TOL_F64, mode)


def test_empty_sequence():
    """T = 0 returns an empty output and keeps the state."""
    args = short_conv_inputs(T=0, W=4, seed=6)
    for mode in ("chunk", "recurrent"):
        y, state = short_conv(**args, output_final_state=True, mode=mode)
        assert y.shape == (2, 0, 5)
        assert torch.equal(state, args["initial_state"])


def test_empty_batch():
    """B = 0 runs in both modes."""
    args = short_conv_inputs(B=0, T=5, seed=7)
    for mode in ("chunk", "recurrent"):
        y, state = short_conv(**args, output_final_state=True, mode=mode)
        assert y.shape == (0, 5, 5) and state.shape == (0, 3, 5)
