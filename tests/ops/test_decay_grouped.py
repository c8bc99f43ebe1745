"""``decay_recurrence`` with q and k in groups (Mamba-2's B and C shared by a group's heads) and the
per-group chunked path for one scalar decay per head (``_chunked_grouped``).

Every case compares against the sequential reference run on per-head q and k built independently of the
op (``repeat_interleave``): outputs, final states and the gradients of every input, float64 to 1e-10 and
float32 loosely. The cases cover one chunk (T <= chunk_size, the training path at short lengths) and
many, an odd last chunk, with and without an initial state and a final state, decays in [-1, 1] (some
exactly 0) and in [0, 1]. Both chunk schedules are forced in turn: the per-chunk one runs the grouped
path, the batched one expands the groups to heads first.
"""

from __future__ import annotations

import pytest
import torch

import lrnn.ops.diagonal as diagonal
from lrnn.ops import decay_recurrence, expand_groups

from ops_helpers import F32, F64, TOL_F32, TOL_F64, assert_close, generator, normal, signed_decays

NAMES = ("q", "k", "v", "log_decay", "initial_state")


@pytest.fixture(params=[False, True], ids=["per_chunk", "batched"])
def schedule(request, monkeypatch):
    """Force the chunk schedule (small test shapes would otherwise always batch several chunks)."""
    monkeypatch.setattr(diagonal, "default_batch_chunks", lambda x: request.param)
    return request.param


def grouped_inputs(*, B=2, T=7, G=2, H=4, K=5, V=3, seed=0, dtype=F64, decay_range=(-1.0, 1.0),
                   zero_fraction=0.0, initial_state=True) -> dict:
    """Random ``decay_recurrence`` arguments with q, k [B, T, G, K] and H heads (G divides H)."""
    gen = generator(seed)
    log_decay, negative = signed_decays((B, T, H), gen, *decay_range, zero_fraction=zero_fraction, dtype=dtype)
    return dict(q=normal((B, T, G, K), gen, dtype), k=normal((B, T, G, K), gen, dtype),
                v=normal((B, T, H, V), gen, dtype), log_decay=log_decay,
                decay_negative=negative if decay_range[0] < 0 else None,
                initial_state=normal((B, H, K, V), gen, dtype) if initial_state else None)


def per_head(args: dict) -> dict:
    """The same problem with q and k repeated for each head of their group (head h reads group h // (H/G))."""
    heads_per_group = args["v"].shape[2] // args["q"].shape[2]
    return args | {n: args[n].repeat_interleave(heads_per_group, dim=2) for n in ("q", "k")}


def run(args: dict, keep_state: bool, seed: int = 7, **options) -> dict:
    """Outputs (and final state) of ``decay_recurrence`` and the gradients of a random loss of them."""
    leaves = {n: t.detach().clone().requires_grad_() for n, t in args.items()
              if isinstance(t, torch.Tensor) and t.is_floating_point()}
    call = args | leaves
    heads_per_group = call["v"].shape[2] // call["q"].shape[2]
    if options.get("mode") == "recurrent":  # the reference: per-head q and k, built by repetition
        call = per_head(call) if heads_per_group > 1 else call
    o, state = decay_recurrence(**call, scale=0.5, output_final_state=keep_state, **options)
    gen = generator(seed)
    loss = (o * normal(o.shape, gen, o.dtype)).sum()
    if keep_state:
        loss = loss + (state * normal(state.shape, gen, state.dtype)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    out = {"o": o.detach()} | ({"state": state.detach()} if keep_state else {})
    return out | {f"grad {n}": g for n, g in zip(leaves, grads)}


def assert_matches_reference(args: dict, chunk_size: int, tol: float, keep_state: bool = True) -> None:
    chunk = run(args, keep_state, mode="chunk", chunk_size=chunk_size)
    reference = run(args, keep_state, mode="recurrent")
    assert chunk.keys() == reference.keys()
    for name in reference:
        assert_close(chunk[name], reference[name], tol, name)


@pytest.mark.parametrize("G, H", [(1, 4), (2, 4), (3, 3)], ids=["one_group", "two_groups", "group_per_head"])
@pytest.mark.parametrize("T, chunk_size", [(1, 16), (7, 16), (16, 16), (40, 64), (41, 16), (63, 8)])
@pytest.mark.parametrize("initial_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("keep_state", [False, True], ids=["no_final_state", "final_state"])
def test_grouped_chunk_matches_reference(schedule, G, H, T, chunk_size, initial_state, keep_state):
    """Float64: outputs, final state and gradients (q, k per group; v, decays, initial state) agree."""
    args = grouped_inputs(T=T, G=G, H=H, seed=T * 10 + G, initial_state=initial_state)
    assert_matches_reference(args, chunk_size, TOL_F64, keep_state)


@pytest.mark.parametrize("decay_range", [(-1.0, 1.0), (0.0, 1.0)], ids=["range_-1_1", "range_0_1"])
@pytest.mark.parametrize("T, chunk_size", [(37, 64), (37, 16)], ids=["one_chunk", "chunks"])
def test_decay_ranges_and_zero_decays(schedule, decay_range, T, chunk_size):
    """Both eigenvalue ranges, with 10% of the decays exactly 0 (log -inf, as at a document start)."""
    args = grouped_inputs(T=T, G=1, H=4, seed=31, decay_range=decay_range, zero_fraction=0.1)
    assert bool(torch.isinf(args["log_decay"]).any())
    assert_matches_reference(args, chunk_size, TOL_F64)


@pytest.mark.parametrize("T, chunk_size", [(40, 64), (97, 32)], ids=["one_chunk", "chunks"])
def test_float32(schedule, T, chunk_size):
    """Float32 at Mamba-2-like sizes (K > V, one group): within the float32 tolerance of the reference."""
    args = grouped_inputs(B=3, T=T, G=1, H=4, K=32, V=16, seed=41, dtype=F32, initial_state=False)
    assert_matches_reference(args, chunk_size, TOL_F32, keep_state=False)


def test_per_head_inputs_are_unchanged_by_grouping():
    """G = H (the usual per-head q and k) and G = 1 with a stride-0 expand give the one-group result."""
    args = grouped_inputs(T=23, G=1, H=4, seed=51)
    o_grouped, s_grouped = decay_recurrence(**args, output_final_state=True, chunk_size=8)
    expanded = args | {n: expand_groups(args[n], 4) for n in ("q", "k")}
    assert expanded["q"].stride(2) == 0
    o_heads, s_heads = decay_recurrence(**expanded, output_final_state=True, chunk_size=8)
    assert_close(o_grouped, o_heads, TOL_F64, "o")
    assert_close(s_grouped, s_heads, TOL_F64, "final state")


def test_expand_groups_order():
    """Head h reads group h // (H / G): groups are contiguous blocks of heads (mamba_ssm's layout)."""
    x = torch.arange(2 * 3 * 5, dtype=F64).reshape(1, 2, 3, 5)
    heads = expand_groups(x, 6)
    assert heads.shape == (1, 2, 6, 5)
    for h in range(6):
        assert torch.equal(heads[:, :, h], x[:, :, h // 2])
    assert expand_groups(x, 3) is x


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_groups_must_divide_heads(mode):
    """q and k with 3 groups cannot serve 4 heads: ValueError naming both sizes."""
    args = grouped_inputs(T=5, G=2, H=4, seed=61)
    args["q"], args["k"] = args["q"][:, :, :1].expand(2, 5, 3, 5), args["k"][:, :, :1].expand(2, 5, 3, 5)
    with pytest.raises(ValueError, match=r"heads of v \(4\) must be a multiple of the groups of q and k \(3\)"):
        decay_recurrence(**args, mode=mode)
