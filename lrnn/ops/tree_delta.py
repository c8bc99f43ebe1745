"""The delta rule over a token tree (tree verification for DeltaNet, Gated DeltaNet and DeltaProduct).

DeltaProduct's n_h Householder steps per token become a chain of n_h sub-nodes per tree node (the gate
on the first, the query on the last), so the tree of N tokens is a tree of N*n_h single steps with the
ancestor mask ``M``. Along any path the chunked UT form of ``delta_rule`` holds; on the tree it reads

    (I + A) U = diag(b) (V - diag(gamma) K S_0),   A[i, j] = M[i, j] [j != i] b_i L[i, j] (k_i . k_j)
    o_m = gamma_m (scale q_m)^T S_0 + sum_j M[m, j] L[m, j] (scale q_m . k_j) u_j

where ``L[i, j]`` is the gate product over the nodes strictly after j up to i on i's path and ``gamma_i``
the product over the whole path (``lrnn.ops.tree.path_decays``). Row i of the system involves only i's
ancestors, so its solution ``u_i`` is the value the sequential run along i's path would produce; and ``A``
is strictly lower triangular in topological order, so the unit-triangular solve of ``delta_rule``
(``lrnn.ops.triangular``) applies unchanged. The whole tree is one chunk: memory O((N n_h)^2) per head.
The state after a node, ``S_m = gamma_m S_0 + sum_j M[m, j] L[m, j] k_j u_j^T``, is computed on demand.
``mode="recurrent"`` instead runs ``delta_step`` over the tree one depth level at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lrnn.ops import _checks
from lrnn.ops import delta
from lrnn.ops._chunking import compute_dtype
from lrnn.ops.decay import signs
from lrnn.ops.delta import delta_step
from lrnn.ops.tree import (TokenTree, TreeNodeStates, fold_level, path_decays, state_at, strict_mask,
                           tree_and_rows, walk_levels)
from lrnn.ops.triangular import unit_lower_inverse

__all__ = ["tree_delta_rule", "tree_delta_state"]


def tree_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    decay_negative: torch.Tensor | None = None,
    *,
    parents: torch.Tensor | TokenTree,
    num_householder: int = 1,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    state_node: int | torch.Tensor | None = None,
    mode: str = "chunk",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``delta_rule`` over a token tree: every node's output, as if its root-to-node path had run.

    Args:
        q: [B, N, H, K] (N tree nodes in topological order on the time axis).
        k: [B, N*n_h, H, K]; step j of node m at index ``m*n_h + j`` (as in ``delta_rule``).
        v: [B, N*n_h, H, V]. beta: [B, N*n_h, H] in [0, 2].
        log_decay: optional gate ``log|a|`` [B, N, H]; None: no gate.
        decay_negative: bool [B, N, H], True where ``a < 0``; None: all gates >= 0.
        num_householder: n_h, Householder steps per token (1: DeltaNet; > 1: DeltaProduct).
        parents, scale, initial_state, state_node: as in ``tree_decay_recurrence``.
        mode: ``"chunk"`` (the tree UT system, memory O((N n_h)^2) per head) or ``"recurrent"``
            (``delta_step`` over the tree one depth level at a time).

    Returns:
        ``(o, state)``: o [B, N, H, V] in the dtype of v; state [B, H, K, V] in float32 (float64 for
        float64 inputs) -- a ``TreeNodeStates`` for ``state_node="any"`` (chunk mode) -- or None unless
        ``state_node`` is given.
    """
    _checks.check_mode(mode, 1)
    delta._check(q, k, v, beta, log_decay, decay_negative, num_householder, scale, initial_state)
    scale = _checks.resolve_scale(scale, q)
    tree, rows = tree_and_rows(parents, state_node, q, allow_any=True)
    if isinstance(rows, str) and mode == "recurrent":
        raise ValueError('state_node="any" (a TreeNodeStates) needs mode="chunk": the recurrent mode keeps no '
                         'per-node terms')
    dtype = compute_dtype(q.dtype)
    if mode == "recurrent" and tree.num_nodes > 0:
        return _by_levels(q, k, v, beta, log_decay, decay_negative, tree, num_householder, scale, initial_state,
                          rows, dtype)
    k_h, u, segment, gamma, state = _solve(k, v, beta, log_decay, decay_negative, tree, num_householder,
                                           initial_state, dtype)
    last = tree.derived(("last_substep", num_householder),  # where each query sits
                        lambda t: _last_step(torch.arange(t.num_nodes, device=t.mask.device), num_householder))
    q_h = q.to(dtype).transpose(1, 2) * scale
    o = ((q_h @ k_h.transpose(-1, -2)) * segment[:, :, last, :, 0]) @ u
    if state is not None:
        o = o + (q_h if gamma is None else q_h * gamma[:, :, last]) @ state
    node_state = None
    if isinstance(rows, str):  # "any": the state after any node, later
        node_state = TreeNodeStates(k_h, u, segment, gamma, state, num_householder)
    elif rows is not None:
        node_state = state_at(_last_step(rows, num_householder), k_h, u, segment, gamma, state)
    return o.transpose(1, 2).to(v.dtype), node_state


def tree_delta_state(
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    decay_negative: torch.Tensor | None = None,
    *,
    parents: torch.Tensor | TokenTree,
    node: int | torch.Tensor,
    num_householder: int = 1,
    initial_state: torch.Tensor | None = None,
    mode: str = "chunk",
) -> torch.Tensor:
    """The state after ``node`` of a tree run by ``tree_delta_rule`` (no queries needed): the committed
    state to carry on from once ``node``'s path is accepted.

    Args as in ``tree_delta_rule`` (``mode="recurrent"`` computes the unused outputs with the last
    step's key as the query); ``node`` is an int or a LongTensor [B] (one per sequence), -1 for
    the root (then the state is ``initial_state``).

    Returns:
        [B, H, K, V] in float32 (float64 for float64 inputs).
    """
    _checks.check_mode(mode, 1)
    _checks.check_tensor("k", k, 4, "[batch, nodes*num_householder, heads, key_dim]")
    per_token = num_householder if isinstance(num_householder, int) and num_householder >= 1 else 1
    queries = k[:, per_token - 1::per_token]  # stands in for q (each node's last key; outputs are unused)
    delta._check(queries, k, v, beta, log_decay, decay_negative, num_householder, 1.0, initial_state)
    tree, rows = tree_and_rows(parents, node, queries)
    if mode == "recurrent" and tree.num_nodes > 0:
        return _by_levels(queries, k, v, beta, log_decay, decay_negative, tree, num_householder, 1.0,
                          initial_state, rows, compute_dtype(k.dtype))[1]
    k_h, u, segment, gamma, state = _solve(k, v, beta, log_decay, decay_negative, tree, num_householder,
                                           initial_state, compute_dtype(k.dtype))
    return state_at(_last_step(rows, num_householder), k_h, u, segment, gamma, state)


def _solve(k, v, beta, log_decay, decay_negative, tree: TokenTree, n_h: int, initial_state, dtype):
    """Solve the tree UT system over the N*n_h sub-steps.

    Returns ``(k, u, segment, gamma, state)``, heads first: k [B, H, F, K], u [B, H, F, V] (F = N*n_h),
    the gate products along paths ``segment`` [B, H, F, F, 1] (the 0/1 ancestor mask without a gate),
    the path gates ``gamma`` [B, H, F, 1] or None, and the committed state [B, H, K, V] or None.
    """
    mask = tree.derived(("substep_mask", n_h), lambda t: _substep_mask(t.mask, n_h))
    strict = tree.derived(("substep_strict", n_h), lambda t: strict_mask(_substep_mask(t.mask, n_h)))
    k_h, v_h = k.to(dtype).transpose(1, 2), v.to(dtype).transpose(1, 2)
    beta_h = beta.to(dtype).transpose(1, 2).unsqueeze(-1)  # [B, H, F, 1]
    state = None if initial_state is None else initial_state.to(dtype)
    if log_decay is None:
        segment, gamma = mask.to(dtype)[None, None, :, :, None].expand(*k_h.shape[:2], -1, -1, 1), None
    else:
        g = _on_first_substep(log_decay.to(dtype), n_h, 0.0)
        s = None if decay_negative is None else _on_first_substep(signs(decay_negative, g), n_h, 1.0)
        segment, gamma = path_decays(mask, g, s, strict)
    kk = (k_h @ k_h.transpose(-1, -2)) * segment.squeeze(-1)
    a = torch.where(strict, beta_h * kk, torch.zeros((), dtype=dtype, device=k.device))
    t_beta = unit_lower_inverse(a) * beta_h.transpose(-1, -2)  # (I + A)^{-1} diag(b)
    if state is None:
        u = t_beta @ v_h
    else:
        u = t_beta @ (v_h - (k_h if gamma is None else k_h * gamma) @ state)
    return k_h, u, segment, gamma, state


def _substep_mask(mask: torch.Tensor, n_h: int) -> torch.Tensor:
    """The ancestor mask of the sub-step tree [N*n_h, N*n_h]: sub-step j of node m sees every sub-step of
    m's strict ancestors and sub-steps 0..j of m itself."""
    if n_h == 1:
        return mask
    n = mask.shape[0]
    strict = (mask & ~torch.eye(n, dtype=torch.bool, device=mask.device)).float()
    block = torch.ones(n_h, n_h, device=mask.device)
    own = torch.kron(torch.eye(n, device=mask.device), block.tril())
    return (torch.kron(strict, block) + own) > 0


def _on_first_substep(x: torch.Tensor, n_h: int, fill: float) -> torch.Tensor:
    """A per-token gate [B, N, H] on the first of each token's n_h sub-steps, heads first: [B, H, N*n_h, 1];
    the other sub-steps get ``fill`` (log 0 = gate 1, or sign +1)."""
    x = x.transpose(1, 2).unsqueeze(-1)  # [B, H, N, 1]
    return F.pad(x, (0, n_h - 1), value=fill).flatten(2).unsqueeze(-1)


def _last_step(rows: torch.Tensor, n_h: int) -> torch.Tensor:
    """Node indices [B] -> the index of their last sub-step (-1, the root, stays -1)."""
    return torch.where(rows < 0, rows, rows * n_h + (n_h - 1))


def _by_levels(q, k, v, beta, log_decay, decay_negative, tree, n_h, scale, initial_state, rows, dtype):
    """``delta_step`` over the tree, one depth level at a time (the level's nodes folded into the batch)."""
    b, _, h, dk = q.shape
    state = q.new_zeros(b, h, dk, v.shape[-1], dtype=dtype) if initial_state is None else initial_state.to(dtype)
    substep = torch.arange(n_h, device=q.device)

    def step(nodes, parent_states):
        steps = (nodes[:, None] * n_h + substep).flatten()  # the level's sub-steps, n_h per node in a row
        q_l, g_l, negative_l = (fold_level(x, nodes, 1) for x in (q, log_decay, decay_negative))
        k_l, v_l, beta_l = (fold_level(x, steps, n_h) for x in (k, v, beta))
        return delta_step(q_l, k_l, v_l, beta_l, g_l, negative_l, num_householder=n_h, scale=scale,
                          initial_state=parent_states, validate=False)

    return walk_levels(tree, step, state, rows)
