"""Softmax attention of token-tree nodes over a KV cache and their own ancestors (the attention layers of a
hybrid during tree verification).

Node m attends to every real token of the cache and to the tree nodes k with ``M[m, k] = 1`` (itself and
its ancestors):

    o_m = softmax_j( scale q_m . k_j  over  j in cache  +  ancestors-or-self(m) ) v_j.

Rotary positions are the caller's (the layer rotates q and k before calling, as
``lrnn.layers.baselines.Attention`` does): a node sits at ``past_length + depth``, given by
``tree_positions``, where it would sit if its path were appended to the committed sequence. After
verification the cache grows by the keys and values of the accepted path (``tree_path``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lrnn.ops import _checks
from lrnn.ops.tree import TokenTree, as_tree

__all__ = ["tree_attention"]

_LAYOUT = "[batch, nodes, heads, head_dim]"
_CACHE = "[batch, cache_length, heads, head_dim]"


def tree_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    parents: torch.Tensor | TokenTree,
    past_k: torch.Tensor | None = None,
    past_v: torch.Tensor | None = None,
    past_valid: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of N tree nodes over a KV cache plus their ancestors (the ancestor mask).

    Args:
        q, k: [B, N, H, D]; v: [B, N, H, Dv] (already rotated: positions from ``tree_positions``).
        parents: [N] parent indices (-1: child of the committed sequence), shared by the batch, or a
            ``TokenTree`` from ``token_tree(parents)``.
        past_k: [B, T, H, D], past_v: [B, T, H, Dv]: the cache of the committed tokens, or both None.
        past_valid: bool [B, T], False at padding in the cache (ignored keys); None: all real.
        scale: multiplies the scores; None means ``D ** -0.5``.

    Returns:
        o [B, N, H, Dv] in the dtype of v.
    """
    _check(q, k, v, past_k, past_v, past_valid, scale)
    b, n = q.shape[:2]
    tree = as_tree(parents, n, q.device)
    allowed = tree.mask.expand(b, n, n)
    if past_k is not None:
        k, v = torch.cat([past_k, k], dim=1), torch.cat([past_v, v], dim=1)
        past = past_k.new_ones(b, past_k.shape[1], dtype=torch.bool) if past_valid is None else past_valid
        allowed = torch.cat([past[:, None, :].expand(b, n, -1), allowed], dim=-1)
    # Every node sees itself, so no row of the mask is empty (no NaN).
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=allowed[:, None], scale=scale)
    return out.transpose(1, 2)


def _check(q, k, v, past_k, past_v, past_valid, scale) -> None:
    _checks.check_scale(scale)
    _checks.check_tensor("q", q, 4, _LAYOUT)
    b, n, h, d = q.shape
    _checks.check_tensor("k", k, 4, _LAYOUT)
    _checks.check_shape("k", k, (b, n, h, d), _LAYOUT)
    _checks.check_tensor("v", v, 4, "[batch, nodes, heads, value_dim]")
    _checks.check_shape("v", v, (b, n, h, v.shape[-1]), "[batch, nodes, heads, value_dim]")
    _checks.check_same_dtype_device({"q": q, "k": k, "v": v})
    if (past_k is None) != (past_v is None):
        raise ValueError("past_k and past_v must be given together (the KV cache) or both be None, got "
                         f"past_k {'None' if past_k is None else 'a tensor'} and past_v "
                         f"{'None' if past_v is None else 'a tensor'}")
    if past_k is None:
        if past_valid is not None:
            raise ValueError("past_valid was given without a cache; pass past_k and past_v with it")
        return
    _checks.check_tensor("past_k", past_k, 4, _CACHE)
    t = past_k.shape[1]
    _checks.check_shape("past_k", past_k, (b, t, h, d), _CACHE)
    _checks.check_tensor("past_v", past_v, 4, "[batch, cache_length, heads, value_dim]")
    _checks.check_shape("past_v", past_v, (b, t, h, v.shape[-1]), "[batch, cache_length, heads, value_dim]")
    _checks.check_same_dtype_device({"q": q, "past_k": past_k, "past_v": past_v})
    if past_valid is not None:
        if not isinstance(past_valid, torch.Tensor) or past_valid.dtype != torch.bool:
            got = past_valid.dtype if isinstance(past_valid, torch.Tensor) else type(past_valid).__name__
            raise TypeError(f"past_valid must be a bool tensor [batch, cache_length] (True = real token), got {got}")
        _checks.check_shape("past_valid", past_valid, (b, t), "[batch, cache_length]")
        if past_valid.device != q.device:
            raise ValueError(f"past_valid is on {past_valid.device} but q is on {q.device}")
