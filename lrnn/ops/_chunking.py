"""Chunking helpers shared by the chunked algorithms.

Inputs [B, T, H, D] are split along time into chunks of C steps (views, no copy); each chunk is laid out
heads-first as [B*H, C, D] for batched matmuls. The per-chunk schedule makes that small copy inside the
loop, where it stays in cache and its memory is reused; the batched schedule stacks all chunks into
[N, B*H, C, D] at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype precision-hungry math runs in: float32 at least, float64 stays float64 (bfloat16 and
    float16 inputs compute in float32). The recurrences, the layers' norms and decays, rotary angles and
    the benchmarks' matmul reference all use this one rule."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def to_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.to(dtype)``, without the call when x already has that dtype: ``Tensor.to`` parses its arguments
    in ~1.5 us, which a decode step converting six inputs per layer notices."""
    return x if x.dtype == dtype else x.to(dtype)


def pad_time(x: torch.Tensor, multiple: int, value: float = 0.0) -> torch.Tensor:
    """Pad dim 1 (time) of a [B, T, ...] tensor at the end up to a multiple of ``multiple``."""
    extra = (-x.shape[1]) % multiple
    if extra == 0:
        return x
    pad = [0, 0] * (x.ndim - 2) + [0, extra]
    return F.pad(x, pad, value=value)


def split_chunks(x: torch.Tensor | None, c: int, value: float = 0.0,
                 pad: bool = True) -> tuple[torch.Tensor, ...] | None:
    """[B, T, H, D] (or [B, T, H]) -> views [B, C, H, D] of each chunk, the last padded with ``value``.

    ``pad=False`` leaves the last chunk shorter instead: no padded copy of x (nor its gradient), for
    schedules that take one chunk at a time and so need no common chunk shape.
    """
    if x is None:
        return None
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    return (pad_time(x, c, value) if pad else x).split(c, dim=1)


def heads_first(chunk: torch.Tensor) -> torch.Tensor:
    """[B, C, H, D] -> [B*H, C, D] (a copy of one chunk)."""
    b, c, h, d = chunk.shape
    return chunk.transpose(1, 2).reshape(b * h, c, d)


def stack_chunks(chunks: tuple[torch.Tensor, ...] | None) -> torch.Tensor | None:
    """All chunks heads-first at once: [N, B*H, C, D]."""
    return None if chunks is None else torch.stack([heads_first(x) for x in chunks])


def merge_chunks(outs: list[torch.Tensor], b: int, h: int, t: int) -> torch.Tensor:
    """Per-chunk outputs [B*H, C, V] -> [B, T, H, V] in one copy, dropping padding past ``t``."""
    pieces = [o.reshape(b, h, *o.shape[1:]).transpose(1, 2) for o in outs]
    return torch.cat(pieces, dim=1)[:, :t]


def default_batch_chunks(x: torch.Tensor) -> bool:
    """Whether to compute the per-chunk terms for all chunks at once. x: a [B, C, H, D] chunk.

    On GPUs, always (few large kernels). On CPUs, only when a chunk is small: for large chunks the
    all-at-once temporaries fall out of cache and run about 2x slower than a chunk at a time.
    """
    return x.device.type != "cpu" or x.numel() < 2**16


def unbind_chunks(tensors):
    """Split each [N, ...] tensor (or None) into its N chunks, once.

    The chunk loops index these tuples instead of ``x[n]``: backward then builds one stacked gradient per
    tensor, where indexing would allocate a full-size zero gradient for every chunk (O(N^2) traffic).
    """
    return [None if x is None else x.unbind(0) for x in tensors]


def empty_sequence(q: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None):
    """Output [B, 0, H, V] and the unchanged (or zero) [B, H, K, V] state for a T = 0 input."""
    b, _, h, dk = q.shape
    out = v.new_zeros(b, 0, h, v.shape[-1])
    return out, (q.new_zeros(b, h, dk, v.shape[-1]) if state is None else state)


CACHE_BLOCK_ELEMENTS = 2 ** 17
"""Values per block of ``cache_blocks`` on a CPU: 512 KiB in float32, so the 3-4 buffers an element-wise
pass touches fit a 2 MiB L2 cache. Measured for the short conv's training path, fwd+bwd at [256, 40, 512]
(one thread, loaded machine): 272 ms unblocked, 211 / 186 / 165 ms with blocks of 2^20 / 2^18 / 2^17
values; one sequence per block (2^15) loses it again to per-op overhead (216 ms)."""


def cache_blocks(x: torch.Tensor) -> list[slice]:
    """Slices of dim 0 of x (whole sequences, or rows) of about ``CACHE_BLOCK_ELEMENTS`` values each on a
    CPU, for hand-written forward and backward passes that run several element-wise steps per block
    while it is in cache; one block elsewhere (a GPU wants few large kernels) and while torch.compile traces."""
    if x.device.type != "cpu" or torch.compiler.is_compiling():  # compiled: inductor fuses the passes itself
        return [slice(None)]
    if x.shape[0] == 0:
        return []
    per_block = max(1, CACHE_BLOCK_ELEMENTS // max(1, x[0].numel()))
    return [slice(start, start + per_block) for start in range(0, x.shape[0], per_block)]
