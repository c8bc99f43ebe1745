"""Reshaping helpers for the chunked algorithms: [B, T, H, D] <-> chunk-major [N, B, H, C, D].

Chunk-major layout keeps each chunk's [B, H, C, D] block contiguous, so the sequential pass over chunks
indexes views that batched matmuls take without copying.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Recurrences run in float32 at least (float64 stays float64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pad_time(x: torch.Tensor, multiple: int, value: float = 0.0) -> torch.Tensor:
    """Pad dim 1 (time) of a [B, T, ...] tensor at the end up to a multiple of ``multiple``."""
    extra = (-x.shape[1]) % multiple
    if extra == 0:
        return x
    pad = [0, 0] * (x.ndim - 2) + [0, extra]
    return F.pad(x, pad, value=value)


def to_chunks(x: torch.Tensor, c: int, value: float = 0.0) -> torch.Tensor:
    """Pad time to a multiple of ``c`` with ``value``, then [B, T, H, D] -> contiguous [N, B, H, C, D].

    A [B, T, H] tensor gets a trailing dim of 1.
    """
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    x = pad_time(x, c, value)
    b, t, h, d = x.shape
    return x.reshape(b, t // c, c, h, d).permute(1, 0, 3, 2, 4).contiguous()


def from_chunks(x: torch.Tensor, t: int) -> torch.Tensor:
    """[N, B, H, C, D] -> [B, T, H, D], dropping padding past ``t``."""
    n, b, h, c, d = x.shape
    return x.permute(1, 0, 3, 2, 4).reshape(b, n * c, h, d)[:, :t]


def default_batch_chunks(x: torch.Tensor) -> bool:
    """Whether to compute the per-chunk terms for all chunks at once. x: [N, B*H, C, D].

    On GPUs, always (few large kernels). On CPUs, only when a chunk is small: for large chunks the
    all-at-once temporaries fall out of cache and run about 2x slower than a chunk at a time.
    """
    return x.device.type != "cpu" or x[0].numel() < 2**16


def empty_sequence(q: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None):
    """Output [B, 0, H, V] and the unchanged (or zero) [B, H, K, V] state for a T = 0 input."""
    b, _, h, dk = q.shape
    out = v.new_zeros(b, 0, h, v.shape[-1])
    return out, (q.new_zeros(b, h, dk, v.shape[-1]) if state is None else state)
