"""Short causal depthwise convolution with a cached state (the "short conv" of Mamba and DeltaNet).

Per channel d, with kernel width W:

    y_t[d] = act( bias[d] + sum_{w=0..W-1} weight[d, w] * x_{t-W+1+w}[d] )

where inputs before the sequence come from ``initial_state`` (the previous W-1 inputs, zeros if None).
The state after a call is the last W-1 inputs, so prefill and single-token steps chain exactly.
Layout: x [batch, time, channels]; weight [channels, W] (mamba_ssm's conv1d.weight [D, 1, W] squeezed);
state [batch, W-1, channels].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lrnn.ops import _checks

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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal depthwise convolution over time.

    Args:
        x: [B, T, D]. weight: [D, W]. bias: [D] or None.
        activation: None or ``"silu"``, applied after the bias.
        initial_state: [B, W-1, D], the W-1 inputs before ``x`` (None: zeros).
        output_final_state: also return the last W-1 inputs (the next call's ``initial_state``).
        mode: ``"recurrent"`` (one step at a time: the reference and the decode path) or ``"chunk"``
            (one parallel convolution over the whole sequence).

    Returns:
        ``(y, final_state)``: y [B, T, D]; final_state [B, W-1, D] or None.
    """
    _check(x, weight, bias, activation, initial_state, mode)
    width = weight.shape[1]
    b, t, d = x.shape
    history = x.new_zeros(b, width - 1, d) if initial_state is None else initial_state.to(x.dtype)
    padded = torch.cat([history, x], dim=1)  # [B, W-1+T, D]
    if t > 0 and mode == "chunk":
        # W shifted multiply-adds over the [B, T, D] layout (bias first). F.conv1d wants [B, D, T]: two
        # transposing copies, and its transposed output left every later op reading time-strided memory.
        y = padded[:, :t] * weight[:, 0] if bias is None else torch.addcmul(bias, padded[:, :t], weight[:, 0])
        for w in range(1, width):
            y = y.addcmul_(padded[:, w:w + t], weight[:, w])
    else:
        if t == 0:
            y = x
        else:
            y = torch.stack([(padded[:, i:i + width] * weight.t()).sum(1) for i in range(t)], dim=1)
        if bias is not None:
            y = y + bias
    if activation == "silu":
        y = F.silu(y)
    final = None
    if output_final_state:  # a small copy with standard strides (a slice's strides would vary with T)
        final = padded[:, padded.shape[1] - (width - 1):].clone(memory_format=torch.contiguous_format)
    return y, final


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
