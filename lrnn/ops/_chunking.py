"""Reshaping helpers for the chunked algorithms: [B, T, H, D] <-> [B, H, N, C, D]."""

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


def to_chunks(x: torch.Tensor, c: int) -> torch.Tensor:
    """[B, N*C, H, *D] -> [B, H, N, C, *D] (a [B, T, H] tensor gets a trailing dim of 1 first)."""
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    b, t, h = x.shape[:3]
    return x.reshape(b, t // c, c, h, *x.shape[3:]).movedim(3, 1)


def from_chunks(x: torch.Tensor, t: int) -> torch.Tensor:
    """[B, H, N, C, D] -> [B, T, H, D], dropping padding past ``t``."""
    b, h, n, c = x.shape[:4]
    return x.movedim(1, 3).reshape(b, n * c, h, *x.shape[4:])[:, :t]
