"""DeltaNet, Gated DeltaNet and DeltaProduct: one mixer, differing only where the math differs.

    q, k, v = conv(W_q x), conv(W_k x), conv(W_v x)  (short conv + SiLU), q, k L2-normalised per head
    beta = sigmoid(W_b x)  (times 2 with negative_eigenvalues: eigenvalues 1 - beta in [-1, 1])
    gate (Gated DeltaNet): log a = -exp(A_log) * softplus(W_a x + dt_bias)   (Mamba-2 style)
    o = delta_rule(q, k, v, beta, log a; n_h Householder steps per token), out = W_o norm(o [, gate g])

DeltaProduct widens k, v and beta by n_h (``num_householder``): step j of token t uses slice j of each
projection, laid out ``[n_h, heads, dim]`` along the feature axis.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lrnn.layers.common import (AcceptedPath, GatedRMSNorm, RMSNorm, ShortConv, TreeKeep, document_starts,
                                 init_dt_bias, l2_normalize, masked, run_short_conv, scan_mode, wide)
from lrnn.layers.registry import MixerSpec, Variant, register
from lrnn.validation import check_flag, check_int, check_positive
from lrnn.ops import TokenTree, delta_chunk_size, delta_rule, delta_step, reset_at_starts, tree_delta_rule

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
        chunk_size: chunk of the chunked scan; None: ``delta_chunk_size(head_dim)`` (16 up to head_dim 64).
    """

    def __init__(self, d_model: int, num_heads: int = 4, head_dim: int | None = None, expand_v: float = 1.0,
                 num_householder: int = 1, use_forget_gate: bool = False, use_output_gate: bool = False,
                 conv_size: int = 4, conv_bias: bool = False, negative_eigenvalues: bool = False,
                 chunk_size: int | None = None, norm_eps: float = 1e-5) -> None:
        super().__init__()
        check_positive(d_model=d_model, num_heads=num_heads, num_householder=num_householder)
        if chunk_size is not None:
            check_positive(chunk_size=chunk_size)
        check_flag("negative_eigenvalues", negative_eigenvalues)
        check_int("conv_size (0: no short conv)", conv_size, 0)
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(f"d_model = {d_model} must be divisible by num_heads = {num_heads}")
            head_dim = d_model // num_heads
        check_positive(head_dim=head_dim)
        value_dim = int(head_dim * expand_v)
        if value_dim < 1 or value_dim != head_dim * expand_v:
            raise ValueError(f"expand_v * head_dim must be a positive integer, got {expand_v} * {head_dim}")
        self.num_heads, self.head_dim, self.value_dim = num_heads, head_dim, value_dim
        self.num_householder, self.negative_eigenvalues = num_householder, negative_eigenvalues
        self.chunk_size = delta_chunk_size(head_dim) if chunk_size is None else chunk_size
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
                mode: str | None = None, seq_starts: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [B, T, d_model] -> [B, T, d_model]; ``state`` (a Cache entry) is read and updated.

        ``mode``: None, "chunk" or "recurrent", resolved by ``scan_mode``; a decode step (one token after a
        cached state) runs the single-token ops ``ShortConv.step`` and ``delta_step``. ``seq_starts``
        [B, T] (bool, packed documents): the state resets to zero at each document's first token -- a gate
        ``a = 0`` there (without the forget gate, a gate that is 1 elsewhere), applied before the first
        Householder step -- and the short convs do not reach across a start.
        """
        seq_starts = document_starts(seq_starts, hidden, mask)
        mode = scan_mode(hidden, state, mode)
        q, k, v, beta, log_a = self._features(
            hidden, mask, lambda conv, x, key: run_short_conv(conv, x, state, key, mode, seq_starts))
        if seq_starts is not None:
            no_gate = torch.zeros(beta.shape[0], hidden.shape[1], self.num_heads, dtype=beta.dtype,
                                  device=beta.device)  # log a = 0: a = 1
            log_a, _ = reset_at_starts(seq_starts, no_gate if log_a is None else log_a)
        n_h = self.num_householder
        if mode == "step":  # shapes, betas and gates are right by construction: skip the per-token checks
            o, state["ssm"] = delta_step(q, k, v, beta, log_a, num_householder=n_h, initial_state=state["ssm"],
                                         validate=False)
        else:
            o, ssm = delta_rule(q, k, v, beta, log_a, num_householder=n_h,
                                initial_state=None if state is None else state.get("ssm"),
                                output_final_state=state is not None, mode=mode, chunk_size=self.chunk_size)
            if state is not None:
                state["ssm"] = ssm
        return self._output(o, hidden)

    def forward_tree(self, hidden: torch.Tensor, state: State | None, tree: TokenTree,
                     keep: TreeKeep | None = None) -> torch.Tensor:
        """hidden [B, N, d_model] for the N nodes of ``tree`` -> [B, N, d_model]: node m's output as if its
        root-to-node path had followed the cached state (read, not changed). The short convs and the delta
        rule (gate and n_h Householder steps included) run with the ancestor mask (``tree_short_conv``,
        ``tree_delta_rule``'s unit-triangular tree system). With a ``keep`` dict the convs' inputs and the
        delta rule's per-node terms (``TreeNodeStates``) are kept for ``commit_tree``."""
        q, k, v, beta, log_a = self._features(hidden, None,
                                              lambda conv, x, key: conv.forward_tree(x, state, tree, key, keep))
        o, node_states = tree_delta_rule(q, k, v, beta, log_a, parents=tree, num_householder=self.num_householder,
                                         initial_state=None if state is None else state.get("ssm"),
                                         state_node=None if keep is None else "any")
        if keep is not None:
            keep["ssm_states"] = node_states
        return self._output(o, hidden)

    def commit_tree(self, state: State, kept: TreeKeep, accepted: AcceptedPath) -> None:
        """Advance the cache entry ``state`` by the accepted path of the last ``forward_tree(..., keep)``
        without recomputing it: each conv's window along the path, and the delta-rule state after the node
        in one contraction of what the tree pass solved (``TreeNodeStates``: ``S_m = gamma_m S_0 + sum_j
        L[m, j] k_j u_j^T`` with the UT values u, one op whatever the path's length)."""
        if self.use_short_conv:
            for conv, key in ((self.q_conv1d, "conv_q"), (self.k_conv1d, "conv_k"), (self.v_conv1d, "conv_v")):
                conv.commit_tree(state, kept, accepted, key)
        state["ssm"] = kept["ssm_states"].state_after(accepted.node)

    def _features(self, hidden: torch.Tensor, mask: torch.Tensor | None,
                  short_conv: Callable[[ShortConv, torch.Tensor, str], torch.Tensor]):
        """The delta rule's inputs from hidden [B, T, d_model], shared by the sequence and tree paths (which
        differ in how ``short_conv(conv, x, cache_key)`` runs): q [B, T, H, K] and k [B, T * n_h, H, K]
        (L2-normalised; the n_h keys of a token consecutive), v [B, T * n_h, H, V], beta [B, T * n_h, H] in
        (0, 1) or (0, 2) for [-1, 1], log_a [B, T, H] (None without the forget gate). Padding (``mask``
        False) gets beta = 0 (an identity step) and log a = 0."""
        b, t, _ = hidden.shape
        h, n_h = self.num_heads, self.num_householder
        q, k, v = (masked(proj(hidden), mask) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if self.use_short_conv:
            q = short_conv(self.q_conv1d, q, "conv_q")
            k = short_conv(self.k_conv1d, k, "conv_k")
            v = short_conv(self.v_conv1d, v, "conv_v")
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q = l2_normalize(q.reshape(b, t, h, self.head_dim))
        k = l2_normalize(k.reshape(b, t * n_h, h, self.head_dim))  # [t, n_h] flattened token-major
        v = v.reshape(b, t * n_h, h, self.value_dim)
        beta = torch.sigmoid(wide(self.b_proj(hidden)))
        if self.negative_eigenvalues:
            beta = 2.0 * beta
        beta = masked(beta, mask).reshape(b, t * n_h, h)  # beta = 0 on padding: identity step
        log_a = None
        if self.use_forget_gate:
            log_a = -torch.exp(wide(self.A_log)) * F.softplus(wide(self.a_proj(hidden)) + wide(self.dt_bias))
            log_a = masked(log_a, mask)
        return q, k, v, beta, log_a

    def _output(self, o: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """o [B, T, H, V] -> [B, T, d_model]: the (gated) output norm and o_proj."""
        b, t, h = *hidden.shape[:2], self.num_heads
        if self.use_output_gate:
            o = self.o_norm(o, self.g_proj(hidden).reshape(b, t, h, self.value_dim))
        else:
            o = self.o_norm(o)
        return self.o_proj(o.reshape(b, t, h * self.value_dim))


class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet (arXiv 2412.06464): DeltaNet with the forget gate and a gated output norm."""

    def __init__(self, d_model: int, use_forget_gate: bool = True, use_output_gate: bool = True, **kwargs) -> None:
        super().__init__(d_model, use_forget_gate=use_forget_gate, use_output_gate=use_output_gate, **kwargs)


class DeltaProduct(DeltaNet):
    """DeltaProduct (arXiv 2502.10297): n_h Householder steps per token (gated with use_forget_gate)."""

    def __init__(self, d_model: int, num_householder: int = 2, **kwargs) -> None:
        super().__init__(d_model, num_householder=num_householder, **kwargs)


def _delta_core_flops(layer: DeltaNet, length: int) -> int:
    """Per head and position: n_h delta steps (k^T H and the rank-1 update, 2 K V each) and the readout
    H^T q (2 K V)."""
    return (4 * layer.num_householder + 2) * layer.num_heads * layer.head_dim * layer.value_dim


_DELTA_FIELDS = {"heads": "num_heads", "n_h": "num_householder", "chunk_size": "chunk_size"}
# DeltaNet / Gated DeltaNet take n_h too (a gated DeltaNet with n_h = 2 is a gated DeltaProduct); their
# labels show it only when it is not 1. DeltaProduct's always do.
_HIDDEN_N_H = Variant("num_householder", generic_field="n_h", label="{label} n_h={value}", show_default=False)

DELTANET = register(MixerSpec(
    name="deltanet", label="DeltaNet", summary="DeltaNet: the delta rule, eigenvalues 1 - beta",
    build=DeltaNet, eigenvalue_switch=True, fields=_DELTA_FIELDS, variant=_HIDDEN_N_H,
    small={"num_heads": 2, "chunk_size": 8}, core_flops=_delta_core_flops))
GATED_DELTANET = register(MixerSpec(
    name="gated_deltanet", label="Gated DeltaNet", summary="Gated DeltaNet: the delta rule with a decay gate",
    build=GatedDeltaNet, eigenvalue_switch=True, fields=_DELTA_FIELDS, variant=_HIDDEN_N_H,
    small={"num_heads": 2, "chunk_size": 8}, core_flops=_delta_core_flops))
DELTAPRODUCT = register(MixerSpec(
    name="deltaproduct", label="DeltaProduct",
    summary="DeltaProduct: n_h Householder steps per token (n_h = 2 by default)",
    build=DeltaProduct, eigenvalue_switch=True, fields=_DELTA_FIELDS,
    variant=Variant("num_householder", generic_field="n_h", label="{label} n_h={value}"),
    small={"num_heads": 2, "num_householder": 2, "use_forget_gate": True, "chunk_size": 8},
    core_flops=_delta_core_flops))
