"""Argument checks shared by the ops.

Every check raises ``ValueError`` or ``TypeError`` naming the argument, what was expected and what was
given. Value-range checks read tensor values (a device sync), so they are skipped while
``torch.compile`` traces, where they would break the graph; shape and dtype checks always run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lrnn.validation import check_int, check_number

MODES = ("recurrent", "chunk")


def is_tracing() -> bool:
    """True while torch.compile / torch.export traces (value checks would break the graph)."""
    return torch.compiler.is_compiling()


def check_tensor(name: str, x: object, ndim: int, layout: str) -> torch.Tensor:
    """Check that ``x`` is a floating-point tensor with ``ndim`` dimensions laid out as ``layout``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout} ({ndim} dims), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_shape(name: str, x: torch.Tensor, expected: Sequence[int], layout: str) -> None:
    """Check ``x.shape == expected``; ``layout`` names the dims in the message."""
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {layout} = {tuple(expected)}, got {tuple(x.shape)}")


def check_same_dtype_device(named: dict[str, torch.Tensor | None], dtype: bool = True) -> None:
    """All given tensors share one device (and one dtype unless ``dtype=False``)."""
    items = [(n, t) for n, t in named.items() if t is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if dtype and t.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first_name} has dtype {first.dtype}; "
                            "all inputs must share one dtype")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")


def check_mode(mode: object, chunk_size: object) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_int("chunk_size", chunk_size, 1)


def check_scale(scale: object) -> None:
    if scale is not None:
        check_number("scale (None: key_dim ** -0.5)", scale)


def resolve_scale(scale: float | None, q: torch.Tensor) -> float:
    """``scale`` as a float; None means ``key_dim ** -0.5`` (q: [..., key_dim]), which needs key_dim >= 1."""
    if scale is not None:
        return float(scale)
    if q.shape[-1] == 0:
        raise ValueError(f"the default scale (key_dim ** -0.5) needs key_dim >= 1, got key_dim = 0 (q of shape "
                         f"{tuple(q.shape)}); give q and k a key dimension or pass scale explicitly")
    return q.shape[-1] ** -0.5


def check_single_token(op: str, q: torch.Tensor, sequence_op: str) -> None:
    """A step op takes one token: ``q`` is a [batch, 1, heads, key_dim] tensor (checked before the other
    inputs, whose expected shapes follow from it)."""
    check_tensor("q", q, 4, "[batch, 1, heads, key_dim]")
    if q.shape[1] != 1:
        raise ValueError(f"{op} takes one token: q must have shape [batch, 1, heads, key_dim], got "
                         f"{tuple(q.shape)} (time = {q.shape[1]}); run {sequence_op} over a sequence")


def check_range(name: str, x: torch.Tensor, low: float, high: float, what: str) -> None:
    """Check ``low <= x <= high`` element-wise (NaN fails). Skipped while compiling."""
    if is_tracing() or x.numel() == 0:
        return
    ok = (x >= low) & (x <= high)
    if not bool(ok.all()):
        bad = x[~ok]
        raise ValueError(f"{name} must lie in [{low}, {high}] ({what}); got values in "
                         f"[{bad.min().item():.6g}, {bad.max().item():.6g}] ({bad.numel()} out of range"
                         f"{', including NaN' if bool(bad.isnan().any()) else ''})")


def check_log_decay(log_decay: torch.Tensor, decay_negative: torch.Tensor | None,
                    shapes: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """Check a (log|a|, a<0) decay pair. ``shapes`` maps each accepted layout name to (shape, layout)."""
    if tuple(log_decay.shape) not in [s for s, _ in shapes.values()]:
        expected = " or ".join(f"{lay} = {s}" for s, lay in shapes.values())
        raise ValueError(f"log_decay must have shape {expected}, got {tuple(log_decay.shape)}")
    if decay_negative is not None:
        if not isinstance(decay_negative, torch.Tensor) or decay_negative.dtype != torch.bool:
            got = decay_negative.dtype if isinstance(decay_negative, torch.Tensor) else type(decay_negative).__name__
            raise TypeError(f"decay_negative must be a bool tensor (True where the decay is negative), got {got}")
        if decay_negative.shape != log_decay.shape:
            raise ValueError(f"decay_negative must have the shape of log_decay {tuple(log_decay.shape)}, "
                             f"got {tuple(decay_negative.shape)}")
        if decay_negative.device != log_decay.device:
            raise ValueError(f"decay_negative is on {decay_negative.device} but log_decay is on {log_decay.device}")
    check_range("log_decay", log_decay, float("-inf"), 0.0,
                "log|a| of a decay a in [-1, 1]; -inf encodes a = 0")


def check_seq_starts(seq_starts: object, batch: int, time: int, like: torch.Tensor) -> None:
    """Check document starts: a bool tensor [batch, time] on the device of ``like`` (True at the first
    token of each document of a packed row)."""
    if not isinstance(seq_starts, torch.Tensor) or seq_starts.dtype != torch.bool:
        got = seq_starts.dtype if isinstance(seq_starts, torch.Tensor) else type(seq_starts).__name__
        raise TypeError(f"seq_starts must be a bool tensor [batch, time] (True at each document's first token), "
                        f"got {got}")
    if tuple(seq_starts.shape) != (batch, time):
        raise ValueError(f"seq_starts must have shape [batch, time] = {(batch, time)}, got {tuple(seq_starts.shape)}")
    if seq_starts.device != like.device:
        raise ValueError(f"seq_starts is on {seq_starts.device} but the inputs are on {like.device}")


def check_state(initial_state: torch.Tensor | None, expected: Sequence[int], layout: str,
                dtype_like: torch.Tensor) -> None:
    if initial_state is None:
        return
    check_tensor("initial_state", initial_state, len(expected), layout)
    check_shape("initial_state", initial_state, expected, layout)
    if initial_state.device != dtype_like.device:
        raise ValueError(f"initial_state is on {initial_state.device} but the inputs are on {dtype_like.device}")
