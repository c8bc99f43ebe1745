"""Decay (diagonal) linear recurrence: Mamba-2 / SSD, RetNet, GLA, and Mamba-1 as linear attention.

Per head, with state ``H`` of shape [K, V]:

    H_t = diag(a_t) H_{t-1} + k_t v_t^T          o_t = H_t^T (scale * q_t)

``a_t`` is one scalar per head and step (Mamba-2 / SSD, RetNet) or one value per key channel (GLA;
Mamba-1 as heads = channels, K = d_state, V = 1, q = C_t, k = B_t, v = dt_t x_t). Every ``a_t`` in
[-1, 1] is allowed, in both modes; it is passed in log space with a sign (see ``lrnn.ops.decay``).
Neither ``q`` nor ``k`` is normalised here; ``scale`` multiplies ``q`` (default ``K ** -0.5``; pass 1.0
for Mamba-style SSMs). ``decay_recurrence`` also takes q and k with fewer heads than v, in groups
(Mamba-2's ``ngroups``: the heads of a group share its B and C); with a scalar decay the chunked form
then computes ``q k^T`` and the state terms once per group.
"""

from __future__ import annotations

import torch

from lrnn.ops import _checks
from lrnn.ops.decay import decay_values, prefix_decay, segment_decay, signs, suffix_decay
from lrnn.ops._chunking import (compute_dtype, default_batch_chunks, empty_sequence, heads_first, merge_chunks,
                                split_chunks, stack_chunks, to_dtype, unbind_chunks)
from lrnn.validation import check_flag

__all__ = ["decay_recurrence", "decay_step", "expand_groups"]

_LAYOUT_Q = "[batch, time, heads, key_dim]"
_LAYOUT_V = "[batch, time, heads, value_dim]"
_LAYOUT_Q_GROUPED = "[batch, time, groups, key_dim] (groups dividing the heads of v)"


def decay_recurrence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    decay_negative: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    mode: str = "chunk",
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``H_t = diag(a_t) H_{t-1} + k_t v_t^T``, ``o_t = H_t^T (scale q_t)`` over a sequence.

    Args:
        q, k: [B, T, G, K] with G dividing H: head h reads group ``h // (H // G)`` (G = H: one q and k per
            head; G < H: Mamba-2's groups, whose heads share B and C). v: [B, T, H, V].
        log_decay: ``log|a_t|`` (<= 0, ``-inf`` for a = 0), shape [B, T, H] (one decay per head) or
            [B, T, H, K] (one per key channel).
        decay_negative: bool, True where ``a_t < 0``; same shape as ``log_decay``. None: all a_t >= 0.
        scale: multiplies q; None means ``K ** -0.5``.
        initial_state: [B, H, K, V] or None (zeros).
        output_final_state: also return the state after the last step.
        mode: ``"recurrent"`` (a plain loop over time: the reference, and the O(1) decode step at T = 1)
            or ``"chunk"`` (the chunked parallel form; memory O(T * chunk_size) per head).
        chunk_size: tokens per chunk in ``"chunk"`` mode.

    Returns:
        ``(o, final_state)``: o is [B, T, H, V] in the dtype of ``v``; final_state is [B, H, K, V] in
        float32 (float64 for float64 inputs), or None unless ``output_final_state``.
    """
    _checks.check_mode(mode, chunk_size)
    _check(q, k, v, log_decay, decay_negative, scale, initial_state, grouped=True)
    out_dtype = v.dtype
    dtype = compute_dtype(q.dtype)
    scale = _checks.resolve_scale(scale, q)
    q, k, v, g = (t.to(dtype) for t in (q, k, v, log_decay))
    s = signs(decay_negative, g)
    state = None if initial_state is None else initial_state.to(dtype)
    if q.shape[1] == 0:  # an empty sequence leaves the state as it was
        o, state = empty_sequence(q, v, state)
    else:
        if scale != 1.0:  # Mamba-style callers pass 1.0: skip a full pass over q (maybe a stride-0 view)
            q = q * scale
        heads = v.shape[2]
        if mode == "recurrent":
            o, state = _recurrent(expand_groups(q, heads), expand_groups(k, heads), v, g, s, state)
        else:
            o, state = _chunked_any(q, k, v, g, s, state, chunk_size, output_final_state)
    return o.to(out_dtype), (state if output_final_state else None)


def expand_groups(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, G, K] -> [B, T, heads, K], head h reading group ``h // (heads // G)``: a view (stride 0 over
    the heads) when G is 1 or ``heads``, else a copy."""
    b, t, groups, d = x.shape
    if groups == heads:
        return x
    return x.unsqueeze(3).expand(b, t, groups, heads // groups, d).reshape(b, t, heads, d)


def decay_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    decay_negative: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    validate: bool = True,
    update_in_place: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of ``decay_recurrence`` in O(1): ``H = diag(a) H_prev + k v^T``, ``o = H^T (scale q)``.

    The decode step: equal to ``decay_recurrence(..., mode="recurrent", output_final_state=True)`` on a
    one-token sequence, without the sequence bookkeeping. Inputs may be broadcast views (e.g. heads
    sharing one group's q and k as a stride-0 ``expand``): the state update reads them as views, and
    the read-out's batched matmul makes at most one small [B, H, K] copy of q.

    Args:
        q, k: [B, 1, H, K]. v: [B, 1, H, V].
        log_decay: ``log|a|`` [B, 1, H] (one decay per head) or [B, 1, H, K] (per key channel).
        decay_negative: bool like ``log_decay``, True where ``a < 0``; None: all a >= 0.
        scale: multiplies q; None means ``K ** -0.5``.
        initial_state: [B, H, K, V], the state before this token, or None (zeros). Not modified, unless
            ``update_in_place``.
        validate: check every argument (shapes, dtypes, devices, value ranges) as the sequence ops do.
            False skips the checks, for callers whose inputs are right by construction (the mixers'
            decode steps): they cost ~20 us of Python per call on a CPU, ~2% of a Mamba-2 130M layer's
            decode step, and the value checks read the tensors (a device sync per call on a GPU).
        update_in_place: write the new state into ``initial_state`` (and return it) instead of a fresh
            tensor: a decode step then allocates no state-sized memory (on a CPU, a fresh [24, 128, 64]
            tensor per layer and token costs about as much as the update itself). Only where nothing else
            holds the old state (a cache, not a snapshot) and no autograd graph needs it; the state must
            already be in the compute dtype.

    Returns:
        ``(o, state)``: o [B, 1, H, V] in the dtype of ``v``; the new state [B, H, K, V] in float32
        (float64 for float64 inputs).
    """
    check_flag("validate", validate)
    check_flag("update_in_place", update_in_place)
    if validate:
        _checks.check_single_token("decay_step", q, "decay_recurrence")
        _check(q, k, v, log_decay, decay_negative, scale, initial_state)
    dtype = compute_dtype(q.dtype)
    if update_in_place and (initial_state is None or initial_state.dtype != dtype):
        raise ValueError(f"update_in_place needs an initial_state in the compute dtype {dtype}, got "
                         f"{None if initial_state is None else initial_state.dtype}")
    scale = _checks.resolve_scale(scale, q)
    # Heads-first views of the one token (transposes, not copies): a decode step is ~20 small ops, so
    # each avoided op and no-op dtype conversion shows in its time.
    k_col = to_dtype(k, dtype).permute(0, 2, 3, 1)  # [B, H, K, 1]
    v_row = to_dtype(v, dtype).transpose(1, 2)  # [B, H, 1, V]
    if initial_state is None:  # a zero state: the decay has nothing to act on
        state = k_col * v_row
    else:  # a fresh tensor, then updated in place: two passes over the state, the caller's left alone
        g = to_dtype(log_decay, dtype)
        a = decay_values(g, signs(decay_negative, g)).transpose(1, 2)  # [B, H, 1] or [B, H, 1, K]
        a = a.unsqueeze(-1) if a.ndim == 3 else a.transpose(-1, -2)  # [B, H, 1, 1] or [B, H, K, 1]
        state = initial_state.mul_(a) if update_in_place else to_dtype(initial_state, dtype) * a
        state.addcmul_(k_col, v_row)
    q_row = to_dtype(q, dtype).transpose(1, 2)  # [B, H, 1, K]
    if scale != 1.0:  # Mamba-style callers pass 1.0: skip a pass over q
        q_row = q_row * scale
    o = torch.matmul(q_row, state)  # [B, H, 1, V]
    return to_dtype(o.transpose(1, 2), v.dtype), state


def _check(q, k, v, log_decay, decay_negative, scale, initial_state, grouped: bool = False) -> None:
    """Check the inputs of the decay ops. ``grouped``: q and k may have G heads for any G dividing v's H
    (``decay_recurrence``), else they have v's heads."""
    _checks.check_scale(scale)
    layout_q = _LAYOUT_Q_GROUPED if grouped else _LAYOUT_Q
    _checks.check_tensor("q", q, 4, layout_q)
    b, t, groups, dk = q.shape
    _checks.check_tensor("k", k, 4, layout_q)
    _checks.check_shape("k", k, (b, t, groups, dk), layout_q)
    _checks.check_tensor("v", v, 4, _LAYOUT_V)
    h = v.shape[2] if grouped else groups
    _checks.check_shape("v", v, (b, t, h, v.shape[-1]), _LAYOUT_V)
    if groups != h and (groups == 0 or h % groups):
        raise ValueError(f"the heads of v ({h}) must be a multiple of the groups of q and k ({groups}): v of shape "
                         f"{tuple(v.shape)}, q of shape {tuple(q.shape)}")
    if not isinstance(log_decay, torch.Tensor) or not log_decay.is_floating_point():
        raise TypeError(f"log_decay must be a floating-point tensor, got "
                        f"{log_decay.dtype if isinstance(log_decay, torch.Tensor) else type(log_decay).__name__}")
    _checks.check_same_dtype_device({"q": q, "k": k, "v": v})
    _checks.check_same_dtype_device({"q": q, "log_decay": log_decay}, dtype=False)
    _checks.check_log_decay(log_decay, decay_negative, {
        "scalar": ((b, t, h), "[batch, time, heads]"),
        "per_channel": ((b, t, h, dk), "[batch, time, heads, key_dim]"),
    })
    _checks.check_state(initial_state, (b, h, dk, v.shape[-1]), "[batch, heads, key_dim, value_dim]", q)


def _recurrent(q, k, v, g, s, state):
    """The ground truth: one step at a time. q, k: [B,T,H,K]; v: [B,T,H,V]; g, s: [B,T,H(,K)]."""
    b, t, h, dk = q.shape
    if state is None:
        state = q.new_zeros(b, h, dk, v.shape[-1])
    a = decay_values(g, s)
    a = a.unsqueeze(-1) if a.ndim == 4 else a[..., None, None]  # [B,T,H,K,1] or [B,T,H,1,1]
    outs = []
    # unbind, not x[:, i]: indexing backward writes a full-size zero tensor per step (O(T^2) traffic).
    for a_i, q_i, k_i, v_i in zip(a.unbind(1), q.unbind(1), k.unbind(1), v.unbind(1)):
        state = a_i * state + k_i[..., :, None] * v_i[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q_i, state))
    return torch.stack(outs, dim=1), state


def _chunked_any(q, k, v, g, s, state, chunk_size, keep_state):
    """The chunked form, by decay layout and chunk schedule. q, k: [B, T, G, K]; v: [B, T, H, V].

    One scalar decay per head runs ``_chunked_grouped`` (q k^T once per group, no padding, no state
    work that is not needed) whenever the chunks run one at a time or there is only one chunk. Per-channel
    decays, and the all-chunks-at-once schedule (GPUs, small CPU chunks: ``default_batch_chunks``), run
    ``_chunked`` with q and k per head.
    """
    b, t, groups, dk = q.shape
    heads = v.shape[2]
    if g.ndim == 3:
        # the schedule is picked on a chunk of per-head q (a stride-0 view here), as _chunked picks it
        chunk = q[:, :chunk_size].unsqueeze(3).expand(-1, -1, -1, _heads_per_group(heads, groups), -1)
        if t <= chunk_size or not default_batch_chunks(chunk):
            return _chunked_grouped(q, k, v, g, s, state, chunk_size, keep_state)
    return _chunked(expand_groups(q, heads), expand_groups(k, heads), v, g, s, state, chunk_size)


def _chunked_grouped(q, k, v, g, s, state, chunk_size, keep_state):
    """The chunked form for one scalar decay per head, chunk by chunk, per group of heads.

    q, k: [B, T, G, K]; v: [B, T, H, V]; g, s: [B, T, H]; state [B, H, K, V] or None (zeros). Per chunk,
    with ``L`` the chunk's decays ``prod_{m=j+1..i} a_m`` (``segment_decay``), ``d_in`` / ``d_out`` the
    decays from the chunk start to i / from j to the chunk end, and ``a_C`` their product over the chunk:

        O = (Q K^T * L) V + diag(d_in) Q S            S <- a_C S + K^T diag(d_out) V

    ``Q K^T``, ``Q S`` and ``K^T (.)`` run once per group: the group's heads sit side by side in a state of
    [K, heads x V] (their own decays scale only the V side). Chunks are time slices (the last one
    shorter, nothing padded). No ``Q S`` term is formed while the state is zero, and no state after the
    last chunk unless ``keep_state``, so one chunk without states is just ``(Q K^T * L) V``.

    Returns ``(o [B, T, H, V], state [B, H, K, V] or None)``.
    """
    b, t, groups, dk = q.shape
    heads, dv = v.shape[2], v.shape[3]
    per_group = _heads_per_group(heads, groups)
    state = None if state is None else _heads_side_by_side(state, groups)  # [B, G, K, heads x V]
    outs = []
    for start in range(0, t, chunk_size):
        end = min(start + chunk_size, t)
        c = end - start
        q_n, k_n = q[:, start:end].transpose(1, 2), k[:, start:end].transpose(1, 2)  # [B, G, c, K]
        v_n, g_n = v[:, start:end], g[:, start:end]  # [B, c, H, V], [B, c, H]
        s_n = None if s is None else s[:, start:end]
        # (Q K^T * L) V, with L per head [B, H, c, c] and Q K^T per group [B, G, 1, c, c].
        decay = segment_decay(*[None if x is None else x.transpose(1, 2).unsqueeze(-1) for x in (g_n, s_n)])
        scores = decay.reshape(b, groups, per_group, c, c) * (q_n @ k_n.transpose(-1, -2)).unsqueeze(2)
        o = scores.reshape(b, heads, c, c) @ v_n.transpose(1, 2)  # [B, H, c, V]
        decay_in = None
        if state is not None:  # + diag(d_in) Q S: [B, G, c, heads x V], each head's rows scaled by its decay
            decay_in = prefix_decay(g_n, s_n)  # [B, c, H]
            inter = (q_n @ state).reshape(b, groups, c, per_group, dv) * _by_group(decay_in, groups)
            o = o + inter.transpose(2, 3).reshape(b, heads, c, dv)
        if end < t or keep_state:  # S <- a_C S + K^T diag(d_out) V
            weighted = (v_n * suffix_decay(g_n, s_n).unsqueeze(-1)).reshape(b, c, groups, per_group * dv)
            update = k_n.transpose(-1, -2) @ weighted.transpose(1, 2)  # [B, G, K, heads x V]
            if state is None:
                state = update
            else:
                chunk_decay = _by_group(decay_in[:, -1:], groups)  # a_C: [B, G, 1, heads per group, 1]
                state = (state.reshape(b, groups, dk, per_group, dv) * chunk_decay).reshape_as(update) + update
        outs.append(o)
    o = (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)).transpose(1, 2)  # [B, T, H, V]
    return o, (None if state is None else _heads_first_state(state, heads, dv))


def _heads_per_group(heads: int, groups: int) -> int:
    return heads // groups if groups else 1  # no groups: no heads either (checked)


def _by_group(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Per-head factors [B, c, H] -> [B, G, c, heads per group, 1], to scale [B, G, c, heads x V] rows."""
    b, c, heads = x.shape
    return x.reshape(b, c, groups, _heads_per_group(heads, groups), 1).transpose(1, 2)


def _heads_side_by_side(state: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, H, K, V] -> [B, G, K, (H / G) x V]: each group's heads next to each other along V."""
    b, heads, dk, dv = state.shape
    per_group = _heads_per_group(heads, groups)
    return state.reshape(b, groups, per_group, dk, dv).transpose(2, 3).reshape(b, groups, dk, per_group * dv)


def _heads_first_state(state: torch.Tensor, heads: int, dv: int) -> torch.Tensor:
    """The inverse of ``_heads_side_by_side``: [B, G, K, (H / G) x V] -> [B, H, K, V]."""
    b, groups, dk, _ = state.shape
    per_group = _heads_per_group(heads, groups)
    return state.reshape(b, groups, dk, per_group, dv).transpose(2, 3).reshape(b, heads, dk, dv)


def _chunked(q, k, v, g, s, state, chunk_size, batch_chunks=None):
    """Chunked form: exact intra-chunk attention plus a sequential pass of states across chunks.

    ``batch_chunks``: compute the state-independent per-chunk terms for all chunks at once (GPUs) or
    one chunk at a time inside the loop (CPUs: cache-sized temporaries). None picks by device and
    chunk size (``default_batch_chunks``).
    """
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    c = min(chunk_size, t)
    # Padding appends decay 1 (log 0, sign +1) and zero q, k, v: the state is unchanged by it.
    # A scalar decay [B, T, H] becomes a decay with one channel.
    chunks = [split_chunks(x, c) for x in (q, k, v, g)] + [split_chunks(s, c, value=1.0)]
    n_chunks = len(chunks[0])
    if batch_chunks is None:
        batch_chunks = default_batch_chunks(chunks[0][0])
    if batch_chunks:
        stacked = [stack_chunks(x) for x in chunks]
        per_chunk = unbind_chunks(_chunk_terms(*stacked))
        values = stacked[2].unbind(0)
    state = q.new_zeros(b * h, dk, dv) if state is None else state.reshape(b * h, dk, dv)
    outs = []
    for n in range(n_chunks):
        if batch_chunks:
            (o_intra, q_in, k_out, chunk_decay), v_n = [x[n] for x in per_chunk], values[n]
        else:
            q_n, k_n, v_n, g_n, s_n = [None if x is None else heads_first(x[n]) for x in chunks]
            o_intra, q_in, k_out, chunk_decay = _chunk_terms(q_n, k_n, v_n, g_n, s_n)
        outs.append(torch.baddbmm(o_intra, q_in, state))  # O = O_intra + Q_in S
        state = torch.baddbmm(chunk_decay * state, k_out.transpose(-1, -2), v_n)  # S <- A_C S + K_out^T V
    return merge_chunks(outs, b, h, t), state.reshape(b, h, dk, dv)


def _chunk_terms(q, k, v, g, s):
    """State-independent terms of a chunk (any leading dims; time at dim -2; g has D = 1 or K channels).

    Returns ``(o_intra, q_in, k_out, chunk_decay)``: the output from inside the chunk, q and k scaled by
    the decay from the chunk start / to the chunk end, and the chunk's total decay [..., D, 1].
    """
    decay_in = prefix_decay(g, s)  # prod_{m<=i} a_m within the chunk
    if g.shape[-1] == 1:
        scores = (q @ k.transpose(-1, -2)) * segment_decay(g, s).squeeze(-1)
    else:
        scores = _intra_scores_per_channel(q, k, g, s)
    k_out = k * suffix_decay(g, s)  # k_j * prod_{m>j} a_m
    return scores @ v, q * decay_in, k_out, decay_in[..., -1:, :].transpose(-1, -2)


def _largest_divisor_at_most(n: int, bound: int) -> int:
    return max(d for d in range(1, min(n, bound) + 1) if n % d == 0)


def _intra_scores_per_channel(q, k, g, s, sub_chunk: int = 16):
    """``A[i, j] = sum_d q_id k_jd prod_{m=j+1..i} a_md`` for j <= i, per chunk. q, k, g: [..., C, K].

    A full [C, C, K] decay tensor would cost C*K memory per token, so the chunk is cut into sub-chunks
    of c tokens: pairs inside one sub-chunk use the [c, c, K] decays; pairs across sub-chunks factor
    through the start of the query's sub-chunk p, ``prod_{j<m<=i} = prod_{start_p<=m<=i} *
    prod_{j<m<start_p}``, both factors bounded by 1 in magnitude (no exp(+G) overflow).
    """
    *lead, cc, dk = q.shape
    c = _largest_divisor_at_most(cc, sub_chunk)
    p = cc // c
    sub = lambda x: x.reshape(*lead, p, c, x.shape[-1])  # noqa: E731
    q_sub, k_sub, g_sub = sub(q), sub(k), sub(g)
    s_sub = None if s is None else sub(s)

    # Pairs inside a sub-chunk: [.., P, c, c, K] decays.
    diag = torch.einsum("...id,...jd,...ijd->...ij", q_sub, k_sub, segment_decay(g_sub, s_sub))

    # Pairs across sub-chunks (j before the start of p): query side decays from start_p to i,
    # key side from j+1 to start_p - 1, masked to j < start_p.
    q_in = q_sub * prefix_decay(g_sub, s_sub)  # [.., P, c, K]
    before = torch.arange(cc, device=q.device)[None, :] < (torch.arange(p, device=q.device)[:, None] * c)
    mask = before[:, :, None]  # [P, C, 1]: position m lies before sub-chunk p
    g_before = torch.where(mask, g.unsqueeze(-3), torch.zeros((), dtype=g.dtype, device=g.device))
    s_before = None if s is None else torch.where(mask, s.unsqueeze(-3), torch.ones((), dtype=s.dtype, device=s.device))
    k_out = k.unsqueeze(-3) * suffix_decay(g_before, s_before)  # [.., P, C, K]
    k_out = torch.where(mask, k_out, torch.zeros((), dtype=k.dtype, device=k.device))
    cross = q_in @ k_out.transpose(-1, -2)  # [.., P, c, C]

    eye = torch.eye(p, dtype=q.dtype, device=q.device)
    blocks = diag.unsqueeze(-2) * eye[:, None, :, None]  # [.., P, c, P, c], diag blocks on (p, p)
    return cross.reshape(*lead, cc, cc) + blocks.reshape(*lead, cc, cc)
