"""Refinement 2 of arXiv 2410.03292: scan the tokens of an S6 branch in order of a learned importance score.

The score of token l is ``s_l = k^T dt_l`` with ``dt_l`` [d_inner] the *pre-softplus* step size of the token
(``dt_proj(x_proj(u_l)[:dt_rank])``, bias included) and ``k`` [d_inner] learned. A SoftSort relaxation
(Prillo and Eisenschlos, 2020) turns the scores into a row-stochastic matrix

    P[k, l] = softmax_l( -|sort(s)_k - s_l| / tau )            sort ascending: the most important token last

which tends to the permutation matrix of the ascending sort as ``tau -> 0`` (distinct scores) and is
differentiable in ``s`` for every ``tau > 0``. The S6 branch scans ``P u`` instead of ``u``.

**Not causal.** Every row of ``P`` depends on the scores of *all* T tokens (the sort, and the softmax over
l), so the output at any position depends on later tokens, and the order the scan sees changes when a token
is appended. It cannot be used for autoregressive language modelling, cached decoding or packed documents;
it is meant for whole-sequence classification (the authors use it in a vision model).
"""

from __future__ import annotations

import torch
from torch import nn

from lrnn.validation import check_number


def soft_sort(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """SoftSort of ``scores`` [..., T]: ``P`` [..., T, T] with ``P[k, l] = softmax_l(-|sorted_k - s_l| / tau)``,
    ascending (row T-1 picks the largest score). Rows sum to 1; ``P @ v`` is a soft reordering of v [..., T, d]."""
    check_number("tau", tau, 0.0, strict=True)
    ordered = scores.sort(dim=-1).values
    return torch.softmax(-(ordered.unsqueeze(-1) - scores.unsqueeze(-2)).abs() / tau, dim=-1)


class ImportanceReorder(nn.Module):
    """Learned importance ``s = dt_pre @ k`` and its SoftSort ``P`` (module docstring); non-causal.

    ``permutation(dt_pre)``: dt_pre [B, T, d_inner] (pre-softplus step sizes) -> P [B, T, T].
    """

    def __init__(self, d_inner: int, tau: float = 1.0) -> None:
        super().__init__()
        self.tau = check_number("tau", tau, 0.0, strict=True)
        # at init s_l = sqrt(d_inner) * mean_c dt_pre_l[c]: one common score scale, no preferred channel
        self.k = nn.Parameter(torch.full((d_inner,), d_inner ** -0.5))

    def scores(self, dt_pre: torch.Tensor) -> torch.Tensor:
        """``s_l = k^T dt_pre_l`` [B, T]."""
        return dt_pre @ self.k.to(dt_pre.dtype)

    def permutation(self, dt_pre: torch.Tensor) -> torch.Tensor:
        """The SoftSort matrix [B, T, T] of the scores of ``dt_pre`` [B, T, d_inner]."""
        return soft_sort(self.scores(dt_pre), self.tau)

    def extra_repr(self) -> str:
        return f"d_inner={self.k.numel()}, tau={self.tau}"
