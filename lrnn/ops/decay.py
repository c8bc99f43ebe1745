"""Signed decays in log space: the representation every lrnn op uses for a decay ``a`` in [-1, 1].

A decay is carried as two tensors of one shape:

* ``log_decay = log|a|`` (<= 0; ``-inf`` encodes ``a = 0``), so decays within 1e-6 of 1 keep full
  relative precision (``log(1 - 1e-6)`` is an ordinary float, ``1 - 1e-6`` is not in float16/bfloat16
  and has only ~3 significant digits of ``1 - a`` left in float32);
* ``decay_negative`` (bool, True where ``a < 0``), or ``None`` when every decay is >= 0.

Products of decays over a segment ``prod_{m=j+1..i} a_m`` are computed as
``exp(sum of log|a_m| over the segment) * (-1)^(number of negative a_m)``. Sums are taken only over the
masked segment (never as ``cumsum_i - cumsum_j``), so they stay exact for ``-inf`` and precise near 0;
signs are products of +-1, which are exact in any float type.

All helpers work on a time axis at ``dim=-2`` with a trailing channel axis (size 1 for a scalar decay).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def decay_from_values(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split decay values ``a`` in [-1, 1] into ``(log|a|, a < 0)``.

    The gradient w.r.t. ``a`` is infinite where ``a == 0``; produce ``log_decay`` directly (as the
    layers do) when decays can be exactly zero and gradients are needed.
    """
    return torch.log(torch.abs(a)), a < 0


def negative_range(log_decay: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map a decay ``a = exp(log_decay)`` in [0, 1] to ``2a - 1`` in [-1, 1], in log space.

    Returns ``(log|2a - 1|, 2a - 1 < 0)``. Computed as ``log1p(2 expm1(x))`` on the positive side and
    ``log1p(-2 exp(x))`` on the negative side, so ``a = 1 - eps`` maps to ``1 - 2 eps`` and ``a = eps`` to
    ``-(1 - 2 eps)`` without cancellation. ``a = 1/2`` maps to ``(-inf, False)`` (the decay 0) with a zero
    gradient, so training never meets ``0 * inf`` there. This is the eigenvalue extension of
    arXiv 2411.12537 for diagonal transitions.
    """
    twice_expm1 = 2.0 * torch.expm1(log_decay)  # (2a - 1) - 1, exact near a = 1
    twice_a = 2.0 * torch.exp(log_decay)  # 1 - (2a - 1) = 1 - |2a - 1| on the negative side, exact near a = 0
    positive = twice_expm1 > -1.0
    # 2a - 1 == 0 (a = 1/2 to within rounding; exp and expm1 may round apart, so twice_a can exceed 1):
    # log|2a - 1| = -inf with gradient 0 there, instead of log1p(-1) whose backward is 0 * inf = NaN. It
    # is not rare: a Mamba layer draws ~1e7 decays per step and some land on 1/2 exactly in float32.
    zero = ~positive & (twice_a >= 1.0)
    negative = ~positive & ~zero
    # Each branch is fed a harmless value where it is not used, so where() has clean gradients.
    log_pos = torch.log1p(torch.where(positive, twice_expm1, torch.zeros_like(twice_expm1)))
    log_neg = torch.log1p(-torch.where(negative, twice_a, torch.zeros_like(twice_a)))
    return torch.where(positive, log_pos, torch.where(zero, float("-inf"), log_neg)), negative


def reset_at_starts(seq_starts: torch.Tensor, log_decay: torch.Tensor,
                    decay_negative: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The decays of packed documents: ``a_t = 0`` (``log_decay = -inf``, not negative) wherever
    ``seq_starts`` [B, T] is True, so no state crosses into a document from the one before it.

    ``log_decay`` / ``decay_negative``: [B, T, ...] (one decay per head or per channel). With a zero decay
    at its first token a document's state starts from exactly zero, the same as a separate run from a
    zero state: the chunked ops take -inf exactly (their segment sums are masked cumulative sums), and
    the gradient of the replaced decays is zero.
    """
    starts = seq_starts.reshape(*seq_starts.shape, *([1] * (log_decay.ndim - 2)))
    log_decay = log_decay.masked_fill(starts, float("-inf"))
    return log_decay, (None if decay_negative is None else decay_negative & ~starts)


def signs(decay_negative: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """+-1 factors in the dtype of ``like`` (None when every decay is non-negative)."""
    if decay_negative is None:
        return None
    return 1.0 - 2.0 * decay_negative.to(like.dtype)


def decay_values(g: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
    """The decays ``a = exp(log|a|) * (+-1)`` themselves, for the sequential paths. g, s: any one shape."""
    a = torch.exp(g)
    return a if s is None else a * s


def prefix_decay(g: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
    """``prod_{m<=i} a_m`` along dim -2 (inclusive prefix). g, s: [..., C, D] -> [..., C, D]."""
    out = torch.exp(torch.cumsum(g, dim=-2))
    return out if s is None else out * torch.cumprod(s, dim=-2)


def suffix_decay(g: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
    """``prod_{m>j} a_m`` along dim -2 (exclusive suffix: 1 at the last position). [..., C, D]."""
    # Shift left by one so position j holds a_{j+1}, then take a reversed cumulative sum.
    g_next = F.pad(g[..., 1:, :], (0, 0, 0, 1))
    out = torch.exp(torch.flip(torch.cumsum(torch.flip(g_next, (-2,)), dim=-2), (-2,)))
    if s is None:
        return out
    s_next = F.pad(s[..., 1:, :], (0, 0, 0, 1), value=1.0)
    return out * torch.flip(torch.cumprod(torch.flip(s_next, (-2,)), dim=-2), (-2,))


def segment_decay(g: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
    """``L[i, j] = prod_{m=j+1..i} a_m`` for j <= i, 0 above the diagonal. [..., C, D] -> [..., C, C, D].

    The log-sum of each segment is a cumulative sum over a masked copy (the stable "segsum"), so -inf and
    tiny magnitudes stay exact; the sign is ``P_i * P_j`` with ``P`` the +-1 prefix product.
    """
    c = g.shape[-2]
    strict = torch.ones(c, c, dtype=torch.bool, device=g.device).tril(-1)
    # x[i, j] = g_i for i > j, else 0; cumsum over i gives sum_{m=j+1..i} g_m.
    x = g.unsqueeze(-2).expand(*g.shape[:-2], c, c, g.shape[-1])
    x = torch.where(strict[:, :, None], x, torch.zeros((), dtype=g.dtype, device=g.device))
    seg = torch.cumsum(x, dim=-3)
    causal = strict | torch.eye(c, dtype=torch.bool, device=g.device)
    out = torch.where(causal[:, :, None], torch.exp(seg), torch.zeros((), dtype=g.dtype, device=g.device))
    if s is None:
        return out
    p = torch.cumprod(s, dim=-2)
    return out * (p.unsqueeze(-2) * p.unsqueeze(-3))
