"""Inverse of a unit lower-triangular matrix ``(I + A)^{-1}`` for small batched blocks (A strictly lower).

On a CPU it is one batched ``torch.linalg.solve_triangular`` (measured with torch 2.13, one thread, fwd+bwd:
2.1 vs 6.2 ms for 1024 16x16 systems, 10 vs 23 ms for 256 64x64; an earlier torch ran such solves at
~1 GFLOP/s). Elsewhere (GPUs: no faster solve measured here) this version inverts 8x8 diagonal blocks by forward substitution (vectorised over every block) and then
merges neighbouring blocks with matmuls,

    [[M11, 0], [M21, M22]]^{-1} = [[T11, 0], [-T22 M21 T11, T22]],

so almost all the work is batched matmuls. Plain differentiable torch ops; works under torch.compile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_BLOCK = 8


def unit_lower_inverse(a: torch.Tensor, block: int = _BLOCK) -> torch.Tensor:
    """Return ``(I + a)^{-1}`` for ``a`` [..., C, C] strictly lower triangular (diagonal ignored).

    On a CPU: one batched ``torch.linalg.solve_triangular`` (unit diagonal), which in torch 2.13 runs
    fwd+bwd 2-3x faster than the blocks below at C = 8-128 (1 thread; docs/benchmarks.md). Elsewhere:
    the blocks.
    """
    c = a.shape[-1]
    a = torch.tril(a, -1)
    if a.device.type == "cpu":
        eye = torch.eye(c, dtype=a.dtype, device=a.device).expand_as(a)
        return torch.linalg.solve_triangular(a, eye, upper=False, unitriangular=True)
    if c <= block:
        return _forward_substitution(a)
    size = block
    while size < c:
        size *= 2
    if size != c:  # pad with an identity block: it does not touch the top-left inverse
        a = F.pad(a, (0, size - c, 0, size - c))
    inv = _forward_substitution(_diagonal_blocks(a, block))  # [..., nb, block, block]
    cur = block
    while cur < size:
        # The pair count is spelled out: with -1, an empty batch (zero-size leading dims) cannot be reshaped.
        pairs = inv.reshape(*inv.shape[:-3], inv.shape[-3] // 2, 2, cur, cur)
        t11, t22 = pairs[..., 0, :, :], pairs[..., 1, :, :]
        a21 = _diagonal_blocks(a, 2 * cur)[..., cur:, :cur]
        t21 = -(t22 @ (a21 @ t11))
        top = torch.cat([t11, torch.zeros_like(t11)], dim=-1)
        inv = torch.cat([top, torch.cat([t21, t22], dim=-1)], dim=-2)
        cur *= 2
    return inv[..., 0, :c, :c]


def _diagonal_blocks(a: torch.Tensor, block: int) -> torch.Tensor:
    """[..., S, S] -> [..., S // block, block, block]: the blocks on the diagonal."""
    nb = a.shape[-1] // block
    tiles = a.reshape(*a.shape[:-2], nb, block, nb, block)
    # Contiguous, so the many small matmuls on these blocks run on views instead of copies.
    return torch.diagonal(tiles, dim1=-4, dim2=-2).movedim(-1, -3).contiguous()


def _forward_substitution(a: torch.Tensor) -> torch.Tensor:
    """(I + a)^{-1} row by row: ``T_i = e_i - a_{i,<i} T_{<i}``. a: [..., c, c] strictly lower."""
    c = a.shape[-1]
    if c == 0:  # an empty system (e.g. an empty token tree): its inverse is empty too
        return a.clone()
    eye = torch.eye(c, dtype=a.dtype, device=a.device)
    rows = [eye[0].expand(*a.shape[:-2], 1, c)]
    for i in range(1, c):
        previous = torch.cat(rows, dim=-2)  # [..., i, c]
        rows.append(eye[i] - a[..., i:i + 1, :i] @ previous)
    return torch.cat(rows, dim=-2)
