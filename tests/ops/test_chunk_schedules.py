"""Both chunk schedules (all chunks' terms at once, or one chunk at a time inside the state loop) agree
with the sequential reference, outputs and gradients.

Small test shapes make ``default_batch_chunks`` pick the batched schedule, while large CPU problems run
the per-chunk one, so each schedule is forced here explicitly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lrnn.ops._chunking as chunking
from lrnn.ops import decay_recurrence, delta_rule
from ops_helpers import assert_close, generator, normal, uniform

TOL = 1e-10


def _grads(fn, inputs, outputs_weights):
    o, s = fn()
    loss = (o * outputs_weights[0]).sum() + (s * outputs_weights[1]).sum()
    grads = torch.autograd.grad(loss, inputs)
    return o.detach(), s.detach(), grads


@pytest.fixture(params=[True, False], ids=["batched", "per_chunk"])
def schedule(request, monkeypatch):
    monkeypatch.setattr(chunking, "default_batch_chunks", lambda x: request.param)
    # The ops import the function by name; patch their references too.
    import lrnn.ops.delta as delta_mod
    import lrnn.ops.diagonal as diagonal_mod
    monkeypatch.setattr(delta_mod, "default_batch_chunks", lambda x: request.param)
    monkeypatch.setattr(diagonal_mod, "default_batch_chunks", lambda x: request.param)
    return request.param


@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per_channel"])
def test_decay_recurrence_schedules(schedule, per_channel):
    gen = generator(11)
    b, t, h, dk, dv = 2, 71, 2, 5, 3
    q, k, v = normal((b, t, h, dk), gen), normal((b, t, h, dk), gen), normal((b, t, h, dv), gen)
    a = uniform((b, t, h, dk) if per_channel else (b, t, h), -1.0, 1.0, gen)
    g, neg = a.abs().log(), a < 0
    s0 = normal((b, h, dk, dv), gen)
    inputs = [x.requires_grad_() for x in (q, k, v, g, s0)]
    weights = (normal((b, t, h, dv), gen), normal((b, h, dk, dv), gen))
    results = {}
    for mode in ("recurrent", "chunk"):
        results[mode] = _grads(lambda: decay_recurrence(q, k, v, g, neg, initial_state=s0, output_final_state=True,
                                                        mode=mode, chunk_size=16), inputs, weights)
    (o_r, s_r, g_r), (o_c, s_c, g_c) = results["recurrent"], results["chunk"]
    assert_close(o_c, o_r, TOL, "output")
    assert_close(s_c, s_r, TOL, "final state")
    for name, gc, gr in zip(("q", "k", "v", "log_decay", "initial_state"), g_c, g_r):
        assert_close(gc, gr, TOL, f"grad {name}")


@pytest.mark.parametrize("gated", [False, True], ids=["ungated", "gated"])
@pytest.mark.parametrize("n_h", [1, 2])
def test_delta_rule_schedules(schedule, gated, n_h):
    gen = generator(12)
    b, t, h, dk, dv = 2, 45, 2, 6, 4
    q = normal((b, t, h, dk), gen)
    k = F.normalize(normal((b, t * n_h, h, dk), gen), dim=-1)
    v = normal((b, t * n_h, h, dv), gen)
    beta = uniform((b, t * n_h, h), 0.0, 2.0, gen)
    a = uniform((b, t, h), -1.0, 1.0, gen)
    g, neg = (a.abs().log(), a < 0) if gated else (None, None)
    s0 = normal((b, h, dk, dv), gen)
    inputs = [x.requires_grad_() for x in (q, k, v, beta, s0) + ((g,) if gated else ())]
    weights = (normal((b, t, h, dv), gen), normal((b, h, dk, dv), gen))
    results = {}
    for mode in ("recurrent", "chunk"):
        results[mode] = _grads(lambda: delta_rule(q, k, v, beta, g, neg, num_householder=n_h, initial_state=s0,
                                                  output_final_state=True, mode=mode, chunk_size=16), inputs, weights)
    (o_r, s_r, g_r), (o_c, s_c, g_c) = results["recurrent"], results["chunk"]
    assert_close(o_c, o_r, TOL, "output")
    assert_close(s_c, s_r, TOL, "final state")
    for name, gc, gr in zip(("q", "k", "v", "beta", "initial_state", "log_decay"), g_c, g_r):
        assert_close(gc, gr, TOL, f"grad {name}")


def test_default_schedule_depends_on_chunk_size():
    """Large CPU chunks run one at a time; small ones (and any GPU chunk) run all at once."""
    assert chunking.default_batch_chunks(torch.zeros(4, 2, 16, 8)) is True
    assert chunking.default_batch_chunks(torch.zeros(4, 64, 64, 128)) is False
