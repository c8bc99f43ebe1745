"""Short causal depthwise convolution with a cached state (the "short conv" of Mamba and DeltaNet).

Per channel d, with kernel width W:

    y_t[d] = act( bias[d] + sum_{w=0..W-1} weight[d, w] * x_{t-W+1+w}[d] )

where inputs before the sequence come from ``initial_state`` (the previous W-1 inputs, zeros if None).
The state after a call is the last W-1 inputs, so prefill and single-token steps chain exactly.

Packed documents (``seq_starts`` [batch, time], True at each document's first token): a tap whose input
lies before the start of the output token's document reads zero, as if each document ran alone from a
zero state; the final state zeroes the inputs before the row's last document start.
Layout: x [batch, time, channels]; weight [channels, W] (mamba_ssm's conv1d.weight [D, 1, W] squeezed);
state [batch, W-1, channels].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lrnn.ops import _checks
from lrnn.ops._chunking import cache_blocks

__all__ = ["short_conv", "ACTIVATIONS"]

ACTIVATIONS = (None, "silu")


def short_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    mode: str = "chunk",
    seq_starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal depthwise convolution over time.

    Args:
        x: [B, T, D]. weight: [D, W]. bias: [D] or None.
        activation: None or ``"silu"``, applied after the bias.
        initial_state: [B, W-1, D], the W-1 inputs before ``x`` (None: zeros).
        output_final_state: also return the last W-1 inputs (the next call's ``initial_state``).
        mode: ``"recurrent"`` (one step at a time: the reference and the decode path) or ``"chunk"``
            (one parallel convolution over the whole sequence).
        seq_starts: bool [B, T], True at the first token of each packed document: no tap reaches back
            across it (None: one document, continuing ``initial_state``).

    Returns:
        ``(y, final_state)``: y [B, T, D]; final_state [B, W-1, D] or None.
    """
    _check(x, weight, bias, activation, initial_state, mode)
    width = weight.shape[1]
    b, t, d = x.shape
    if seq_starts is not None:
        _checks.check_seq_starts(seq_starts, b, t, x)
    history = x.new_zeros(b, width - 1, d) if initial_state is None else initial_state.to(x.dtype)
    if t > 0 and mode == "chunk" and initial_state is None and seq_starts is None:  # the training path
        y = _ZeroHistoryConv.apply(x, weight, bias, activation == "silu")
        final = None
        if output_final_state:
            final = torch.cat([history, x], dim=1)[:, t:].clone(memory_format=torch.contiguous_format)
        return y, final
    padded = torch.cat([history, x], dim=1)  # [B, W-1+T, D]
    taps = None if seq_starts is None else _document_taps(seq_starts, width).to(x.dtype)  # [B, T, W]
    if t > 0 and mode == "chunk":
        # W shifted multiply-adds over the [B, T, D] layout (bias first). F.conv1d wants [B, D, T]: two
        # transposing copies, and its transposed output left every later op reading time-strided memory.
        def tap(w: int) -> torch.Tensor:  # the inputs tap w reads: [B, T, D]
            return padded[:, w:w + t] if taps is None else padded[:, w:w + t] * taps[:, :, w, None]
        y = tap(0) * weight[:, 0] if bias is None else torch.addcmul(bias, tap(0), weight[:, 0])
        for w in range(1, width):
            y = y.addcmul_(tap(w), weight[:, w])
    else:
        if t == 0:
            y = x
        else:
            windows = [padded[:, i:i + width] for i in range(t)]  # [B, W, D] each
            if taps is not None:
                windows = [window * taps[:, i, :, None] for i, window in enumerate(windows)]
            y = torch.stack([(window * weight.t()).sum(1) for window in windows], dim=1)
        if bias is not None:
            y = y + bias
    if activation == "silu":
        y = F.silu(y)
    final = None
    if output_final_state:  # a small copy with standard strides (a slice's strides would vary with T)
        final = padded[:, padded.shape[1] - (width - 1):].clone(memory_format=torch.contiguous_format)
        if seq_starts is not None and t > 0:  # the next call continues the last document only
            final = final * _last_document_history(seq_starts, width).to(final.dtype)
    return y, final


class _ZeroHistoryConv(torch.autograd.Function):
    """The chunked short conv from a zero history, with its own backward (the training path).

    ``y = act(bias + sum_lag weight[:, W-1-lag] * x_{t-lag})``, lag = 0..W-1 (inputs before the sequence
    are 0). Each tap is a multiply-add into a shifted slice of one buffer: no padded copy of x, and the
    backward writes the input gradient the same way instead of W zero-filled padded gradients (one per
    tap's slice) summed by autograd. Saves x and the pre-activation. Both directions run over blocks of
    sequences (``cache_blocks``), so a block's W passes stay in cache.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool) -> torch.Tensor:
        pre = torch.empty_like(x)
        y = torch.empty_like(x) if silu else pre
        for rows in cache_blocks(x):
            _taps_into(pre[rows], x[rows], weight, bias)
            if silu:  # while the block is in cache
                torch.ops.aten.silu.out(pre[rows], out=y[rows])
        ctx.silu, ctx.has_bias = silu, bias is not None
        ctx.save_for_backward(x, weight, pre if silu else None)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, pre = ctx.saved_tensors
        width, t = weight.shape[1], x.shape[1]
        lags = range(min(width, t + 1))
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros_like(weight[:, 0]) if ctx.has_bias and ctx.needs_input_grad[2] else None
        for rows in cache_blocks(x):
            g = torch.ops.aten.silu_backward(grad[rows], pre[rows]) if ctx.silu else grad[rows]
            if grad_x is not None:  # x_s feeds y_{s+lag} through weight[:, W-1-lag]
                _taps_into(grad_x[rows], g, weight, None, transposed=True)
            if grad_weight is not None:
                for lag in lags:
                    grad_weight[:, width - 1 - lag] += torch.sum(g[:, lag:] * x[rows][:, :t - lag], dim=(0, 1))
            if grad_bias is not None:
                grad_bias += g.sum(dim=(0, 1))
        return grad_x, grad_weight, grad_bias, None


def _taps_into(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               transposed: bool = False) -> None:
    """``out = bias + sum_lag weight[:, W-1-lag] * x_{t-lag}`` over [b, T, D] blocks (zero history);
    ``transposed``: the adjoint, ``out_s = sum_lag weight[:, W-1-lag] * x_{s+lag}`` (zero future)."""
    width, t = weight.shape[1], x.shape[1]
    if bias is None:
        torch.mul(x, weight[:, -1], out=out)
    else:
        torch.addcmul(bias, x, weight[:, -1], out=out)
    for lag in range(1, min(width, t + 1)):
        if transposed:
            out[:, :t - lag].addcmul_(x[:, lag:], weight[:, width - 1 - lag])
        else:
            out[:, lag:].addcmul_(x[:, :t - lag], weight[:, width - 1 - lag])


def _document_taps(seq_starts: torch.Tensor, width: int) -> torch.Tensor:
    """Which taps stay inside the output token's document: bool [B, T, W], tap w reaching back
    ``W-1-w`` tokens. A token ``p`` tokens after its document's start reaches back at most ``p``; a token
    with no start at or before it (the row continues ``initial_state``) reaches back freely."""
    steps_in = steps_since_start(seq_starts, before_row=width)  # [B, T]; >= width: every tap kept
    lags = torch.arange(width - 1, -1, -1, device=seq_starts.device)  # [W]: W-1, ..., 0
    return steps_in[:, :, None] >= lags


def steps_since_start(seq_starts: torch.Tensor, before_row: int = 0) -> torch.Tensor:
    """Tokens since the latest document start at or before each position: int [B, T] from bool [B, T];
    where no start precedes, the position counts from ``before_row`` tokens before the row."""
    index = torch.arange(seq_starts.shape[1], device=seq_starts.device).expand_as(seq_starts)
    latest = torch.where(seq_starts, index, torch.full_like(index, -before_row)).cummax(dim=1).values
    return index - latest


def _last_document_history(seq_starts: torch.Tensor, width: int) -> torch.Tensor:
    """Which of the last W-1 inputs belong to the row's last document: bool [B, W-1, 1] (T >= 1)."""
    steps_in = steps_since_start(seq_starts, before_row=width)[:, -1:]  # [B, 1], of the last token
    back = torch.arange(width - 2, -1, -1, device=seq_starts.device)  # history slot j is W-2-j steps back
    return (steps_in >= back)[:, :, None]


def _check(x, weight, bias, activation, initial_state, mode):
    _checks.check_mode(mode, 1)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    _checks.check_tensor("x", x, 3, "[batch, time, channels]")
    b, _, d = x.shape
    _checks.check_tensor("weight", weight, 2, "[channels, width]")
    if weight.shape[0] != d or weight.shape[1] < 1:
        raise ValueError(f"weight must have shape [channels, width] = ({d}, W >= 1), got {tuple(weight.shape)}")
    named = {"x": x, "weight": weight}
    if bias is not None:
        _checks.check_tensor("bias", bias, 1, "[channels]")
        _checks.check_shape("bias", bias, (d,), "[channels]")
        named["bias"] = bias
    _checks.check_same_dtype_device(named)
    _checks.check_state(initial_state, (b, weight.shape[1] - 1, d), "[batch, width-1, channels]", x)
