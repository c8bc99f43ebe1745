"""DeltaNet, Gated DeltaNet and DeltaProduct: one mixer, differing only where the math differs.

    q, k, v = conv(W_q x), conv(W_k x), conv(W_v x)  (short conv + SiLU), q, k L2-normalised per head
    beta = sigmoid(W_b x)  (times 2 with negative_eigenvalues: eigenvalues 1 - beta in [-1, 1])
    gate (Gated DeltaNet): log a = -exp(A_log) * softplus(W_a x + dt_bias)   (Mamba-2 style)
    o = delta_rule(q, k, v, beta, log a; n_h Householder steps per token), out = W_o norm(o [, gate g])

DeltaProduct widens k, v and beta by n_h (``num_householder``): step j of token t uses slice j of each
projection, laid out ``[n_h, heads, dim]`` along the feature axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lrnn.layers.common import (GatedRMSNorm, RMSNorm, ShortConv, check_flag, check_positive, init_dt_bias,
                                 recurrent_mode, wide)
from lrnn.layers.mamba import _masked
from lrnn.ops import delta_rule

State = dict[str, torch.Tensor]


class DeltaNet(nn.Module):
    """The delta-rule mixer. x: [B, T, d_model] -> [B, T, d_model].

    Args:
        d_model: model width. num_heads: heads. head_dim: key (and query) dim per head
            (default d_model // num_heads). expand_v: value dim = expand_v * head_dim.
        num_householder: Householder steps per token (1: DeltaNet, > 1: DeltaProduct).
        use_forget_gate: the Gated DeltaNet gate ``a_t`` (a Mamba-2-style decay per head).
        use_output_gate: gate the output norm with ``silu(W_g x)``.
        conv_size: short conv width (0 disables the conv; q, k, v then get SiLU only).
        negative_eigenvalues: beta in [0, 2] instead of [0, 1].
    """

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None, expand_v: float = 1.0,
                 num_householder: int = 1, use_forget_gate: bool = False, use_output_gate: bool = False,
                 conv_size: int = 4, conv_bias: bool = False, negative_eigenvalues: bool = False,
                 chunk_size: int = 64, norm_eps: float = 1e-5) -> None:
        super().__init__()
        check_positive(d_model=d_model, num_heads=num_heads, num_householder=num_householder, chunk_size=chunk_size)
        check_flag("negative_eigenvalues", negative_eigenvalues)
        if isinstance(conv_size, bool) or not isinstance(conv_size, int) or conv_size < 0:
            raise ValueError(f"conv_size must be an int >= 0 (0: no short conv), got {conv_size!r}")
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(f"d_model = {d_model} must be divisible by num_heads = {num_heads}")
            head_dim = d_model // num_heads
        check_positive(head_dim=head_dim)
        value_dim = int(head_dim * expand_v)
        if value_dim < 1 or value_dim != head_dim * expand_v:
            raise ValueError(f"expand_v * head_dim must be a positive integer, got {expand_v} * {head_dim}")
        self.num_heads, self.head_dim, self.value_dim = num_heads, head_dim, value_dim
        self.num_householder, self.negative_eigenvalues, self.chunk_size = num_householder, negative_eigenvalues, chunk_size
        n_h, key, val = num_householder, num_heads * head_dim, num_heads * value_dim

        self.q_proj = nn.Linear(d_model, key, bias=False)
        self.k_proj = nn.Linear(d_model, n_h * key, bias=False)
        self.v_proj = nn.Linear(d_model, n_h * val, bias=False)
        self.b_proj = nn.Linear(d_model, n_h * num_heads, bias=False)
        if conv_size > 0:
            self.q_conv1d = ShortConv(key, conv_size, bias=conv_bias)
            self.k_conv1d = ShortConv(n_h * key, conv_size, bias=conv_bias)
            self.v_conv1d = ShortConv(n_h * val, conv_size, bias=conv_bias)
        self.use_short_conv = conv_size > 0
        self.use_forget_gate = use_forget_gate
        if use_forget_gate:
            self.a_proj = nn.Linear(d_model, num_heads, bias=False)
            self.A_log = nn.Parameter(torch.log(torch.empty(num_heads).uniform_(1.0, 16.0)))
            self.dt_bias = nn.Parameter(init_dt_bias(num_heads))
            self.A_log._no_weight_decay = self.dt_bias._no_weight_decay = True
        self.use_output_gate = use_output_gate
        if use_output_gate:
            self.g_proj = nn.Linear(d_model, val, bias=False)
            self.o_norm = GatedRMSNorm(value_dim, eps=norm_eps, norm_before_gate=True)
        else:
            self.o_norm = RMSNorm(value_dim, eps=norm_eps)
        self.o_proj = nn.Linear(val, d_model, bias=False)

    def forward(self, hidden: torch.Tensor, state: State | None = None, mask: torch.Tensor | None = None,
                mode: str | None = None) -> torch.Tensor:
        """hidden [B, T, d_model] -> [B, T, d_model]; ``state`` (a Cache entry) is read and updated."""
        b, t, _ = hidden.shape
        h, n_h = self.num_heads, self.num_householder
        mode = recurrent_mode(hidden, state, "ssm") if mode is None else mode
        q, k, v = (_masked(proj(hidden), mask) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if self.use_short_conv:
            q = self.q_conv1d(q, state, "conv_q", mode)
            k = self.k_conv1d(k, state, "conv_k", mode)
            v = self.v_conv1d(v, state, "conv_v", mode)
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q = F.normalize(q.reshape(b, t, h, self.head_dim), dim=-1)
        k = F.normalize(k.reshape(b, t * n_h, h, self.head_dim), dim=-1)  # [t, n_h] flattened token-major
        v = v.reshape(b, t * n_h, h, self.value_dim)
        beta = torch.sigmoid(wide(self.b_proj(hidden)))
        if self.negative_eigenvalues:
            beta = 2.0 * beta
        beta = _masked(beta, mask).reshape(b, t * n_h, h)  # beta = 0 on padding: identity step
        log_a = None
        if self.use_forget_gate:
            log_a = -torch.exp(wide(self.A_log)) * F.softplus(wide(self.a_proj(hidden)) + wide(self.dt_bias))
            log_a = _masked(log_a, mask)
        o, ssm = delta_rule(q, k, v, beta, log_a, num_householder=n_h,
                            initial_state=None if state is None else state.get("ssm"),
                            output_final_state=state is not None, mode=mode, chunk_size=self.chunk_size)
        if state is not None:
            state["ssm"] = ssm
        if self.use_output_gate:
            o = self.o_norm(o, self.g_proj(hidden).reshape(b, t, h, self.value_dim))
        else:
            o = self.o_norm(o)
        return self.o_proj(o.reshape(b, t, h * self.value_dim))


def GatedDeltaNet(d_model: int, **kwargs) -> DeltaNet:
    """Gated DeltaNet (arXiv 2412.06464): DeltaNet with the forget gate and a gated output norm."""
    kwargs.setdefault("use_forget_gate", True)
    kwargs.setdefault("use_output_gate", True)
    return DeltaNet(d_model, **kwargs)


def DeltaProduct(d_model: int, num_householder: int = 2, **kwargs) -> DeltaNet:
    """DeltaProduct (arXiv 2502.10297): n_h Householder steps per token (gated with use_forget_gate)."""
    return DeltaNet(d_model, num_householder=num_householder, **kwargs)
