"""Empty batches, zero heads and a zero key dimension.

Every recurrence op (both modes) and every step op returns correctly shaped empty outputs and states for
B = 0 or H = 0; a key dimension of 0 with the default ``scale`` (``K ** -0.5``) is a ValueError naming the
key dim, and with an explicit scale it is a valid (all-zero) computation.
"""

from __future__ import annotations

import pytest
import torch

from lrnn.ops import decay_recurrence, decay_step, delta_rule, delta_step

from ops_helpers import F32, decay_recurrence_inputs, delta_rule_inputs

MODES = ["chunk", "recurrent"]
EMPTY = pytest.mark.parametrize("b, h", [(0, 2), (2, 0), (0, 0)], ids=["B0", "H0", "B0H0"])


def test_delta_rule_chunk_on_an_empty_batch_from_the_issue():
    """The reported crash: a RuntimeError in ops/triangular.py (default chunk size, T = 9 > one 8x8 block)."""
    q = torch.zeros(0, 9, 2, 4)
    o, _ = delta_rule(q, q, torch.zeros(0, 9, 2, 3), torch.zeros(0, 9, 2))
    assert o.shape == (0, 9, 2, 3)


def assert_empty_result(o, state, b, t, h, k, v, dtype) -> None:
    assert o.shape == (b, t, h, v) and o.dtype == dtype
    assert state.shape == (b, h, k, v) and state.dtype == dtype


@EMPTY
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_head", "per_channel"])
def test_decay_recurrence_empty(b, h, mode, per_channel):
    args = decay_recurrence_inputs(B=b, T=9, H=h, K=4, V=3, per_channel=per_channel, dtype=F32)
    o, state = decay_recurrence(**args, mode=mode, output_final_state=True)
    assert_empty_result(o, state, b, 9, h, 4, 3, F32)


@EMPTY
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("num_householder", [1, 2])
@pytest.mark.parametrize("gate", [False, True], ids=["ungated", "gated"])
def test_delta_rule_empty(b, h, mode, num_householder, gate):
    args = delta_rule_inputs(B=b, T=9, H=h, K=4, V=3, num_householder=num_householder, gate=gate, dtype=F32)
    for chunk_size in (64, 4):  # one chunk of 9 (or 18) steps past an 8x8 block; several chunks
        o, state = delta_rule(**args, num_householder=num_householder, mode=mode, chunk_size=chunk_size,
                              output_final_state=True)
        assert_empty_result(o, state, b, 9, h, 4, 3, F32)


@EMPTY
def test_step_ops_empty(b, h):
    o, state = decay_step(**decay_recurrence_inputs(B=b, T=1, H=h, K=4, V=3, dtype=F32))
    assert_empty_result(o, state, b, 1, h, 4, 3, F32)
    o, state = delta_step(**delta_rule_inputs(B=b, T=1, H=h, K=4, V=3, num_householder=2, dtype=F32),
                          num_householder=2)
    assert_empty_result(o, state, b, 1, h, 4, 3, F32)
    o, state = delta_step(**delta_rule_inputs(B=b, T=1, H=h, K=4, V=3, initial_state=False, dtype=F32))
    assert_empty_result(o, state, b, 1, h, 4, 3, F32)


def zero_key_calls(t: int):
    """(name, call(scale=...)) for every op on inputs with key dim 0 (T = 1 so the step ops fit too)."""
    decay = decay_recurrence_inputs(B=2, T=t, H=2, K=0, V=3, dtype=F32)
    delta = delta_rule_inputs(B=2, T=t, H=2, K=0, V=3, dtype=F32)
    return [
        ("decay_recurrence chunk", lambda **kw: decay_recurrence(**decay, mode="chunk", **kw)),
        ("decay_recurrence recurrent", lambda **kw: decay_recurrence(**decay, mode="recurrent", **kw)),
        ("delta_rule chunk", lambda **kw: delta_rule(**delta, mode="chunk", **kw)),
        ("delta_rule recurrent", lambda **kw: delta_rule(**delta, mode="recurrent", **kw)),
        ("decay_step", lambda **kw: decay_step(**decay, **kw)),
        ("delta_step", lambda **kw: delta_step(**delta, **kw)),
    ]


@pytest.mark.parametrize("index", range(6), ids=[name for name, _ in zero_key_calls(1)])
def test_zero_key_dim_with_the_default_scale_is_a_value_error(index):
    """Not a ZeroDivisionError from ``0 ** -0.5``: a ValueError that names the key dim."""
    _, call = zero_key_calls(1)[index]
    with pytest.raises(ValueError, match=r"key_dim = 0"):
        call()


@pytest.mark.parametrize("index", range(6), ids=[name for name, _ in zero_key_calls(1)])
def test_zero_key_dim_with_an_explicit_scale_reads_nothing(index):
    """With K = 0 the state [B, H, 0, V] is empty, so every output is zero."""
    _, call = zero_key_calls(1)[index]
    o, _ = call(scale=1.0)
    assert o.shape == (2, 1, 2, 3) and not o.any()
