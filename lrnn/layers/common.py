"""Building blocks shared by the token mixers: norms, the short-conv module, dt initialisation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lrnn.ops import short_conv


def wide(x: torch.Tensor) -> torch.Tensor:
    """x in float32 at least (float64 stays float64): for norms, decays and other precision-hungry math."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def check_positive(**sizes: object) -> None:
    """Raise a clear error unless every named value is an int >= 1."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int >= 1, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dim (computed in float32 at least)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        check_positive(dim=dim)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xw = wide(x)
        y = xw * torch.rsqrt(xw.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * wide(self.weight)).to(x.dtype)


class GatedRMSNorm(nn.Module):
    """RMSNorm with a SiLU gate, normalised in groups of ``group_size`` channels.

    ``norm_before_gate=False`` (mamba_ssm's Mamba-2): ``norm(x * silu(z))``;
    ``norm_before_gate=True`` (flash-linear-attention's gated output norm): ``norm(x) * silu(z)``.
    """

    def __init__(self, dim: int, group_size: int | None = None, eps: float = 1e-5,
                 norm_before_gate: bool = False) -> None:
        super().__init__()
        group_size = dim if group_size is None else group_size
        check_positive(dim=dim, group_size=group_size)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if dim % group_size:
            raise ValueError(f"group_size must divide dim={dim}, got {group_size}")
        self.group_size, self.eps, self.norm_before_gate = group_size, eps, norm_before_gate
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        dtype = x.dtype
        x = wide(x)
        if z is not None and not self.norm_before_gate:
            x = x * F.silu(wide(z))
        groups = x.reshape(*x.shape[:-1], -1, self.group_size)
        groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        y = groups.reshape(x.shape) * wide(self.weight)
        if z is not None and self.norm_before_gate:
            y = y * F.silu(wide(z))
        return y.to(dtype)


class ShortConv(nn.Module):
    """Causal depthwise conv over [B, T, D] with SiLU, cached in ``state[name]`` as the last W-1 inputs.

    The weight is stored as ``[D, 1, W]`` like ``nn.Conv1d`` (and mamba_ssm / fla checkpoints).
    """

    def __init__(self, dim: int, width: int = 4, bias: bool = True, activation: str | None = "silu") -> None:
        super().__init__()
        check_positive(dim=dim, width=width)
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(dim, 1, width))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        bound = 1.0 / math.sqrt(width)  # nn.Conv1d's default for a depthwise conv (fan_in = width)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, state: dict[str, torch.Tensor] | None = None,
                name: str = "conv", mode: str | None = None) -> torch.Tensor:
        initial = None if state is None else state.get(name)
        if mode is None:
            mode = "recurrent" if x.shape[1] == 1 and initial is not None else "chunk"
        y, final = short_conv(x, self.weight.squeeze(1).to(x.dtype),
                              None if self.bias is None else self.bias.to(x.dtype),
                              activation=self.activation, initial_state=initial,
                              output_final_state=state is not None, mode=mode)
        if state is not None:
            state[name] = final
        return y

    def step(self, x: torch.Tensor, state: dict[str, torch.Tensor], name: str = "conv") -> torch.Tensor:
        """One decode step: x [B, D] after the W-1 inputs cached in ``state[name]`` (updated) -> [B, D].

        The same sums as ``short_conv(mode="recurrent")`` on one token, without its sequence bookkeeping.
        """
        window = torch.cat([state[name].to(x.dtype), x.unsqueeze(1)], dim=1)  # [B, W, D]
        y = (window * self.weight.squeeze(1).t().to(x.dtype)).sum(1)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        if self.activation == "silu":
            y = F.silu(y)
        state[name] = window[:, 1:].clone(memory_format=torch.contiguous_format)  # standard strides
        return y


def init_dt_bias(n: int, dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> torch.Tensor:
    """Inverse softplus of dt ~ log-uniform[dt_min, dt_max] (floored): softplus(bias) starts at dt."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # softplus^{-1}(dt)


def recurrent_mode(x: torch.Tensor, state: dict[str, torch.Tensor] | None, key: str) -> str:
    """Single-token steps with a state run the O(1) recurrent path; everything else is chunked."""
    return "recurrent" if x.shape[1] == 1 and state is not None and key in state else "chunk"
