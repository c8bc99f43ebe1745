"""Delta rule: DeltaNet, Gated DeltaNet and DeltaProduct (n_h Householder steps per token).

Per head, with state ``H`` of shape [K, V], a decay (gate) ``a_t`` and ``n_h`` steps per token:

    H_{t,j} = a_t^[j=1] (I - b_{t,j} k_{t,j} k_{t,j}^T) H_{t,j-1} + b_{t,j} k_{t,j} v_{t,j}^T,  j = 1..n_h
    o_t = H_{t,n_h}^T (scale * q_t)

The transition ``I - b k k^T`` has eigenvalue ``1 - b ||k||^2`` along k and 1 elsewhere; with unit keys
and b in [0, 2] the eigenvalues lie in [-1, 1]. This op does not normalise: layers L2-normalise q and k
before calling it. ``scale`` multiplies q (default ``K ** -0.5``). The gate ``a_t`` is one scalar per
head and token, in [-1, 1], in log space with a sign (``lrnn.ops.decay``); it is applied once per token,
before the first Householder step.

Chunk mode uses the UT / WY form: inside a chunk, with ``L`` the segment products of the gate,
``A = strict_lower(diag(b) (L * K K^T))``, ``U = (I + A)^{-1} diag(b) (V - diag(gamma) K S_0)``, then
``O = diag(gamma) Q S_0 + (L * Q K^T) U`` and ``S = gamma_C S_0 + (K * L_C)^T U`` -- one unit lower
triangular solve per chunk. DeltaProduct runs as the delta rule on the flattened sequence of n_h*T
steps (gate on the first sub-step); the output is formed only after the last sub-step of each token.
"""

from __future__ import annotations

import torch

from lrnn.ops import _checks
from lrnn.ops._chunking import (compute_dtype, default_batch_chunks, empty_sequence, heads_first, merge_chunks,
                                split_chunks, stack_chunks, to_dtype, unbind_chunks)
from lrnn.ops.decay import decay_values, prefix_decay, segment_decay, signs, suffix_decay
from lrnn.ops.triangular import unit_lower_inverse
from lrnn.validation import check_flag, check_int

__all__ = ["delta_chunk_size", "delta_rule", "delta_step"]

_LAYOUT_Q = "[batch, time, heads, key_dim]"

# Measured on a CPU, one thread, fwd+bwd of the gated delta rule (ms): K = 32, B 256, T 40 -- C 8: 160,
# 16: 144, 32: 224, 64: 202; K = 64, B 4, T 2048 -- 531, 389, 658, 593; K = 128, B 2, T 2048 -- 461, 305,
# 191, 221. Per step the chunked form does about C (5K + 3V) + 6 K V multiply-adds plus the C x C inverse,
# so small heads want small chunks; see docs/benchmarks.md.
_SMALL_HEAD_CHUNK, _LARGE_HEAD_CHUNK, _SMALL_HEAD_MAX_KEY_DIM = 16, 64, 64


def delta_chunk_size(key_dim: int) -> int:
    """The chunk size ``delta_rule`` (and the DeltaNet-family layers) use when none is given.

    16 steps for heads with ``key_dim <= 64``, 64 above: the C-proportional work per step outweighs the
    state work for small heads (measurements above).
    """
    check_int("key_dim", key_dim, 0)
    return _SMALL_HEAD_CHUNK if key_dim <= _SMALL_HEAD_MAX_KEY_DIM else _LARGE_HEAD_CHUNK


def delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    decay_negative: torch.Tensor | None = None,
    *,
    num_householder: int = 1,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    mode: str = "chunk",
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the (gated) delta rule with ``num_householder`` steps per token.

    Args:
        q: [B, T, H, K].
        k: [B, T*n_h, H, K]; step j of token t at index ``t*n_h + j`` (n_h = num_householder).
        v: [B, T*n_h, H, V]. beta: [B, T*n_h, H], in [0, 2] ([0, 1] is the original DeltaNet range).
        log_decay: optional gate ``log|a_t|`` [B, T, H] (<= 0, -inf for a = 0); None: no gate.
        decay_negative: bool [B, T, H], True where ``a_t < 0``; None: all gates >= 0.
        num_householder: Householder steps per token (1: DeltaNet; >1: DeltaProduct).
        scale: multiplies q; None means ``K ** -0.5``.
        initial_state: [B, H, K, V] or None (zeros).
        output_final_state: also return the state after the last step.
        mode: ``"recurrent"`` (plain loop: the reference and the decode step) or ``"chunk"`` (UT form).
        chunk_size: steps per chunk in chunk mode, counted on the flattened n_h*T sub-steps (rounded down to
            a multiple of n_h, so a token never straddles two chunks); None: ``delta_chunk_size(key_dim)``.

    Returns:
        ``(o, final_state)``: o [B, T, H, V] in the dtype of v; final_state [B, H, K, V] in float32
        (float64 for float64 inputs) or None unless ``output_final_state``.
    """
    _check(q, k, v, beta, log_decay, decay_negative, num_householder, scale, initial_state)
    chunk_size = delta_chunk_size(q.shape[-1]) if chunk_size is None else chunk_size
    _checks.check_mode(mode, chunk_size)
    out_dtype = v.dtype
    dtype = compute_dtype(q.dtype)
    scale = _checks.resolve_scale(scale, q)
    q, k, v, beta = (t.to(dtype) for t in (q, k, v, beta))
    g = None if log_decay is None else log_decay.to(dtype)
    s = None if g is None else signs(decay_negative, g)
    state = None if initial_state is None else initial_state.to(dtype)
    if q.shape[1] == 0:  # an empty sequence leaves the state as it was
        o, state = empty_sequence(q, v, state)
    elif mode == "recurrent":
        o, state = _recurrent(q * scale, k, v, beta, g, s, state, num_householder)
    else:
        g, s = _spread_gate(g, s, num_householder)
        o, state = _chunked(q * scale, k, v, beta, g, s, state, chunk_size, query_every=num_householder)
    return o.to(out_dtype), (state if output_final_state else None)


def delta_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    decay_negative: torch.Tensor | None = None,
    *,
    num_householder: int = 1,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of ``delta_rule`` in O(1): the gate, then ``num_householder`` delta steps, then the output.

    ``H <- a H``; for j = 1..n_h: ``H <- H + b_j k_j (v_j - H^T k_j)^T``; ``o = H^T (scale q)``. Equal to
    ``delta_rule(..., mode="recurrent", output_final_state=True)`` on a one-token sequence.

    Args:
        q: [B, 1, H, K]. k: [B, n_h, H, K] (sub-step j at index j). v: [B, n_h, H, V].
        beta: [B, n_h, H] in [0, 2]. log_decay: optional gate ``log|a|`` [B, 1, H]; None: no gate.
        decay_negative: bool [B, 1, H], True where ``a < 0``; None: all gates >= 0.
        num_householder: n_h, the Householder steps per token. scale: multiplies q; None: ``K ** -0.5``.
        initial_state: [B, H, K, V], the state before this token, or None (zeros). Not modified.
        validate: check every argument (False: skip the checks; see ``decay_step``).

    Returns:
        ``(o, state)`` as ``decay_step`` returns them.
    """
    check_flag("validate", validate)
    if validate:
        _checks.check_single_token("delta_step", q, "delta_rule")
        _check(q, k, v, beta, log_decay, decay_negative, num_householder, scale, initial_state)
    out_dtype = v.dtype
    dtype = compute_dtype(q.dtype)
    scale = _checks.resolve_scale(scale, q)
    b, _, h, dk = q.shape
    state = q.new_zeros(b, h, dk, v.shape[-1], dtype=dtype) if initial_state is None else to_dtype(initial_state, dtype)
    if log_decay is not None:
        g = to_dtype(log_decay, dtype)
        a = decay_values(g, signs(decay_negative, g))  # [B, 1, H]
        state = a.transpose(1, 2).unsqueeze(-1) * state
    # Heads first, sub-steps on dim 2 (views): k [B, H, n_h, K], v [B, H, n_h, V], beta [B, H, n_h, 1].
    k, v = to_dtype(k, dtype).transpose(1, 2), to_dtype(v, dtype).transpose(1, 2)
    beta = to_dtype(beta, dtype).transpose(1, 2).unsqueeze(-1)
    for j in range(num_householder):
        k_j = k[:, :, j:j + 1]  # [B, H, 1, K]
        residual = v[:, :, j:j + 1] - torch.matmul(k_j, state)  # (v - H^T k)^T: [B, H, 1, V]
        # Out of place: autograd keeps the state this step read.
        state = torch.addcmul(state, k_j.transpose(-1, -2), beta[:, :, j:j + 1] * residual)
    o = torch.matmul(to_dtype(q, dtype).transpose(1, 2) * scale, state)  # [B, H, 1, V]
    return to_dtype(o.transpose(1, 2), out_dtype), state


def _check(q, k, v, beta, log_decay, decay_negative, num_householder, scale, initial_state):
    _checks.check_scale(scale)
    check_int("num_householder", num_householder, 1)
    _checks.check_tensor("q", q, 4, _LAYOUT_Q)
    b, t, h, dk = q.shape
    n = num_householder
    steps = f"[batch, time*num_householder, heads, key_dim] with num_householder={n}"
    _checks.check_tensor("k", k, 4, steps)
    _checks.check_shape("k", k, (b, t * n, h, dk), steps)
    _checks.check_tensor("v", v, 4, "[batch, time*num_householder, heads, value_dim]")
    _checks.check_shape("v", v, (b, t * n, h, v.shape[-1]), "[batch, time*num_householder, heads, value_dim]")
    _checks.check_tensor("beta", beta, 3, "[batch, time*num_householder, heads]")
    _checks.check_shape("beta", beta, (b, t * n, h), "[batch, time*num_householder, heads]")
    _checks.check_same_dtype_device({"q": q, "k": k, "v": v})
    _checks.check_same_dtype_device({"q": q, "beta": beta}, dtype=False)
    if log_decay is not None:
        _checks.check_tensor("log_decay", log_decay, 3, "[batch, time, heads]")
        _checks.check_same_dtype_device({"q": q, "log_decay": log_decay}, dtype=False)
    elif decay_negative is not None:
        raise ValueError("decay_negative was given without log_decay; pass the gate's log|a| as log_decay")
    if log_decay is not None:
        _checks.check_log_decay(log_decay, decay_negative, {"scalar": ((b, t, h), "[batch, time, heads]")})
    _checks.check_range("beta", beta, 0.0, 2.0, "eigenvalue 1 - beta of the Householder step in [-1, 1]")
    _checks.check_state(initial_state, (b, h, dk, v.shape[-1]), "[batch, heads, key_dim, value_dim]", q)


def _recurrent(q, k, v, beta, g, s, state, n_h):
    """The ground truth, one Householder step at a time. Shapes as in ``delta_rule``."""
    b, t, h, dk = q.shape
    if state is None:
        state = q.new_zeros(b, h, dk, v.shape[-1])
    a = None if g is None else decay_values(g, s)
    # unbind, not x[:, i]: indexing backward writes a full-size zero tensor per step (O(T^2) traffic).
    a_t = [None] * t if a is None else a.unbind(1)
    k_t, v_t, beta_t, q_t = k.unbind(1), v.unbind(1), beta.unbind(1), q.unbind(1)
    outs = []
    for i in range(t):
        if a_t[i] is not None:
            state = a_t[i][:, :, None, None] * state
        for j in range(i * n_h, (i + 1) * n_h):
            kj, bj = k_t[j], beta_t[j][:, :, None]
            residual = v_t[j] - torch.einsum("bhk,bhkv->bhv", kj, state)  # v - H^T k
            state = state + kj[..., :, None] * (bj * residual)[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t[i], state))
    return torch.stack(outs, dim=1), state


def _spread_gate(g, s, n_h):
    """Spread the per-token gate [B, T, H] over the n_h sub-steps [B, T*n_h, H]: ``a_t`` on the first, 1 after.

    g is ``log|a|`` (None: no gate); s the signs (None: all gates >= 0)."""
    if n_h == 1 or g is None:
        return g, s

    def spread(x, fill):
        out = x.new_full((x.shape[0], x.shape[1], n_h, *x.shape[2:]), fill)
        out[:, :, 0] = x
        return out.flatten(1, 2)

    return spread(g, 0.0), (None if s is None else spread(s, 1.0))


def _chunked(q, k, v, beta, g, s, state, chunk_size, batch_chunks=None, query_every=1):
    """UT-form chunked delta rule over [B, T, H, *] steps (one Householder step per position).

    ``query_every`` = n reads the output once per n steps, after the last of each group (DeltaProduct's
    tokens): q is [B, T/n, H, K] and the output [B, T/n, H, V]. Only those rows of ``Q K^T`` and
    ``Q S_0`` are formed, half the query-side work at n = 2; the chunk is rounded down to a multiple of
    n (at least n) so no token straddles two chunks.

    The per-chunk terms (triangular inverse, U, W) do not depend on the state. With ``batch_chunks``
    they are computed for all chunks at once (best on GPUs: few large kernels); otherwise inside the
    sequential loop, one chunk at a time, so temporaries stay cache-sized (2x faster on CPUs).
    None picks by device and chunk size (``default_batch_chunks``).
    """
    b, t, h, dk = k.shape
    dv = v.shape[-1]
    n = query_every
    c = max(n, min(chunk_size, t) // n * n)
    if batch_chunks is None:
        batch_chunks = default_batch_chunks(k[:, :c])
    # All chunks at once need one shape: the last is padded with steps of k = 0, beta = 0 (identity
    # transition) and gate 1, which leave the state unchanged. One at a time, the last is just shorter.
    pad = batch_chunks
    chunks = [split_chunks(q, c // n, pad=pad)] + [split_chunks(x, c, pad=pad) for x in (k, v, beta, g)]
    chunks.append(split_chunks(s, c, 1.0, pad=pad))
    n_chunks = len(chunks[1])
    if batch_chunks:
        per_chunk = unbind_chunks(_chunk_terms(*[stack_chunks(x) for x in chunks], query_every=n))
    state = k.new_zeros(b * h, dk, dv) if state is None else state.reshape(b * h, dk, dv)
    outs = []
    for i in range(n_chunks):
        if batch_chunks:
            u_in, w, q_start, qk, k_end, chunk_decay = [None if x is None else x[i] for x in per_chunk]
        else:
            u_in, w, q_start, qk, k_end, chunk_decay = _chunk_terms(
                *[None if x is None else heads_first(x[i]) for x in chunks], query_every=n)
        u = torch.baddbmm(u_in, w, state, alpha=-1.0)  # U = u_in - W S
        outs.append(torch.baddbmm(qk @ u, q_start, state))  # O = Q_start S + (L * Q K^T) U
        carried = state if chunk_decay is None else chunk_decay * state
        state = torch.baddbmm(carried, k_end.transpose(-1, -2), u)  # S <- gamma_C S + K_end^T U
    return merge_chunks(outs, b, h, q.shape[1]), state.reshape(b, h, dk, dv)


def _chunk_terms(q, k, v, beta, g, s, query_every=1):
    """State-independent terms of one chunk (any leading dims; time at dim -2).

    q has one row per ``query_every`` steps of k, read after the last step of its group.
    Returns ``(u_in, w, q_start, qk, k_end, chunk_decay)`` with ``U = u_in - W S_0``,
    ``O = q_start S_0 + qk U`` and ``S_C = chunk_decay S_0 + k_end^T U`` (chunk_decay None: no gate).
    """
    c = k.shape[-2]
    read = slice(query_every - 1, None, query_every)  # the steps after which q reads the state
    causal = torch.ones(c, c, dtype=torch.bool, device=k.device).tril()
    zero = torch.zeros((), dtype=k.dtype, device=k.device)
    kk = k @ k.transpose(-1, -2)
    qk = q @ k.transpose(-1, -2)  # [..., C/n, C]
    if g is None:
        qk = torch.where(causal[read], qk, zero)
        k_start, q_start, k_end, chunk_decay = k, q, k, None
    else:
        lower = segment_decay(g, s).squeeze(-1)  # [..., C, C]: prod_{j<m<=i} a_m, 0 above the diagonal
        gamma = prefix_decay(g, s)  # [..., C, 1]: prod_{m<=i} a_m
        kk, qk = kk * lower, qk * lower[..., read, :]
        k_start, q_start = k * gamma, q * gamma[..., read, :]
        k_end = k * suffix_decay(g, s)  # k_j * prod_{m>j} a_m
        chunk_decay = gamma[..., -1:, :]  # [..., 1, 1]
    a = torch.where(causal.tril(-1), beta * kk, zero)  # strict_lower(diag(b) (L * K K^T))
    # T diag(b) with T = (I + A)^{-1}; then U = T diag(b) V and W = T diag(b gamma) K.
    t_beta = unit_lower_inverse(a) * beta.transpose(-1, -2)
    return t_beta @ v, t_beta @ k_start, q_start, qk, k_end, chunk_decay
