"""The decay recurrence over a token tree (tree verification for Mamba-2 / SSD, GLA, Mamba-1, RetNet).

Each node m runs ``decay_recurrence`` along its root-to-node path from the committed state ``S_0``:

    o_m = gamma_m (scale q_m)^T S_0 + sum_k M[m, k] L[m, k] (scale q_m . k_k) v_k

with ``M`` the ancestor mask, ``L[m, k]`` the decay product over the nodes strictly after k up to m on
m's path and ``gamma_m`` the product over the whole path (``lrnn.ops.tree.path_decays``: log-sums over
the masked segment plus a sign parity, so decays in [-1, 1] work). Per-channel decays put the product
inside the key-channel sum. The whole tree is one chunk of the chunked algorithm: memory O(N^2) per head
for a scalar decay, O(N^2 K) per key channel. The state after a node,
``S_m = gamma_m S_0 + sum_k M[m, k] L[m, k] k_k v_k^T``, is computed on demand for one node per sequence
(e.g. the last accepted one); per-node states are never stored. ``mode="recurrent"`` instead runs
``decay_step`` over the tree one depth level at a time (memory: the states of two levels).
"""

from __future__ import annotations

import torch

from lrnn.ops import _checks
from lrnn.ops import diagonal
from lrnn.ops.diagonal import decay_step
from lrnn.ops._chunking import compute_dtype
from lrnn.ops.decay import signs
from lrnn.ops.tree import (TokenTree, TreeNodeStates, fold_level, path_decays, state_at, strict_mask,
                           tree_and_rows, walk_levels)

__all__ = ["tree_decay_recurrence", "tree_decay_state"]


def tree_decay_recurrence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    decay_negative: torch.Tensor | None = None,
    *,
    parents: torch.Tensor | TokenTree,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    state_node: int | torch.Tensor | None = None,
    mode: str = "chunk",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``decay_recurrence`` over a token tree: every node's output, as if its root-to-node path had run.

    Args:
        q, k: [B, N, H, K]; v: [B, N, H, V] (N tree nodes in topological order on the time axis).
        log_decay: ``log|a|`` [B, N, H] (one decay per head) or [B, N, H, K] (per key channel).
        decay_negative: bool like ``log_decay``, True where ``a < 0``; None: all decays >= 0.
        parents: [N] parent indices (-1: child of the committed state), shared by the batch, or a
            ``TokenTree`` from ``token_tree(parents)``.
        scale: multiplies q; None means ``K ** -0.5``.
        initial_state: [B, H, K, V], the committed state (the tree's root), or None (zeros).
        state_node: also return the state after this node: an int, or a LongTensor [B] (one node per
            sequence); -1 is the root. ``"any"`` (chunk mode): a ``TreeNodeStates`` instead, whose
            ``state_after(node)`` gives the state after a node chosen later (speculative decoding's commit).
            None: no state.
        mode: ``"chunk"`` (the whole tree at once with the ancestor mask: memory O(N^2) per head, O(N^2 K)
            per channel) or ``"recurrent"`` (``decay_step`` over the tree one depth level at a time:
            memory O(widest level * K * V) per head; the choice for per-channel decays with many heads,
            e.g. Mamba-1).

    Returns:
        ``(o, state)``: o [B, N, H, V] in the dtype of v; state [B, H, K, V] in float32 (float64 for
        float64 inputs) -- a ``TreeNodeStates`` for ``state_node="any"`` -- or None unless ``state_node``
        is given.
    """
    _checks.check_mode(mode, 1)
    diagonal._check(q, k, v, log_decay, decay_negative, scale, initial_state)
    scale = _checks.resolve_scale(scale, q)
    tree, rows = tree_and_rows(parents, state_node, q, allow_any=True)
    if isinstance(rows, str) and mode == "recurrent":
        raise ValueError('state_node="any" (a TreeNodeStates) needs mode="chunk": the recurrent mode keeps no '
                         'per-node terms')
    dtype = compute_dtype(q.dtype)
    if mode == "recurrent" and tree.num_nodes > 0:
        return _by_levels(q, k, v, log_decay, decay_negative, tree, scale, initial_state, rows, dtype)
    q_h, k_h, v_h, g_h, s_h, state = _heads_first(q, k, v, log_decay, decay_negative, initial_state, dtype)
    strict = tree.derived("strict", lambda t: strict_mask(t.mask))
    segment, gamma = path_decays(tree.mask, g_h, s_h, strict)  # [B, H, N, N, D], [B, H, N, D]
    if scale != 1.0:
        q_h = q_h * scale
    if g_h.shape[-1] == 1:
        scores = (q_h @ k_h.transpose(-1, -2)) * segment.squeeze(-1)
    else:  # the per-channel decay sits inside the sum over key channels
        scores = torch.einsum("bhid,bhjd,bhijd->bhij", q_h, k_h, segment)
    o = scores @ v_h
    if state is not None:
        o = o + (q_h * gamma) @ state
    if isinstance(rows, str):  # "any": the state after any node, later
        node_state = TreeNodeStates(k_h, v_h, segment, gamma, state)
    else:
        node_state = None if rows is None else state_at(rows, k_h, v_h, segment, gamma, state)
    return o.transpose(1, 2).to(v.dtype), node_state


def tree_decay_state(
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    decay_negative: torch.Tensor | None = None,
    *,
    parents: torch.Tensor | TokenTree,
    node: int | torch.Tensor,
    initial_state: torch.Tensor | None = None,
    mode: str = "chunk",
) -> torch.Tensor:
    """The state after ``node`` of a tree run by ``tree_decay_recurrence`` (no queries needed): the
    committed state to carry on from once ``node``'s path is accepted.

    Args as in ``tree_decay_recurrence`` (``mode="recurrent"`` computes the unused outputs with k as the
    query); ``node`` is an int or a LongTensor [B] (one per sequence),
    -1 for the root (then the state is ``initial_state``).

    Returns:
        [B, H, K, V] in float32 (float64 for float64 inputs).
    """
    _checks.check_mode(mode, 1)
    _checks.check_tensor("k", k, 4, "[batch, nodes, heads, key_dim]")
    diagonal._check(k, k, v, log_decay, decay_negative, 1.0, initial_state)  # k stands in for the queries
    tree, rows = tree_and_rows(parents, node, k)
    dtype = compute_dtype(k.dtype)
    if mode == "recurrent" and tree.num_nodes > 0:
        return _by_levels(k, k, v, log_decay, decay_negative, tree, 1.0, initial_state, rows, dtype)[1]
    _, k_h, v_h, g_h, s_h, state = _heads_first(k, k, v, log_decay, decay_negative, initial_state, dtype)
    segment, gamma = path_decays(tree.mask, g_h, s_h, tree.derived("strict", lambda t: strict_mask(t.mask)))
    return state_at(rows, k_h, v_h, segment, gamma, state)


def _heads_first(q, k, v, log_decay, decay_negative, initial_state, dtype):
    """Cast to the compute dtype and lay out heads first: q, k [B, H, N, K], v [B, H, N, V], the decay
    and its signs [B, H, N, D] (D = 1 or K), the state [B, H, K, V] or None."""
    q, k, v, g = (x.to(dtype).transpose(1, 2) for x in (q, k, v, log_decay))
    s = None if decay_negative is None else signs(decay_negative.transpose(1, 2), g)
    if g.ndim == 3:  # one decay per head: a decay with a single channel
        g = g.unsqueeze(-1)
        s = None if s is None else s.unsqueeze(-1)
    state = None if initial_state is None else initial_state.to(dtype)
    return q, k, v, g, s, state


def _by_levels(q, k, v, log_decay, decay_negative, tree, scale, initial_state, rows, dtype):
    """``decay_step`` over the tree, one depth level at a time (the level's nodes folded into the batch)."""
    b, _, h, dk = q.shape
    state = q.new_zeros(b, h, dk, v.shape[-1], dtype=dtype) if initial_state is None else initial_state.to(dtype)

    def step(nodes, parent_states):
        inputs = (fold_level(x, nodes, 1) for x in (q, k, v, log_decay, decay_negative))
        return decay_step(*inputs, scale=scale, initial_state=parent_states, validate=False)

    return walk_levels(tree, step, state, rows)
