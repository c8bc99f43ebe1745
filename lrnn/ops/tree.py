"""Token trees for speculative decoding: parent indices, the ancestor mask, and decays along tree paths.

A tree of N draft tokens hangs off the committed state (the "root", which is not a node). It is given by
``parents`` [N] (int64): ``parents[i]`` is the node before node i on its path, or -1 when node i follows
the committed state directly; nodes come in topological order (``parents[i] < i``). Several root
children (a forest) are allowed. A batch of B sequences verifies B trees of one shape: one ``parents``
vector is shared across the batch, while the tokens and states differ.

The tree ops replace the causal mask of a sequence op by the ancestor mask

    M[m, k] = 1  iff  k == m or k is an ancestor of m,

so each node sees exactly its root-to-node path, as if that path had been run as a sequence. ``M`` is
lower triangular (topological order), so everything that relies on causality (the unit-triangular solve
of the delta rule) carries over.

Decays along paths: a segment product ``prod a_j`` over the nodes j strictly after k up to m on m's path
is ``exp(seg[m, k]) * P_m * P_k`` with ``seg[m, k] = sum_j M[m, j] [k strict ancestor of j] log|a_j|``
(only the segment's terms are summed: no ``G_m - G_k`` cancellation) and ``P`` the +-1 product of signs
from the root (a parity, exact in any float type).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import torch

from lrnn.ops import _checks
from lrnn.validation import check_int

__all__ = ["TokenTree", "TreeNodeStates", "token_tree", "tree_path", "tree_leaves", "tree_positions"]

# log|a| below this is a = 0 for every float type (exp(-1e4) underflows to 0 even in float64). Path sums
# are matmuls with a 0/1 mask, where a -inf would meet a 0 (NaN); clamping keeps them finite and exact.
_LOG_ZERO = -1.0e4


@dataclass(frozen=True)
class TokenTree:
    """A validated token tree: ``parents`` [N] int64, ``mask`` [N, N] bool (``M[m, k]``: k is m or an
    ancestor of m) and ``depths`` [N] int64 (number of strict ancestors: 0 for children of the root).

    Build it once with ``token_tree(parents)`` and pass it as ``parents`` to every tree op of a model
    (every layer then reuses the mask, and the index tables the ops derive from it, instead of
    rebuilding them: see ``derived``).
    """

    parents: torch.Tensor
    mask: torch.Tensor
    depths: torch.Tensor
    # Tables derived from the tree alone (conv window indices, sub-step masks, ...), built on first use.
    _derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def num_nodes(self) -> int:
        return self.parents.shape[0]

    def derived(self, key: Hashable, build: Callable[[TokenTree], torch.Tensor]) -> torch.Tensor:
        """``build(self)``, computed once per tree and ``key``: the tree ops derive index tables and masks
        from the tree alone, and a model's layers all verify the same tree, so each layer after the first
        reuses them (a dozen small ops per conv and per recurrence otherwise, per layer and step). ``key``
        must name everything ``build`` depends on besides the tree (e.g. the conv width)."""
        value = self._derived.get(key)
        if value is None:
            value = self._derived[key] = build(self)
        return value

    def to(self, device: torch.device | str) -> TokenTree:
        """The same tree with its tensors on ``device``."""
        return TokenTree(self.parents.to(device), self.mask.to(device), self.depths.to(device))


@dataclass(frozen=True)
class TreeNodeStates:
    """The state after any node of a chunked tree pass, on demand (``state_node="any"`` of
    ``tree_decay_recurrence`` / ``tree_delta_rule``): what the pass solved anyway, so that once a node is
    accepted its state is one contraction, whatever its depth,

        S_m = gamma_m S_0 + sum_j L[m, j] k_j u_j^T

    (``u`` = v for the decay recurrence, the solved UT values for the delta rule; ``L`` the decay products
    along the paths, 0 off m's path). Shapes as ``state_at``: k [B, H, F, K], u [B, H, F, V], segment
    [B, H, F, F, D], gamma [B, H, F, D] or None, initial_state [B, H, K, V] or None; F = N * steps_per_node
    (DeltaProduct's n_h sub-steps per node).
    """

    k: torch.Tensor
    u: torch.Tensor
    segment: torch.Tensor
    gamma: torch.Tensor | None
    initial_state: torch.Tensor | None
    steps_per_node: int = 1

    @property
    def num_nodes(self) -> int:
        return self.k.shape[2] // self.steps_per_node

    def state_after(self, node: int | torch.Tensor) -> torch.Tensor:
        """The state after ``node`` (an int, or a LongTensor [B]; -1: the committed state, zeros if None):
        [B, H, K, V] in the pass's compute dtype (float32, float64 for float64 inputs)."""
        if isinstance(node, torch.Tensor):  # one node per sequence
            rows = node_indices(node, self.num_nodes, self.k.shape[0], self.k.device)
            last = torch.where(rows < 0, rows, rows * self.steps_per_node + (self.steps_per_node - 1))
            return state_at(last, self.k, self.u, self.segment, self.gamma, self.initial_state)
        _check_node_index(node, self.num_nodes)
        b, h, _, dk = self.k.shape
        if node == -1:
            return self.initial_state if self.initial_state is not None else self.k.new_zeros(b, h, dk, self.u.shape[-1])
        # One node for the whole batch: plain slices and one batched matmul-add (state_at's gathers and
        # selects over the batch cost more than the contraction itself at decoding sizes).
        m = node * self.steps_per_node + self.steps_per_node - 1
        weighted = (self.k * self.segment[:, :, m]).transpose(-1, -2)  # [B, H, K, F]: L[m, j] k_j
        if self.initial_state is None:
            return weighted @ self.u
        carried = self.initial_state if self.gamma is None else self.gamma[:, :, m, :, None] * self.initial_state
        return torch.baddbmm(carried.flatten(0, 1), weighted.flatten(0, 1), self.u.flatten(0, 1)).view(carried.shape)


def token_tree(parents: torch.Tensor) -> TokenTree:
    """Validate parent indices [N] and build the ancestor mask and depths.

    ``parents`` must be a 1-D integer tensor with ``-1 <= parents[i] < i``. The mask is the transitive
    closure of the parent relation, by log2(N) squarings of ``I + P`` (no Python loop over nodes).
    """
    _check_parents(parents)
    parents = parents.long()
    n = parents.shape[0]
    eye = torch.eye(n, dtype=torch.float32, device=parents.device)
    # reach[i, j] = 1 iff j is reached from i in at most one parent step; squaring doubles the steps.
    reach = eye + torch.nn.functional.one_hot(parents + 1, n + 1)[:, 1:].to(eye.dtype)
    for _ in range(math.ceil(math.log2(n)) if n > 1 else 0):
        reach = (reach @ reach > 0).to(eye.dtype)
    mask = reach > 0
    return TokenTree(parents, mask, mask.sum(-1) - 1)


def tree_path(parents: torch.Tensor | TokenTree, node: int) -> torch.Tensor:
    """The nodes from the root to ``node`` (inclusive), in order: a LongTensor [depth + 1] (empty for -1)."""
    tree = as_tree(parents)
    _check_node_index(node, tree.num_nodes)
    if node == -1:
        return torch.zeros(0, dtype=torch.long, device=tree.parents.device)
    return torch.nonzero(tree.mask[node]).squeeze(-1)  # ancestors precede descendants: sorted = path order


def tree_leaves(parents: torch.Tensor | TokenTree) -> torch.Tensor:
    """The nodes that are no node's parent (the ends of the root-to-leaf paths), ascending: LongTensor."""
    tree = as_tree(parents)
    is_parent = torch.zeros(tree.num_nodes, dtype=torch.bool, device=tree.parents.device)
    is_parent[tree.parents[tree.parents >= 0]] = True
    return torch.nonzero(~is_parent).squeeze(-1)


def tree_positions(parents: torch.Tensor | TokenTree, past_length: int | torch.Tensor) -> torch.Tensor:
    """Token positions of the tree nodes (for RoPE): ``past_length + depth``.

    ``past_length`` is the number of committed tokens (an int: positions [N]) or one count per sequence
    (a LongTensor [B], e.g. the real tokens of left-padded prompts: positions [B, N]). A node then sits
    where it would sit if its path were appended to the committed sequence.
    """
    tree = as_tree(parents)
    if isinstance(past_length, torch.Tensor):
        if past_length.ndim != 1 or past_length.is_floating_point() or past_length.dtype == torch.bool:
            raise TypeError(f"past_length must be an int or an integer tensor [batch], got "
                            f"{past_length.dtype} tensor of shape {tuple(past_length.shape)}")
        return past_length.to(tree.depths.device)[:, None] + tree.depths[None, :]
    return check_int("past_length (the number of committed tokens)", past_length, 0) + tree.depths


def as_tree(parents: torch.Tensor | TokenTree, num_nodes: int | None = None,
            device: torch.device | None = None) -> TokenTree:
    """A TokenTree from ``parents`` (validated) or an existing TokenTree, optionally checked against the
    node count of the inputs and moved to their device."""
    tree = parents if isinstance(parents, TokenTree) else token_tree(parents)
    if num_nodes is not None and tree.num_nodes != num_nodes:
        raise ValueError(f"parents describes a tree of {tree.num_nodes} nodes but the inputs have "
                         f"{num_nodes} tree nodes (their time dimension)")
    if device is not None and tree.mask.device != device:
        tree = tree.to(device)
    return tree


def tree_and_rows(parents: torch.Tensor | TokenTree, node: int | torch.Tensor | str | None,
                  x: torch.Tensor, allow_any: bool = False) -> tuple[TokenTree, torch.Tensor | str | None]:
    """The tree of an op whose input ``x`` [B, N, ...] carries the nodes, on x's device, and ``node`` (an
    int or a LongTensor [B], or None) as node indices [B] (None stays None; so does ``"any"`` where
    ``allow_any``: the chunked ops' request for a ``TreeNodeStates``)."""
    b, n = x.shape[:2]
    tree = as_tree(parents, n, x.device)
    if isinstance(node, str) and allow_any:
        if node != "any":
            raise ValueError(f'state_node must be an int, a LongTensor [batch], "any" or None, got {node!r}')
        return tree, node
    return tree, (None if node is None else node_indices(node, n, b, x.device))


def node_indices(node: int | torch.Tensor, num_nodes: int, batch: int, device: torch.device) -> torch.Tensor:
    """``node`` (an int, or a LongTensor [batch] with one node per sequence) as a LongTensor [batch].

    -1 selects the committed root (the state before the tree)."""
    if isinstance(node, torch.Tensor):
        if node.is_floating_point() or node.dtype == torch.bool or node.is_complex():
            raise TypeError(f"node must be an int or an integer tensor [batch], got dtype {node.dtype}")
        if tuple(node.shape) != (batch,):
            raise ValueError(f"node must be an int or a tensor of shape [batch] = ({batch},), got shape "
                             f"{tuple(node.shape)}")
        if not _checks.is_tracing() and node.numel() and not bool(((node >= -1) & (node < num_nodes)).all()):
            raise ValueError(f"node must lie in [-1, {num_nodes - 1}] (-1: the committed root), got "
                             f"{node.tolist()}")
        return node.to(device=device, dtype=torch.long)
    _check_node_index(node, num_nodes)
    return torch.full((batch,), node, dtype=torch.long, device=device)


def strict_mask(mask: torch.Tensor) -> torch.Tensor:
    """The strict-ancestor mask [N, N] (bool) of an ancestor-or-self mask: the diagonal removed."""
    return mask & ~torch.eye(mask.shape[0], dtype=torch.bool, device=mask.device)


def path_decays(mask: torch.Tensor, g: torch.Tensor, s: torch.Tensor | None,
                strict: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decay products along tree paths (the tree form of ``segment_decay`` and ``prefix_decay``).

    Args:
        mask: [N, N] bool ancestor-or-self mask. g: ``log|a|`` [..., N, D] (D = 1 for a scalar decay).
        s: the +-1 signs of the decays [..., N, D], or None (all decays >= 0).
        strict: ``strict_mask(mask)`` if the caller has it (None: built here).

    Returns:
        ``(segment, gamma)``: ``segment[..., m, k, :] = prod of a_j over the nodes j strictly after k on
        the path to m`` where ``M[m, k]`` (1 on the diagonal), 0 elsewhere: [..., N, N, D]; and
        ``gamma[..., m, :]`` = the product over the whole root-to-m path: [..., N, D].
    """
    maskf = mask.to(g.dtype)
    strict = (strict_mask(mask) if strict is None else strict).to(g.dtype)
    g = g.clamp(min=_LOG_ZERO)
    # seg[m, k] = sum_j M[m, j] g_j [k strict ancestor of j]: the log-sum over the segment only.
    seg = torch.einsum("mj,...jd,jk->...mkd", maskf, g, strict)
    zero = torch.zeros((), dtype=g.dtype, device=g.device)
    segment = torch.where(mask[:, :, None], torch.exp(seg), zero)
    gamma = torch.exp(torch.einsum("mj,...jd->...md", maskf, g))
    if s is None:
        return segment, gamma
    # Path parity from the root: P_m = (-1)^(number of negative decays on the path to m).
    negatives = torch.einsum("mj,...jd->...md", maskf, (s < 0).to(g.dtype))
    parity = 1.0 - 2.0 * torch.remainder(negatives, 2.0)
    return segment * (parity.unsqueeze(-2) * parity.unsqueeze(-3)), gamma * parity


def state_at(rows: torch.Tensor, k: torch.Tensor, u: torch.Tensor, segment: torch.Tensor,
             gamma: torch.Tensor | None, state: torch.Tensor | None) -> torch.Tensor:
    """The state after node ``rows[b]`` of each sequence: ``S_m = gamma_m S_0 + sum_j L[m, j] k_j u_j^T``
    (-1: ``S_0``). Shared by the tree ops, whose states all have this form (u = v for the decay
    recurrence, the solved UT values for the delta rule).

    rows [B]; k [B, H, N, K]; u [B, H, N, V]; segment [B, H, N, N, D] (0 off the paths; D = 1 or K);
    gamma [B, H, N, D] or None (no decay); state [B, H, K, V] or None (zeros). Returns [B, H, K, V].
    """
    b, h, n, dk = k.shape
    committed = state if state is not None else k.new_zeros(b, h, dk, u.shape[-1])
    if n == 0:  # an empty tree: only the root exists
        return committed
    batch = torch.arange(b, device=k.device)
    node = rows.clamp(min=0)
    decay_row = segment.transpose(1, 2)[batch, node]  # [B, H, N, D]: L[m, j] for every j (0 off the path)
    out = torch.einsum("bhjk,bhjv->bhkv", k * decay_row, u)
    if state is not None:
        carried = state if gamma is None else gamma.transpose(1, 2)[batch, node].unsqueeze(-1) * state
        out = out + carried  # gamma row [B, H, D, 1] scales the rows of S_0 (D = 1: all of them)
    return torch.where((rows < 0)[:, None, None, None], committed, out)


def walk_levels(tree: TokenTree, step, state: torch.Tensor, rows: torch.Tensor | None):
    """Run a decode step over the tree one depth level at a time (the ``mode="recurrent"`` of the tree ops).

    All nodes of one depth advance together from their parents' states, folded into the batch, so memory
    holds the states of two levels, never all N. ``step(nodes, parent_states)`` takes the level's node
    indices [L] and the states before them [B*L, ...] (batch-major) and returns ``(o [B*L, 1, ...],
    states [B*L, ...])``, the signature of ``decay_step`` / ``delta_step`` with ``fold_level`` inputs.

    Args:
        state: the committed state [B, ...] (the parents' state at depth 0).
        rows: a node per sequence [B] whose state to return (-1: ``state``), or None.

    Returns:
        ``(o [B, N, ...] in node order, the state after rows[b] [B, ...] or None)``.
    """
    depths, n, b = tree.depths, tree.num_nodes, state.shape[0]
    levels = [torch.nonzero(depths == d).squeeze(-1) for d in range(int(depths.max()) + 1)]
    position = torch.empty(n, dtype=torch.long, device=depths.device)  # each node's index in its level
    for nodes in levels:
        position[nodes] = torch.arange(len(nodes), device=depths.device)
    batch = torch.arange(b, device=state.device)
    node = None if rows is None else rows.clamp(min=0)
    parent_states, node_state, outs = state.unsqueeze(1), (None if rows is None else state), []
    for depth, nodes in enumerate(levels):
        parent_position = torch.zeros_like(nodes) if depth == 0 else position[tree.parents[nodes]]
        o, states = step(nodes, parent_states.index_select(1, parent_position).flatten(0, 1))
        outs.append(o.reshape(b, len(nodes), *o.shape[2:]))
        states = states.reshape(b, len(nodes), *states.shape[1:])
        if rows is not None:
            here = (rows >= 0) & (depths[node] == depth)
            chosen = states[batch, position[node].clamp(max=len(nodes) - 1)]
            node_state = torch.where(here.view(-1, *[1] * (chosen.ndim - 1)), chosen, node_state)
        parent_states = states
    order = torch.argsort(torch.cat(levels))  # level order -> node order
    return torch.cat(outs, dim=1)[:, order], node_state


def fold_level(x: torch.Tensor | None, index: torch.Tensor, per_node: int) -> torch.Tensor | None:
    """Rows ``index`` of x [B, T, ...] folded into the batch, ``per_node`` rows per node:
    [B * len(index) / per_node, per_node, ...] (batch-major, as ``walk_levels`` folds the states)."""
    return None if x is None else x.index_select(1, index).reshape(-1, per_node, *x.shape[2:])


def _check_parents(parents: object) -> None:
    if not isinstance(parents, torch.Tensor):
        raise TypeError(f"parents must be a 1-D integer tensor [num_nodes] (or a TokenTree), got "
                        f"{type(parents).__name__}")
    if parents.is_floating_point() or parents.is_complex() or parents.dtype == torch.bool:
        raise TypeError(f"parents must be an integer tensor (int64 parent indices), got dtype {parents.dtype}")
    if parents.ndim != 1:
        raise ValueError(f"parents must have shape [num_nodes] (one parent index per node, shared by the "
                         f"batch), got shape {tuple(parents.shape)}")
    if _checks.is_tracing() or parents.numel() == 0:
        return
    index = torch.arange(parents.shape[0], device=parents.device)
    bad = (parents < -1) | (parents >= index)
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0, 0])
        raise ValueError(f"parents must satisfy -1 <= parents[i] < i (nodes in topological order, -1 for a "
                         f"child of the committed root); got parents[{first}] = {int(parents[first])}")


def _check_node_index(node: object, num_nodes: int) -> None:
    check_int("node (-1: the committed root)", node, -1, num_nodes - 1)
