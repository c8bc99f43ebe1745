"""The S4D recurrence over a token tree (tree verification for the linear time-invariant diagonal SSM).

S4D is time-invariant, so along node m's root-to-node path (depth d_m, the number of strict ancestors)
the output and the state after m depend on the path only through the depth differences:

    y_m = sum_k M[m, k] K_{d_m - d_k} u_k + 2 Re(sum_j C_j Abar_j^(d_m + 1) x0_j) + D u_m
    x_m = Abar^(d_m + 1) x0 + sum_k M[m, k] Abar^(d_m - d_k) Bbar u_k

with ``M`` the ancestor-or-self mask, ``K_l = 2 Re(sum_j C_j Bbar_j Abar_j^l)`` the convolution kernel of
``s4d_scan`` and ``x0`` the committed state. Along a path the lags d_m - d_k are 0..d_m, once each, so the
tree pass gathers each node's path inputs by lag (a 0/1 table [N, L, N] built once per tree, L the deepest
path's length) and weighs them with the L kernel values: O(B N L H) plus L complex powers per mode, where
running each node's path would cost a forward per node. The state after a node is computed on demand for
one node per sequence (``tree_s4d_state``: the accepted node of speculative decoding), never for all nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrnn.ops import s4d
from lrnn.ops.tree import TokenTree, tree_and_rows

__all__ = ["S4DTreeStates", "tree_s4d_scan", "tree_s4d_state"]


def tree_s4d_scan(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, dt: torch.Tensor,
                  D: torch.Tensor | None = None, discretization: str = "zoh", *,
                  parents: torch.Tensor | TokenTree, initial_state: torch.Tensor | None = None,
                  state_node: int | torch.Tensor | str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | S4DTreeStates | None]:
    """``s4d_scan`` over a token tree: every node's output, as if its root-to-node path had run.

    Args:
        u: [B, N, H] (N tree nodes in topological order on the time axis).
        A, B, C: complex [H, M]; dt [H] > 0; D [H] or None; discretization "zoh" or "bilinear" (as
            ``s4d_scan``).
        parents: [N] parent indices (-1: child of the committed state), shared by the batch, or a
            ``TokenTree`` from ``token_tree(parents)``.
        initial_state: complex [B, H, M], the committed state (the tree's root), or None (zeros).
        state_node: also return the state after this node: an int, or a LongTensor [B] (one node per
            sequence); -1 is the root. ``"any"``: an ``S4DTreeStates`` instead, whose ``state_after(m)``
            gives the state after any node later from what the pass computed (speculative decoding's
            commit, once the accepted node is known). None: no state.

    Returns:
        ``(y, state)``: y [B, N, H] in u's dtype; state complex [B, H, M] (complex64, complex128 for
        float64 inputs) -- an ``S4DTreeStates`` for ``state_node="any"`` -- or None unless ``state_node``
        is given.
    """
    s4d._check_inputs(u, A, B, C, dt, D, initial_state, None, "chunk", discretization)
    tree, rows = tree_and_rows(parents, state_node, u, allow_any=True)
    log_abar, bbar, C, x0, uw = s4d.discretized(u, A, B, C, dt, discretization, initial_state)
    depths = tree.depths
    longest = int(depths.max()) + 1 if tree.num_nodes else 0  # the deepest path's length
    powers = s4d.vandermonde(log_abar, longest + 1)  # Abar^l for l = 0..longest, [H, M, longest + 1]
    # K_l = 2 Re(sum_j C_j Bbar_j Abar_j^l) for the lags l < longest, [H, longest] (s4d_kernel's values; its
    # blocked powers pay off for long kernels, and these few powers are needed for the free response anyway).
    # Elementwise products and sums over the modes: as einsums these ran as H tiny matrix products.
    kernel = 2.0 * ((C * bbar)[..., None] * powers[..., :longest]).real.sum(1)
    # y_m = sum_l K_l u(the node l steps before m on its path): the inputs gathered by lag, [B, N, L, H].
    by_lag = torch.einsum("mlk,bkh->bmlh", _lag_select(tree, uw.dtype), uw)
    y = (by_lag * kernel.t()).sum(2)
    if x0 is not None and tree.num_nodes:
        # The free response depends on the depth only: 2 Re(sum_j C_j Abar_j^(l + 1) x0_j) for each depth l.
        free = ((C[..., None] * powers[..., 1:])[None] * x0[..., None]).real.sum(2)  # [B, H, L]
        y = y + 2.0 * free.transpose(1, 2)[:, depths]
    if D is not None:
        y = y + uw * D.to(uw.dtype)
    if isinstance(rows, str):  # "any": the state after any node, later
        return y.to(u.dtype), S4DTreeStates(tree, uw, bbar, x0, powers)
    state = None if rows is None else _state_at(rows, tree, uw, bbar, x0, powers)
    return y.to(u.dtype), state


def tree_s4d_state(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, dt: torch.Tensor,
                   discretization: str = "zoh", *, parents: torch.Tensor | TokenTree,
                   node: int | torch.Tensor, initial_state: torch.Tensor | None = None) -> torch.Tensor:
    """The state after ``node`` of a tree run by ``tree_s4d_scan`` (no C or D needed): the committed state
    to carry on from once ``node``'s path is accepted.

    Args as in ``tree_s4d_scan``; ``node`` is an int or a LongTensor [B] (one per sequence), -1 for the
    root (then the state is ``initial_state``, zeros if None).

    Returns:
        complex [B, H, M] (complex64, complex128 for float64 inputs).
    """
    s4d._check_inputs(u, A, B, B, dt, None, initial_state, None, "chunk", discretization)  # B stands in for C
    tree, rows = tree_and_rows(parents, node, u)
    log_abar, bbar, _, x0, uw = s4d.discretized(u, A, B, B, dt, discretization, initial_state)
    longest = int(tree.depths.max()) + 1 if tree.num_nodes else 0
    return _state_at(rows, tree, uw, bbar, x0, s4d.vandermonde(log_abar, longest + 1))


@dataclass
class S4DTreeStates:
    """The state after any node of a ``tree_s4d_scan`` pass, on demand (``state_node="any"``): the pass's
    discretised inputs and powers of Abar, so that once a node is accepted its state is a gather by lag and
    one contraction, with no discretisation or exponential taken again. u [B, N, H] real (compute dtype);
    Bbar [H, M]; initial_state [B, H, M] or None; powers = Abar^l for l = 0..L, [H, M, L + 1] (L = the
    deepest path's length)."""

    tree: TokenTree
    u: torch.Tensor
    bbar: torch.Tensor
    initial_state: torch.Tensor | None
    powers: torch.Tensor

    def state_after(self, node: int | torch.Tensor) -> torch.Tensor:
        """The state after ``node`` (an int, or a LongTensor [B]; -1: the committed state, zeros if None):
        complex [B, H, M]."""
        _, rows = tree_and_rows(self.tree, node, self.u)
        return _state_at(rows, self.tree, self.u, self.bbar, self.initial_state, self.powers)


def _state_at(rows: torch.Tensor, tree: TokenTree, u: torch.Tensor, bbar: torch.Tensor,
              x0: torch.Tensor | None, powers: torch.Tensor) -> torch.Tensor:
    """``x_m = Abar^(d_m + 1) x0 + sum_k M[m, k] Abar^(d_m - d_k) Bbar u_k`` for m = rows[b] (-1: x0).

    The lags d_m - d_k along m's path are 0..d_m, once each: the path's inputs are gathered by lag
    ([B, L, H], L = the deepest path's length) and contracted with the powers of Abar, so only L + 1 complex
    powers per mode are needed (an exponential per node and mode would cost more than the whole rest), and
    ``Abar^(d_m + 1)`` for the committed state is one of them.
    rows [B]; u [B, N, H] real; Bbar [H, M]; x0 [B, H, M] or None; powers = Abar^l for l = 0..L,
    [H, M, L + 1]. Returns [B, H, M].
    """
    b, n, h = u.shape
    root = rows < 0
    row = rows.clamp(min=0)
    state = torch.zeros(b, *bbar.shape, dtype=bbar.dtype, device=u.device)
    steps = torch.zeros_like(rows)  # Abar^0 = 1 at the root
    if n:
        select = _lag_select(tree, u.dtype)[row] * (~root).to(u.dtype)[:, None, None]  # [B, L, N]; 0 at the root
        path_inputs = torch.einsum("blk,bkh->blh", select, u)  # the input l steps before the node, [B, L, H]
        # sum_l Abar^l in_l by Horner's rule, (in_{L-1} Abar + in_{L-2}) Abar + ... + in_0: L multiply-adds
        # on [B, H, M] (a row with a shorter path has zeros at the deeper lags, which add nothing). As a
        # contraction with the powers it ran as H tiny matrix products, 3-4x slower at decoding sizes.
        abar = powers[..., 1]
        summed = torch.zeros_like(state)
        for lag in reversed(range(path_inputs.shape[1])):
            summed = summed * abar + path_inputs[:, lag, :, None]
        state = bbar * summed
        steps = torch.where(root, steps, tree.depths[row] + 1)
    if x0 is not None:  # Abar^(d_m + 1) x0, a power the pass took (d_m + 1 <= L)
        state = state + powers.permute(2, 0, 1)[steps] * x0
    return state


def _lag_select(tree: TokenTree, dtype: torch.dtype) -> torch.Tensor:
    """``P[m, l, k] = 1`` iff k is the node l steps before m on m's path (d_m - d_k = l, k on the path):
    [N, L, N] in ``dtype`` (L = the deepest path's length), built once per tree and dtype."""
    def build(tree: TokenTree) -> torch.Tensor:
        longest = int(tree.depths.max()) + 1 if tree.num_nodes else 0
        lag = tree.depths[:, None] - tree.depths[None, :]  # [N, N]
        steps = torch.arange(longest, device=lag.device)
        return (tree.mask[:, None, :] & (lag[:, None, :] == steps[None, :, None])).to(dtype)
    return tree.derived(("s4d_lag_select", dtype), build)
