"""Baseline mixers for the benchmarks: causal softmax attention (RoPE, KV cache) and an LSTM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lrnn.layers.common import AcceptedPath, TreeKeep, document_starts
from lrnn.layers.registry import MixerSpec, register
from lrnn.ops import TokenTree, compute_dtype, tree_attention, tree_positions
from lrnn.validation import check_positive

State = dict[str, torch.Tensor]


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+d/2}) of x [B, T, H, D] by angle ``position * base^(-2i/d)``."""
    half = x.shape[-1] // 2
    dtype = compute_dtype(x.dtype)
    freqs = base ** (-torch.arange(half, dtype=dtype, device=x.device) / half)
    angles = positions.to(dtype)[..., None] * freqs  # [B, T, half]
    cos, sin = angles.cos()[:, :, None, :], angles.sin()[:, :, None, :]
    x1, x2 = x[..., :half].to(dtype), x[..., half:].to(dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class Attention(nn.Module):
    """Causal multi-head softmax attention with rotary positions and a KV cache (``state["k"/"v"]``).

    With a padding ``mask`` [B, T] (True = token), padded keys are ignored and positions count real
    tokens only, so left-padded prompts see the same positions as unpadded ones. With ``seq_starts``
    [B, T] (packed documents) a query sees the keys of its own document only (a block-diagonal causal
    mask) and positions restart at 0 at each document start; the cache then keeps the row's last
    document visible (its earlier keys are marked invalid), which a next call continues.
    """

    fixed_size_cache = False  # the KV cache grows with every token: per-row commits go through commit_tree_rows

    def __init__(self, d_model: int, num_heads: int = 4, rope_base: float = 10000.0) -> None:
        super().__init__()
        check_positive(d_model=d_model, num_heads=num_heads)
        if d_model % num_heads or (d_model // num_heads) % 2:
            raise ValueError(f"d_model = {d_model} must split into num_heads = {num_heads} heads of even size")
        self.num_heads, self.head_dim, self.rope_base = num_heads, d_model // num_heads, rope_base
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, hidden: torch.Tensor, state: State | None = None, mask: torch.Tensor | None = None,
                mode: str | None = None, seq_starts: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = hidden.shape
        seq_starts = document_starts(seq_starts, hidden, mask)
        q, k, v = self.qkv(hidden).reshape(b, t, 3, self.num_heads, self.head_dim).unbind(2)
        past_valid = None if state is None else state.get("valid")  # [B, T_past] bool
        valid = torch.ones(b, t, dtype=torch.bool, device=hidden.device) if mask is None else mask.bool()
        all_valid = valid if past_valid is None else torch.cat([past_valid, valid], dim=1)
        document = None if seq_starts is None else _documents(seq_starts, all_valid.shape[1])  # [B, total]
        positions = _positions(all_valid, document)[:, all_valid.shape[1] - t:]  # not [:, -t:]: t may be 0
        q, k = rotary(q, positions, self.rope_base), rotary(k, positions, self.rope_base)
        if state is not None:
            if "k" in state:
                k, v = torch.cat([state["k"], k], dim=1), torch.cat([state["v"], v], dim=1)
            # A next call continues the row's last document: the keys before it are dropped from view.
            kept = all_valid if document is None else all_valid & (document == document[:, -1:])
            state["k"], state["v"], state["valid"] = k, v, kept
        total = k.shape[1]
        # Query i (absolute index total - t + i) sees keys j <= that index that are real tokens.
        causal = torch.ones(t, total, dtype=torch.bool, device=hidden.device).tril(total - t)
        allowed = causal[None, None] & all_valid[:, None, None, :]
        if document is not None:  # ... of its own document
            allowed = allowed & (document[:, -t:, None] == document[:, None, :])[:, None]
        # A padded query row may see nothing; let it see itself to avoid NaN (its output is unused).
        itself = causal & ~torch.ones(t, total, dtype=torch.bool, device=hidden.device).tril(total - t - 1)
        allowed = allowed | itself[None, None]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=allowed)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d))

    def forward_tree(self, hidden: torch.Tensor, state: State | None, tree: TokenTree,
                     keep: TreeKeep | None = None) -> torch.Tensor:
        """hidden [B, N, d_model] for the N nodes of ``tree`` -> [B, N, d_model]: each node attends to the
        cached real tokens and its ancestors-or-self (``tree_attention``), rotated at position = cached real
        tokens + depth, where the node would sit with its path appended. The cache is read, not changed.
        With a ``keep`` dict the nodes' (rotated) keys and values are kept for ``commit_tree``."""
        b, n, d = hidden.shape
        q, k, v = self.qkv(hidden).reshape(b, n, 3, self.num_heads, self.head_dim).unbind(2)
        past_valid = None if state is None else state.get("valid")
        past = 0 if past_valid is None else past_valid.sum(1)
        positions = tree_positions(tree, past).to(hidden.device).expand(b, n)
        q, k = rotary(q, positions, self.rope_base), rotary(k, positions, self.rope_base)
        if keep is not None:
            keep.update(k=k, v=v)
        cached = state is not None and "k" in state
        out = tree_attention(q, k, v, parents=tree, past_k=state["k"] if cached else None,
                             past_v=state["v"] if cached else None, past_valid=past_valid if cached else None)
        return self.o_proj(out.reshape(b, n, d))

    def commit_tree(self, state: State, kept: TreeKeep, accepted: AcceptedPath) -> None:
        """Advance the cache entry ``state`` by the accepted path of the last ``forward_tree(..., keep)``
        without recomputing it: the KV cache grows by the keys and values of the path's nodes (rotated at
        the positions the path has when appended), all real tokens."""
        path = accepted.path
        k, v = kept["k"][:, path], kept["v"][:, path]
        valid = torch.ones(k.shape[:2], dtype=torch.bool, device=k.device)
        if "k" in state:
            k, v = torch.cat([state["k"], k], dim=1), torch.cat([state["v"], v], dim=1)
            valid = torch.cat([state["valid"], valid], dim=1)
        state["k"], state["v"], state["valid"] = k, v, valid

    def commit_tree_rows(self, state: State, kept: TreeKeep, tree: TokenTree, nodes: torch.Tensor) -> None:
        """``commit_tree`` with one accepted node per row (``nodes`` [B], -1: nothing): row r's KV cache grows
        by the keys and values of its own root-to-``nodes[r]`` path. The paths differ in length while the
        cache stays one tensor, so every row grows by the longest path and a shorter path's last slots are
        marked invalid in ``state["valid"]`` -- holes that attention ignores and positions skip, as they do
        left padding -- so each row's cache reads exactly as if it had committed its path alone."""
        nodes = nodes.to(kept["k"].device)
        on_path = tree.mask.to(nodes.device)[nodes.clamp(min=0)] & (nodes >= 0)[:, None]  # [B, N]
        lengths = on_path.sum(1)
        width = int(lengths.max())
        # Each row's path nodes first, in ascending (= root-to-node) order; then anything, marked invalid.
        order = torch.argsort((~on_path).to(torch.int8), dim=1, stable=True)[:, :width]
        valid = torch.arange(width, device=nodes.device)[None] < lengths[:, None]
        index = order[:, :, None, None].expand(-1, -1, *kept["k"].shape[2:])
        k, v = kept["k"].gather(1, index), kept["v"].gather(1, index)
        if "k" in state:
            k, v = torch.cat([state["k"], k], dim=1), torch.cat([state["v"], v], dim=1)
            valid = torch.cat([state["valid"], valid], dim=1)
        state["k"], state["v"], state["valid"] = k, v, valid


def _documents(seq_starts: torch.Tensor, total: int) -> torch.Tensor:
    """The document index of every key [B, total] (cached keys first, then the T new tokens, whose
    document starts ``seq_starts`` [B, T] mark): cached keys are document 0, the one a call continues."""
    past = torch.zeros(seq_starts.shape[0], total - seq_starts.shape[1], dtype=torch.long, device=seq_starts.device)
    return torch.cumsum(torch.cat([past, seq_starts.long()], dim=1), dim=1)


def _positions(valid: torch.Tensor, document: torch.Tensor | None) -> torch.Tensor:
    """Rotary positions [B, total]: the real tokens (``valid``) before each one in its document (in the
    whole row when ``document`` is None)."""
    seen = torch.cumsum(valid.long(), dim=1)  # real tokens up to and including each position
    if document is not None:  # minus those before the position's document start
        start = F.pad(document[:, 1:] != document[:, :-1], (1, 0))
        seen = seen - torch.where(start, seen - valid.long(), torch.zeros_like(seen)).cummax(dim=1).values
    return (seen - 1).clamp(min=0)


class LSTM(nn.Module):
    """A single-layer LSTM mixer (the recurrent baseline), states cached as ``state["h"/"c"]``.

    Padded positions (mask False) keep the previous (h, c), so left padding is a no-op; ``seq_starts``
    [B, T] (packed documents) resets (h, c) to zero at each document's first token.
    """

    def __init__(self, d_model: int, hidden_size: int | None = None) -> None:
        super().__init__()
        self.hidden_size = d_model if hidden_size is None else hidden_size
        check_positive(d_model=d_model, hidden_size=self.hidden_size)
        self.input_proj = nn.Linear(d_model, 4 * self.hidden_size)
        self.recurrent_proj = nn.Linear(self.hidden_size, 4 * self.hidden_size, bias=False)
        self.out_proj = nn.Linear(self.hidden_size, d_model, bias=False)
        with torch.no_grad():  # forget-gate bias 1: the usual start for long memories
            self.input_proj.bias.zero_()
            self.input_proj.bias[self.hidden_size:2 * self.hidden_size] = 1.0
        nn.init.orthogonal_(self.recurrent_proj.weight)

    def forward(self, hidden: torch.Tensor, state: State | None = None, mask: torch.Tensor | None = None,
                mode: str | None = None, seq_starts: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = hidden.shape
        seq_starts = document_starts(seq_starts, hidden, mask)
        gates_in = self.input_proj(hidden)
        if state is not None and "h" in state:
            h, c = state["h"], state["c"]
        else:
            h = c = hidden.new_zeros(b, self.hidden_size)
        outs = []
        for i in range(t):
            if seq_starts is not None:  # a document's first token starts from (h, c) = 0
                fresh = seq_starts[:, i, None]
                h, c = h.masked_fill(fresh, 0.0), c.masked_fill(fresh, 0.0)
            h_new, c_new = self._cell(gates_in[:, i], h, c)
            if mask is not None:
                keep = mask[:, i, None].bool()
                h_new, c_new = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
            h, c = h_new, c_new
            outs.append(h)
        if state is not None:
            state["h"], state["c"] = h, c
        hs = torch.stack(outs, dim=1) if outs else hidden.new_zeros(b, 0, self.hidden_size)  # T = 0: no step
        return self.out_proj(hs)

    def _cell(self, gates_in: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One LSTM step from the previous (h, c) [..., H] and the input's gate pre-activations [..., 4H]:
        c' = sigma(f) c + sigma(i) tanh(g), h' = sigma(o) tanh(c')."""
        gi, gf, gg, go = (gates_in + self.recurrent_proj(h)).chunk(4, dim=-1)
        c_new = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
        return torch.sigmoid(go) * torch.tanh(c_new), c_new

    def forward_tree(self, hidden: torch.Tensor, state: State | None, tree: TokenTree,
                     keep: TreeKeep | None = None) -> torch.Tensor:
        """The tree path, level by level. hidden [B, N, d] -> [B, N, d].

        The LSTM is nonlinear, so no parallel form over time exists -- but a tree needs none beyond what a
        chain needs: every node at depth l steps from its parent's (h, c) at depth l - 1, so one batched cell
        step per level computes all nodes of that level (the root's children from the cached (h, c)). A tree
        of depth D costs D cell steps, as a chain of D tokens does, whatever its width. With a ``keep`` dict
        every node's (h, c) is kept for ``commit_tree``. The cache entry is read, not changed."""
        b, n, _ = hidden.shape
        gates_in = self.input_proj(hidden)
        if state is not None and "h" in state:
            h_prev, c_prev = state["h"][:, None], state["c"][:, None]  # [B, 1, H]: the root
        else:
            h_prev = c_prev = hidden.new_zeros(b, 1, self.hidden_size)
        levels, position = tree.derived("lstm_levels", _tree_levels)
        hs, cs = [], []
        for nodes, parent_rows in levels:
            h_prev, c_prev = self._cell(gates_in[:, nodes], h_prev[:, parent_rows], c_prev[:, parent_rows])
            hs.append(h_prev)
            cs.append(c_prev)
        if not hs:  # the empty tree
            return self.out_proj(hidden.new_zeros(b, 0, self.hidden_size))
        h, c = torch.cat(hs, dim=1)[:, position], torch.cat(cs, dim=1)[:, position]  # back to node order
        if keep is not None:
            keep["h"], keep["c"] = h, c
        return self.out_proj(h)

    def commit_tree(self, state: State, kept: TreeKeep, accepted: AcceptedPath) -> None:
        """Advance the cache entry by the accepted path: the (h, c) the tree pass computed at its node."""
        state["h"], state["c"] = kept["h"][:, accepted.node], kept["c"][:, accepted.node]


def _tree_levels(tree: TokenTree) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """The tree by depth, for a level-by-level pass: ([(nodes at depth l [n_l], their parents' rows among
    depth l - 1's nodes [n_l] -- all 0 at depth 0, the root)], position [N]: each node's row in the
    depth-ordered concatenation of the levels)."""
    order = torch.argsort(tree.depths, stable=True)
    position = torch.empty_like(order)
    position[order] = torch.arange(len(order), device=order.device)
    levels, start, previous_start = [], 0, 0
    for count in torch.bincount(tree.depths).tolist():  # the empty tree: no level
        nodes = order[start:start + count]
        parents = tree.parents[nodes]
        rows = torch.zeros_like(nodes) if start == 0 else position[parents] - previous_start
        levels.append((nodes, rows))
        previous_start, start = start, start + count
    return levels, position


ATTENTION = register(MixerSpec(
    name="attention", label="Transformer", summary="causal softmax attention with RoPE (the Transformer baseline)",
    build=Attention, fields={"heads": "num_heads"}, small={"num_heads": 2},
    core_flops=lambda layer, length: 4 * length * layer.num_heads * layer.head_dim))  # q k^T and p v over all T keys (PaLM: not halved)
LSTM_SPEC = register(MixerSpec(
    name="lstm", label="LSTM", summary="a single-layer LSTM (the nonlinear recurrent baseline)", build=LSTM,
    core_flops=lambda layer, length: 0))  # its recurrent matmul is an nn.Linear, counted with the projections
